"""Distill Align (paper §3.2): cross-modal alignment with momentum distillation and feature queues.

Global video and text features (masked means of the unimodal features, L2-normalised) are contrasted against
each other and against queues of past momentum features. The momentum features come from `MomentumEncoder`s:
exponential moving averages of the online unimodal encoders, updated before each training forward. The targets mix the momentum model's similarity
distribution with the one-hot identity: Y = α·softmax(S_m) + (1 − α)·I. The official code also adds a
SimSiam-like "sim" loss (not in the paper) with a shared `predictor`; it is kept, with its own weight.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .configuration_lddetr import LDDetrConfig
from .unimodal_encoder import UnimodalEncoder


class MomentumEncoder(UnimodalEncoder):
    """A `UnimodalEncoder` that follows an online encoder as an exponential moving average; never optimised and
    run without gradient. Same parameters as `UnimodalEncoder`, so checkpoints keep the official layout."""

    def __init__(self, input_dim: int, hidden_size: int, dropout: float):
        super().__init__(input_dim, hidden_size, dropout)
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


def _global_feature(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # (B, S, d), (B, S) bool -> (B, d): the L2-normalised mean over the valid positions
    # (the official code averages over padding too)
    weights = mask.to(x.dtype)[..., None]
    return F.normalize((x * weights).sum(1) / weights.sum(1), dim=-1)


class _QueueSnapshot:
    """The queue columns an enqueue overwrote, with their old values, for a gradient computed afterwards."""

    def __init__(self, queue: torch.Tensor):
        self.queue = queue
        self.columns: torch.Tensor | None = None
        self.old_values: torch.Tensor | None = None
        self.version_after_enqueue: int | None = None


class _QueueLogits(torch.autograd.Function):
    """query (B, d) @ queue (d, K), without saving a copy of the queue for backward, and targets (b, d) @ queue (no
    gradient) from the same GEMM, whose 2B rows run much faster than two GEMMs of B rows.

    The queue is updated in place (enqueue) after the loss and before backward. Its gradient w.r.t. the query
    needs the queue as it was, so the backward takes the current queue and swaps the overwritten columns back
    from the snapshot: grad @ old.T = grad @ new.T − grad[:, cols] @ (new[:, cols] − old[:, cols]).T.
    """

    @staticmethod
    def forward(ctx, query, snapshot, targets):
        ctx.snapshot = snapshot
        ctx.version = snapshot.queue._version
        # computed as (queueᵀ rowsᵀ)ᵀ: written (K, 2B), the product runs about a fifth faster on the CPU than with
        # a (2B, K) output; the logits are its transposed view, which the softmax and the backward read as fast
        rows = torch.cat([query, targets])  # (2B, d)
        logits = (snapshot.queue.T @ rows.T).T  # (2B, K)
        query_logits, target_logits = logits.split([query.shape[0], targets.shape[0]])
        ctx.mark_non_differentiable(target_logits)
        return query_logits, target_logits

    @staticmethod
    def backward(ctx, grad, *_):
        snapshot = ctx.snapshot
        queue = snapshot.queue
        expected = ctx.version if snapshot.columns is None else snapshot.version_after_enqueue
        if queue._version != expected:
            raise RuntimeError(
                "The Distill Align queue changed between this forward and its backward more than once; run backward "
                "after each training forward."
            )
        grad_query = grad @ queue.T.to(grad.dtype)
        if snapshot.columns is not None:
            changed = (queue[:, snapshot.columns] - snapshot.old_values).to(grad.dtype)  # (d, b)
            grad_query = grad_query - grad[:, snapshot.columns] @ changed.T
        return grad_query, None, None


def _softmax_of_blocks(batch_logits: torch.Tensor, queue_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the columns of [batch_logits (B, B) | queue_logits (B, K)] without concatenating them:
    (batch probabilities, queue probabilities, log-normaliser (B, 1))."""
    maximum = torch.maximum(batch_logits.amax(1, keepdim=True), queue_logits.amax(1, keepdim=True))
    batch_exp = (batch_logits - maximum).exp_()
    queue_exp = (queue_logits - maximum).exp_()
    total = batch_exp.sum(1, keepdim=True) + queue_exp.sum(1, keepdim=True)
    return batch_exp.div_(total), queue_exp.div_(total), maximum + total.log()


class _DistillationCrossEntropy(torch.autograd.Function):
    """mean_i −Σ_j Y_ij log p_ij, p = softmax over [in-batch (B, B) | queue (B, K)] logits and
    Y = α·[batch_targets | queue_targets] + (1 − α)·[I | 0] (the targets being a softmax, rows summing to 1).

    As Σ_j Y_ij = 1, Σ_j Y_ij log p_ij = Σ_j Y_ij s_ij − log Z_i: neither log p nor Y is formed, and the gradient
    w.r.t. the logits, (p − Y) / B, takes one pass over the queue block.
    """

    @staticmethod
    def forward(ctx, batch_logits, queue_logits, batch_targets, queue_targets, alpha: float):
        batch_probs, queue_probs, log_normalizer = _softmax_of_blocks(batch_logits, queue_logits)
        distilled = torch.linalg.vecdot(batch_targets, batch_logits) + torch.linalg.vecdot(queue_targets, queue_logits)
        identity = batch_logits.diagonal()
        ctx.alpha = alpha
        ctx.save_for_backward(batch_probs, queue_probs, batch_targets, queue_targets)
        return (log_normalizer.flatten() - alpha * distilled - (1 - alpha) * identity).mean()

    @staticmethod
    def backward(ctx, grad):
        batch_probs, queue_probs, batch_targets, queue_targets = ctx.saved_tensors
        scale = grad / batch_probs.shape[0]
        grad_batch = torch.sub(batch_probs, batch_targets, alpha=ctx.alpha)
        grad_batch.diagonal().sub_(1 - ctx.alpha)
        grad_queue = torch.sub(queue_probs, queue_targets, alpha=ctx.alpha).mul_(scale)
        return grad_batch.mul_(scale), grad_queue, None, None, None


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
        self.gather_across_processes = config.gather_queue_across_processes
        self.temperature = nn.Parameter(torch.tensor(config.temperature))
        self.predictor = nn.Linear(d, d)
        # (d, K): column k is the k-th queued unit feature
        self.register_buffer("video_queue", F.normalize(torch.randn(d, config.queue_length), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(d, config.queue_length), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _contrastive_loss(self, query: torch.Tensor, keys_momentum: torch.Tensor, queue: _QueueSnapshot, target_momentum: torch.Tensor, alpha, temperature) -> torch.Tensor:
        """query (B, d) online; keys_momentum (B, d) and queue (d, K) the other modality; target_momentum (B, d)
        this modality's momentum features. Logits over [in-batch momentum keys | queue] / temperature, without
        concatenating the queue (which would copy it every step) or the two blocks: the (B, d) features are
        divided by the temperature instead of the (B, B + K) logits, and the query and the target rows share one
        GEMM per block."""
        scaled_query = query / temperature
        scaled_target = target_momentum / temperature.detach()
        batch_logits, target_batch_logits = (torch.cat([scaled_query, scaled_target]) @ keys_momentum.T).split(query.shape[0])
        queue_logits, target_queue_logits = _QueueLogits.apply(scaled_query, queue, scaled_target)
        with torch.no_grad():
            batch_targets, queue_targets, _ = _softmax_of_blocks(target_batch_logits, target_queue_logits)
        return _DistillationCrossEntropy.apply(batch_logits, queue_logits, batch_targets, queue_targets, alpha)

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
            return self._losses(*(x.to(self.video_queue.dtype) for x in (video, text, video_momentum, text_momentum)), video_mask, text_mask, training_progress)

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
        text_queue, video_queue = _QueueSnapshot(self.text_queue), _QueueSnapshot(self.video_queue)
        loss_v2t = self._contrastive_loss(video_global, text_global_momentum, text_queue, video_global_momentum, alpha, temperature)
        loss_t2v = self._contrastive_loss(text_global, video_global_momentum, video_queue, text_global_momentum, alpha, temperature)
        loss_align = (loss_v2t + loss_t2v) / 2

        predicted_text = self.predictor(video_global.relu())
        predicted_video = self.predictor(text_global.relu())
        loss_sim = -(
            F.cosine_similarity(predicted_text, text_global, dim=-1, eps=1e-8).mean()
            + F.cosine_similarity(predicted_video, video_global, dim=-1, eps=1e-8).mean()
        ) / 2

        if self.training:
            self._enqueue(video_global_momentum, text_global_momentum, video_queue, text_queue)
        return loss_align, loss_sim

    @torch.no_grad()
    def _enqueue(self, video_features: torch.Tensor, text_features: torch.Tensor, video_snapshot: _QueueSnapshot, text_snapshot: _QueueSnapshot) -> None:
        """Write the (global, under DDP) batch at the pointer, wrapping around the end of the queue, so that no
        batch size is skipped (the official code skips batches whose size does not divide the queue length)."""
        if self.gather_across_processes:
            video_features = _gather_from_all_processes(video_features)
            text_features = _gather_from_all_processes(text_features)
        queue_length = self.video_queue.shape[1]
        video_features, text_features = video_features[-queue_length:], text_features[-queue_length:]
        batch = video_features.shape[0]
        columns = (self.queue_ptr + torch.arange(batch, device=self.queue_ptr.device)) % queue_length
        for snapshot, features in ((video_snapshot, video_features), (text_snapshot, text_features)):
            snapshot.columns = columns
            snapshot.old_values = snapshot.queue[:, columns]
            snapshot.queue[:, columns] = features.T.to(snapshot.queue.dtype)
            snapshot.version_after_enqueue = snapshot.queue._version
        self.queue_ptr.copy_((self.queue_ptr + batch) % queue_length)
