"""The fused multi-head attention: projections of a shared input as one GEMM, `F.scaled_dot_product_attention`,
and in CPU training with dropout the attention written out, so that the weights get the numpy dropout of
fused_dropout.py rather than SDPA's `bernoulli_` mask. `attend` and `key_mask_bias` also serve the Loop
Decoder's fused layers (fused_decoder.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .fused_dropout import dropout


def fused_attention_applies(kernels: str) -> bool:
    """Where `fused_multihead_attention` replaces the attention formula: fused kernels (on every device: SDPA and
    the shared-input GEMMs are torch's own kernels there)."""
    return kernels == "fused"


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    dropout_p: float,
    training: bool,
) -> torch.Tensor:
    """softmax(query keyᵀ / sqrt(E) + bias) value, written out, with the fused dropout on the weights.

    query (N, Lq, E), key (N, Lk, E), value (N, Lk, Ev) with N = batch * heads; bias (N, 1, Lk) added to the scores
    (-inf = masked key) or None -> (N, Lq, Ev). The scale goes on the queries, the softmax runs in fp32 (fp64 for
    fp64 inputs).
    """
    query = query * query.shape[-1] ** -0.5
    scores = torch.bmm(query, key.transpose(1, 2)) if bias is None else torch.baddbmm(bias, query, key.transpose(1, 2))
    weights = dropout(scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1), dropout_p, training)
    return torch.bmm(weights.to(value.dtype), value)


def key_mask_bias(key_mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """key_mask (B, Lk) bool, True = attend -> the scores' bias for `attend`, (B * heads, 1, Lk): 0 or -inf."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device).masked_fill_(~key_mask, float("-inf"))
    return bias.repeat_interleave(heads, dim=0)[:, None, :]


def attention_with_dropout(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """The math of `F.scaled_dot_product_attention(..., dropout_p)` in training, through `attend`, so that the
    attention weights get the fused CPU dropout (SDPA draws its CPU mask with torch's slow `bernoulli_`).

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


def written_out_attention_applies(query: torch.Tensor, dropout_p: float) -> bool:
    """Where `attention_with_dropout` replaces SDPA inside the fused attention: training with dropout, on the CPU."""
    return dropout_p > 0.0 and query.device.type == "cpu"


def fused_linear(x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
    """`torch.cat([linear(x) for linear in linears], -1)` as one GEMM. The weights are concatenated per call, so
    the parameter names and shapes stay those of separate projections; autograd splits the weight gradient back."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears])
    return F.linear(x, weight, bias)


def _project(attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # The callers pass the very same tensor for shared inputs (`is`, not equal values).
    if query is key:
        query, key = fused_linear(query, attention.q_proj, attention.k_proj).split(
            attention.q_proj.out_features, dim=-1
        )
        return query, key, attention.v_proj(value)
    if key is value:
        key, value = fused_linear(key, attention.k_proj, attention.v_proj).split(attention.k_proj.out_features, dim=-1)
        return attention.q_proj(query), key, value
    return attention.q_proj(query), attention.k_proj(key), attention.v_proj(value)


def fused_multihead_attention(
    attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """`MultiheadAttention.forward` (attention.py) where `fused_attention_applies`: query (B, Lq, E), key (B, Lk, E),
    value (B, Lk, Ev), key_mask (B, Lk) bool, True = attend -> (B, Lq, Ev).

    When queries and keys (self-attention) or keys and values are the same tensor, their projections run as one
    GEMM with the concatenated weights."""
    if attention.q_proj is not None:
        query, key, value = _project(attention, query, key, value)
    query, key, value = attention.split_heads(query), attention.split_heads(key), attention.split_heads(value)
    dropout_p = attention.dropout if attention.training else 0.0
    if written_out_attention_applies(query, dropout_p):
        out = attention_with_dropout(query, key, value, key_mask, dropout_p)
    else:
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p)
    return attention.out_proj(out.transpose(1, 2).flatten(2))  # out: (B, heads, Lq, Ev / heads)
