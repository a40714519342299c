"""Unimodal encoders: project clip or token features to the hidden size (paper §3.1, "two-layer MLP")."""

import torch
from torch import nn

from .dropout import Dropout
from .fused_input_layer import fused_input_layer, fused_input_layer_applies


class UnimodalEncoder(nn.Module):
    """LayerNorm -> Dropout -> Linear -> ReLU -> LayerNorm -> Dropout -> Linear, as the official encoder."""

    def __init__(self, input_dim: int, hidden_size: int, dropout: float, kernels: str = "fused"):
        super().__init__()
        self.kernels = kernels
        self.norm1 = nn.LayerNorm(input_dim)
        self.dropout1 = Dropout(dropout, kernels)
        self.linear1 = nn.Linear(input_dim, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dropout2 = Dropout(dropout, kernels)
        self.linear2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (B, S, input_dim) -> (B, S, hidden_size)
        if fused_input_layer_applies(self.kernels, self.training, self.dropout1.p, features):
            x = fused_input_layer(features, self.norm1, self.dropout1.p, self.linear1)
        else:
            x = self.linear1(self.dropout1(self.norm1(features)))
        return self.linear2(self.dropout2(self.norm2(x.relu())))
