"""The fused convolution and BatchNorm of the convolutional blocks: autograd Functions on channel-last (B, L, C)
tensors.

`masked_conv1d`: Conv1d (kernel 3, padding 1) of x * mask over the flattened (B * L) rows, as three accumulating
GEMMs (one per tap, on row-shifted views: no im2col copy), and three each for grad-input and grad-weight. The last
row of every sequence must be padding: it keeps each sequence's taps from reaching into the next one. Faster on
CPU than mkldnn's convolution and its backward at (B, 256, 75), and no transposes around the blocks.
`masked_batch_norm`: BatchNorm statistics from the valid rows only (fp32, optionally summed across processes) and
the analytical BatchNorm backward in a few passes, instead of autograd's ~15 elementwise ops.
"""

import torch
import torch.distributed as dist

from .fused_prelu import lower_precision_dtype


def fused_convolution_applies(kernels: str) -> bool:
    """Where `masked_conv1d` replaces nn.Conv1d: fused kernels (on every device: it is GEMMs)."""
    return kernels == "fused"


def fused_batch_norm_applies(kernels: str, training: bool) -> bool:
    """Where `masked_batch_norm` replaces the masked BatchNorm formula: fused kernels, in training (evaluation
    uses the running statistics, with torch's kernel either way)."""
    return kernels == "fused" and training


def _accumulate_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    # out += a @ b inside the GEMM (beta = 1); addmm's out= form, unlike addmm_, is seen by torch's FLOP counter
    torch.addmm(out, a, b, out=out)


class _MaskedConv1d(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # x (B, L, C_in), mask (B, L, 1), weight (C_out, C_in, 3) -> (B, L, C_out)
        dtype = lower_precision_dtype(x)
        batch, length, in_channels = x.shape
        with torch.autocast(x.device.type, enabled=False):
            masked = torch.empty(x.shape, dtype=dtype, device=x.device)
            torch.mul(x, mask, out=masked)
            masked = masked.view(batch * length, in_channels)
            taps = weight.to(dtype).permute(2, 0, 1).contiguous()  # (3, C_out, C_in): taps[k] = weight[:, :, k]
            # out[r] = taps applied to masked[r - 1], masked[r], masked[r + 1] (flattened rows)
            out = masked @ taps[1].t() if bias is None else torch.addmm(bias.to(dtype), masked, taps[1].t())
            _accumulate_product(out[1:], masked[:-1], taps[0].t())
            _accumulate_product(out[:-1], masked[1:], taps[2].t())
        ctx.save_for_backward(masked, mask, taps)
        ctx.input_dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        return out.view(batch, length, -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        masked, mask, taps = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.input_dtypes
        batch, length, _ = mask.shape
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(batch * length, -1).to(masked.dtype)
            # row r fed tap 1 of output r, tap 0 of output r + 1 and tap 2 of output r - 1
            grad_masked = grad @ taps[1]
            _accumulate_product(grad_masked[:-1], grad[1:], taps[0])
            _accumulate_product(grad_masked[1:], grad[:-1], taps[2])
            grad_x = torch.empty(mask.shape[:2] + masked.shape[1:], dtype=x_dtype, device=grad.device)
            torch.mul(grad_masked.view(grad_x.shape), mask, out=grad_x)
            grad_taps = [grad[1:].t() @ masked[:-1], grad.t() @ masked, grad[:-1].t() @ masked[1:]]
            grad_weight = torch.stack(grad_taps, dim=2).to(weight_dtype)  # (C_out, C_in, 3)
            grad_bias = None if bias_dtype is None else grad.sum(0).to(bias_dtype)
        return grad_x, None, grad_weight, grad_bias


def masked_conv1d(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Conv1d (kernel 3, padding 1) of x * mask; x (B, L, C_in), mask (B, L, 1), weight (C_out, C_in, 3) ->
    (B, L, C_out). The last row of every sequence must be padding (mask 0): its output also sees the next
    sequence's first row; every other row equals nn.Conv1d's. Runs in the autocast dtype under autocast, as
    F.conv1d."""
    if weight.shape[2] != 3:
        raise ValueError(f"masked_conv1d is a kernel-3 convolution, got a weight of shape {tuple(weight.shape)}")
    if mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask[:, -1].any()):
        raise ValueError("masked_conv1d needs a padded last row (mask 0) in every sequence, to keep sequences apart")
    return _MaskedConv1d.apply(x, mask, weight, bias)


def _all_reduce_if(sync: bool, tensor: torch.Tensor) -> torch.Tensor:
    if sync:
        dist.all_reduce(tensor)
    return tensor


class _MaskedBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, sync: bool
    ):
        # x (M, C), mask (M,) 1 = valid row -> out (M, C) in fp32 (or fp64), batch mean (C,), unbiased variance (C,)
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            x32, valid = x.to(stats_dtype), mask.to(stats_dtype)
            stats = _all_reduce_if(sync, torch.cat([torch.mv(x32.t(), valid), valid.sum()[None]]))
            total, count = stats[:-1], stats[-1]
            mean = total / count
            centered = x32 - mean
            var = _all_reduce_if(sync, torch.mv(centered.square().t(), valid)) / count
            inv_std = torch.rsqrt(var + eps)
            out = torch.addcmul(bias.to(stats_dtype), centered, inv_std * weight.to(stats_dtype))
            unbiased_var = var * count / (count - 1).clamp(min=1)
        ctx.save_for_backward(centered, valid, inv_std, weight, count)
        ctx.sync, ctx.x_dtype = sync, x.dtype
        ctx.mark_non_differentiable(mean, unbiased_var)
        return out, mean, unbiased_var

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_mean, _grad_var):
        centered, valid, inv_std, weight, count = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.to(centered.dtype)
            # padded rows' outputs depend on the statistics too, so both sums run over every row
            grad_sum = grad.sum(0)
            grad_dot_centered = (grad * centered).sum(0)
            grad_weight = (grad_dot_centered * inv_std).to(weight.dtype)
            grad_bias = grad_sum.to(weight.dtype)
            global_sums = _all_reduce_if(ctx.sync, torch.stack([grad_sum, grad_dot_centered]))
            # grad_x = w r (dy - valid * (sum(dy) + x_hat * sum(dy x_hat)) / n), r = 1 / std, x_hat = r (x - mean)
            scale = weight.to(centered.dtype) * inv_std
            offset = scale * global_sums[0] / count
            slope = scale * inv_std * inv_std * global_sums[1] / count
            grad_x = grad * scale
            grad_x.addcmul_(torch.addcmul(offset, centered, slope), valid[:, None], value=-1)
        return grad_x.to(ctx.x_dtype), None, grad_weight, grad_bias, None, None


def masked_batch_norm(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, sync: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm of x (M, C) with statistics from the rows where mask (M,) is 1, summed across
    processes when `sync`. Returns the output (M, C) in fp32 (fp64 for fp64 inputs) and the batch mean and
    unbiased variance (C,) for the running statistics."""
    return _MaskedBatchNorm.apply(x, mask, weight, bias, eps, sync)
