"""The fused Distill Align loss: the queue logits and the distillation cross-entropy as autograd Functions.

The queue is never copied or concatenated: the query and target rows share one GEMM with it, the backward reads
the queue as it was before the enqueue through a snapshot of the overwritten columns, and the cross-entropy
against the distilled targets is taken without forming log p or the targets.
"""

import torch


class QueueSnapshot:
    """The queue columns an enqueue overwrote, with their old values, for a gradient computed afterwards."""

    def __init__(self, queue: torch.Tensor):
        self.queue = queue
        self.columns: torch.Tensor | None = None
        self.old_values: torch.Tensor | None = None
        self.version_after_enqueue: int | None = None

    def record_overwrite(self, columns: torch.Tensor) -> None:
        """Keep the values of the columns the enqueue is about to overwrite."""
        self.columns = columns
        self.old_values = self.queue[:, columns]


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
        # computed as (queueᵀ rowsᵀ)ᵀ: written (K, 2B), the product runs faster on the CPU than with a (2B, K)
        # output; the logits are its transposed view, which the softmax and the backward read as fast
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


def _softmax_of_blocks(
    batch_logits: torch.Tensor, queue_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def fused_distill_align_applies(kernels: str) -> bool:
    """Where `fused_contrastive_loss` replaces the formula of distill_align.contrastive_loss: fused kernels (on
    every device: GEMMs and torch's elementwise ops)."""
    return kernels == "fused"


def fused_contrastive_loss(
    query, keys_momentum, queue: QueueSnapshot, target_momentum, alpha, temperature
) -> torch.Tensor:
    """distill_align.contrastive_loss where `fused_distill_align_applies`, on a snapshot of the queue. Logits over
    [in-batch momentum keys | queue] / temperature, without concatenating the queue (which would copy it every
    step) or the two blocks: the (B, d) features are divided by the temperature instead of the (B, B + K) logits,
    and the query and the target rows share one GEMM per block."""
    scaled_query = query / temperature
    scaled_target = target_momentum / temperature.detach()
    both_batch_logits = torch.cat([scaled_query, scaled_target]) @ keys_momentum.T
    batch_logits, target_batch_logits = both_batch_logits.split(query.shape[0])
    queue_logits, target_queue_logits = _QueueLogits.apply(scaled_query, queue, scaled_target)
    with torch.no_grad():
        batch_targets, queue_targets, _ = _softmax_of_blocks(target_batch_logits, target_queue_logits)
    return _DistillationCrossEntropy.apply(batch_logits, queue_logits, batch_targets, queue_targets, alpha)
