"""PReLU: `nn.PReLU`, with the fused kernels of fused_prelu.py where they apply."""

import torch
from torch import nn

from .fused_prelu import fused_prelu, fused_prelu_applies, in_place_prelu, in_place_prelu_applies


class PReLU(nn.PReLU):
    """`nn.PReLU` (same parameter, and an `nn.PReLU` for the initialisation). `inplace=True`, as `nn.ReLU`'s, lets
    the fused kernels write the output into the input when autograd is off."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, inplace: bool = False, kernels: str = "fused"):
        super().__init__(num_parameters, init)
        self.inplace = inplace
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and in_place_prelu_applies(self.kernels, x, self.weight):
            return in_place_prelu(x, self.weight)
        if fused_prelu_applies(self.kernels, x):
            return fused_prelu(x, self.weight)
        return super().forward(x)
