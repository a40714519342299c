"""The CPU training path of MultiheadAttention (explicit attention with the cheaper dropout, fused projections)
computes what scaled_dot_product_attention and separate projections compute."""

import pytest
import torch
import torch.nn.functional as F

from modeling_lddetr import fused_attention
from modeling_lddetr.attention import MultiheadAttention
from modeling_lddetr.fused_attention import attention_with_dropout
from tests.helpers import with_kernels

B, LQ, LK, HEADS = 4, 9, 13, 4


def _key_mask() -> torch.Tensor:
    mask = torch.ones(B, LK, dtype=torch.bool)
    for b in range(B):
        mask[b, LK - 3 * b :] = False  # sample 0 unpadded, the others with 3, 6, 9 padded keys
    return mask


@pytest.mark.parametrize("key_mask", [None, _key_mask()], ids=["no mask", "key mask"])
def test_explicit_attention_without_dropout_equals_sdpa(key_mask):
    torch.manual_seed(0)
    query, key, value = torch.randn(B, HEADS, LQ, 16), torch.randn(B, HEADS, LK, 16), torch.randn(B, HEADS, LK, 8)
    sdpa_mask = None if key_mask is None else key_mask[:, None, None, :]
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=sdpa_mask)
    torch.testing.assert_close(attention_with_dropout(query, key, value, key_mask, 0.0), expected, atol=1e-6, rtol=0)


def test_attention_dropout_drops_weights_and_keeps_their_expected_value():
    # With identity values the output is the attention weights themselves (one value dimension per key);
    # `draws` copies of the batch in one call give independent draws of the dropped weights.
    torch.manual_seed(1)
    query, key = torch.randn(B, HEADS, LQ, 16), torch.randn(B, HEADS, LK, 16)
    identity = torch.eye(LK).expand(B, HEADS, LK, LK)
    key_mask, p, draws = _key_mask(), 0.25, 4000
    weights = attention_with_dropout(query, key, identity, key_mask, 0.0)
    dropped = attention_with_dropout(
        *(x.repeat(draws, 1, 1, 1) for x in (query, key, identity)), key_mask.repeat(draws, 1), p
    ).view(draws, *weights.shape)
    kept = dropped != 0
    torch.testing.assert_close(dropped, torch.where(kept, weights / (1 - p), 0), atol=1e-6, rtol=0)
    valid = key_mask[:, None, None, :].expand_as(weights)
    assert not kept[:, ~valid].any()  # padded keys weigh nothing
    keep_rate = kept[:, valid].double().mean().item()
    assert abs(keep_rate - (1 - p)) < 5 * (p * (1 - p) / kept[:, valid].numel()) ** 0.5
    # E[dropped weight] = weight: the mean of the draws is within 5 of its standard errors
    standard_error = weights * (p / (1 - p) / draws) ** 0.5
    assert ((dropped.mean(0) - weights).abs() <= 5 * standard_error + 1e-7).all()


def test_training_on_cpu_uses_the_explicit_path_with_the_layers_dropout(monkeypatch):
    layer = MultiheadAttention(32, HEADS, dropout=0.1).train()
    calls = []
    monkeypatch.setattr(
        "modeling_lddetr.fused_attention.attention_with_dropout", lambda *args: calls.append(args[-1]) or args[2]
    )
    x = torch.randn(B, LK, 32)
    layer(x, x, x)
    assert calls == [0.1]
    layer.eval()(x, x, x)
    assert calls == [0.1]  # evaluation goes to scaled_dot_product_attention


def _separately_projected(layer: MultiheadAttention, query, key, value, key_mask) -> torch.Tensor:
    # the same layer with unshared inputs: clones are not `is` the same tensor, so no projection is fused
    return layer(query.clone(), key.clone(), value.clone(), key_mask=key_mask)


@pytest.mark.parametrize("shared", ["query is key", "key is value"])
def test_fused_projections_give_the_outputs_and_gradients_of_separate_ones(shared, monkeypatch):
    fused_calls = []
    fused_linear = fused_attention.fused_linear
    monkeypatch.setattr(
        fused_attention, "fused_linear", lambda *args: fused_calls.append(args[1:]) or fused_linear(*args)
    )
    torch.manual_seed(2)
    layer = MultiheadAttention(32, HEADS, dropout=0.0).train()
    if shared == "query is key":
        inputs = torch.randn(B, LK, 32, requires_grad=True)
        other = torch.randn(B, LK, 32, requires_grad=True)
        arguments = (inputs, inputs, other)
    else:
        inputs = torch.randn(B, LK, 32, requires_grad=True)
        other = torch.randn(B, LQ, 32, requires_grad=True)
        arguments = (other, inputs, inputs)
    key_mask, target = _key_mask(), torch.randn(B, arguments[0].shape[1], 32)

    def outputs_and_gradients(run):
        layer.zero_grad()
        inputs.grad = other.grad = None
        out = run()
        (out * target).sum().backward()
        return [out, inputs.grad, other.grad] + [parameter.grad for parameter in layer.parameters()]

    fused = outputs_and_gradients(lambda: layer(*arguments, key_mask=key_mask))
    separate = outputs_and_gradients(lambda: _separately_projected(layer, *arguments, key_mask))
    shared_projections = (layer.q_proj, layer.k_proj) if shared == "query is key" else (layer.k_proj, layer.v_proj)
    assert fused_calls == [shared_projections]  # one fused GEMM in the first run, none in the second
    for a, b in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    layer = with_kernels(layer, "eager")  # the attention formula on three nn.Linear projections
    eager = outputs_and_gradients(lambda: layer(*arguments, key_mask=key_mask))
    assert len(fused_calls) == 1
    for a, b in zip(fused, eager, strict=True):  # another formula (softmax of the explicit scores): fp32 rounding
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert [name for name, _ in layer.named_parameters()] == [
        f"{proj}.{kind}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj") for kind in ("weight", "bias")
    ]
