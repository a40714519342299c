"""The Loop Decoder's fused layers (fused_decoder.py) compute what its plain layers (kernels="eager") compute,
and the heads and sine encodings the plain math their faster forms replace: a GRU over every clip, per-feature
frequencies.
"""

import math

import pytest
import torch

from modeling_lddetr import LDDetrConfig, fused_decoder
from modeling_lddetr.loop_decoder import LoopDecoder
from modeling_lddetr.position_encoding import VideoPositionEmbedding, anchor_sine_embedding
from modeling_lddetr.prediction_heads import HighlightDetectionHead
from tests.helpers import NO_DROPOUT, with_kernels


def _reference_saliency(head, logits, spans, memory, video, video_mask):
    batch, padded_length, d = video.shape
    start, count = head._moment_clip_range(logits.detach().float(), spans.detach().float(), video_mask)
    steps = torch.arange(padded_length)[None, :]
    gather_idx = (start[:, None] + steps).clamp(max=padded_length - 1)
    moment = video.gather(1, gather_idx[..., None].expand(-1, -1, d)) * (steps < count[:, None])[..., None]
    states, _ = head.gru(moment)
    read_at = torch.full_like(count, padded_length - 1) if head.official_slicing else (count - 1).clamp(min=0)
    summary = states[torch.arange(batch), read_at]
    memory = memory * (1 + torch.einsum("bd,bld->bl", summary, video)[..., None])
    return head.saliency_proj(memory).sum(-1) / math.sqrt(d), states, count


def _memory(batch=3, length=20, d=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    memory = torch.randn(batch, length, d, generator=generator)
    memory_pos = torch.randn(batch, length, d, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    for b in range(1, batch):
        mask[b, length - 4 * b :] = False
    return memory, mask, memory_pos


def _assert_close(got, expected, name, atol=1e-6):
    # float32 rounding: atol relative to the tensor's largest value (gradients of the biases reach ~30)
    torch.testing.assert_close(got, expected, atol=atol * max(1.0, expected.abs().max().item()), rtol=0, msg=name)


def _gradients(module, inputs, outputs):
    loss = sum((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() for out in outputs)
    tensors = [p for p in module.parameters()] + [x for x in inputs if x.requires_grad]
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("loops, layers", [(1, 2), (3, 2), (2, 3)])
def test_loop_decoder_equals_the_unfused_math_with_gradients(loops, layers):
    torch.manual_seed(0)
    decoder = LoopDecoder(LDDetrConfig(num_decoder_loops=loops, num_decoder_layers=layers, **NO_DROPOUT)).train()
    eager = with_kernels(decoder, "eager")
    assert fused_decoder.fused_decoder_applies(decoder.decoder.kernels)
    assert not fused_decoder.fused_decoder_applies(eager.decoder.kernels)
    memory, mask, memory_pos = _memory()
    memory.requires_grad_(True)
    memory_pos.requires_grad_(True)
    got = decoder(memory, mask, memory_pos)
    expected = eager(memory, mask, memory_pos)
    for name, g, e in zip(["hidden_states", "reference_anchors"], got, expected):
        _assert_close(g, e, name)
    got_grads = _gradients(decoder, (memory, memory_pos), got)
    expected_grads = _gradients(eager, (memory, memory_pos), expected)
    names = [name for name, _ in decoder.named_parameters()] + ["memory", "memory_pos"]
    for name, g, e in zip(names, got_grads, expected_grads):
        assert (g is None) == (e is None), name
        if g is not None:
            # a one-element gradient (the PReLU weights) is one sum over every activation, whose order the two
            # paths do not share: 1.4e-6 apart on a 0.506 sum on an AMD EPYC (2 loops, 3 layers)
            _assert_close(g, e, name, atol=1e-5 if g.numel() == 1 else 1e-6)


def test_loop_decoder_under_bf16_autocast_stays_within_bf16_rounding_of_the_unfused_math():
    torch.manual_seed(0)
    decoder = LoopDecoder(LDDetrConfig(num_decoder_loops=3, **NO_DROPOUT)).eval()
    memory, mask, memory_pos = _memory()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = decoder(memory, mask, memory_pos)
        expected = with_kernels(decoder, "eager")(memory, mask, memory_pos)
    torch.testing.assert_close(got[1].float(), expected[1].float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(got[0].float(), expected[0].float(), atol=0.1, rtol=0.05)


def test_attention_dropout_acts_on_the_attention_weights():
    # every weight dropped: each attention output is the output projection's bias alone
    torch.manual_seed(0)
    decoder = LoopDecoder(LDDetrConfig(num_decoder_loops=1, **dict(NO_DROPOUT, attention_dropout=1.0))).train()
    layer = decoder.decoder.layers[0]
    memory, mask, memory_pos = _memory()
    keys_values, bias = fused_decoder.fused_memory_keys_values(decoder.decoder, memory, mask, memory_pos)
    keys, values = keys_values[0]
    queries = torch.randn(keys.shape[0], 10, keys.shape[-1])
    attended = fused_decoder._attend(layer, layer.cross_attn, queries, keys, values, bias)
    torch.testing.assert_close(attended, layer.cross_attn.out_proj.bias.expand_as(attended), atol=0, rtol=0)
    layer.eval()
    assert (fused_decoder._attend(layer, layer.cross_attn, queries, keys, values, bias) - attended).abs().max() > 1e-3


def _head_inputs(centers, widths, lengths, padded_length, d=256, queries=4, seed=0):
    """Inputs of the highlight head whose top-1 moment (query 1) is (center, width) for each sample."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(centers)
    logits = torch.zeros(batch, queries, 2)
    logits[:, 1, 0] = 5.0
    spans = torch.rand(batch, queries, 2, generator=generator)
    spans[:, 1] = torch.tensor([centers, widths]).T
    memory = torch.randn(batch, padded_length, d, generator=generator)
    video = torch.randn(batch, padded_length, d, generator=generator) / math.sqrt(d)
    mask = torch.arange(padded_length)[None, :] < torch.tensor(lengths)[:, None]
    return logits, spans, memory, video, mask


@pytest.mark.parametrize(
    "centers, widths, lengths",
    [
        ([0.3, 0.6, 0.95], [0.2, 0.1, 0.3], [20, 14, 20]),  # the last sample's moment runs to the last clip
        ([0.5, 0.5], [1.0, 0.02], [20, 20]),  # a moment of every clip: the GRU runs the full padded length
        ([0.01, 0.5, 0.99], [0.01, 0.01, 0.01], [20, 9, 17]),  # one clip each, at the start, middle and end
    ],
)
@pytest.mark.parametrize("official_slicing", [False, True])
@pytest.mark.parametrize("host_sync_free", [False, True])
def test_highlight_head_equals_the_full_length_gru_with_gradients(
    centers, widths, lengths, official_slicing, host_sync_free, monkeypatch
):
    # host_sync_free: the path of accelerators and torch.compile, which runs the GRU the padded length without
    # reading the moment length on the host; it is selected here through torch.compiler.is_compiling
    if host_sync_free:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    head = HighlightDetectionHead(LDDetrConfig(official_highlight_slicing=official_slicing))
    logits, spans, memory, video, mask = _head_inputs(centers, widths, lengths, padded_length=20)
    memory.requires_grad_(True)
    video.requires_grad_(True)
    states = []
    hook = head.gru.register_forward_hook(lambda module, args, out: states.append(out[0]))
    got = head(logits, spans, memory, video, mask)
    hook.remove()
    expected, full_states, count = _reference_saliency(head, logits, spans, memory, video, mask)
    # the truncated run is as long as the longest moment and is the full run's first steps (up to the rounding of
    # the input GEMM, whose blocking depends on the number of steps)
    assert states[0].shape[1] == (20 if official_slicing or host_sync_free else int(count.max()))
    _assert_close(states[0], full_states[:, : states[0].shape[1]], "gru states")
    _assert_close(got, expected, "saliency")
    for name, g, e in zip(
        ["memory", "video"], *(torch.autograd.grad(out.square().sum(), (memory, video)) for out in (got, expected))
    ):
        _assert_close(g, e, name)
    got_grads = torch.autograd.grad(head(logits, spans, memory, video, mask).sum(), list(head.parameters()))
    expected_grads = torch.autograd.grad(
        _reference_saliency(head, logits, spans, memory, video, mask)[0].sum(), list(head.parameters())
    )
    for (name, _), g, e in zip(head.named_parameters(), got_grads, expected_grads):
        _assert_close(g, e, name)


def _reference_sine(positions, num_feats, temperature=10000.0):
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    scaled = positions[..., None] / dim_t
    return torch.stack((scaled[..., 0::2].sin(), scaled[..., 1::2].cos()), dim=-1).flatten(-2)


@pytest.mark.parametrize("hidden_size", [256, 32, 4])
def test_anchor_sine_embedding_is_bit_identical_to_per_feature_frequencies(hidden_size):
    anchors = torch.rand(3, 10, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    center = _reference_sine(anchors[..., 0] * (2 * math.pi), hidden_size // 2)
    width = _reference_sine(anchors[..., 1] * (2 * math.pi), hidden_size // 2)
    expected = torch.cat((center, width), dim=-1)
    got = anchor_sine_embedding(anchors, hidden_size)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    weights = torch.linspace(-1, 1, got.numel()).view(got.shape)
    grads = [torch.autograd.grad((out * weights).sum(), anchors)[0] for out in (got, expected)]
    _assert_close(grads[0], grads[1], "anchors")


def test_clip_positions_are_bit_identical_to_per_feature_frequencies():
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    positions = mask.cumsum(1, dtype=torch.float32)
    positions = positions / (positions[:, -1:] + 1e-6) * (2 * math.pi)
    torch.testing.assert_close(VideoPositionEmbedding(256)(mask), _reference_sine(positions, 256), atol=0, rtol=0)
