"""LD-DETR losses: moment retrieval (span L1, gIoU, focal foreground label) on every decoder layer, and
highlight detection (pairwise margin + rank contrastive saliency). The Distill Align terms come from the model.

Loss names follow the official code so that logs and weights compare one to one: `loss_span`, `loss_giou`,
`loss_label`, `loss_saliency`, and `_0`, `_1`, ... for the auxiliary (earlier) decoder layers.
"""

import torch
import torch.nn.functional as F

from .configuration_lddetr import LDDetrConfig
from .matcher import HungarianMatcher
from .span_ops import generalized_temporal_iou, span_cxw_to_xx

RANK_LEVELS = 11  # saliency levels 1..11 of the summed 0..12 annotator scores
RANK_DIVISOR = 12  # the official code divides the 11 level losses by 12; kept for parity


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017) of independent sigmoid classifiers."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


class LDDetrLoss:
    def __init__(self, config: LDDetrConfig):
        self.config = config
        self.matcher = HungarianMatcher(config)

    def moment_losses(
        self, logits: torch.Tensor, spans: torch.Tensor, target_spans: torch.Tensor, match
    ) -> dict[str, torch.Tensor]:
        """One layer: logits, spans (B, Q, 2); match = (batch_idx, query_idx, target_idx)."""
        batch_idx, query_idx, target_idx = match
        if target_spans.shape[0] == 0:
            zero = spans.sum() * 0
            loss_span = loss_giou = zero
        else:
            matched = spans[batch_idx, query_idx].float()
            targets = target_spans[target_idx].float()
            loss_span = F.l1_loss(matched, targets, reduction="none").mean()
            loss_giou = (1 - generalized_temporal_iou(span_cxw_to_xx(matched), span_cxw_to_xx(targets))).mean()
        # class 0 = foreground for matched queries, class 1 = background otherwise; two independent sigmoids
        foreground = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        foreground[batch_idx, query_idx] = True
        one_hot = torch.stack([foreground, ~foreground], dim=-1).to(torch.float32)
        loss_label = sigmoid_focal_loss(
            logits.float(), one_hot, self.config.focal_alpha, self.config.focal_gamma
        ).mean()
        return {"loss_span": loss_span, "loss_giou": loss_giou, "loss_label": loss_label}

    def saliency_loss(
        self,
        scores: torch.Tensor,
        video_mask: torch.Tensor,
        labels: torch.Tensor,
        pos_idx: torch.Tensor,
        neg_idx: torch.Tensor,
    ) -> torch.Tensor:
        """scores (B, L); video_mask (B, L) bool; labels (B, L) summed annotator scores (0 outside);
        pos_idx, neg_idx (B, k) clip indices."""
        scores = scores.float()
        mask = video_mask.to(scores.dtype)
        # rank contrastive: for each level r, clips with label >= r are positives against all valid clips
        masked = mask * scores + (1 - mask) * -1e3
        logits = masked / self.config.rank_contrastive_temperature
        logits = logits - logits.max(dim=1, keepdim=True).values
        log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)  # (B, L)
        levels = torch.arange(1, RANK_LEVELS + 1, device=scores.device, dtype=labels.dtype)
        positives = (labels[None] >= levels[:, None, None]).to(scores.dtype)  # (R, B, L)
        num_positives = positives.sum(-1)  # (R, B)
        mean_log_prob = (positives * log_prob * mask).sum(-1) / (num_positives + 1e-6)
        loss_rank = (-mean_log_prob * (num_positives > 0)).mean(-1).sum() / RANK_DIVISOR

        pos_scores = scores.gather(1, pos_idx)
        neg_scores = scores.gather(1, neg_idx)
        loss_margin = (self.config.saliency_margin + neg_scores - pos_scores).clamp(min=0).sum() / pos_idx.numel() * 2
        return loss_margin + loss_rank

    def __call__(self, outputs: dict, labels: dict, video_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """outputs: `logits`, `pred_spans` (layers, B, Q, 2), `saliency_scores` (B, L), `loss_align`, `loss_sim`;
        labels: `spans` (T, 2), `sizes` list[int], `saliency_scores` (B, L), `pos_idx`, `neg_idx` (B, k)."""
        losses = {}
        if self.config.moment_retrieval_loss:
            logits, spans = outputs["logits"], outputs["pred_spans"]
            if not self.config.aux_loss:
                logits, spans = logits[-1:], spans[-1:]
            matches = self.matcher(logits, spans, labels["spans"], labels["sizes"])
            last = len(matches) - 1
            for layer, match in enumerate(matches):
                suffix = "" if layer == last else f"_{layer}"
                for name, value in self.moment_losses(logits[layer], spans[layer], labels["spans"], match).items():
                    losses[name + suffix] = value
        losses["loss_align"] = outputs["loss_align"]
        losses["loss_sim"] = outputs["loss_sim"]
        losses["loss_saliency"] = self.saliency_loss(
            outputs["saliency_scores"], video_mask, labels["saliency_scores"], labels["pos_idx"], labels["neg_idx"]
        )
        return losses
