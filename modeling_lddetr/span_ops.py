"""1-D span utilities: (center, width) <-> (start, end), temporal IoU and generalised IoU."""

import torch


def span_cxw_to_xx(spans: torch.Tensor) -> torch.Tensor:
    """(..., 2) (center, width) -> (..., 2) (start, end)."""
    center, width = spans.unbind(-1)
    return torch.stack([center - 0.5 * width, center + 0.5 * width], dim=-1)


def span_xx_to_cxw(spans: torch.Tensor) -> torch.Tensor:
    """(..., 2) (start, end) -> (..., 2) (center, width)."""
    start, end = spans.unbind(-1)
    return torch.stack([(start + end) * 0.5, end - start], dim=-1)


def temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (N, 2) and (M, 2) spans in (start, end); returns iou (N, M) and union (N, M)."""
    areas1 = spans1[:, 1] - spans1[:, 0]
    areas2 = spans2[:, 1] - spans2[:, 0]
    left = torch.max(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.min(spans1[:, None, 1], spans2[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = areas1[:, None] + areas2[None, :] - inter
    return inter / union, union


def generalized_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (N, M) of (start, end) spans (Rezatofighi et al. 2019, in 1-D).

    Degenerate spans (end < start) are not checked here: checking would need a host-device sync.
    """
    iou, union = temporal_iou(spans1, spans2)
    left = torch.min(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.max(spans1[:, None, 1], spans2[None, :, 1])
    enclosing = (right - left).clamp(min=0)
    return iou - (enclosing - union) / enclosing


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def paired_generalized_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU (N,) of two (N, 2) lists of (start, end) spans."""
    inter = (torch.min(spans1[:, 1], spans2[:, 1]) - torch.max(spans1[:, 0], spans2[:, 0])).clamp(min=0)
    union = (spans1[:, 1] - spans1[:, 0]) + (spans2[:, 1] - spans2[:, 0]) - inter
    enclosing = (torch.max(spans1[:, 1], spans2[:, 1]) - torch.min(spans1[:, 0], spans2[:, 0])).clamp(min=0)
    return inter / union - (enclosing - union) / enclosing
