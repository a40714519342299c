"""Behaviour of LDDetrModel beyond official parity: loops, batch invariance, gradients, state, bad inputs."""

import copy
import re

import pytest
import torch

from modeling_lddetr import LDDetrConfig, LDDetrModel
from tests.helpers import NO_DROPOUT, random_batch, tiny_config


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return LDDetrModel(tiny_config(**overrides))


def test_output_shapes_and_loss_names():
    model = _model(num_decoder_layers=3).eval()
    inputs, labels = random_batch(model.config, [9, 6], [5, 3])
    output = model(**inputs, labels=labels)
    assert output.logits.shape == (2, 5, 2) and output.pred_spans.shape == (2, 5, 2)
    assert output.saliency_scores.shape == (2, 9)
    assert len(output.auxiliary_outputs) == 2
    assert ((output.pred_spans >= 0) & (output.pred_spans <= 1)).all()
    expected = {"loss_span", "loss_giou", "loss_label", "loss_align", "loss_sim", "loss_saliency"}
    expected |= {f"{name}_{i}" for name in ("loss_span", "loss_giou", "loss_label") for i in (0, 1)}
    assert set(output.loss_dict) == expected
    weights = model.config.weight_dict
    assert output.loss.item() == pytest.approx(
        sum(weights[k] * v.item() for k, v in output.loss_dict.items()), rel=1e-6
    )


def test_parameter_count_of_the_official_configuration():
    model = LDDetrModel(LDDetrConfig(queue_length=8))
    # official: 12,920,108 total, of which 8,704 belong to an unused text position table we do not build
    assert sum(p.numel() for p in model.parameters()) == 12_920_108 - 8_704
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 11_919_144


def test_loop_decoder_runs_the_configured_number_of_passes():
    one = _model(num_decoder_loops=1).eval()
    three = LDDetrModel(tiny_config(num_decoder_loops=3)).eval()
    three.load_state_dict(one.state_dict())
    inputs, _ = random_batch(one.config, [8, 6], [4, 4])
    with torch.no_grad():
        out_one, out_three = one(**inputs), three(**inputs)
    assert (out_one.pred_spans - out_three.pred_spans).abs().max() > 1e-4

    # three manual passes: the normalised last-layer output becomes the next content query; anchors restart
    captured = {}
    # the inputs of the first pass (the loop decoder builds the zero queries and expands its anchors)
    hook = three.loop_decoder.decoder.register_forward_hook(
        lambda module, args, out: captured.update(args=captured.get("args", args))
    )
    with torch.no_grad():
        three(**inputs)
    hook.remove()
    queries, memory, memory_mask, memory_pos, anchors = captured["args"]
    decoder = three.loop_decoder.decoder
    with torch.no_grad():
        for _ in range(3):
            hidden, reference = decoder(queries, memory, memory_mask, memory_pos, anchors)
            queries = hidden[-1]
        logits, spans = three.moment_retrieval_head(hidden, reference)
    torch.testing.assert_close(spans[-1], out_three.pred_spans, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[-1], out_three.logits, atol=1e-6, rtol=0)


def test_zero_loops_is_rejected():
    with pytest.raises(ValueError, match="num_decoder_loops"):
        tiny_config(num_decoder_loops=0)


@pytest.mark.parametrize("official_slicing", [False, True])
def test_outputs_do_not_depend_on_the_rest_of_the_batch(official_slicing):
    model = _model(official_highlight_slicing=official_slicing).eval()
    lengths, tokens = [12, 5, 9], [6, 3, 7]
    inputs, _ = random_batch(model.config, lengths, tokens)
    with torch.no_grad():
        batched = model(**inputs)
        for b, (lv, lt) in enumerate(zip(lengths, tokens)):
            alone = model(
                video_features=inputs["video_features"][b : b + 1, :lv],
                video_attention_mask=inputs["video_attention_mask"][b : b + 1, :lv],
                text_features=inputs["text_features"][b : b + 1, :lt],
                text_attention_mask=inputs["text_attention_mask"][b : b + 1, :lt],
            )
            torch.testing.assert_close(batched.pred_spans[b], alone.pred_spans[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.logits[b], alone.logits[0], atol=1e-5, rtol=0)
            if not official_slicing:  # the official head maps spans to clips with the padded length
                torch.testing.assert_close(batched.saliency_scores[b, :lv], alone.saliency_scores[0], atol=1e-5, rtol=0)


def test_outputs_do_not_depend_on_trailing_padding():
    model = _model().eval()
    inputs, _ = random_batch(model.config, [7], [4])
    padded, _ = random_batch(model.config, [7], [4], padded_video=30, padded_text=11)
    with torch.no_grad():
        plain, with_padding = model(**inputs), model(**padded)
    torch.testing.assert_close(plain.pred_spans, with_padding.pred_spans, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.saliency_scores, with_padding.saliency_scores[:, :7], atol=1e-5, rtol=0)


def test_training_batchnorm_statistics_ignore_padding():
    model = _model(**NO_DROPOUT).train()
    inputs, labels = random_batch(model.config, [10, 6], [4, 4])
    padded, _ = random_batch(model.config, [10, 6], [4, 4], padded_video=25)
    twin = copy.deepcopy(model)
    model(**inputs, labels=labels)
    twin(**padded, labels=labels)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        if "running" in name:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


# parameters whose gradient is zero in exact arithmetic (float rounding leaves noise, or exactly 0):
# a key bias adds the same q·b to every score of a query, which the softmax cancels; a conv bias is cancelled by the
# BatchNorm after it; the saliency bias shifts every clip's score alike, and the saliency losses compare clips
MATHEMATICALLY_ZERO_GRADIENT = re.compile(
    r"(attention\.k_proj|_key_content_proj|_key_pos_proj)\.bias$|convolutional_blocks\.\d+\.conv\d\.bias$|saliency_proj\.bias$"
)


def test_one_training_step_moves_every_trainable_parameter():
    model = _model()
    inputs, labels = random_batch(model.config, [10, 8, 6], [5, 4, 3])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    output = model(**inputs, labels=labels)
    output.loss.backward()
    momentum = [name for name, _ in model.named_parameters() if name.startswith("momentum_")]
    assert momentum
    largest = max(p.grad.abs().max() for p in model.parameters() if p.grad is not None)
    zero_gradient = [name for name, _ in model.named_parameters() if MATHEMATICALLY_ZERO_GRADIENT.search(name)]
    assert len(zero_gradient) >= 4
    for name, param in model.named_parameters():
        if name.startswith("momentum_"):
            assert not param.requires_grad and param.grad is None, name
        elif name in zero_gradient:
            assert param.grad is not None and param.grad.abs().max() < 1e-5 * largest, name
        else:
            assert param.grad is not None and param.grad.abs().max() > 1e-7 * largest, name
    optimizer.step()
    for name, param in model.named_parameters():
        if param.requires_grad and name not in zero_gradient:
            assert not torch.equal(param, before[name]), f"{name} did not move"
    model(**inputs, labels=labels)  # the next forward's EMA follows the online encoders
    assert not torch.equal(model.momentum_video_encoder.linear1.weight, before["momentum_video_encoder.linear1.weight"])


def test_training_forward_updates_momentum_then_enqueues_with_wraparound():
    model = _model(queue_length=16)
    inputs, labels = random_batch(model.config, [8] * 6, [4] * 6)  # 16 % 6 != 0: the official code would skip
    model.train()
    for step in range(3):
        model(**inputs, labels=labels).loss.backward()
        assert model.distill_align.queue_ptr.item() == (6 * (step + 1)) % 16
    momentum = dict(model.momentum_video_encoder.named_parameters())
    online = dict(model.video_encoder.named_parameters())
    assert all(torch.allclose(momentum[k], online[k]) for k in online)  # no optimizer step: EMA of equal weights


def test_enqueued_features_are_the_momentum_global_features():
    model = _model(queue_length=16, **NO_DROPOUT)
    inputs, labels = random_batch(model.config, [8, 5], [4, 2])
    model.train()
    model(**inputs, labels=labels)
    with torch.no_grad():
        mask = inputs["video_attention_mask"][..., None]
        video = model.momentum_video_encoder(inputs["video_features"])
        expected = torch.nn.functional.normalize((video * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(model.distill_align.video_queue[:, :2].T, expected, atol=1e-6, rtol=0)


def test_distillation_warmup_follows_training_progress():
    model = _model(**NO_DROPOUT)
    inputs, labels = random_batch(model.config, [8, 5], [4, 2])
    losses = {}
    for progress in (0.0, 0.5, None):
        twin = copy.deepcopy(model).train()
        twin.set_training_progress(progress)
        losses[progress] = twin(**inputs, labels=labels).loss_dict["loss_align"].item()
    assert losses[0.0] != losses[0.5] != losses[None]
    # the loss is linear in the coefficient: half-way lies half-way
    assert losses[0.5] == pytest.approx((losses[0.0] + losses[None]) / 2, rel=1e-5)


def test_aux_loss_off_and_tvsum_style_losses():
    model = _model(aux_loss=False).train()
    inputs, labels = random_batch(model.config, [8, 5], [4, 2])
    output = model(**inputs, labels=labels)
    assert not any(name.endswith("_0") for name in output.loss_dict)
    saliency_only = _model(moment_retrieval_loss=False).train()
    output = saliency_only(**inputs, labels=labels)
    assert set(output.loss_dict) == {"loss_align", "loss_sim", "loss_saliency"}
    output.loss.backward()


def test_hidden_sizes_other_than_256():
    model = _model(hidden_size=48, num_attention_heads=6)
    inputs, labels = random_batch(model.config, [6, 4], [3, 3])
    output = model.train()(**inputs, labels=labels)
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_step_has_no_nan(dtype):
    model = _model().train()
    inputs, labels = random_batch(model.config, [12, 7], [5, 3])
    with torch.autocast("cpu", dtype=dtype):
        output = model(**inputs, labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_training_losses_are_within_bf16_tolerance_of_fp32():
    fp32 = _model(**NO_DROPOUT).train()
    # at random init the query scores are near ties that any rounding reorders, and the saliency follows the
    # top-1 moment: equal scores make query 0 the top-1 moment in both precisions
    torch.nn.init.zeros_(fp32.moment_retrieval_head.class_embed.weight)
    bf16 = copy.deepcopy(fp32)
    inputs, labels = random_batch(fp32.config, [12, 7, 9], [5, 3, 4])
    expected = fp32(**inputs, labels=labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = bf16(**inputs, labels=labels)
    output.loss.backward()
    assert set(output.loss_dict) == set(expected.loss_dict)
    for name, value in expected.loss_dict.items():
        # bf16 keeps 8 bits of mantissa (relative steps of 0.4 %); a few layers of it stay within a few percent
        assert output.loss_dict[name].item() == pytest.approx(value.item(), rel=0.05, abs=0.02), name
    assert output.loss.item() == pytest.approx(expected.loss.item(), rel=0.02)
    assert all(torch.isfinite(p.grad).all() for p in bf16.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(video_features=i["video_features"][..., :-1]), "video_feature_dim"),
        (lambda i: i.update(text_features=i["text_features"][..., :-2]), "text_feature_dim"),
        (
            lambda i: i.update(text_features=i["text_features"][:1], text_attention_mask=i["text_attention_mask"][:1]),
            "batch sizes",
        ),
        (lambda i: i["video_attention_mask"][1].zero_(), "no valid clip"),
        (lambda i: i["text_attention_mask"][0].zero_(), "no valid token"),
        (lambda i: i["video_features"].__setitem__((0, 1, 3), float("nan")), "NaN"),
        (lambda i: i["text_features"].__setitem__((1, 0, 2), float("-inf")), "text_features contain NaN or inf"),
        (lambda i: i["video_features"].__setitem__((1, 2, 0), float("inf")), "video_features contain NaN or inf"),
        (lambda i: i.update(video_attention_mask=i["video_attention_mask"][:, :-1]), "masks must match"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    model = _model().eval()
    inputs, _ = random_batch(model.config, [6, 5], [3, 3])
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_huge_finite_features_are_not_reported_as_nan_or_inf():
    """The input check sums the features first; a sum that overflows on finite values is no error."""
    model = _model().eval()
    inputs, _ = random_batch(model.config, [6, 5], [3, 3])
    inputs["video_features"][0, :4] = 3e38
    assert torch.isfinite(inputs["video_features"]).all() and not torch.isfinite(inputs["video_features"].sum())
    with torch.no_grad():
        model(**inputs)


def test_evaluation_forward_changes_no_state():
    model = _model().eval()
    inputs, labels = random_batch(model.config, [6, 5], [3, 3])
    before = copy.deepcopy(model.state_dict())
    model(**inputs, labels=labels)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.slow
def test_torch_compile_forward_matches_eager():
    model = _model().eval()
    inputs, _ = random_batch(model.config, [6, 5], [3, 3])
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).pred_spans, model(**inputs).pred_spans, atol=1e-5, rtol=0)


def test_queue_logits_backward_passes_gradcheck():
    """The custom backward of query @ queue, also when an enqueue overwrote queue columns after the forward."""
    from modeling_lddetr.fused_distill_align import QueueSnapshot, _QueueLogits

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    original = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    targets = torch.randn(2, 4, dtype=torch.float64, generator=generator)

    def logits_then_enqueue(query):
        snapshot = QueueSnapshot(original.clone())
        logits, _ = _QueueLogits.apply(query, snapshot, targets)
        # what DistillAlign._enqueue does between the loss and the backward
        snapshot.record_overwrite(torch.tensor([4, 5, 0]))
        snapshot.queue[:, snapshot.columns] = torch.randn(4, 3, dtype=torch.float64, generator=generator)
        snapshot.version_after_enqueue = snapshot.queue._version
        return logits

    assert torch.autograd.gradcheck(lambda q: _QueueLogits.apply(q, QueueSnapshot(original), targets)[0], (query,))
    assert torch.autograd.gradcheck(logits_then_enqueue, (query,))
