"""The cheaper CPU dropout keeps torch's distribution: P(keep) = 1 - p per element, survivors scaled by 1/(1-p)."""

import pytest
import torch

from modeling_lddetr.dropout import Dropout, keep_mask

N = 1_000_000


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.3])
def test_keep_frequency_is_one_minus_p(p):
    torch.manual_seed(0)
    kept = keep_mask(torch.Size([N]), p, torch.device("cpu")).double().mean().item()
    sigma = (p * (1 - p) / N) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma


def test_mask_elements_are_independent():
    # neighbours share random words (8 or 32 bits each): their joint frequency must still be (1-p)^2
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([N]), 0.5, torch.device("cpu")).double()
    both = (mask[:-1] * mask[1:]).mean().item()
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / N) ** 0.5
    mask = keep_mask(torch.Size([N]), 0.1, torch.device("cpu")).double()
    both = (mask[:-1] * mask[1:]).mean().item()
    assert abs(both - 0.81) < 5 * (0.81 * 0.19 / N) ** 0.5


def test_masks_follow_the_torch_seed_and_differ_between_calls():
    torch.manual_seed(3)
    first, second = keep_mask(torch.Size([64, 33]), 0.1, torch.device("cpu")), keep_mask(torch.Size([64, 33]), 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask(torch.Size([64, 33]), 0.1, torch.device("cpu")))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_scales_survivors_and_backpropagates_through_the_same_mask(dtype):
    layer = Dropout(0.1).train()
    x = (torch.rand(40, 50) + 1).to(dtype).requires_grad_()
    y = layer(x)
    assert y.dtype == dtype
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept] / 0.9).to(dtype))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (kept / 0.9).to(dtype))


def test_evaluation_and_zero_p_are_the_identity():
    x = torch.randn(10, 7)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
