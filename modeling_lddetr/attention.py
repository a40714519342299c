"""Multi-head attention, batch first, with an optional key mask: the attention formula, and the fused kernel of
fused_attention.py where it applies."""

import torch
import torch.nn.functional as F
from torch import nn

from .fused_attention import fused_attention_applies, fused_multihead_attention


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None,
    dropout_p: float,
    training: bool,
) -> torch.Tensor:
    """softmax(query keyᵀ / sqrt(E)) value with dropout on the weights; masked keys get weight 0.

    query (B, H, Lq, E), key (B, H, Lk, E), value (B, H, Lk, Ev), key_mask (B, Lk) bool, True = attend
    -> (B, H, Lq, Ev).
    """
    scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5  # (B, H, Lq, Lk)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = F.dropout(scores.softmax(-1), dropout_p, training)
    return weights @ value


class MultiheadAttention(nn.Module):
    """Multi-head attention with an optional key mask.

    With `project_inputs=True` it is the usual attention with query/key/value projections (the official encoders
    use `torch.nn.MultiheadAttention`). With `project_inputs=False` the caller projects queries, keys and values
    itself; queries/keys may then be wider than values (the Loop Decoder's attentions, whose `out_proj` and
    dropout rate keep the official parameter names).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float, value_dim: int | None = None, project_inputs: bool = True,
        kernels: str = "fused",
    ):
        super().__init__()
        value_dim = value_dim or embed_dim
        if embed_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} and value_dim {value_dim} must divide by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.kernels = kernels
        if project_inputs:
            self.q_proj = nn.Linear(embed_dim, embed_dim)
            self.k_proj = nn.Linear(embed_dim, embed_dim)
            self.v_proj = nn.Linear(value_dim, value_dim)
        else:
            self.q_proj = self.k_proj = self.v_proj = None
        self.out_proj = nn.Linear(value_dim, value_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S, E) -> (B, heads, S, E / heads)
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query (B, Lq, E), key (B, Lk, E), value (B, Lk, Ev), key_mask (B, Lk) bool, True = attend -> (B, Lq, Ev)."""
        if fused_attention_applies(self.kernels):
            return fused_multihead_attention(self, query, key, value, key_mask)
        if self.q_proj is not None:
            query, key, value = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        query, key, value = self.split_heads(query), self.split_heads(key), self.split_heads(value)
        out = eager_attention(query, key, value, key_mask, self.dropout, self.training)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # out: (B, heads, Lq, Ev / heads)
