"""The switch between the plain PyTorch reference and the fused kernels (`LDDetrConfig.kernels`): saved with the
config, the same parameters both ways, every fused kernel selected by "fused" and none by "eager", and the two
computing the same, forward and backward, in fp32 and under bf16 autocast, with dropout off and on (the fused
path's masks replayed into the plain path's dropouts)."""

import contextlib
import copy
import json

import pytest
import torch

from modeling_lddetr import LDDetrConfig, LDDetrModel
from modeling_lddetr.convolutional_fuser import ConvolutionalFuser
from modeling_lddetr.distill_align import DistillAlign
from modeling_lddetr.loop_decoder import LoopDecoder
from modeling_lddetr.position_encoding import VideoPositionEmbedding
from modeling_lddetr.unimodal_encoder import UnimodalEncoder
from tests.helpers import (
    NO_DROPOUT,
    TINY_SIZES,
    random_batch,
    recorded_dropout_masks,
    replayed_dropout_masks,
    tiny_config,
    with_kernels,
)

# the backward nodes of the fused kernels' autograd Functions
FUSED_BACKWARDS = {
    "_NormDropoutLinearBackward", "_MultiplyByMaskBackward", "_PReLUFunctionBackward", "_MaskedConv1dBackward",
    "_MaskedBatchNormBackward", "_QueueLogitsBackward", "_DistillationCrossEntropyBackward",
}


def test_the_config_saves_the_choice_and_old_config_files_load_as_fused(tmp_path):
    assert LDDetrConfig().kernels == "fused"
    LDDetrConfig(kernels="eager").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["kernels"] == "eager"
    assert LDDetrConfig.from_pretrained(tmp_path).kernels == "eager"
    del saved["kernels"]  # a config.json written before the switch existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert LDDetrConfig.from_pretrained(tmp_path).kernels == "fused"


def test_an_unknown_choice_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^kernels must be one of 'eager', 'fused', got 'fast'\.$"):
        LDDetrConfig(kernels="fast")
    with pytest.raises(ValueError, match="kernels must be one of"):
        LDDetrModel(tiny_config()).set_kernels("plain")


def test_a_checkpoint_of_either_loads_into_the_other_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    fused = LDDetrModel(tiny_config()).eval()
    fused.save_pretrained(tmp_path, save_queues=True)  # the queues too: the alignment loss reads them
    eager = LDDetrModel.from_pretrained(tmp_path, kernels="eager").eval()
    assert eager.config.kernels == "eager"
    assert all(module.kernels == "eager" for module in eager.modules() if hasattr(module, "kernels"))
    shapes = {name: value.shape for name, value in fused.state_dict().items()}
    assert {name: value.shape for name, value in eager.state_dict().items()} == shapes
    eager_built = LDDetrModel(tiny_config(kernels="eager"))
    assert {name: value.shape for name, value in eager_built.state_dict().items()} == shapes
    inputs, labels = random_batch(fused.config, [12, 7, 9], [5, 3, 4])
    with torch.no_grad():
        got, expected = fused(**inputs, labels=labels), eager(**inputs, labels=labels)
    for name in ("logits", "pred_spans", "saliency_scores", "loss"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


def _backward_node_names(tensor: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("kernels", ["fused", "eager"])
def test_fused_selects_every_fused_kernel_and_eager_none(kernels):
    torch.manual_seed(0)
    model = LDDetrModel(tiny_config()).train()
    model.set_kernels(kernels)
    inputs, labels = random_batch(model.config, [12, 7, 9], [5, 3, 4])
    with recorded_dropout_masks() if kernels == "fused" else contextlib.nullcontext():
        loss = model(**inputs, labels=labels).loss
    used = _backward_node_names(loss) & FUSED_BACKWARDS
    assert used == (FUSED_BACKWARDS if kernels == "fused" else set())


def _weighted_sum(out: torch.Tensor) -> torch.Tensor:
    # a loss whose gradient differs per element, so that swapped or misplaced gradients show
    out = out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 outputs in fp32, fp64 ones in fp64
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum()


def _module_cases(dropout: bool, dtype: torch.dtype = torch.float32):
    """(name, module, its forward on fixed inputs -> one tensor) for the parts with fused kernels, in `dtype`."""
    generator = torch.Generator().manual_seed(0)
    batch, clips, tokens, d = 3, 12, 5, TINY_SIZES["hidden_size"]
    video, text = torch.randn(batch, clips, d, generator=generator), torch.randn(batch, tokens, d, generator=generator)
    video_mask = torch.arange(clips)[None] < torch.tensor([12, 7, 9])[:, None]
    text_mask = torch.arange(tokens)[None] < torch.tensor([5, 3, 4])[:, None]
    features = torch.randn(batch, clips, 50, generator=generator)
    video_pos = VideoPositionEmbedding(d)(video_mask)
    video, text, features, video_pos = (x.to(dtype) for x in (video, text, features, video_pos))
    config = LDDetrConfig(**TINY_SIZES, **({} if dropout else NO_DROPOUT))
    torch.manual_seed(0)
    unimodal, fuser = UnimodalEncoder(50, d, config.unimodal_dropout), ConvolutionalFuser(config)
    yield "unimodal encoder", unimodal.to(dtype), lambda m: m(features)
    yield "convolutional fuser", fuser.to(dtype), lambda m: m(video, text, video_mask, text_mask, video_pos)
    yield "loop decoder", LoopDecoder(config).to(dtype), lambda m: m(video, video_mask, video_pos)[0]
    momentum = [x.roll(1, 0) for x in (video, text)]
    align = DistillAlign(config).to(dtype)
    yield "distill align", align, lambda m: torch.stack(m(video, text, *momentum, video_mask, text_mask))


def _run(module, forward, masks=None, bf16=False):
    """forward and backward of module (a copy of it: the same start for every run) -> output, parameter grads;
    records the fused dropout's masks into `masks` (a list), or replays them if `masks` is a tuple."""
    module = copy.deepcopy(module)  # a training forward changes state (the queues, the temperature's clamp)
    context = replayed_dropout_masks(masks) if isinstance(masks, tuple) else recorded_dropout_masks()
    with context as recorded, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = forward(module)
    if isinstance(masks, list):
        masks.extend(recorded)
    _weighted_sum(out).backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    return out.detach().to(torch.promote_types(out.dtype, torch.float32)), grads


def _largest_difference(got, expected) -> float:
    """max |got − expected| over the output and every gradient, each relative to max(1, max |expected|)."""
    pairs = [(got[0], expected[0])] + [(got[1][name], expected[1][name]) for name in expected[1]]
    assert got[1].keys() == expected[1].keys()
    return max(((g - e).abs().max() / max(1.0, e.abs().max().item())).item() for g, e in pairs)


# fp64: the two paths compute the same formulas, to rounding. fp32: as close as rounding allows (a ReLU input
# within fp32 rounding of 0 would land on opposite sides in the two paths; fp64 shows whether such a gap is that).
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("dropout", [False, True], ids=["dropout off", "dropout on"])
def test_each_part_fused_equals_eager_forward_and_backward(dropout, dtype, tolerance):
    for name, module, forward in _module_cases(dropout, dtype):
        module.train()
        masks = []
        fused = _run(module, forward, masks)
        eager = _run(with_kernels(module, "eager"), forward, tuple(masks))
        assert bool(masks) == (dropout and name != "distill align"), name  # distill align has no dropout
        assert fused[0].dtype == dtype, name
        assert _largest_difference(fused, eager) < tolerance, name


@pytest.mark.parametrize("dropout", [False, True], ids=["dropout off", "dropout on"])
def test_each_part_fused_under_bf16_autocast_is_as_close_to_fp32_as_eager_is(dropout):
    # bf16 rounds each path its own way: the fused path must stay as close to the fp32 reference (eager, the same
    # masks) as the plain path in bf16 does
    for name, module, forward in _module_cases(dropout):
        module.train()
        eager_module = with_kernels(module, "eager")
        masks = []
        fused_bf16 = _run(with_kernels(module, "fused"), forward, masks, bf16=True)
        eager_bf16 = _run(with_kernels(eager_module, "eager"), forward, tuple(masks), bf16=True)
        reference = _run(eager_module, forward, tuple(masks))
        fused_error = _largest_difference(fused_bf16, reference)
        eager_error = _largest_difference(eager_bf16, reference)
        assert fused_error <= 2 * eager_error + 1e-3, (name, fused_error, eager_error)
