"""The convolutional blocks' hand-written conv and masked BatchNorm: gradcheck, equality with nn.Conv1d /
nn.BatchNorm1d, and the padded-mask semantics of autograd's masked BatchNorm (stats from valid clips only)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeling_lddetr.configuration_lddetr import LDDetrConfig
from modeling_lddetr.convolutional_fuser import ConvolutionalBlock, MaskedBatchNorm1d, MaskedConv1d
from modeling_lddetr.fused_convolution import _MaskedBatchNorm, _MaskedConv1d

LENGTHS = [7, 4, 1, 7]  # full-length videos, padded ones and a single clip


def _with_padded_last_row(x: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L + 1, C) with a zero row after every sequence, as the fuser feeds the blocks."""
    return F.pad(x, (0, 0, 0, 1))


def _mask(lengths: list[int], length: int, dtype=torch.float32) -> torch.Tensor:
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).to(dtype)  # (B, L)


def _reference_masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked BatchNorm by autograd, channels first: x (B, C, L), mask (B, 1, L); updates bn's running stats."""
    count = mask.sum()
    mean = (x * mask).sum(dim=(0, 2)) / count
    centered = (x - mean[None, :, None]) * mask
    var = (centered * centered).sum(dim=(0, 2)) / count
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var * count / (count - 1), bn.momentum)
    out = (x - mean[None, :, None]) * torch.rsqrt(var + bn.eps)[None, :, None]
    return out * bn.weight[None, :, None] + bn.bias[None, :, None]


def _forward_backward(ours, reference, x: torch.Tensor, grad: torch.Tensor):
    """Run `ours` and `reference` on copies of x and backpropagate `grad` through both ->
    (y_ours, y_ref, x_ours.grad, x_ref.grad)."""
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), reference(x_ref)
    y_ours.backward(grad)
    y_ref.backward(grad)
    return y_ours, y_ref, x_ours.grad, x_ref.grad


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_backward_passes_gradcheck_in_float64_with_padding(with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(5, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True) if with_bias else None
    mask = _mask(LENGTHS, 8, torch.float64)[..., None]
    assert torch.autograd.gradcheck(lambda x, w, b: _MaskedConv1d.apply(x, mask, w, b), (x, weight, bias))


@pytest.mark.parametrize("lengths", [[9, 9, 9], [9, 3, 6]])
def test_conv_equals_nn_conv1d_of_the_masked_input_forward_and_backward(lengths):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 16, generator=generator)  # 9 clips and the padded last row
    grad = torch.randn(3, 9, 16, generator=generator)
    mask = _mask(lengths, 10)[..., None]
    ours = MaskedConv1d(16)
    reference = nn.Conv1d(16, 16, 3, padding=1)
    reference.load_state_dict(ours.state_dict())

    y_ours, y_ref, grad_ours, grad_ref = _forward_backward(
        lambda x: ours(x, mask)[:, :9], lambda x: reference((x * mask).transpose(1, 2)).transpose(1, 2)[:, :9], x, grad
    )
    torch.testing.assert_close(y_ours, y_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-6)


def test_conv_rejects_a_mask_without_a_padded_last_row():
    with pytest.raises(ValueError, match="padded last row"):
        MaskedConv1d(4)(torch.randn(2, 5, 4), _mask([5, 3], 5)[..., None])


def test_conv_under_bf16_autocast_matches_nn_conv1d_and_returns_fp32_gradients():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 8, generator=generator)
    mask = _mask([6, 4], 7)[..., None]
    ours = MaskedConv1d(8)
    reference = nn.Conv1d(8, 8, 3, padding=1)
    reference.load_state_dict(ours.state_dict())
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours = ours(x_ours, mask)[:, :6]
        y_ref = reference((x_ref * mask).transpose(1, 2)).transpose(1, 2)[:, :6]
    assert y_ours.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
    y_ours.float().sum().backward()
    y_ref.float().sum().backward()
    assert x_ours.grad.dtype == ours.weight.grad.dtype == torch.float32
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=5e-2, rtol=2e-2)


def test_batch_norm_backward_passes_gradcheck_in_float64_with_padding():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4 * 7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
    mask = _mask(LENGTHS, 7, torch.float64).reshape(-1)
    out = _MaskedBatchNorm.apply(x, mask, weight, bias, 1e-5, False)[0]
    assert out.dtype == torch.float64  # statistics in at least fp32: float64 inputs keep float64
    assert torch.autograd.gradcheck(
        lambda x, w, b: _MaskedBatchNorm.apply(x, mask, w, b, 1e-5, False)[0], (x, weight, bias)
    )


def _batch_norm_pair(channels: int):
    ours = MaskedBatchNorm1d(channels)
    reference = nn.BatchNorm1d(channels)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 1.5, channels))
        ours.bias.copy_(torch.linspace(-0.2, 0.3, channels))
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def test_batch_norm_equals_nn_batchnorm1d_when_nothing_is_padded():
    generator = torch.Generator().manual_seed(4)
    ours, reference = _batch_norm_pair(6)
    mask = torch.ones(3, 10, 1)
    for step in range(2):  # running stats after two updates
        x = 3 * torch.randn(3, 10, 6, generator=generator) + 1
        grad = torch.randn(3, 10, 6, generator=generator)
        y_ours, y_ref, grad_ours, grad_ref = _forward_backward(
            lambda x: ours(x, mask), lambda x: reference(x.transpose(1, 2)).transpose(1, 2), x, grad
        )
        torch.testing.assert_close(y_ours, y_ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad_ours, grad_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(reference, name), atol=1e-6, rtol=1e-6, msg=name)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x, mask), reference(x.transpose(1, 2)).transpose(1, 2), atol=1e-6, rtol=1e-6)


def test_batch_norm_with_padding_equals_autograd_masked_batch_norm_and_ignores_padded_values():
    generator = torch.Generator().manual_seed(5)
    ours, reference = _batch_norm_pair(6)
    mask = _mask(LENGTHS, 7)[..., None]  # (B, L, 1)
    x = 2 * torch.randn(4, 7, 6, generator=generator) - 1
    x = torch.where(mask.bool(), x, 1e3)  # padded values far from the valid ones: they must not reach the stats
    grad = torch.randn(4, 7, 6, generator=generator)  # gradients also on padded rows (they depend on the stats)
    y_ours, y_ref, grad_ours, grad_ref = _forward_backward(
        lambda x: ours(x, mask),
        lambda x: _reference_masked_batch_norm(reference, x.transpose(1, 2), mask.transpose(1, 2)).transpose(1, 2),
        x,
        grad,
    )
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad, atol=1e-5, rtol=1e-6)
    valid = x[mask[..., 0].bool()]  # (valid clips, C): the statistics of nn.BatchNorm1d over them alone
    torch.testing.assert_close(ours.running_mean, 0.1 * valid.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.running_var, 0.9 + 0.1 * valid.var(0), atol=1e-6, rtol=1e-6)


def test_block_with_a_padded_last_row_equals_the_channels_first_composition_of_nn_conv1d_and_masked_batch_norm():
    config = LDDetrConfig(hidden_size=16, num_attention_heads=4, ffn_dim=32)
    block = ConvolutionalBlock(config).train()
    twin = copy.deepcopy(block)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(4, 7, 16, generator=generator)
    grad = torch.randn(4, 7, 16, generator=generator)
    mask = _mask(LENGTHS, 7)[..., None]
    mask_cf = mask.transpose(1, 2)

    def reference(x):
        channels_first = x.transpose(1, 2)
        h = F.conv1d(channels_first * mask_cf, twin.conv1.weight, twin.conv1.bias, padding=1)
        h = _reference_masked_batch_norm(twin.bn1, h, mask_cf).relu()
        h = F.conv1d(h * mask_cf, twin.conv2.weight, twin.conv2.bias, padding=1)
        h = _reference_masked_batch_norm(twin.bn2, h, mask_cf)
        return (h + channels_first).relu().transpose(1, 2)

    y_ours, y_ref, grad_ours, grad_ref = _forward_backward(
        lambda x: block(_with_padded_last_row(x), _with_padded_last_row(mask))[:, :7], reference, x, grad
    )
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-5, rtol=1e-5)
    for (name, p_ours), (_, p_ref) in zip(block.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, atol=1e-4, rtol=1e-5, msg=name)
    for (name, b_ours), (_, b_ref) in zip(block.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(b_ours, b_ref, atol=1e-6, rtol=1e-6, msg=name)


def test_parameter_names_and_shapes_are_those_of_conv1d_and_batchnorm1d():
    block = ConvolutionalBlock(LDDetrConfig())
    shapes = {name: tuple(value.shape) for name, value in block.state_dict().items()}
    assert shapes["conv1.weight"] == (256, 256, 3) and shapes["conv2.bias"] == (256,)
    assert shapes["bn1.running_mean"] == (256,) and shapes["bn2.num_batches_tracked"] == ()
    assert isinstance(block.conv1, nn.Conv1d) and isinstance(block.bn1, nn.BatchNorm1d)
