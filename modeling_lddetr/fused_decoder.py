"""The Loop Decoder's fused layers: projections sharing an input as one GEMM, the clips' cross-attention keys and
values built once per forward for every pass, and the attention written out on them.

Written out rather than `F.scaled_dot_product_attention`: with query/key heads wider than value heads, or with
dropout, torch's CPU kernel falls back to a math path that copies and rescales the keys on every call, while
these keys are built once per forward.
"""

import torch

from .fused_attention import attend, fused_linear, key_mask_bias


def fused_decoder_applies(kernels: str) -> bool:
    """Where the fused layers replace the decoder layers' own forward: fused kernels (on every device: they are
    GEMMs and torch's elementwise ops)."""
    return kernels == "fused"


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, S, heads * w) -> (B * heads, S, w), contiguous for bmm
    batch, length, width = x.shape
    x = x.view(batch, length, heads, width // heads).transpose(1, 2)
    return x.reshape(batch * heads, length, width // heads)


def _concat_heads(content: torch.Tensor, position: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, S, d) + (B, S, d) -> (B * heads, S, 2d / heads): content and position side by side inside each head
    batch, length, d = content.shape
    content = content.view(batch, length, heads, d // heads).transpose(1, 2)
    position = position.view(batch, length, heads, d // heads).transpose(1, 2)
    # cat writes (B, heads, S, 2d / heads) contiguously: the reshape is a view
    return torch.cat([content, position], dim=-1).view(batch * heads, length, 2 * d // heads)


def _merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B * heads, S, w) -> (B, S, heads * w)
    _, length, width = x.shape
    return x.view(-1, heads, length, width).transpose(1, 2).flatten(2)


def fused_memory_keys_values(
    decoder, memory: torch.Tensor, memory_mask: torch.Tensor, memory_pos: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Every layer of `decoder` (an `AnchorDecoder`): its cross-attention keys (B*heads, L, 2d/heads) and values
    (B*heads, L, d/heads) of the clips, and the score bias of the clip mask (B*heads, 1, L). They depend on the
    memory only, so they are computed once per forward for all passes; all layers' projections run as two GEMMs."""
    layers, d = decoder.layers, decoder.hidden_size
    heads = layers[0].num_heads
    content_projs = [
        proj for layer in layers for proj in (layer.cross_attn_key_content_proj, layer.cross_attn_value_proj)
    ]
    content = fused_linear(memory, *content_projs)
    positions = fused_linear(memory_pos, *(layer.cross_attn_key_pos_proj for layer in layers)).split(d, dim=-1)
    contents = content.split(d, dim=-1)
    keys_values = []
    for layer, key, value, key_pos in zip(layers, contents[0::2], contents[1::2], positions):
        if layer.is_first:
            key = key + key_pos
        keys_values.append((_concat_heads(key, key_pos, heads), _split_heads(value, heads)))
    return keys_values, key_mask_bias(memory_mask, heads, memory.dtype)


def _attend(
    layer, attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    # `attend` on head-split inputs, then the output projection: query (B*heads, Q, w), key (B*heads, S, w),
    # value (B*heads, S, wv), bias (B*heads, 1, S) -> (B, Q, heads * wv)
    out = attend(query, key, value, bias, attention.dropout, layer.training)
    return attention.out_proj(_merge_heads(out, layer.num_heads))


def fused_decoder_layer(
    layer,
    queries: torch.Tensor,
    memory_keys: torch.Tensor,
    memory_values: torch.Tensor,
    memory_bias: torch.Tensor,
    query_pos: torch.Tensor,
    query_sine_embed: torch.Tensor,
) -> torch.Tensor:
    """`AnchorDecoderLayer.forward` (loop_decoder.py) on the keys of `fused_memory_keys_values`: queries (B, Q, d),
    memory_keys (B*heads, L, 2d/heads), memory_values (B*heads, L, d/heads), memory_bias (B*heads, 1, L),
    query_pos (B, Q, d), query_sine_embed (B, Q, d) -> (B, Q, d)."""
    d, heads = queries.shape[-1], layer.num_heads
    # the projections that read the same input run as one GEMM (weights concatenated, names unchanged)
    content = fused_linear(
        queries, layer.self_attn_query_content_proj, layer.self_attn_key_content_proj, layer.self_attn_value_proj
    )
    position_projs = [layer.self_attn_query_pos_proj, layer.self_attn_key_pos_proj]
    if layer.is_first:
        position_projs.append(layer.cross_attn_query_pos_proj)
    position = fused_linear(query_pos, *position_projs)
    # split, not sliced: the backward of a split is one cat, that of each slice a zero-filled full-size gradient
    content_qk, content_v = content.split([2 * d, d], dim=-1)
    position = position.split([2 * d, d] if layer.is_first else [2 * d], dim=-1)
    q, k = (content_qk + position[0]).split(d, dim=-1)
    q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(content_v, heads)
    attended = _attend(layer, layer.self_attn, q, k, v, None)
    queries = layer.norm1(queries + layer.dropout1(attended))

    q = layer.cross_attn_query_content_proj(queries)
    if layer.is_first:
        q = q + position[1]
    q = _concat_heads(q, layer.cross_attn_query_pos_sine_proj(query_sine_embed), heads)
    attended = _attend(layer, layer.cross_attn, q, memory_keys, memory_values, memory_bias)
    queries = layer.norm2(queries + layer.dropout2(attended))

    ffn = layer.linear2(layer.dropout(layer.activation(layer.linear1(queries))))
    return layer.norm3(queries + layer.dropout3(ffn))
