"""A whole-model training step with dropout at the real rates (0.1 in the transformers, 0.5 in the unimodal
encoders) and three Loop Decoder passes: the fused kernels and the plain PyTorch modules (kernels="eager": nn.Dropout,
nn.LayerNorm + nn.Linear, the attention formula, nn.Conv1d, the masked BatchNorm and Distill Align formulas), given
the same dropout masks, give the same loss terms, parameter gradients, updated parameters, momentum encoders and
queues. This covers the code that only training with dropout reaches: the numpy masks, the fused
LayerNorm-dropout-Linear input layer, the momentum encoders' in-place dropout, the attention with dropout written
out, and how they compose over two steps."""

import pytest
import torch

from modeling_lddetr import LDDetrModel
from tests.helpers import random_batch, recorded_dropout_masks, replayed_dropout_masks, tiny_config, with_kernels


def _assert_close(got: torch.Tensor, expected: torch.Tensor, name: str, tolerance: float) -> None:
    # tolerance of each tensor's scale, max(1, max |value|)
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=tolerance * scale, rtol=0, msg=lambda message: f"{name}: {message}")


def _to(batch, dtype: torch.dtype):
    inputs, labels = batch
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}, labels


def _train(model: LDDetrModel, batches, masks) -> list[dict]:
    """Two SGD steps; each step's loss terms and gradients. Records the fused path's masks into `masks` (a
    list) or replays them (a tuple) into the plain path's dropouts."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = []
    context = replayed_dropout_masks(masks) if isinstance(masks, tuple) else recorded_dropout_masks()
    with context as recorded:
        for epoch, (inputs, labels) in enumerate(batches):
            model.set_training_progress(0.5 * epoch)
            optimizer.zero_grad(set_to_none=True)
            out = model(**inputs, labels=labels)
            out.loss.backward()
            optimizer.step()
            terms = {name: value.detach().clone() for name, value in out.loss_dict.items()}
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
            steps.append({"loss": out.loss.detach(), **terms, **{f"grad {name}": g for name, g in grads.items()}})
    if isinstance(masks, list):
        masks.extend(recorded)
    return steps


# fp64: the same formulas, to rounding (the fused input layer is fp32-only, so it runs its plain form here). fp32:
# what users train in, within rounding.
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_training_steps_with_dropout_and_three_loops_equal_the_plain_modules_given_the_same_masks(dtype, tolerance):
    torch.manual_seed(0)
    config = tiny_config()
    assert (config.unimodal_dropout, config.hidden_dropout, config.attention_dropout) == (0.5, 0.1, 0.1)
    assert config.num_decoder_loops == 3
    fused = LDDetrModel(config).train().to(dtype)
    eager = with_kernels(fused, "eager")
    batches = [random_batch(config, [12, 7, 9], [5, 3, 4], seed=1), random_batch(config, [8, 12, 3], [2, 5, 5], seed=2)]
    batches = [_to(batch, dtype) for batch in batches]

    masks = []
    fused_steps = _train(fused, batches, masks)
    eager_steps = _train(eager, batches, tuple(masks))

    assert len(masks) > 100  # every dropout of the model, two steps
    for step, (got, expected) in enumerate(zip(fused_steps, eager_steps)):
        assert got.keys() == expected.keys()
        assert sum(name.startswith("grad ") for name in got) == sum(p.requires_grad for p in fused.parameters())
        assert got["grad video_encoder.norm1.weight"].dtype == dtype
        # in fp32 step 0's rounding (up to 3e-6 of scale) goes through the SGD update into step 1's gradients
        # (1.1e-5 measured at 2 threads); fp64 holds both steps to 1e-10
        step_tolerance = tolerance * (3 if step and dtype == torch.float32 else 1)
        for name in expected:
            _assert_close(got[name], expected[name], f"step {step}, {name}", step_tolerance)
    # after the steps: the updated parameters, the momentum encoders (their EMA of the online encoders), the
    # queues (the momentum features, through their in-place dropout) and the BatchNorm statistics
    expected_state = eager.state_dict()
    for name, value in fused.state_dict().items():
        _assert_close(value.double(), expected_state[name].double(), name, tolerance)
