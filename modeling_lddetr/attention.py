"""Multi-head attention on `F.scaled_dot_product_attention`, batch first."""

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention with an optional key mask.

    With `project_inputs=True` it is the usual attention with query/key/value projections (the official encoders
    use `torch.nn.MultiheadAttention`). With `project_inputs=False` the caller projects queries, keys and values
    itself, as the DAB-style decoder does; queries/keys may then be wider than values (the decoder's
    cross-attention concatenates content and position per head, so query/key heads are twice as wide).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, value_dim: int | None = None, project_inputs: bool = True):
        super().__init__()
        value_dim = value_dim or embed_dim
        if embed_dim % num_heads or value_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} and value_dim {value_dim} must divide by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        if project_inputs:
            self.q_proj = nn.Linear(embed_dim, embed_dim)
            self.k_proj = nn.Linear(embed_dim, embed_dim)
            self.v_proj = nn.Linear(value_dim, value_dim)
        else:
            self.q_proj = self.k_proj = self.v_proj = None
        self.out_proj = nn.Linear(value_dim, value_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S, E) -> (B, heads, S, E / heads)
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, E), key (B, Lk, E), value (B, Lk, Ev), key_mask (B, Lk) bool, True = attend -> (B, Lq, Ev)."""
        if self.q_proj is not None:
            query, key, value = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            self._split_heads(query),
            self._split_heads(key),
            self._split_heads(value),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, heads, Lq, Ev / heads)
        return self.out_proj(out.transpose(1, 2).flatten(2))
