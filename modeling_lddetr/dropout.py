"""Dropout with a cheaper random mask on the CPU, with the same distribution.

torch's CPU dropout draws one 64-bit random number per element (a uniform double compared with p) and runs
serially; it took about a fifth of a training step. Here each element gets only 8, 16 or 32 random bits, the
fewest with which p is exact (8 for p = 0.5); other values of p get 32 bits, and are then exact to 2**-33.
The bits come from numpy's SFC64 generator, about 4x faster than torch's mt19937, seeded by one draw from
torch's default generator so that `torch.manual_seed` and `torch.random.fork_rng` still govern the masks.
Each element is still dropped independently with probability p and the survivors are scaled by 1 / (1 - p).
On other devices torch's fused dropout is used.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_RANDOM_INTEGER_TYPES = ((8, np.uint8), (16, np.uint16), (32, np.uint32))


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool CPU tensor of `shape`, each element True (kept) with probability 1 - p, independently."""
    for bits, dtype in _RANDOM_INTEGER_TYPES:
        dropped_values = round(p * 2**bits)  # how many of the 2**bits equally likely values drop
        if dropped_values == p * 2**bits:
            break
    numel = math.prod(shape)
    seed = int(torch.randint(2**63 - 1, (), dtype=torch.int64))
    words = np.random.SFC64(seed).random_raw(-(-numel * bits // 64))  # uint64
    values = words.view(dtype)[:numel]  # uniform over the 2**bits values of dtype
    return torch.from_numpy(values >= dropped_values).view(shape)


class _MultiplyByMask(torch.autograd.Function):
    """x * mask * scale, saving only the mask; the gradient goes through the same mask and scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        out = x.mul(mask)
        return out if scale == 1.0 else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        grad = grad.mul(mask)
        return (grad if ctx.scale == 1.0 else grad.mul_(ctx.scale)), None, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0 or p == 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    # A mask of x's dtype keeps the multiplications vectorised (uint8 or bool operands take a slow mixed-type
    # path). In fp32 the mask can hold the scale itself (x * fp32(scale) either way); bf16 would round it.
    scale = 1.0 / (1.0 - p)
    mask = keep_mask(x.shape, p).view(torch.uint8).to(x.dtype)
    if x.dtype == torch.float32:
        return _MultiplyByMask.apply(x, mask.mul_(scale), 1.0)
    return _MultiplyByMask.apply(x, mask, scale)


class Dropout(nn.Dropout):
    """`nn.Dropout` with the cheaper CPU mask of `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
