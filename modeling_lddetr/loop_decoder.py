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

from .attention import MultiheadAttention
from .configuration_lddetr import LDDetrConfig
from .dropout import Dropout
from .fused_decoder import fused_decoder_applies, fused_decoder_layer, fused_memory_keys_values
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


def concat_per_head(content: torch.Tensor, position: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, d) content and position -> (B, S, 2d): each head's content features, then its position features."""
    batch, length, d = content.shape
    parts = [x.view(batch, length, heads, d // heads) for x in (content, position)]
    return torch.cat(parts, dim=-1).view(batch, length, 2 * d)


class AnchorDecoderLayer(nn.Module):
    """Self-attention between queries, conditional cross-attention to the clips, FFN (post-norm).

    Cross-attention queries/keys concatenate, per head, a content part and a position part (the anchor sine
    embedding for queries, the clip position for keys), so their heads are twice as wide as the value heads.
    The content query also gets the anchor position in the first layer only.
    """

    def __init__(self, config: LDDetrConfig, is_first: bool):
        super().__init__()
        d, heads, kernels = config.hidden_size, config.num_attention_heads, config.kernels
        self.is_first = is_first
        self.self_attn_query_content_proj = nn.Linear(d, d)
        self.self_attn_query_pos_proj = nn.Linear(d, d)
        self.self_attn_key_content_proj = nn.Linear(d, d)
        self.self_attn_key_pos_proj = nn.Linear(d, d)
        self.self_attn_value_proj = nn.Linear(d, d)
        self.self_attn = MultiheadAttention(d, heads, config.attention_dropout, project_inputs=False, kernels=kernels)
        self.norm1 = nn.LayerNorm(d)

        self.cross_attn_query_content_proj = nn.Linear(d, d)
        self.cross_attn_query_pos_proj = nn.Linear(d, d) if is_first else None
        self.cross_attn_key_content_proj = nn.Linear(d, d)
        self.cross_attn_key_pos_proj = nn.Linear(d, d)
        self.cross_attn_value_proj = nn.Linear(d, d)
        self.cross_attn_query_pos_sine_proj = nn.Linear(d, d)
        self.cross_attn = MultiheadAttention(
            2 * d, heads, config.attention_dropout, value_dim=d, project_inputs=False, kernels=kernels
        )
        self.norm2 = nn.LayerNorm(d)

        self.linear1 = nn.Linear(d, config.ffn_dim)
        self.activation = PReLU(inplace=True, kernels=kernels)  # linear1's output is the activation's alone
        self.linear2 = nn.Linear(config.ffn_dim, d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(config.activation_dropout, kernels)
        self.dropout1 = Dropout(config.hidden_dropout, kernels)
        self.dropout2 = Dropout(config.hidden_dropout, kernels)
        self.dropout3 = Dropout(config.hidden_dropout, kernels)
        self.num_heads = heads

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        memory_pos: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine_embed: torch.Tensor,
    ) -> torch.Tensor:
        """queries (B, Q, d), memory (B, L, d), memory_mask (B, L) bool, memory_pos (B, L, d), query_pos (B, Q, d),
        query_sine_embed (B, Q, d) -> (B, Q, d). (fused_decoder.py computes the same on keys built once.)"""
        q = self.self_attn_query_content_proj(queries) + self.self_attn_query_pos_proj(query_pos)
        k = self.self_attn_key_content_proj(queries) + self.self_attn_key_pos_proj(query_pos)
        attended = self.self_attn(q, k, self.self_attn_value_proj(queries))
        queries = self.norm1(queries + self.dropout1(attended))

        q = self.cross_attn_query_content_proj(queries)
        k = self.cross_attn_key_content_proj(memory)
        k_pos = self.cross_attn_key_pos_proj(memory_pos)
        if self.is_first:
            q = q + self.cross_attn_query_pos_proj(query_pos)
            k = k + k_pos
        q = concat_per_head(q, self.cross_attn_query_pos_sine_proj(query_sine_embed), self.num_heads)
        k = concat_per_head(k, k_pos, self.num_heads)
        attended = self.cross_attn(q, k, self.cross_attn_value_proj(memory), key_mask=memory_mask)
        queries = self.norm2(queries + self.dropout2(attended))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(queries))))
        return self.norm3(queries + self.dropout3(ffn))


class AnchorDecoder(nn.Module):
    """One pass of the decoder: `num_decoder_layers` layers refining (center, width) anchors."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.hidden_size = d
        self.kernels = config.kernels
        self.layers = nn.ModuleList(
            AnchorDecoderLayer(config, is_first=(i == 0)) for i in range(config.num_decoder_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.query_scale = MLP(d, d, d, 2)
        self.anchor_position_head = MLP(d, d, d, 2)
        self.anchor_offset_head = MLP(d, d, 2, 3)  # shared by all layers
        self.anchor_width_head = MLP(d, d, 1, 2)

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
        (B, Q, 2); memory_keys_values: the fused layers' keys (fused_decoder.fused_memory_keys_values), None for the
        layers' own forward -> hidden_states (layers, B, Q, d) normalised, reference_anchors (layers, B, Q, 2): the
        anchor each layer got."""
        anchors = anchors_unsigmoid.sigmoid()
        hidden_states, reference_anchors = [], [anchors]
        for i, layer in enumerate(self.layers):
            sine_embed = anchor_sine_embedding(anchors, self.hidden_size)  # (B, Q, d)
            query_pos = self.anchor_position_head(sine_embed)
            if i > 0:
                sine_embed = sine_embed * self.query_scale(queries)
            # width-modulated attention: scale by predicted width / anchor width
            width_ratio = self.anchor_width_head(queries).sigmoid()[..., 0] / anchors[..., 1]
            sine_embed = sine_embed * width_ratio[..., None]
            if memory_keys_values is None:
                queries = layer(queries, memory, memory_mask, memory_pos, query_pos, sine_embed)
            else:
                keys_values, memory_bias = memory_keys_values
                queries = fused_decoder_layer(layer, queries, *keys_values[i], memory_bias, query_pos, sine_embed)

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

    def forward(
        self, memory: torch.Tensor, memory_mask: torch.Tensor, memory_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, L, d), memory_mask (B, L) bool, memory_pos (B, L, d) -> hidden_states (layers, B, Q, d),
        reference_anchors (layers, B, Q, 2), those of the last pass."""
        batch = memory.shape[0]
        queries = memory.new_zeros(batch, self.anchor_embed.num_embeddings, memory.shape[-1])  # (B, Q, d)
        anchors_unsigmoid = self.anchor_embed.weight[None].expand(batch, -1, -1)  # (B, Q, 2)
        memory_keys_values = None
        if fused_decoder_applies(self.decoder.kernels):  # the fused layers' clip keys, the same for every pass
            memory_keys_values = fused_memory_keys_values(self.decoder, memory, memory_mask, memory_pos)
        for _ in range(self.num_loops):
            hidden_states, reference_anchors = self.decoder(
                queries, memory, memory_mask, memory_pos, anchors_unsigmoid, memory_keys_values=memory_keys_values
            )
            queries = hidden_states[-1]
        return hidden_states, reference_anchors
