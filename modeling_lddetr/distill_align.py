"""Distill Align (paper §3.2): cross-modal alignment with momentum distillation and feature queues.

Global video and text features (masked means of the unimodal features, L2-normalised) are contrasted against
each other and against queues of past momentum features. The momentum features come from `MomentumEncoder`s:
exponential moving averages of the online unimodal encoders, updated before each training forward. The targets mix
the momentum model's similarity distribution with the one-hot identity: Y = α·softmax(S_m) + (1 − α)·I. The
official code also adds a SimSiam-like "sim" loss (not in the paper) with a shared `predictor`; it is kept, with its
own weight.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .configuration_lddetr import LDDetrConfig
from .fused_distill_align import QueueSnapshot, fused_contrastive_loss, fused_distill_align_applies
from .unimodal_encoder import UnimodalEncoder


class MomentumEncoder(UnimodalEncoder):
    """A `UnimodalEncoder` that follows an online encoder as an exponential moving average; never optimised and
    run without gradient. Same parameters as `UnimodalEncoder`, so checkpoints keep the official layout."""

    def __init__(self, input_dim: int, hidden_size: int, dropout: float, kernels: str = "fused"):
        super().__init__(input_dim, hidden_size, dropout, kernels)
        self.requires_grad_(False)

    @torch.no_grad()
    def copy_from(self, online: UnimodalEncoder) -> None:
        for momentum, source in zip(self.parameters(), online.parameters()):
            momentum.copy_(source)

    @torch.no_grad()
    def follow(self, online: UnimodalEncoder, momentum: float) -> None:
        """self <- momentum · self + (1 − momentum) · online, parameter by parameter."""
        own = list(self.parameters())
        torch._foreach_mul_(own, momentum)
        torch._foreach_add_(own, list(online.parameters()), alpha=1.0 - momentum)

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features)


def contrastive_loss(query, keys, queue, target, alpha, temperature) -> torch.Tensor:
    """query, keys, target (B, d), queue (d, K) -> −mean_i Σ_j Y_ij log p_ij: p the softmax of the logits
    [query keysᵀ | query queue] / temperature, Y = α·softmax([target keysᵀ | target queue] / temperature) +
    (1 − α)·[I | 0] (paper Eq. 8-13)."""
    batch = query.shape[0]
    logits = torch.cat([query @ keys.T, query @ queue], dim=1) / temperature  # (B, B + K)
    with torch.no_grad():
        soft_targets = (torch.cat([target @ keys.T, target @ queue], dim=1) / temperature).softmax(dim=1)
        identity = torch.zeros_like(soft_targets)
        identity[:, :batch] = torch.eye(batch, dtype=soft_targets.dtype, device=soft_targets.device)
        targets = alpha * soft_targets + (1 - alpha) * identity
    return -(targets * logits.log_softmax(dim=1)).sum(1).mean()


def _global_feature(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # (B, S, d), (B, S) bool -> (B, d): the L2-normalised mean over the valid positions
    # (the official code averages over padding too)
    weights = mask.to(x.dtype)[..., None]
    return F.normalize((x * weights).sum(1) / weights.sum(1), dim=-1)


def _gather_from_all_processes(x: torch.Tensor) -> torch.Tensor:
    """(b, d) per process -> (world * b, d), rank order; no gradient (only the momentum features are gathered)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered)


class DistillAlign(nn.Module):
    def __init__(self, config: LDDetrConfig):
        super().__init__()
        d = config.hidden_size
        self.distillation_coefficient = config.distillation_coefficient
        self.kernels = config.kernels
        self.gather_across_processes = config.gather_queue_across_processes
        self.temperature = nn.Parameter(torch.tensor(config.temperature))
        self.predictor = nn.Linear(d, d)
        # (d, K): column k is the k-th queued unit feature
        self.register_buffer("video_queue", F.normalize(torch.randn(d, config.queue_length), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(d, config.queue_length), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _contrastive_loss(self, query, keys_momentum, queue, target_momentum, alpha, temperature) -> torch.Tensor:
        """query (B, d) online; keys_momentum (B, d) and queue the other modality (a `QueueSnapshot` of it for the
        fused loss, else the (d, K) queue as it was before the enqueue); target_momentum (B, d) this modality's
        momentum features -> −mean_i Σ_j Y_ij log softmax(S / temperature)_ij over [in-batch | queue] columns."""
        if fused_distill_align_applies(self.kernels):
            return fused_contrastive_loss(query, keys_momentum, queue, target_momentum, alpha, temperature)
        return contrastive_loss(query, keys_momentum, queue, target_momentum, alpha, temperature)

    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        video_momentum: torch.Tensor,
        text_momentum: torch.Tensor,
        video_mask: torch.Tensor,
        text_mask: torch.Tensor,
        training_progress: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """video, video_momentum (B, L, d) and text, text_momentum (B, N, d): the online and momentum unimodal
        features; masks (B, L), (B, N) bool. Returns (loss_align, loss_sim). Enqueues in training mode.

        Computed in the queues' dtype with autocast off: under bf16 autocast, the logits' softmax over 65 536
        columns keeps fp32 accuracy, and the (d, K) queues are not cast to bf16 for every GEMM (a cast takes
        longer than the fp32 GEMM)."""
        with torch.autocast(video.device.type, enabled=False):
            return self._losses(
                *(x.to(self.video_queue.dtype) for x in (video, text, video_momentum, text_momentum)),
                video_mask,
                text_mask,
                training_progress,
            )

    def _losses(self, video, text, video_momentum, text_momentum, video_mask, text_mask, training_progress):
        video_global, text_global = _global_feature(video, video_mask), _global_feature(text, text_mask)
        video_global_momentum = _global_feature(video_momentum, video_mask)
        text_global_momentum = _global_feature(text_momentum, text_mask)
        alpha = self.distillation_coefficient
        if self.training and training_progress is not None:
            alpha = alpha * min(1.0, max(0.0, training_progress))  # warm-up over the first epoch
        if self.training:
            with torch.no_grad():
                self.temperature.clamp_(0.001, 0.5)
            temperature = self.temperature
        else:
            temperature = self.temperature.clamp(0.001, 0.5)  # evaluation changes no state

        video_global_momentum = video_global_momentum.detach()
        text_global_momentum = text_global_momentum.detach()
        if fused_distill_align_applies(self.kernels):
            text_queue, video_queue = QueueSnapshot(self.text_queue), QueueSnapshot(self.video_queue)
        else:  # the queues as they are now: the enqueue below writes into them before backward
            text_queue, video_queue = self.text_queue.clone(), self.video_queue.clone()
        loss_v2t = self._contrastive_loss(
            video_global, text_global_momentum, text_queue, video_global_momentum, alpha, temperature
        )
        loss_t2v = self._contrastive_loss(
            text_global, video_global_momentum, video_queue, text_global_momentum, alpha, temperature
        )
        loss_align = (loss_v2t + loss_t2v) / 2

        predicted_text = self.predictor(video_global.relu())
        predicted_video = self.predictor(text_global.relu())
        loss_sim = (
            -(
                F.cosine_similarity(predicted_text, text_global, dim=-1, eps=1e-8).mean()
                + F.cosine_similarity(predicted_video, video_global, dim=-1, eps=1e-8).mean()
            )
            / 2
        )

        if self.training:
            self._enqueue(video_global_momentum, text_global_momentum, video_queue, text_queue)
        return loss_align, loss_sim

    @torch.no_grad()
    def _enqueue(
        self, video_features: torch.Tensor, text_features: torch.Tensor, video_snapshot, text_snapshot
    ) -> None:
        """Write the (global, under DDP) batch at the pointer, wrapping around the end of the queue, so that no
        batch size is skipped (the official code skips batches whose size does not divide the queue length). The
        fused loss's `QueueSnapshot`s record the overwritten columns for its backward."""
        if self.gather_across_processes:
            video_features = _gather_from_all_processes(video_features)
            text_features = _gather_from_all_processes(text_features)
        queue_length = self.video_queue.shape[1]
        video_features, text_features = video_features[-queue_length:], text_features[-queue_length:]
        batch = video_features.shape[0]
        columns = (self.queue_ptr + torch.arange(batch, device=self.queue_ptr.device)) % queue_length
        for queue, features, snapshot in (
            (self.video_queue, video_features, video_snapshot),
            (self.text_queue, text_features, text_snapshot),
        ):
            if isinstance(snapshot, QueueSnapshot):
                snapshot.record_overwrite(columns)
            queue[:, columns] = features.T.to(queue.dtype)
            if isinstance(snapshot, QueueSnapshot):
                snapshot.version_after_enqueue = queue._version
        self.queue_ptr.copy_((self.queue_ptr + batch) % queue_length)
