"""The Loop Decoder (paper §3.4, Eq. 29-31).

An anchor-based DETR decoder (DAB-DETR / QD-DETR style: learned (center, width) anchors, conditional
cross-attention with sine anchor embeddings, width-modulated attention, iterative anchor refinement) that is run
`num_decoder_loops` times with shared weights. Each pass feeds the normalised last-layer output back as the content
queries; the anchors restart from the learned anchors every pass. Only the last pass's per-layer outputs are returned;
gradients flow through every pass.

The official release returns inside its loop, so it always makes exactly one pass;
`num_decoder_loops=1` reproduces it.
"""

import torch
from torch import nn

from .attention import MultiheadAttention, attend, fused_linear, key_mask_bias
from .configuration_lddetr import LDDetrConfig
from .dropout import Dropout
from .position_encoding import anchor_sine_embedding
from .prelu import PReLU
from .span_ops import inverse_sigmoid


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x


class AnchorDecoderLayer(nn.Module):
    """Self-attention between queries, conditional cross-attention to the clips, FFN (post-norm).

    Cross-attention queries/keys concatenate, per head, a content part and a position part (the anchor sine
    embedding for queries, the clip position for keys), so their heads are twice as wide as the value heads.
    The content query also gets the anchor position in the first layer only.
    """

    def __init__(self, config: LDDetrConfig, is_first: bool):
        super().__init__()
        d, heads = config.hidden_size, config.num_attention_heads
        self.is_first = is_first
        self.self_attn_query_content_proj = nn.Linear(d, d)
        self.self_attn_query_pos_proj = nn.Linear(d, d)
        self.self_attn_key_content_proj = nn.Linear(d, d)
        self.self_attn_key_pos_proj = nn.Linear(d, d)
        self.self_attn_value_proj = nn.Linear(d, d)
        self.self_attn = MultiheadAttention(d, heads, config.attention_dropout, project_inputs=False)
        self.norm1 = nn.LayerNorm(d)

        self.cross_attn_query_content_proj = nn.Linear(d, d)
        self.cross_attn_query_pos_proj = nn.Linear(d, d) if is_first else None
        self.cross_attn_key_content_proj = nn.Linear(d, d)
        self.cross_attn_key_pos_proj = nn.Linear(d, d)
        self.cross_attn_value_proj = nn.Linear(d, d)
        self.cross_attn_query_pos_sine_proj = nn.Linear(d, d)
        self.cross_attn = MultiheadAttention(2 * d, heads, config.attention_dropout, value_dim=d, project_inputs=False)
        self.norm2 = nn.LayerNorm(d)

        self.linear1 = nn.Linear(d, config.ffn_dim)
        self.activation = PReLU()
        self.linear2 = nn.Linear(config.ffn_dim, d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(config.activation_dropout)
        self.dropout1 = Dropout(config.hidden_dropout)
        self.dropout2 = Dropout(config.hidden_dropout)
        self.dropout3 = Dropout(config.hidden_dropout)
        self.num_heads = heads

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S, heads * w) -> (B * heads, S, w), contiguous for bmm
        batch, length, width = x.shape
        x = x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)
        return x.reshape(batch * self.num_heads, length, width // self.num_heads)

    def _concat_heads(self, content: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        # (B, S, d) + (B, S, d) -> (B * heads, S, 2d / heads): content and position side by side inside each head
        batch, length, d = content.shape
        content = content.view(batch, length, self.num_heads, d // self.num_heads).transpose(1, 2)
        position = position.view(batch, length, self.num_heads, d // self.num_heads).transpose(1, 2)
        # cat writes (B, heads, S, 2d / heads) contiguously: the reshape is a view
        return torch.cat([content, position], dim=-1).view(batch * self.num_heads, length, 2 * d // self.num_heads)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B * heads, S, w) -> (B, S, heads * w)
        _, length, width = x.shape
        return x.view(-1, self.num_heads, length, width).transpose(1, 2).flatten(2)

    def _attend(
        self, attention: MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """`attend` on head-split inputs, then the output projection: query (B*heads, Q, w), key (B*heads, S, w),
        value (B*heads, S, wv), bias (B*heads, 1, S) -> (B, Q, heads * wv).

        Written out rather than `F.scaled_dot_product_attention`: with query/key heads wider than value heads, or
        with dropout, torch's CPU kernel falls back to a math path that copies and rescales the keys on every call,
        while these keys are built once per forward."""
        out = attend(query, key, value, bias, attention.dropout, self.training)
        return attention.out_proj(self._merge_heads(out))

    def forward(
        self,
        queries: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        memory_bias: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine_embed: torch.Tensor,
    ) -> torch.Tensor:
        """queries (B, Q, d), memory_keys (B*heads, L, 2d/heads), memory_values (B*heads, L, d/heads) and
        memory_bias (B*heads, 1, L) from `AnchorDecoder.memory_keys_values`, query_pos (B, Q, d), query_sine_embed
        (B, Q, d) -> (B, Q, d)."""
        d = queries.shape[-1]
        # the projections that read the same input run as one GEMM (weights concatenated, names unchanged)
        content = fused_linear(queries, self.self_attn_query_content_proj, self.self_attn_key_content_proj, self.self_attn_value_proj)
        position_projs = [self.self_attn_query_pos_proj, self.self_attn_key_pos_proj]
        if self.is_first:
            position_projs.append(self.cross_attn_query_pos_proj)
        position = fused_linear(query_pos, *position_projs)
        # split, not sliced: the backward of a split is one cat, that of each slice a zero-filled full-size gradient
        content_qk, content_v = content.split([2 * d, d], dim=-1)
        position = position.split([2 * d, d] if self.is_first else [2 * d], dim=-1)
        q, k = (content_qk + position[0]).split(d, dim=-1)
        attended = self._attend(self.self_attn, self._split_heads(q), self._split_heads(k), self._split_heads(content_v), None)
        queries = self.norm1(queries + self.dropout1(attended))

        q = self.cross_attn_query_content_proj(queries)
        if self.is_first:
            q = q + position[1]
        q = self._concat_heads(q, self.cross_attn_query_pos_sine_proj(query_sine_embed))
        attended = self._attend(self.cross_attn, q, memory_keys, memory_values, memory_bias)
        queries = self.norm2(queries + self.dropout2(attended))

        ffn = self.linear2(self.dropout(self.activation.forward_(self.linear1(queries))))
        return self.norm3(queries + self.dropout3(ffn))


class AnchorDecoder(nn.Module):
    """One pass of the decoder: `num_decoder_layers` layers refining (center, width) anchors."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.hidden_size = d
        self.layers = nn.ModuleList(AnchorDecoderLayer(config, is_first=(i == 0)) for i in range(config.num_decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.query_scale = MLP(d, d, d, 2)
        self.anchor_position_head = MLP(d, d, d, 2)
        self.anchor_offset_head = MLP(d, d, 2, 3)  # shared by all layers
        self.anchor_width_head = MLP(d, d, 1, 2)

    def memory_keys_values(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, memory_pos: torch.Tensor
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Every layer's cross-attention keys (B*heads, L, 2d/heads) and values (B*heads, L, d/heads) of the clips,
        and the score bias of the clip mask (B*heads, 1, L). They depend on the memory only, so the Loop Decoder
        computes them once per forward for all its passes; all layers' projections run as two GEMMs."""
        layers, d = self.layers, self.hidden_size
        content = fused_linear(memory, *(proj for layer in layers for proj in (layer.cross_attn_key_content_proj, layer.cross_attn_value_proj)))
        positions = fused_linear(memory_pos, *(layer.cross_attn_key_pos_proj for layer in layers)).split(d, dim=-1)
        contents = content.split(d, dim=-1)
        keys_values = []
        for layer, key, value, key_pos in zip(layers, contents[0::2], contents[1::2], positions):
            if layer.is_first:
                key = key + key_pos
            keys_values.append((layer._concat_heads(key, key_pos), layer._split_heads(value)))
        return keys_values, key_mask_bias(memory_mask, self.layers[0].num_heads, memory.dtype)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        memory_pos: torch.Tensor,
        anchors_unsigmoid: torch.Tensor,
        memory_keys_values: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Q, d), memory (B, L, d), memory_mask (B, L) bool, memory_pos (B, L, d), anchors_unsigmoid
        (B, Q, 2); memory_keys_values: `self.memory_keys_values(memory, memory_mask, memory_pos)` if already
        computed -> hidden_states (layers, B, Q, d) normalised, reference_anchors (layers, B, Q, 2): the anchor
        each layer got."""
        if memory_keys_values is None:
            memory_keys_values = self.memory_keys_values(memory, memory_mask, memory_pos)
        keys_values, memory_bias = memory_keys_values
        anchors = anchors_unsigmoid.sigmoid()
        hidden_states, reference_anchors = [], [anchors]
        for i, (layer, (memory_keys, memory_values)) in enumerate(zip(self.layers, keys_values)):
            sine_embed = anchor_sine_embedding(anchors, self.hidden_size)  # (B, Q, d)
            query_pos = self.anchor_position_head(sine_embed)
            if i > 0:
                sine_embed = sine_embed * self.query_scale(queries)
            # width-modulated attention: scale by predicted width / anchor width
            width_ratio = self.anchor_width_head(queries).sigmoid()[..., 0] / anchors[..., 1]
            sine_embed = sine_embed * width_ratio[..., None]
            queries = layer(queries, memory_keys, memory_values, memory_bias, query_pos, sine_embed)

            new_anchors = (self.anchor_offset_head(queries) + inverse_sigmoid(anchors)).sigmoid()
            if i < len(self.layers) - 1:
                reference_anchors.append(new_anchors)
            anchors = new_anchors.detach()
            hidden_states.append(self.norm(queries))
        return torch.stack(hidden_states), torch.stack(reference_anchors)


class LoopDecoder(nn.Module):
    """The learned anchors and the zero initial queries, run through `num_decoder_loops` passes of the decoder."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        self.anchor_embed = nn.Embedding(config.num_queries, 2)  # learned (center, width) anchors, unsigmoided
        self.num_loops = config.num_decoder_loops
        self.decoder = AnchorDecoder(config)

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, memory_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, L, d), memory_mask (B, L) bool, memory_pos (B, L, d) -> hidden_states (layers, B, Q, d),
        reference_anchors (layers, B, Q, 2), those of the last pass."""
        batch = memory.shape[0]
        queries = memory.new_zeros(batch, self.anchor_embed.num_embeddings, memory.shape[-1])  # (B, Q, d)
        anchors_unsigmoid = self.anchor_embed.weight[None].expand(batch, -1, -1)  # (B, Q, 2)
        memory_keys_values = self.decoder.memory_keys_values(memory, memory_mask, memory_pos)  # the same for every pass
        for _ in range(self.num_loops):
            hidden_states, reference_anchors = self.decoder(
                queries, memory, memory_mask, memory_pos, anchors_unsigmoid, memory_keys_values=memory_keys_values
            )
            queries = hidden_states[-1]
        return hidden_states, reference_anchors
