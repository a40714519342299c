"""Distill Align's fused loss (stacked GEMMs, scaled queries, shared log-normaliser, custom backwards) equals the
plain formula of the package (`contrastive_loss`, kernels="eager"): concatenate [in-batch | queue] logits, divide
by the temperature, log_softmax."""

import copy

import pytest
import torch
import torch.nn.functional as F

from modeling_lddetr.distill_align import DistillAlign, contrastive_loss
from modeling_lddetr.fused_distill_align import (
    QueueSnapshot,
    _DistillationCrossEntropy,
    _QueueLogits,
    fused_contrastive_loss,
)
from tests.helpers import tiny_config


def eager_twin(module: DistillAlign) -> DistillAlign:
    """The same module, parameters, queues and pointer, with the plain formula (kernels="eager")."""
    twin = copy.deepcopy(module)
    twin.kernels = "eager"
    return twin


def features(dtype, batch=6, clips=9, tokens=5, d=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    video, text, video_momentum, text_momentum = (
        torch.randn(batch, n, d, generator=generator, dtype=dtype) for n in (clips, tokens, clips, tokens)
    )
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

    expected = contrastive_loss(query, keys, queue, target, alpha, temperature)
    expected_grads = torch.autograd.grad(expected, (query, temperature))
    loss = fused_contrastive_loss(query, keys, QueueSnapshot(queue), target, alpha, temperature)
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
    video_queue = module.video_queue.clone()
    eager = eager_twin(module)

    losses = module(video, text, video_momentum, text_momentum, video_mask, text_mask, training_progress=0.5)
    assert not torch.equal(module.video_queue, video_queue) and module.queue_ptr.item() == (13 + 6) % 16
    grads = torch.autograd.grad(sum(losses), (video, text, module.temperature))

    expected_losses = eager(video, text, video_momentum, text_momentum, video_mask, text_mask, training_progress=0.5)
    expected_grads = torch.autograd.grad(sum(expected_losses), (video, text, eager.temperature))
    for loss, expected in zip(losses, expected_losses):
        torch.testing.assert_close(loss, expected, **TOLERANCES[dtype])
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOLERANCES[dtype])
    for name, buffer in module.named_buffers():  # the same features enqueued at the same columns
        torch.testing.assert_close(buffer, eager.get_buffer(name), **TOLERANCES[dtype], msg=name)


def test_evaluation_loss_equals_the_formula_under_bf16_autocast_in_fp32():
    """Under autocast the alignment logits stay fp32: the loss equals the fp32 formula on the bf16 features."""
    module = DistillAlign(tiny_config(hidden_size=32, queue_length=64)).eval()
    video, text, video_momentum, text_momentum, video_mask, text_mask = features(torch.float32)
    bf16 = [x.detach().bfloat16() for x in (video, text, video_momentum, text_momentum)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_align, _ = module(*bf16, video_mask, text_mask)
        expected, _ = eager_twin(module)(*bf16, video_mask, text_mask)
    assert loss_align.dtype == expected.dtype == torch.float32
    fp32_formula, _ = eager_twin(module)(*(x.float() for x in bf16), video_mask, text_mask)
    torch.testing.assert_close(loss_align, expected, **TOLERANCES[torch.float32])
    torch.testing.assert_close(loss_align, fp32_formula, **TOLERANCES[torch.float32])


def test_distillation_cross_entropy_passes_gradcheck():
    generator = torch.Generator().manual_seed(0)
    batch_logits = torch.randn(3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    queue_logits = torch.randn(3, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randn(3, 10, dtype=torch.float64, generator=generator).softmax(1)
    batch_targets, queue_targets = targets[:, :3], targets[:, 3:]
    assert torch.autograd.gradcheck(
        lambda b, q: _DistillationCrossEntropy.apply(b, q, batch_targets, queue_targets, 0.3),
        (batch_logits, queue_logits),
    )


def test_stacked_queue_logits_equal_two_products_and_pass_gradcheck():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    queue = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    query_logits, target_logits = _QueueLogits.apply(query, QueueSnapshot(queue), targets)
    torch.testing.assert_close(query_logits, query @ queue, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(target_logits, targets @ queue, rtol=1e-15, atol=1e-15)
    assert not target_logits.requires_grad
    assert torch.autograd.gradcheck(lambda q: _QueueLogits.apply(q, QueueSnapshot(queue), targets)[0], (query,))
