"""The fused input layer of the unimodal encoders: LayerNorm -> dropout -> Linear with the dropout mask drawn here.

With autograd on, one autograd Function takes the gradients of the Linear and of the LayerNorm's affine as two
GEMMs and none for the wide input; without autograd (the momentum encoders), the dropout runs in place on the
LayerNorm's output, which nothing else holds.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .fused_dropout import dropout_mask, times_mask


class _NormDropoutLinear(torch.autograd.Function):
    """linear(dropout(layer_norm(x))) for an x that needs no gradient, with the dropout's 0/1 mask and scale given.

    With xhat the normalised x, M the mask times the scale s = 1 / (1 - p) and G the output gradient, the gradients
    the step needs are those of the Linear and of the LayerNorm's affine:
        dW = Gᵀ(M∘(xhat γ + β)) = (Gᵀ(M∘xhat)) γ + (GᵀM) β,
        dγ = Σₖ W∘Gᵀ(M∘xhat),  dβ = Σₖ W∘(GᵀM)
    (γ, β scale columns). Two (H, R) @ (R, D) products then replace the (R, D)-sized input gradient G W, the
    dropout backward and the LayerNorm backward, every one of them a pass over the wide (R, D) input
    (R = B·L rows, D = 2818 for the clip features). The scale rides on γ and β, so the mask stays 0/1.
    fp32 only: in bf16 the two products come back rounded, and their sum in dW can cancel (4x the plain path's
    error was seen with γ and β of mixed signs); CPU matmul has no bf16-in, fp32-out form.
    """

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, mask, scale, weight, bias):
        # x, mask (R, D); norm_weight, norm_bias (D,); weight (H, D); bias (H,)
        masked_xhat = F.layer_norm(x, x.shape[-1:], eps=eps).mul_(mask)  # M∘xhat / s, (R, D)
        scaled_weight, scaled_bias = norm_weight * scale, norm_bias * scale
        dropped = torch.mul(mask, scaled_bias).addcmul_(masked_xhat, scaled_weight)  # M∘(xhat γ + β)
        ctx.save_for_backward(masked_xhat, mask, scaled_weight, scaled_bias, weight)
        ctx.scale = scale
        return F.linear(dropped, weight, bias)  # (R, H)

    @staticmethod
    def backward(ctx, grad):
        masked_xhat, mask, scaled_weight, scaled_bias, weight = ctx.saved_tensors
        grad_xhat_part = grad.T @ masked_xhat  # Gᵀ(M∘xhat) / s, (H, D)
        grad_mask_part = grad.T @ mask  # GᵀM / s, (H, D)
        grad_weight = torch.mul(grad_mask_part, scaled_bias).addcmul_(grad_xhat_part, scaled_weight)
        grad_norm_weight = torch.linalg.vecdot(weight, grad_xhat_part, dim=0).mul_(ctx.scale)  # (D,)
        grad_norm_bias = torch.linalg.vecdot(weight, grad_mask_part, dim=0).mul_(ctx.scale)
        return None, grad_norm_weight, grad_norm_bias, None, None, None, grad_weight, grad.sum(0)


def fused_input_layer_applies(kernels: str, training: bool, p: float, features: torch.Tensor) -> bool:
    """Where `fused_input_layer` replaces the plain modules: fused kernels, fp32 CPU training with dropout, no
    autocast, not compiled, and features that need no gradient (the Function returns none for them)."""
    return (
        kernels == "fused"
        and training
        and 0.0 < p < 1.0
        and features.device.type == "cpu"
        and features.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and features.requires_grad)
    )


def fused_input_layer(features: torch.Tensor, norm: nn.LayerNorm, p: float, linear: nn.Linear) -> torch.Tensor:
    """linear(dropout(norm(features))), (B, S, D) -> (B, S, H), where `fused_input_layer_applies`. The mask is
    the one `Dropout(p)` would draw (one seed from torch's generator), 0/1 in the features' dtype."""
    mask, scale = dropout_mask(features, p), 1.0 / (1.0 - p)
    if torch.is_grad_enabled():
        rows = features.reshape(-1, features.shape[-1])
        return _NormDropoutLinear.apply(
            rows, norm.weight, norm.bias, norm.eps, mask.view(rows.shape), scale, linear.weight, linear.bias
        ).view(*features.shape[:-1], -1)
    normed = norm(features)
    return linear(times_mask(normed, mask, scale, out=normed))
