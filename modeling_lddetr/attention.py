"""Multi-head attention on `F.scaled_dot_product_attention`, batch first.

On the CPU in training with attention dropout it is written out instead, so that the attention weights get
this package's cheaper dropout (see dropout.py) rather than SDPA's `bernoulli_` mask.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import dropout


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None, dropout_p: float, training: bool) -> torch.Tensor:
    """softmax(query keyᵀ / sqrt(E) + bias) value, written out, with this package's dropout on the weights.

    query (N, Lq, E), key (N, Lk, E), value (N, Lk, Ev) with N = batch * heads; bias (N, 1, Lk) added to the scores
    (-inf = masked key) or None -> (N, Lq, Ev). The scale goes on the queries, the softmax runs in fp32.
    """
    query = query * query.shape[-1] ** -0.5
    scores = torch.bmm(query, key.transpose(1, 2)) if bias is None else torch.baddbmm(bias, query, key.transpose(1, 2))
    weights = dropout(scores.float().softmax(-1), dropout_p, training)
    return torch.bmm(weights.to(value.dtype), value)


def key_mask_bias(key_mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """key_mask (B, Lk) bool, True = attend -> the scores' bias for `attend`, (B * heads, 1, Lk): 0 or -inf."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill_(~key_mask, float("-inf"))
    return bias.repeat_interleave(heads, dim=0)[:, None, :]


def attention_with_dropout(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """The math of `F.scaled_dot_product_attention(..., dropout_p)` in training, through `attend`, so that the
    attention weights get this package's cheaper CPU dropout (SDPA draws its CPU mask with torch's slow
    `bernoulli_`).

    query (B, H, Lq, E), key (B, H, Lk, E), value (B, H, Lk, Ev), key_mask (B, Lk) bool, True = attend
    -> (B, H, Lq, Ev).
    """
    batch, heads, query_length, width = query.shape
    key_length, value_width = key.shape[2], value.shape[3]
    bias = None if key_mask is None else key_mask_bias(key_mask, heads, query.dtype)
    out = attend(
        query.reshape(batch * heads, query_length, width),
        key.reshape(batch * heads, key_length, width),
        value.reshape(batch * heads, key_length, value_width),
        bias,
        dropout_p,
        training=True,
    )
    return out.view(batch, heads, query_length, value_width)


def fused_linear(x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
    """`torch.cat([linear(x) for linear in linears], -1)` as one GEMM. The weights are concatenated per call, so
    the parameter names and shapes stay those of separate projections; autograd splits the weight gradient back."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears])
    return F.linear(x, weight, bias)


class MultiheadAttention(nn.Module):
    """Multi-head attention with an optional key mask.

    With `project_inputs=True` it is the usual attention with query/key/value projections (the official encoders
    use `torch.nn.MultiheadAttention`). With `project_inputs=False` the caller projects queries, keys and values
    itself; queries/keys may then be wider than values. The Loop Decoder builds its attentions that way but computes
    them itself (loop_decoder.py), using only `out_proj` and the dropout rate of this module, which keep the
    official parameter names.
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

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The callers pass the very same tensor for shared inputs (`is`, not equal values). The weights are
        # concatenated per call so that parameter names and shapes stay those of separate projections.
        if query is key:
            return (*fused_linear(query, self.q_proj, self.k_proj).split(self.q_proj.out_features, dim=-1), self.v_proj(value))
        if key is value:
            return (self.q_proj(query), *fused_linear(key, self.k_proj, self.v_proj).split(self.k_proj.out_features, dim=-1))
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S, E) -> (B, heads, S, E / heads)
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, E), key (B, Lk, E), value (B, Lk, Ev), key_mask (B, Lk) bool, True = attend -> (B, Lq, Ev).

        When queries and keys (self-attention) or keys and values are the same tensor, their projections run
        as one GEMM with the concatenated weights."""
        if self.q_proj is not None:
            query, key, value = self._project(query, key, value)
        query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(value)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p > 0.0 and query.device.type == "cpu":
            out = attention_with_dropout(query, key, value, key_mask, dropout_p)
        else:
            attn_mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # out: (B, heads, Lq, Ev / heads)
