"""The PReLU with the vectorised CPU backward equals nn.PReLU: values, gradients, the sub-gradient at 0, autocast."""

import pytest
import torch
from torch import nn

from modeling_lddetr.fused_prelu import _PReLUFunction
from modeling_lddetr.prelu import PReLU
from tests.helpers import compile_counting_graphs


@pytest.mark.parametrize("num_parameters", [1, 5])
def test_backward_passes_gradcheck_in_float64(num_parameters):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    x = (x + 0.1 * x.sign()).requires_grad_()  # away from the kink, where finite differences are meaningless
    weight = torch.rand(num_parameters, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(_PReLUFunction.apply, (x, weight))


@pytest.mark.parametrize("num_parameters, shape", [(1, (4, 7, 6)), (6, (4, 6, 7)), (6, (2, 6)), (1, (5,))])
def test_values_and_gradients_equal_nn_prelu_including_zero_inputs(num_parameters, shape):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator)
    x.view(-1)[::3] = 0.0  # torch's sub-gradient at 0: grad_x = w * g, no contribution to grad_w
    grad = torch.randn(shape, generator=generator)
    ours, reference = PReLU(num_parameters), nn.PReLU(num_parameters)
    with torch.no_grad():
        reference.weight.copy_(torch.linspace(-0.5, 0.7, num_parameters))
        ours.weight.copy_(reference.weight)
    results = []
    for module in (ours, reference):
        x_in = x.clone().requires_grad_()
        y = module(x_in)
        y.backward(grad)
        results.append((y, x_in.grad, module.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_same_state_dict_and_class_as_nn_prelu():
    ours = PReLU()
    assert isinstance(ours, nn.PReLU)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {"weight": torch.Size([1])}


def test_autocast_runs_in_bf16_like_nn_prelu():
    x = torch.randn(8, 16)
    grad = torch.randn(8, 16)
    results = []
    for module in (PReLU(), nn.PReLU()):
        x_in = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x_in)
        y.backward(grad.to(y.dtype))
        assert (
            y.dtype == torch.bfloat16 and x_in.grad.dtype == torch.float32 and module.weight.grad.dtype == torch.float32
        )
        results.append((y.float(), x_in.grad, module.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


def test_compiles_as_one_graph_with_the_eager_gradients():
    # weight.item() in the eager backward splits the graph when the input is an intermediate (as in the model);
    # compiled, the backward is written with torch.where
    torch.manual_seed(0)
    linear, module = nn.Linear(33, 33), PReLU()
    x, grad = torch.randn(64, 33), torch.randn(64, 33)

    def gradients(fn):
        for p in (*linear.parameters(), module.weight):
            p.grad = None
        fn(x).backward(grad)
        return [p.grad.clone() for p in (*linear.parameters(), module.weight)]

    eager = gradients(lambda t: module(linear(t)))
    compiled_fn, graphs = compile_counting_graphs(lambda t: module(linear(t)))
    compiled = gradients(compiled_fn)
    assert len(graphs) == 1
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_forward_without_autograd_equals_forward(dtype):
    torch.manual_seed(0)
    module = PReLU(inplace=True)
    with torch.no_grad():
        module.weight.fill_(-0.3712)  # not a bf16 number: the in-place path must round it as prelu does
    x = torch.randn(64, 33).to(dtype)
    x[0, :3] = 0.0
    expected = module(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        target = x.clone()
        out = module(target)
    assert out.data_ptr() == target.data_ptr()  # written in place
    assert torch.equal(out, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        under_autocast = module(x.float())  # fp32 in, bf16 out: not in place, as forward
    assert under_autocast.dtype == torch.bfloat16


def test_in_place_forward_keeps_autograd_working():
    module = PReLU(inplace=True)
    x = torch.randn(8, 5, requires_grad=True)
    y = module(x)  # grad enabled: the out-of-place forward
    y.sum().backward()
    assert x.grad is not None and not torch.equal(y, x)
