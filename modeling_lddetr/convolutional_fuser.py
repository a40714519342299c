"""Convolutional Fuser (paper §3.3): V2T extractor -> T2V encoder -> encoder 1 -> convolutional blocks -> encoder 2.

Everything is batch first and channel last, the convolutional blocks too: video (B, L, d), text (B, N, d), masks
(B, L) / (B, N) bool with True = valid.
Padded clips are kept out of attention keys, convolutions and BatchNorm statistics, so a video's fused features
do not depend on the rest of its batch (the official code lets padding leak in: docs/official_code_differences.md).
"""

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from .attention import MultiheadAttention
from .configuration_lddetr import LDDetrConfig
from .dropout import Dropout
from .fused_convolution import fused_batch_norm_applies, fused_convolution_applies, masked_batch_norm, masked_conv1d
from .prelu import PReLU


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    # masked_fill with the dtype's minimum, not "+ (1 - mask) * -1e30", which overflows to NaN in fp16.
    return scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim)


class V2TExtractor(nn.Module):
    """Context-query attention (VSLNet) from video clips to text tokens, then a text-pooled feature per clip."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.clip_score_weight = nn.Parameter(torch.empty(d, 1))
        self.token_score_weight = nn.Parameter(torch.empty(d, 1))
        self.clip_token_score_weight = nn.Parameter(torch.empty(1, 1, d))
        self.pool_weight = nn.Parameter(torch.empty(d, 1))
        # zeros until LDDetrPreTrainedModel._init_weights draws their xavier values: a fuser built on its own (a
        # test, another model) would otherwise compute with whatever torch.empty returned, NaN included. Zeros draw
        # no random numbers, so a seed builds the same model as before this line existed.
        for weight in (self.clip_score_weight, self.token_score_weight, self.clip_token_score_weight, self.pool_weight):
            nn.init.zeros_(weight)
        self.context_query_proj = nn.Linear(4 * d, d)
        self.pool_proj = nn.Linear(2 * d, d)
        self.dropout = Dropout(config.context_query_dropout, config.kernels)

    def forward(
        self, video: torch.Tensor, text: torch.Tensor, video_mask: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        context, query = self.dropout(video), self.dropout(text)  # dropout only inside the trilinear score
        # trilinear similarity of clip c and token q: c·w_clip + q·w_token + (c ∘ q)·w_clip_token
        # the weight in the activations' dtype: an fp32 weight would turn a bf16 (B, L, d) product back to fp32
        scores = (
            (context @ self.clip_score_weight)
            + (query @ self.token_score_weight).transpose(1, 2)
            + (context * self.clip_token_score_weight.to(context.dtype)) @ query.transpose(1, 2)
        )  # (B, L, N)
        clip_to_token = _masked_softmax(scores, text_mask[:, None, :], dim=2)  # (B, L, N)
        token_to_clip = _masked_softmax(scores, video_mask[:, :, None], dim=1)  # (B, L, N)
        c2q = clip_to_token @ text  # (B, L, d)
        q2c = clip_to_token @ (token_to_clip.transpose(1, 2) @ video)  # (B, L, d), through (B, N, d) not (B, L, L)
        fused = self.context_query_proj(torch.cat([video, c2q, video * c2q, video * q2c], dim=-1))  # (B, L, d)

        pool_scores = _masked_softmax(text @ self.pool_weight, text_mask[:, :, None], dim=1)  # (B, N, 1)
        pooled_text = (text.transpose(1, 2) @ pool_scores).transpose(1, 2)  # (B, 1, d)
        # pool_proj of [fused | pooled text] without repeating the pooled text over the L clips: its half of the
        # product is computed once per video and broadcast
        fused_weight, text_weight = self.pool_proj.weight.split(fused.shape[-1], dim=1)
        return (F.linear(fused, fused_weight) + F.linear(pooled_text, text_weight, self.pool_proj.bias)).relu()


class FeedForward(nn.Module):
    def __init__(self, config: LDDetrConfig):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_size, config.ffn_dim)
        self.activation = PReLU(inplace=True, kernels=config.kernels)  # linear1's output is the activation's alone
        self.dropout = Dropout(config.activation_dropout, config.kernels)
        self.linear2 = nn.Linear(config.ffn_dim, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class _AttentionFeedForwardLayer(nn.Module):
    """An attention block and a feed-forward block with two norms and dropouts; subclasses wire them."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        self.attention = MultiheadAttention(
            config.hidden_size, config.num_attention_heads, config.attention_dropout, kernels=config.kernels
        )
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.ffn = FeedForward(config)
        self.dropout1 = Dropout(config.hidden_dropout, config.kernels)
        self.dropout2 = Dropout(config.hidden_dropout, config.kernels)


class T2VEncoderLayer(_AttentionFeedForwardLayer):
    """Clips attend to text tokens (queries: clips + positions; keys/values: tokens).

    As the official layer (inherited from QD-DETR), the FFN residual is added to the un-normalised attention
    output: out = LN2(x + FFN(LN1(x))) with x = video + attention.
    """

    def forward(
        self, video: torch.Tensor, text: torch.Tensor, video_pos: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        x = video + self.dropout1(self.attention(video + video_pos, text, text, key_mask=text_mask))
        return self.norm2(x + self.dropout2(self.ffn(self.norm1(x))))


class EncoderLayer(_AttentionFeedForwardLayer):
    """Post-norm DETR encoder layer over the clips."""

    def forward(self, video: torch.Tensor, video_pos: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        query = video + video_pos
        x = self.norm1(video + self.dropout1(self.attention(query, query, video, key_mask=video_mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


def eager_masked_batch_norm(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, sync: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm of x (M, C) with statistics from the rows where mask (M,) is 1, summed across
    processes when `sync` -> output (M, C) in fp32 (fp64 for fp64 inputs), batch mean and unbiased variance (C,)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    valid = mask.to(x.dtype)[:, None]
    sums = torch.cat([(x * valid).sum(0), valid.sum(0)])  # (C + 1,): per channel, then the number of valid rows
    if sync:
        sums = dist_nn.all_reduce(sums)
    mean, count = sums[:-1] / sums[-1], sums[-1]
    squares = ((x - mean).square() * valid).sum(0)
    if sync:
        squares = dist_nn.all_reduce(squares)
    var = squares / count
    out = (x - mean) * torch.rsqrt(var + eps) * weight + bias
    return out, mean.detach(), (var * count / (count - 1).clamp(min=1)).detach()


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over channel-last (B, L, C) inputs whose training statistics come from the valid clips only,
    optionally synchronised across processes. Same parameters and buffers as `nn.BatchNorm1d`; identical to it
    (on the transposed input) when nothing is padded."""

    def __init__(self, num_features: int, sync: bool = False, kernels: str = "fused"):
        super().__init__(num_features)
        self.sync = sync
        self.kernels = kernels

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, L, C); mask: (B, L, 1), 1 = valid
        rows = x.reshape(-1, x.shape[-1])
        if not self.training:
            out = F.batch_norm(rows, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return out.view(x.shape)
        sync = self.sync and dist.is_available() and dist.is_initialized()
        batch_norm = (
            masked_batch_norm if fused_batch_norm_applies(self.kernels, self.training) else eager_masked_batch_norm
        )
        out, mean, unbiased_var = batch_norm(rows, mask.reshape(-1), self.weight, self.bias, self.eps, sync)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), self.momentum)
        return out.view(x.shape)


class MaskedConv1d(nn.Conv1d):
    """Conv1d (kernel 3, padding 1) over channel-last (B, L, C) inputs whose padded clips are zeroed first, so
    that a video's last clips see the same zero padding as if the sequence ended there. The last row of every
    video must be padding (for the fused kernel, masked_conv1d). Same parameters as
    `nn.Conv1d(channels, channels, 3, padding=1)`."""

    def __init__(self, channels: int, kernels: str = "fused"):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.kernels = kernels

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, L, C); mask: (B, L, 1)
        if fused_convolution_applies(self.kernels):
            return masked_conv1d(x, mask, self.weight, self.bias)
        return super().forward((x * mask).transpose(1, 2)).transpose(1, 2)


class ConvolutionalBlock(nn.Module):
    """x <- ReLU(BN2(Conv2(ReLU(BN1(Conv1(x))))) + x), channel-last, padded clips kept out of the convolutions
    and of the BatchNorm statistics. The last row of every video must be padding; its output is not meaningful."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.conv1 = MaskedConv1d(d, config.kernels)
        self.bn1 = MaskedBatchNorm1d(d, sync=config.sync_batchnorm, kernels=config.kernels)
        self.conv2 = MaskedConv1d(d, config.kernels)
        self.bn2 = MaskedBatchNorm1d(d, sync=config.sync_batchnorm, kernels=config.kernels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d); mask: (B, L, 1) float
        h = self.bn1(self.conv1(x, mask), mask).relu()
        h = self.bn2(self.conv2(h, mask), mask)
        return (h + x).relu()


class ConvolutionalFuser(nn.Module):
    def __init__(self, config: LDDetrConfig):
        super().__init__()
        self.v2t_extractor = V2TExtractor(config)
        self.t2v_encoder = nn.ModuleList(T2VEncoderLayer(config) for _ in range(config.num_t2v_encoder_layers))
        self.encoder1 = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder1_layers))
        self.convolutional_blocks = nn.ModuleList(
            ConvolutionalBlock(config) for _ in range(config.num_convolutional_blocks)
        )
        self.encoder2 = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder2_layers))

    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        video_mask: torch.Tensor,
        text_mask: torch.Tensor,
        video_pos: torch.Tensor,
    ) -> torch.Tensor:
        """video (B, L, d), text (B, N, d), masks bool, video_pos (B, L, d) -> memory (B, L, d)."""
        x = self.v2t_extractor(video, text, video_mask, text_mask)
        for layer in self.t2v_encoder:
            x = layer(x, text, video_pos, text_mask)
        for layer in self.encoder1:
            x = layer(x, video_pos, video_mask)
        if len(self.convolutional_blocks):
            x = self._convolutional_blocks(x, video_mask)
        for layer in self.encoder2:
            x = layer(x, video_pos, video_mask)
        return x

    def _convolutional_blocks(self, x: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d) in x's dtype, computed in fp32 (fp64 for fp64) with autocast off. BatchNorm
        subtracts means that can be several standard deviations (up to 7 in a briefly trained tiny model), which
        magnifies the bf16 rounding of the convolutions' outputs as many times: on tests/test_video_precision.py's
        model this cut the saliency's largest bf16 error by a third (Spearman with fp32 0.989 -> 0.992). The
        blocks are a small share of the FLOPs."""
        with torch.autocast(x.device.type, enabled=False):
            # one padded row after every video: the convolutions run over the flattened rows, and it keeps each
            # video's taps inside the video
            dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
            conv_mask = F.pad(video_mask.to(dtype), (0, 1))[..., None]  # (B, L + 1, 1)
            h = F.pad(x.to(dtype), (0, 0, 0, 1))  # (B, L + 1, d)
            for block in self.convolutional_blocks:
                h = block(h, conv_mask)
        return h[:, : x.shape[1]].to(x.dtype, memory_format=torch.contiguous_format)
