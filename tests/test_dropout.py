"""The cheaper CPU dropout keeps torch's distribution: P(keep) = 1 - p per element, independently, survivors
scaled by 1/(1-p), the gradient through the same mask, and masks governed by torch's seed."""

import pytest
import torch

from modeling_lddetr.dropout import Dropout
from modeling_lddetr.fused_dropout import dropout, keep_mask
from tests.helpers import compile_counting_graphs

N = 1 << 22


def _within_binomial_bound(frequency: float, probability: float, trials: int) -> bool:
    return abs(frequency - probability) < 5 * (probability * (1 - probability) / trials) ** 0.5


# 0.5 is one bit per element, 0.25 is decided by the first 8 bits alone; at 2**-10 only the second draw of the
# elements on the boundary (first byte 0) drops anything; at 0.1 and 0.3 it adds 0.0023 and 0.0031 to the drop
# probability, about 3 times the bound at this N
@pytest.mark.parametrize("p", [0.1, 0.5, 0.25, 0.3, 2**-10])
def test_keep_frequency_is_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([N]), p)
    assert mask.dtype == torch.bool and mask.shape == (N,)
    assert _within_binomial_bound(mask.double().mean().item(), 1 - p, N)


@pytest.mark.parametrize("p", [0.1, 0.5, 2**-10])
def test_neighbouring_elements_are_independent(p):
    # Neighbours share 64-bit random words (8 first bytes per word), and at 0.1 and 2**-10 the elements on the
    # boundary share the words of their second draws: the joint keep frequency must be (1 - p)^2 at every offset
    # inside a word, and within a word as well as across words.
    # At 0.5 every element is one bit of a 64-bit word: all offsets inside a word are checked.
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([N]), p).double()
    for offset in range(1, 65 if p == 0.5 else 9):
        both = (mask[:-offset] * mask[offset:]).mean().item()
        assert _within_binomial_bound(both, (1 - p) ** 2, N - offset), offset
    halves = mask.view(-1, 2)
    assert _within_binomial_bound((halves[:, 0] * halves[:, 1]).mean().item(), (1 - p) ** 2, N // 2)
    correlation = torch.corrcoef(torch.stack([halves[:, 0], halves[:, 1]]))[0, 1].item()
    assert abs(correlation) < 5 / (N // 2) ** 0.5


def test_masks_follow_the_torch_seed_and_differ_between_calls():
    shape = torch.Size([64, 33])
    torch.manual_seed(3)
    first, second = keep_mask(shape, 0.1), keep_mask(shape, 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask(shape, 0.1))
    assert not torch.equal(first, second)
    with torch.random.fork_rng():
        forked = keep_mask(shape, 0.1)
    assert torch.equal(forked, keep_mask(shape, 0.1))  # fork_rng restored the generator it advanced


def test_successive_masks_are_independent():
    torch.manual_seed(4)
    first, second = keep_mask(torch.Size([N]), 0.5).double(), keep_mask(torch.Size([N]), 0.5).double()
    assert _within_binomial_bound((first * second).mean().item(), 0.25, N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_scales_survivors_exactly_and_backpropagates_through_the_same_mask(dtype, p):
    torch.manual_seed(5)
    x = (torch.rand(400, 500) + 1).to(dtype).requires_grad_()
    y = Dropout(p).train()(x)
    assert y.dtype == dtype
    kept = y != 0  # x > 0, so only dropped elements are zero
    assert _within_binomial_bound(kept.double().mean().item(), 1 - p, kept.numel())
    scale = 1.0 / (1.0 - p)
    assert torch.equal(y[kept], (x[kept].float() * scale).to(dtype))  # x * fp32(scale), as torch's dropout
    grad = torch.randn(400, 500).to(dtype)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(kept, (grad.float() * scale).to(dtype), 0))


def test_dropout_follows_the_torch_seed():
    x = torch.randn(30, 40)
    torch.manual_seed(6)
    first = dropout(x, 0.1, True)
    torch.manual_seed(6)
    assert torch.equal(first, dropout(x, 0.1, True))
    assert not torch.equal(first, dropout(x, 0.1, True))


def test_evaluation_zero_and_one_p():
    x = torch.randn(10, 7)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_dropout_under_torch_compile_is_one_graph_with_the_same_distribution():
    # the seed's host read would break the graph at every dropout: compiled, the numpy mask is an opaque op
    compiled, graphs = compile_counting_graphs(lambda t: dropout(t * 1, 0.1, True))
    x = (torch.rand(200, 300) + 1).requires_grad_()
    y = compiled(x)
    assert len(graphs) == 1
    assert any("keep_mask_like" in str(node.target) for node in graphs[0].graph.nodes)  # not inductor's RNG
    kept = y != 0
    assert _within_binomial_bound(kept.double().mean().item(), 0.9, kept.numel())
    assert torch.equal(y[kept], x[kept] * (1 / 0.9))
    grad = torch.randn(200, 300)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(kept, grad * (1 / 0.9), 0))
