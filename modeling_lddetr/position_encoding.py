"""Sine position encodings: one for the video clips, one for the decoder's (center, width) anchors."""

import math

import torch
from torch import nn


def _interleave_sin_cos(positions: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """(...,) positions -> (..., num_feats): sin on even, cos on odd features, DETR style."""
    # features 2i and 2i + 1 share the frequency temperature ** (2i / num_feats): one division per pair
    dim_t = temperature ** (torch.arange(0, num_feats, 2, dtype=torch.float32, device=positions.device) / num_feats)
    scaled = positions[..., None] / dim_t  # (..., num_feats / 2)
    return torch.stack((scaled.sin(), scaled.cos()), dim=-1).flatten(-2)


class VideoPositionEmbedding(nn.Module):
    """Normalised 1-D sine positions of the valid clips: the i-th valid clip sits at 2π·i/len.

    The normalisation uses each video's own number of valid clips, so a video's positions do not depend on
    how much padding follows it.
    """

    def __init__(self, hidden_size: int, temperature: float = 10000.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.temperature = temperature

    def forward(self, video_mask: torch.Tensor) -> torch.Tensor:
        # video_mask: (B, L) bool -> (B, L, hidden_size)
        x = video_mask.cumsum(1, dtype=torch.float32)
        x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
        return _interleave_sin_cos(x, self.hidden_size, self.temperature)


def anchor_sine_embedding(anchors: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """(..., 2) sigmoid-space (center, width) anchors -> (..., hidden_size): half the features per coordinate.

    The official code fixes 128 features per coordinate (hidden size 256); this scales with the hidden size.
    """
    # (..., 2, hidden_size / 2) flattened: the center's features, then the width's
    return _interleave_sin_cos(anchors * (2 * math.pi), hidden_size // 2).flatten(-2)
