"""Moment retrieval head (class + span per query) and highlight detection head (a saliency score per clip)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_lddetr import LDDetrConfig
from .span_ops import inverse_sigmoid, span_cxw_to_xx


class MomentRetrievalHead(nn.Module):
    """Foreground/background logits and (center, width) spans refined from each layer's reference anchor."""

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.class_embed = nn.Linear(d, 2)
        self.span_embed1 = nn.Linear(d, d)
        self.span_embed2 = nn.Linear(d, d)
        self.span_embed3 = nn.Linear(d, 2)

    def forward(
        self, hidden_states: torch.Tensor, reference_anchors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden_states (layers, B, Q, d), reference_anchors (layers, B, Q, 2) -> logits, spans (layers, B, Q, 2)
        logits = self.class_embed(hidden_states)
        offsets = self.span_embed3(self.span_embed2(self.span_embed1(hidden_states).relu()).relu())
        return logits, (offsets + inverse_sigmoid(reference_anchors)).sigmoid()


class HighlightDetectionHead(nn.Module):
    """Saliency from the fused clips, re-weighted by a GRU summary of the top-1 predicted moment.

    The clips of the top-scoring moment (unimodal video features) run through a GRU; its final hidden state scores
    every clip (dot product), and the fused memory is scaled by (1 + that score) before a projection summed over
    features. No gradient reaches the spans or classes (argmax and floor).

    By default the moment is mapped to clips with each video's own length and clamped indices, and the GRU state
    is read after the moment's last clip (in eager CPU runs the GRU stops after the longest moment). With
    `official_highlight_slicing` it reproduces the official code: the padded length, Python slice semantics (a
    negative start wraps around; most such slices are empty) and a GRU run over the zero padding up to the padded
    length.
    """

    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.gru = nn.GRU(d, d, num_layers=1, batch_first=True)
        self.saliency_proj = nn.Linear(d, d)
        self.clip_length = config.clip_length
        self.official_slicing = config.official_highlight_slicing

    def _moment_clip_range(
        self, logits: torch.Tensor, spans: torch.Tensor, video_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start clip (B,) and number of clips (B,) of each sample's top-1 moment."""
        padded_length = video_mask.shape[1]
        top = logits.softmax(-1)[..., 0].argmax(-1)  # (B,)
        top_span = spans[torch.arange(spans.shape[0], device=spans.device), top]  # (B, 2)
        lengths = torch.full_like(top, padded_length) if self.official_slicing else video_mask.sum(1)
        # the official arithmetic, xx * (L * clip_length) / clip_length, kept for bit-identical floors
        scale = (lengths * self.clip_length).to(top_span.dtype)[:, None]
        clip_idx = torch.floor(span_cxw_to_xx(top_span) * scale / self.clip_length).long()  # (B, 2)
        start, end = clip_idx.unbind(-1)
        if self.official_slicing:
            # Python's x[start:end + 1] on a length-L axis
            start = torch.where(start < 0, start + padded_length, start).clamp(0, padded_length)
            stop = end + 1
            stop = torch.where(stop < 0, stop + padded_length, stop).clamp(0, padded_length)
            return start, (stop - start).clamp(min=0)
        last = lengths - 1
        start = torch.minimum(start.clamp(min=0), last)
        end = torch.minimum(end.clamp(min=0), last)
        return start, end - start + 1

    def forward(
        self,
        logits: torch.Tensor,
        spans: torch.Tensor,
        memory: torch.Tensor,
        video: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """logits, spans (B, Q, 2) of the last layer; memory, video (B, L, d); video_mask (B, L) -> saliency (B, L)."""
        batch, padded_length, d = video.shape
        # fp32: under bf16 autocast the floors of bf16 spans would move moments by a clip
        start, count = self._moment_clip_range(logits.detach().float(), spans.detach().float(), video_mask)
        if self.official_slicing:
            steps_run, read_at = padded_length, torch.full_like(count, padded_length - 1)
        else:
            read_at = (count - 1).clamp(min=0)  # the state after each moment's last clip
            # eager on the CPU the GRU stops after the longest moment; elsewhere reading that length on the host
            # would be a host-device sync (accelerators) or a graph break (torch.compile)
            eager_cpu = video.device.type == "cpu" and not torch.compiler.is_compiling()
            steps_run = max(int(count.max()), 1) if eager_cpu else padded_length
        steps = torch.arange(steps_run, device=video.device)[None, :]  # (1, T)
        gather_idx = (start[:, None] + steps).clamp(max=padded_length - 1)  # (B, T)
        moment = video.gather(1, gather_idx[..., None].expand(-1, -1, d))
        moment = moment * (steps < count[:, None])[..., None].to(video.dtype)  # left-aligned, zero after the moment
        states, _ = self.gru(moment)  # (B, T, d)
        summary = states[torch.arange(batch, device=video.device), read_at]  # (B, d)
        weights = torch.einsum("bd,bld->bl", summary, video)  # (B, L)
        # saliency_proj(memory * (1 + weights)).sum(-1): a Linear summed over its outputs is one dot product with
        # the summed weight rows, and the per-clip factor (1 + weights) can scale that dot product instead
        summed_proj = F.linear(memory, self.saliency_proj.weight.sum(0, keepdim=True))[..., 0]  # (B, L)
        return (summed_proj * (1 + weights) + self.saliency_proj.bias.sum()) / math.sqrt(d)
