"""1-D span operations, the one home of temporal IoU: (center, width) -> (start, end), IoU, generalised IoU, NMS.

Every IoU here is element-wise over broadcast (..., 2) (start, end) spans: (N, 1, 2) against (1, M, 2) gives the
pairwise (N, M) matrix, (N, 2) against (N, 2) the row-by-row values. They differ only where a union is empty
(two zero-length spans), and the name says which rule a caller gets:
- `temporal_iou`: the true IoU; two equal zero-length spans have IoU 1, two different ones 0 (NMS);
- `evaluator_temporal_iou` and `evaluator_paired_temporal_iou`: the official evaluator's two formulas, so that
  values on a metric threshold compare bit for bit as there (see their docstrings);
- `generalized_temporal_iou`: the training cost and loss; no check for empty unions (that needs a host sync).
"""

import torch


def span_cxw_to_xx(spans: torch.Tensor) -> torch.Tensor:
    """(..., 2) (center, width) -> (..., 2) (start, end)."""
    center, width = spans.unbind(-1)
    return torch.stack([center - 0.5 * width, center + 0.5 * width], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def span_overlap(spans1: torch.Tensor, spans2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intersection, union and enclosing length (...,) of broadcast (..., 2) (start, end) spans."""
    start1, end1 = spans1.unbind(-1)
    start2, end2 = spans2.unbind(-1)
    intersection = (torch.minimum(end1, end2) - torch.maximum(start1, start2)).clamp(min=0)
    union = (end1 - start1) + (end2 - start2) - intersection
    enclosing = (torch.maximum(end1, end2) - torch.minimum(start1, start2)).clamp(min=0)
    return intersection, union, enclosing


def temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """True IoU (...,); an empty union (two zero-length spans) gives 1 where they coincide, else 0."""
    intersection, union, _ = span_overlap(spans1, spans2)
    same_point = (spans1[..., 0] == spans2[..., 0]).to(intersection.dtype)
    return torch.where(union > 0, intersection / union, same_point)


def evaluator_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """IoU (...,) as the official evaluator's `compute_temporal_iou_batch_cross` (mAP matching, best window):
    intersection / true union; an empty union gives 0 where the official code gives NaN, which fails every
    threshold there too."""
    intersection, union, _ = span_overlap(spans1, spans2)
    return torch.where(union > 0, intersection / union, torch.zeros_like(intersection))


def evaluator_paired_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """IoU (...,) as the official evaluator's `compute_temporal_iou_batch_paired` (R1, mIoU): intersection over
    the enclosing span. That is the true union whenever the spans overlap and multiplies a zero intersection
    otherwise, so it is the true IoU, rounded as the official code rounds it; an empty enclosing span gives 0."""
    intersection, _, enclosing = span_overlap(spans1, spans2)
    return torch.where(enclosing != 0, intersection / enclosing, torch.zeros_like(intersection))


def generalized_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """Generalised IoU (...,) of broadcast (start, end) spans (Rezatofighi et al. 2019, in 1-D).

    Degenerate spans (end < start, empty unions) are not checked here: checking would need a host-device sync.
    """
    intersection, union, enclosing = span_overlap(spans1, spans2)
    return intersection / union - (enclosing - union) / enclosing


def temporal_nms(ranked: list[list[float]], threshold: float) -> list[list[float]]:
    """Greedy NMS over `[start, end, score]` rows sorted by score: a row is dropped when its true IoU
    (`temporal_iou`) with a kept, better row exceeds `threshold`."""
    if not ranked:
        return []
    windows = torch.tensor([row[:2] for row in ranked], dtype=torch.float64)
    overlaps = temporal_iou(windows[:, None], windows[None, :]).tolist()  # (R, R)
    kept = []
    for index in range(len(ranked)):
        if all(overlaps[index][better] <= threshold for better in kept):
            kept.append(index)
    return [ranked[index] for index in kept]
