"""The fused dropout: the same distribution as torch's, with a cheaper random mask on the CPU.

torch's CPU dropout draws one 64-bit random number per element (a uniform double compared with p) and runs
serially, the dearest elementwise op of a CPU training step. Here, at p = 0.5, each element gets one random bit.
Otherwise it gets 8 random bits, uniform over 0..255, compared with 256 p: below its integer part the element
drops, above it stays. Only the elements that land on the integer part (1 in 256) draw 32 more bits, which drop
them with probability frac(256 p). So P(drop) is p for every p with at most 40 binary digits (0.5, 0.25,
2**-10), and within 2**-41 of p otherwise (0.1).
The bits come from numpy's SFC64 generator, cheaper than torch's mt19937, seeded by one draw from torch's default
generator so that `torch.manual_seed` and `torch.random.fork_rng` still govern the masks.
Each element is still dropped independently and the survivors are scaled by 1 / (1 - p).
Under torch.compile the numpy mask is an opaque op (`lddetr::keep_mask_like`), so that the graph does not break
at the seed and the compiler fuses the product. Where it does not apply (`fused_dropout_applies`) torch's
dropout runs.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _draw_seed() -> torch.Tensor:
    """A mask's numpy seed, from torch's default generator (so that torch's seeding governs the masks)."""
    return torch.randint(2**63 - 1, (), dtype=torch.int64)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool CPU tensor of `shape`, each element True (kept) with probability 1 - p, independently."""
    return _keep_mask_from_seed(shape, p, int(_draw_seed()))


def _keep_mask_from_seed(shape: torch.Size, p: float, seed: int) -> torch.Tensor:
    numel = math.prod(shape)
    generator = np.random.SFC64(seed)
    if p == 0.5:  # (the unimodal encoders' rate) one random bit per element is exact, and 8x fewer to draw
        bits = np.unpackbits(generator.random_raw(-(-numel // 64)).view(np.uint8))[:numel]
        return torch.from_numpy(bits.view(np.bool_)).view(shape)
    first = generator.random_raw(-(-numel // 8)).view(np.uint8)[:numel]  # uniform over 0..255
    boundary = int(p * 256)  # an int: a float would make numpy compare the bytes as float64
    keep = first >= boundary  # the elements on the boundary are kept unless their second draw drops them
    threshold = round((p * 256 - boundary) * 2**32)  # of the 2**32 values of the second draw, those below drop
    if threshold:
        on_boundary = np.flatnonzero(first == boundary)
        second = generator.random_raw(-(-on_boundary.size // 2)).view(np.uint32)[: on_boundary.size]
        keep[on_boundary] = second >= threshold
    return torch.from_numpy(keep).view(shape)


@torch.library.custom_op("lddetr::keep_mask_like", mutates_args=())
def _keep_mask_like(like: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """`keep_mask` of like's shape from a seed tensor, as an op that torch.compile keeps opaque: a compiled graph
    draws the numpy mask without breaking at the seed's host read."""
    return _keep_mask_from_seed(like.shape, p, int(seed))


@_keep_mask_like.register_fake
def _(like: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty(like.shape, dtype=torch.bool, device=like.device)


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """`keep_mask` of x's shape as 0/1 in x's dtype, which keeps the multiplication by it vectorised (uint8 or bool
    operands take a slow mixed-type path)."""
    return keep_mask(x.shape, p).view(torch.uint8).to(x.dtype)


def times_mask(x: torch.Tensor, mask: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """x * mask * scale in one pass: addcmul onto a zero scalar (into `out` if given, which may be x). With mask in
    {0, 1}, each survivor is x * scale rounded once in x's dtype, as torch's dropout gives, and no scaled mask is
    made."""
    return torch.addcmul(x.new_zeros(()), x, mask, value=scale, out=out)


class _MultiplyByMask(torch.autograd.Function):
    """x * mask * scale, saving only the mask; the gradient goes through the same mask and scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return times_mask(x, mask, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return times_mask(grad, mask, ctx.scale), None, None


def fused_dropout_applies(kernels: str, x: torch.Tensor, p: float, training: bool) -> bool:
    """Where this dropout replaces torch's: fused kernels, training with 0 < p < 1, on the CPU."""
    return kernels == "fused" and training and 0.0 < p < 1.0 and x.device.type == "cpu"


def fused_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of x with the numpy mask, where `fused_dropout_applies`."""
    scale = 1.0 / (1.0 - p)
    if torch.compiler.is_compiling():
        # the seed drawn inside the graph, the product left to the compiler to fuse
        mask = torch.ops.lddetr.keep_mask_like(x, _draw_seed(), p)
        return torch.where(mask, x * scale, 0.0)
    return _MultiplyByMask.apply(x, dropout_mask(x, p), scale)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the numpy mask where it applies (for the fused kernels' own dropouts)."""
    if not fused_dropout_applies("fused", x, p, training):
        return F.dropout(x, p, training)
    return fused_dropout(x, p)
