"""Dropout: `nn.Dropout`, with the fused kernel of fused_dropout.py where it applies."""

import torch
from torch import nn

from .fused_dropout import fused_dropout, fused_dropout_applies


class Dropout(nn.Dropout):
    """`nn.Dropout(p)`; with `kernels="fused"`, the cheaper CPU mask of `fused_dropout` in training."""

    def __init__(self, p: float, kernels: str = "fused"):
        super().__init__(p)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_dropout_applies(self.kernels, x, self.p, self.training):
            return fused_dropout(x, self.p)
        return super().forward(x)
