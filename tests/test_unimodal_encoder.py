"""The unimodal encoder's fused input layer (LayerNorm -> dropout -> Linear with the gradients of the Linear and
the LayerNorm's affine taken as two GEMMs) computes what the plain modules (kernels="eager") compute, on the same
dropout masks."""

import pytest
import torch

from modeling_lddetr.fused_input_layer import fused_input_layer_applies
from modeling_lddetr.unimodal_encoder import UnimodalEncoder
from tests.helpers import with_kernels


def _encoder(input_dim=50, hidden=16, p=0.5, seed=0):
    torch.manual_seed(seed)
    encoder = UnimodalEncoder(input_dim, hidden, p).train()
    with torch.no_grad():  # away from the initial (1, 0) affine, whose gradients would hide a swapped γ and β
        encoder.norm1.weight.uniform_(-1.5, 1.5)
        encoder.norm1.bias.uniform_(-1.0, 1.0)
    return encoder


def _plain_forward(encoder, features):
    # the plain modules one by one, the masks drawn by the fused dropout, as the fused input layer draws its own
    x = encoder.linear1(encoder.dropout1(encoder.norm1(features))).relu()
    return encoder.linear2(encoder.dropout2(encoder.norm2(x)))


def _applies(encoder, features):
    return fused_input_layer_applies(encoder.kernels, encoder.training, encoder.dropout1.p, features)


def _output_and_gradients(encoder, forward, features, seed):
    torch.manual_seed(seed)
    out = forward(features)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), list(encoder.parameters()))
    return out, dict(zip([name for name, _ in encoder.named_parameters()], grads))


@pytest.mark.parametrize("p", [0.5, 0.1])
def test_fused_input_layer_equals_the_plain_modules_with_gradients(p):
    encoder = _encoder(p=p)
    features = torch.randn(3, 7, 50)
    assert _applies(encoder, features)
    got, got_grads = _output_and_gradients(encoder, encoder, features, seed=5)
    expected, expected_grads = _output_and_gradients(encoder, lambda f: _plain_forward(encoder, f), features, seed=5)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for name, expected_grad in expected_grads.items():
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(got_grads[name], expected_grad, atol=1e-6 * max(1.0, scale), rtol=0, msg=name)


def test_fused_input_layer_draws_the_masks_of_the_dropout_module():
    # the same torch seed gives the same dropped elements as the Dropout module would: the output's rows depend
    # only on their own kept features
    encoder = _encoder(p=0.5)
    features = torch.randn(2, 4, 50)
    torch.manual_seed(11)
    fused = encoder(features)
    torch.manual_seed(12)
    other_seed = encoder(features)
    torch.manual_seed(11)
    plain = _plain_forward(encoder, features)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(fused, other_seed)


def test_without_gradient_the_in_place_dropout_equals_the_plain_modules():
    # the momentum encoders' path: no autograd graph, the mask applied in place on the LayerNorm's output
    encoder = _encoder(p=0.1)
    features = torch.randn(3, 7, 50)
    torch.manual_seed(9)
    with torch.no_grad():
        got = encoder(features)
    torch.manual_seed(9)
    with torch.no_grad():
        expected = _plain_forward(encoder, features)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_inputs_that_need_a_gradient_or_are_not_fp32_cpu_training_take_the_plain_modules():
    encoder = _encoder()
    features = torch.randn(2, 4, 50, requires_grad=True)
    torch.manual_seed(3)
    out = encoder(features)
    (grad,) = torch.autograd.grad(out.sum(), features)  # the fused layer would return no input gradient
    assert grad.shape == features.shape and grad.abs().sum() > 0
    assert not _applies(encoder, features.detach().double())
    assert not _applies(encoder.eval(), features.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _applies(encoder.train(), features.detach())
    assert not _applies(with_kernels(encoder, "eager"), features.detach())


def test_fused_input_layer_matches_float64_gradients():
    # fp32 fused gradients against the plain modules in float64 (same masks): the reordered sums stay within fp32
    # rounding of the exact values
    encoder = _encoder(input_dim=300, hidden=32, p=0.5, seed=2)
    features = torch.randn(4, 9, 300)
    _, got = _output_and_gradients(encoder, encoder, features, seed=7)
    exact = _encoder(input_dim=300, hidden=32, p=0.5, seed=2).double()
    _, expected = _output_and_gradients(exact, lambda f: _plain_forward(exact, f), features.double(), seed=7)
    for name in ("norm1.weight", "norm1.bias", "linear1.weight", "linear1.bias"):
        error = (got[name].double() - expected[name]).abs().max().item()
        assert error < 2e-5 * max(1.0, expected[name].abs().max().item()), (name, error)
