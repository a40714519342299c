"""Hungarian matching of predicted moments to ground-truth windows, for every decoder layer at once."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .configuration_lddetr import LDDetrConfig
from .span_ops import generalized_temporal_iou, span_cxw_to_xx


class HungarianMatcher:
    """Cost = span_cost·L1(center, width) − giou_cost·gIoU − class_cost·p(foreground).

    The class probability is a softmax over the 2 logits, as the official matcher (the loss itself is a sigmoid
    focal loss). The costs of all layers are moved to the CPU in one transfer; scipy then solves one assignment
    per (layer, sample).
    """

    def __init__(self, config: LDDetrConfig):
        self.class_cost = config.matcher_class_cost
        self.span_cost = config.matcher_span_cost
        self.giou_cost = config.matcher_giou_cost

    @torch.no_grad()
    def __call__(
        self, logits: torch.Tensor, spans: torch.Tensor, target_spans: torch.Tensor, sizes: list[int]
    ) -> list[tuple[torch.Tensor, ...]]:
        """logits, spans (layers, B, Q, 2); target_spans (T, 2) (center, width), the targets of sample b being
        rows sizes[:b].sum() .. sizes[:b+1].sum(). Returns per layer (batch_idx, query_idx, target_idx), each (M,)
        long on the device of `spans`, target_idx indexing `target_spans`."""
        num_layers, batch, queries, _ = spans.shape
        device = spans.device
        if target_spans.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return [(empty, empty, empty)] * num_layers
        # float32: bf16 tensors cannot become numpy arrays, and fp16 gIoU can overflow
        prob = logits.float().softmax(-1)[..., 0].reshape(num_layers, batch * queries, 1)
        pred = spans.float().reshape(num_layers, batch * queries, 2)
        target = target_spans.float()
        cost_span = (pred[:, :, None, :] - target[None, None]).abs().sum(-1)  # (layers, B*Q, T)
        cost_giou = -generalized_temporal_iou(
            span_cxw_to_xx(pred.reshape(-1, 1, 2)), span_cxw_to_xx(target)[None]
        )  # (layers*B*Q, T)
        cost = self.span_cost * cost_span + self.giou_cost * cost_giou.view_as(cost_span) - self.class_cost * prob
        cost = cost.view(num_layers, batch, queries, -1).cpu().numpy()

        offsets = np.concatenate([[0], np.cumsum(sizes)])
        matches = []
        for layer_cost in cost:
            batch_idx, query_idx, target_idx = [], [], []
            for b in range(batch):
                rows, cols = linear_sum_assignment(layer_cost[b, :, offsets[b] : offsets[b + 1]])
                batch_idx.append(np.full(len(rows), b))
                query_idx.append(rows)
                target_idx.append(cols + offsets[b])
            matches.append(np.stack([np.concatenate(batch_idx), np.concatenate(query_idx), np.concatenate(target_idx)]))
        indices = torch.from_numpy(np.stack(matches).astype(np.int64)).to(device, non_blocking=True)  # (layers, 3, M)
        return [tuple(layer_indices) for layer_indices in indices]
