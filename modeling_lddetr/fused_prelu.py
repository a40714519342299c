"""The fused PReLU: a vectorised CPU backward, and an in-place forward without autograd.

torch's CPU `_prelu_kernel_backward` is one scalar loop; here the backward is two vectorised passes: grad_x from
`leaky_relu_backward` (same sub-gradient as PReLU: w * g at x = 0) and grad_w as one dot product of g with
min(x, 0).
"""

import torch
import torch.nn.functional as F


def lower_precision_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on autocast's lower-precision list (prelu, conv1d, addmm) runs and differentiates in."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


class _PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        dtype = lower_precision_dtype(x)
        x_c, weight_c = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x_c, weight_c)
        ctx.input_dtypes = x.dtype, weight.dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.prelu(x_c, weight_c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.input_dtypes
        grad = grad.to(x.dtype)
        negative_part = x.clamp(max=0)
        if weight.numel() == 1:
            if torch.compiler.is_compiling():  # weight.item() would break the graph; the compiler fuses this
                grad_x = torch.where(x > 0, grad, grad * weight)
            else:
                grad_x = torch.ops.aten.leaky_relu_backward(grad, x, weight.item(), False)
            if x.dtype in (torch.float32, torch.float64):
                grad_weight = torch.dot(grad.reshape(-1), negative_part.reshape(-1)).reshape(weight.shape)
            else:  # torch.dot has no vectorised bf16/fp16 CPU kernel; sum() accumulates in fp32
                grad_weight = (grad * negative_part).sum().reshape(weight.shape)
        else:
            # one weight per channel, dim 1 (as nn.PReLU)
            weight_shape = (1, -1) + (1,) * (x.dim() - 2)
            grad_x = torch.where(x > 0, grad, grad * weight.view(weight_shape))
            grad_weight = (grad * negative_part).sum([d for d in range(x.dim()) if d != 1])
        return grad_x.to(x_dtype), grad_weight.to(weight_dtype)


def fused_prelu_applies(kernels: str, x: torch.Tensor) -> bool:
    """Where `_PReLUFunction` replaces torch's PReLU: fused kernels, on the CPU."""
    return kernels == "fused" and x.device.type == "cpu"


def fused_prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _PReLUFunction.apply(x, weight)


def in_place_prelu_applies(kernels: str, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where PReLU may be written into x (for a caller that holds the only reference to x): fused kernels,
    autograd off, one weight, on the CPU, no autocast (which would give another dtype), not compiled (`.item()`
    would break the graph; the compiler fuses anyway)."""
    return (
        fused_prelu_applies(kernels, x)
        and not torch.is_grad_enabled()
        and weight.numel() == 1
        and lower_precision_dtype(x) == x.dtype
        and not torch.compiler.is_compiling()
    )


def in_place_prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU written into x, where `in_place_prelu_applies`: one (rows, ffn_dim) buffer fewer per feed-forward
    block at inference, whose fresh pages cost more than the arithmetic on the CPU. The same values: leaky_relu
    with the weight rounded to x's dtype is PReLU's max(0, x) + w min(0, x)."""
    return F.leaky_relu_(x, weight.to(x.dtype).item())
