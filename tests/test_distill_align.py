"""Distill Align's fused loss (stacked GEMMs, scaled queries, shared log-normaliser, custom backwards) equals the
straightforward formula: concatenate [in-batch | queue] logits, divide by the temperature, log_softmax."""

import pytest
import torch
import torch.nn.functional as F

from modeling_lddetr.distill_align import DistillAlign, _DistillationCrossEntropy, _QueueLogits, _QueueSnapshot
from tests.helpers import tiny_config


def reference_contrastive_loss(query, keys, queue, target, alpha, temperature):
    """query, keys, target (B, d), queue (d, K): −mean_i Σ_j Y_ij log softmax(logits)_ij, written out."""
    batch = query.shape[0]
    logits = torch.cat([query @ keys.T, query @ queue], dim=1) / temperature  # (B, B + K)
    with torch.no_grad():
        soft = (torch.cat([target @ keys.T, target @ queue], dim=1) / temperature).softmax(dim=1)
    identity = torch.zeros_like(soft)
    identity[:, :batch] = torch.eye(batch, dtype=soft.dtype)
    targets = alpha * soft + (1 - alpha) * identity
    return -(targets * logits.log_softmax(dim=1)).sum(1).mean()


def reference_loss_align(video, text, video_momentum, text_momentum, video_mask, text_mask, video_queue, text_queue, alpha, temperature):
    def global_feature(x, mask):
        weights = mask[..., None].to(x.dtype)
        return F.normalize((x * weights).sum(1) / weights.sum(1), dim=-1)

    v, t = global_feature(video, video_mask), global_feature(text, text_mask)
    vm, tm = global_feature(video_momentum, video_mask).detach(), global_feature(text_momentum, text_mask).detach()
    v2t = reference_contrastive_loss(v, tm, text_queue, vm, alpha, temperature)
    t2v = reference_contrastive_loss(t, vm, video_queue, tm, alpha, temperature)
    return (v2t + t2v) / 2


def features(dtype, batch=6, clips=9, tokens=5, d=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    video, text, video_momentum, text_momentum = (torch.randn(batch, n, d, generator=generator, dtype=dtype) for n in (clips, tokens, clips, tokens))
    video_mask = torch.arange(clips)[None] < torch.tensor([9, 7, 9, 4, 8, 6])[:batch, None]
    text_mask = torch.arange(tokens)[None] < torch.tensor([5, 3, 4, 5, 2, 1])[:batch, None]
    return video.requires_grad_(), text.requires_grad_(), video_momentum, text_momentum, video_mask, text_mask


# float32 sums of a few hundred terms round at ~1e-7 relative; float64 agrees to rounding
TOLERANCES = {torch.float32: dict(rtol=2e-6, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_contrastive_loss_and_gradients_equal_the_straightforward_formula(dtype, alpha):
    module = DistillAlign(tiny_config(hidden_size=32, queue_length=256)).to(dtype)
    generator = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(6, 32, generator=generator, dtype=dtype), dim=-1).requires_grad_()
    keys, target = (F.normalize(torch.randn(6, 32, generator=generator, dtype=dtype), dim=-1) for _ in range(2))
    temperature = torch.tensor(0.07, dtype=dtype, requires_grad=True)
    queue = module.text_queue

    expected = reference_contrastive_loss(query, keys, queue, target, alpha, temperature)
    expected_grads = torch.autograd.grad(expected, (query, temperature))
    loss = module._contrastive_loss(query, keys, _QueueSnapshot(queue), target, alpha, temperature)
    grads = torch.autograd.grad(loss, (query, temperature))
    torch.testing.assert_close(loss, expected, **TOLERANCES[dtype])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_forward_enqueues_before_backward_and_keeps_the_gradients(dtype):
    """The forward enqueues the momentum features; the backward that follows must still use the old queues."""
    module = DistillAlign(tiny_config(hidden_size=32, queue_length=16)).to(dtype).train()
    module.queue_ptr.fill_(13)  # the 6 new columns wrap around the end of the queue
    with torch.no_grad():
        module.temperature.fill_(0.9)  # outside the clamp range: the forward clamps it to 0.5 first
    video, text, video_momentum, text_momentum, video_mask, text_mask = features(dtype)
    video_queue, text_queue = module.video_queue.clone(), module.text_queue.clone()

    loss_align, loss_sim = module(video, text, video_momentum, text_momentum, video_mask, text_mask, training_progress=0.5)
    assert not torch.equal(module.video_queue, video_queue) and module.queue_ptr.item() == (13 + 6) % 16
    grads = torch.autograd.grad(loss_align, (video, text, module.temperature))

    temperature = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    alpha = module.distillation_coefficient * 0.5
    expected = reference_loss_align(video, text, video_momentum, text_momentum, video_mask, text_mask, video_queue, text_queue, alpha, temperature)
    expected_grads = torch.autograd.grad(expected, (video, text, temperature))
    torch.testing.assert_close(loss_align, expected, **TOLERANCES[dtype])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOLERANCES[dtype])


def test_evaluation_loss_equals_the_formula_under_bf16_autocast_in_fp32():
    """Under autocast the alignment logits stay fp32: the loss equals the fp32 formula on the bf16 features."""
    module = DistillAlign(tiny_config(hidden_size=32, queue_length=64)).eval()
    video, text, video_momentum, text_momentum, video_mask, text_mask = features(torch.float32)
    bf16 = [x.detach().bfloat16() for x in (video, text, video_momentum, text_momentum)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_align, _ = module(*bf16, video_mask, text_mask)
    assert loss_align.dtype == torch.float32
    expected = reference_loss_align(*(x.float() for x in bf16), video_mask, text_mask, module.video_queue, module.text_queue,
                                    module.distillation_coefficient, module.temperature.detach())
    torch.testing.assert_close(loss_align, expected, **TOLERANCES[torch.float32])


def test_distillation_cross_entropy_passes_gradcheck():
    generator = torch.Generator().manual_seed(0)
    batch_logits = torch.randn(3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    queue_logits = torch.randn(3, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randn(3, 10, dtype=torch.float64, generator=generator).softmax(1)
    batch_targets, queue_targets = targets[:, :3], targets[:, 3:]
    assert torch.autograd.gradcheck(
        lambda b, q: _DistillationCrossEntropy.apply(b, q, batch_targets, queue_targets, 0.3), (batch_logits, queue_logits)
    )


def test_stacked_queue_logits_equal_two_products_and_pass_gradcheck():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    queue = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    query_logits, target_logits = _QueueLogits.apply(query, _QueueSnapshot(queue), targets)
    torch.testing.assert_close(query_logits, query @ queue, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(target_logits, targets @ queue, rtol=1e-15, atol=1e-15)
    assert not target_logits.requires_grad
    assert torch.autograd.gradcheck(lambda q: _QueueLogits.apply(q, _QueueSnapshot(queue), targets)[0], (query,))
