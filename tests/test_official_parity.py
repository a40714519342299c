"""Parity with the official LD-DETR code: golden vectors recorded by running it (the `official_fixture_dir` fixture)."""

import json

import pytest
import torch
from helpers import assert_same_model_outputs, old_key, random_batch, tiny_config
from safetensors.torch import load_file

from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.convert_official_checkpoint import (
    config_from_official_checkpoint,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
    processor_from_official_checkpoint,
)
from modeling_lddetr.convert_official_checkpoint import main as convert_main

OUTPUT_NAMES = ["pred_logits", "pred_spans", "saliency_scores", "aux_0_pred_logits", "aux_0_pred_spans"]


def _outputs_by_official_name(output):
    return {
        "pred_logits": output.logits,
        "pred_spans": output.pred_spans,
        "saliency_scores": output.saliency_scores,
        "aux_0_pred_logits": output.auxiliary_outputs[0]["logits"],
        "aux_0_pred_spans": output.auxiliary_outputs[0]["pred_spans"],
    }


def _labels(inputs):
    return [
        {
            "spans": inputs[f"span_labels_{b}"],
            "saliency_scores": inputs["saliency_all_labels"][b],
            "saliency_pos_indices": inputs["saliency_pos_labels"][b],
            "saliency_neg_indices": inputs["saliency_neg_labels"][b],
        }
        for b in range(inputs["src_vid"].shape[0])
    ]


def _run(model, inputs):
    return model(
        video_features=inputs["src_vid"],
        video_attention_mask=inputs["src_vid_mask"],
        text_features=inputs["src_txt"],
        text_attention_mask=inputs["src_txt_mask"],
        labels=_labels(inputs),
    )


def _assert_matches(output, expected, expected_losses):
    for name, value in _outputs_by_official_name(output).items():
        atol = 1e-4 if name == "saliency_scores" else 1e-5
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    assert set(output.loss_dict) == {k for k in expected_losses if k.startswith("loss_") and k != "loss_total_weighted"}
    for name, value in output.loss_dict.items():
        assert value.item() == pytest.approx(expected_losses[name], rel=1e-5), name
    assert output.loss.item() == pytest.approx(expected_losses["loss_total_weighted"], rel=1e-5)


@pytest.fixture(scope="module")
def fixture(official_fixture_dir):
    return {
        "checkpoint": official_fixture_dir / "model_best.ckpt",
        "inputs": load_file(official_fixture_dir / "inputs.safetensors"),
        "eval": load_file(official_fixture_dir / "expected_eval.safetensors"),
        "train": load_file(official_fixture_dir / "expected_train.safetensors"),
        "losses": json.loads((official_fixture_dir / "expected.json").read_text())["losses"],
    }


def test_config_from_official_options(fixture):
    config = config_from_official_checkpoint(load_official_checkpoint(fixture["checkpoint"]))
    assert (config.video_feature_dim, config.text_feature_dim, config.hidden_size) == (2818, 512, 256)
    assert config.queue_length == 64 and config.num_convolutional_blocks == 5 and config.num_queries == 10
    assert config.num_decoder_loops == 1 and config.official_highlight_slicing
    assert config.clip_length == 2.0 and config.distillation_coefficient == 0.4 and config.saliency_margin == 0.2


def test_eval_outputs_and_losses_match_official(fixture):
    model = convert_official_checkpoint(fixture["checkpoint"]).eval()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        output = _run(model, fixture["inputs"])
    _assert_matches(output, fixture["eval"], fixture["losses"]["eval"])
    # evaluation changes no state (the official forward moves the momentum encoders even in eval)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key


def test_train_outputs_losses_and_state_match_official(fixture):
    model = convert_official_checkpoint(fixture["checkpoint"])
    for module in model.modules():  # the golden train run has every dropout at 0
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    model.train()
    model.set_training_progress(1.0)  # past the first epoch: no distillation warm-up
    output = _run(model, fixture["inputs"])
    _assert_matches(output, fixture["train"], fixture["losses"]["train"])

    expected_state = convert_official_state_dict(
        {k.removeprefix("state_after."): v for k, v in fixture["train"].items() if k.startswith("state_after.")}
    )
    assert any("momentum_video_encoder" in k for k in expected_state) and "distill_align.queue_ptr" in expected_state
    state = model.state_dict()
    for key, value in expected_state.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0, msg=key)
    output.loss.backward()  # the in-place enqueue must not break the backward


def test_converter_cli_writes_a_loadable_folder(fixture, tmp_path):
    convert_main(["--checkpoint", str(fixture["checkpoint"]), "--output-dir", str(tmp_path / "converted")])
    assert (tmp_path / "converted" / "config.json").is_file()
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    model = LDDetrModel.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        output = _run(model, fixture["inputs"])
    _assert_matches(output, fixture["eval"], fixture["losses"]["eval"])  # queues kept: loss_align matches too


def test_converter_writes_the_processor_the_checkpoint_implies(fixture, tmp_path):
    convert_main(["--checkpoint", str(fixture["checkpoint"]), "--output-dir", str(tmp_path / "converted")])
    processor = LDDetrProcessor.from_pretrained(tmp_path / "converted")
    settings = processor.feature_extractor
    # opt: v_feat_dirs slowfast + clip, ctx_mode video_tef, max_v_l 75, max_q_l 32, clip_length 2, dset_name hl
    assert settings.video_feature_dims == [2304, 512] and settings.use_tef
    converted = LDDetrModel.from_pretrained(tmp_path / "converted")
    assert settings.model_video_feature_dim == converted.config.video_feature_dim
    assert (settings.max_video_clips, settings.max_text_tokens, settings.clip_length) == (75, 32, 2.0)
    assert settings.saliency_label_type == "qvhighlights"


def test_charades_options_without_truncation_convert_to_no_limit(fixture):
    checkpoint = torch.load(fixture["checkpoint"], map_location="cpu", weights_only=False)
    opt = dict(vars(checkpoint["opt"]) if not isinstance(checkpoint["opt"], dict) else checkpoint["opt"])
    opt.update(max_v_l=-1, clip_length=1, dset_name="charadesSTA")
    checkpoint["opt"] = opt
    config = config_from_official_checkpoint(checkpoint)
    processor = processor_from_official_checkpoint(checkpoint, config)
    assert config.max_video_clips is None and processor.feature_extractor.max_video_clips is None
    assert (
        processor.feature_extractor.clip_length == 1.0 and processor.feature_extractor.saliency_label_type == "binary"
    )


# ------------------------------------------------------------------------------ other official settings

_OUR_ENCODERS = {
    new: old
    for old, new in (
        ("convolutional_fuser.t2v_encoder.layers.", "convolutional_fuser.t2v_encoder."),
        ("convolutional_fuser.transformer_encoder1.layers.", "convolutional_fuser.encoder1."),
        ("convolutional_fuser.transformer_encoder2.layers.", "convolutional_fuser.encoder2."),
    )
}
_OUR_ENCODER_PARTS = {
    "attention.out_proj.": "self_attn.out_proj.",
    "ffn.linear1.": "linear1.",
    "ffn.linear2.": "linear2.",
    "ffn.activation.": "activation.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
}
_OUR_PLAIN = [
    ("distill_align.video_queue", "distill_align.vid_queue"),
    ("distill_align.text_queue", "distill_align.txt_queue"),
    ("convolutional_fuser.v2t_extractor.pool_weight", "convolutional_fuser.v2t_extractor.weight"),
    ("convolutional_fuser.v2t_extractor.context_query_proj.", "convolutional_fuser.v2t_extractor.cqa_linear."),
    ("convolutional_fuser.v2t_extractor.pool_proj.", "convolutional_fuser.v2t_extractor.conv1d."),
    ("convolutional_fuser.convolutional_blocks.", "convolutional_fuser.convolutional_block.blocks."),
    ("anchor_embed.", "query_embed."),
    ("loop_decoder.decoder.", "loop_decoder.transformer_decoder."),
    ("moment_retrieval_head.", "prediction_heads.video_moment_retrieval_prediction_head."),
    ("highlight_detection_head.", "prediction_heads.highlight_detection_prediction_head."),
]


def _to_official_layout(state_dict):
    """Our state dict in the official checkpoint's key layout (written independently of the converter, from the
    official code's module structure): the inverse the converter must undo."""
    official, qkv = {}, {}
    for key, value in state_dict.items():
        encoder = next((p for p in _OUR_ENCODERS if key.startswith(p)), None)
        if encoder is not None:
            layer, rest = key[len(encoder) :].split(".", 1)
            prefix = f"{_OUR_ENCODERS[encoder]}{layer}."
            if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = rest.rsplit(".", 1)[1]
                qkv.setdefault(f"{prefix}self_attn.in_proj_{kind}", {})[rest.split(".")[1][0]] = value
                continue
            part = next(p for p in _OUR_ENCODER_PARTS if rest.startswith(p))
            official[prefix + _OUR_ENCODER_PARTS[part] + rest[len(part) :]] = value
            continue
        key = old_key(key)
        for ours, theirs in _OUR_PLAIN:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        if key.endswith(("cqa_linear.weight", "conv1d.weight")):
            value = value.unsqueeze(-1)  # the official kernel-size-1 Conv1d
        official[key] = value
    for key, parts in qkv.items():
        official[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return official


@pytest.mark.parametrize(
    "settings, opt",
    [
        (  # Charades-STA: clip 1 s, 4 conv blocks, no truncation, other coefficients, another queue length
            dict(
                hidden_size=64,
                ffn_dim=128,
                num_convolutional_blocks=4,
                queue_length=48,
                video_feature_dim=2818,
                distillation_coefficient=0.3,
                sim_loss_coefficient=0.4,
                saliency_loss_coefficient=1.5,
                clip_length=1.0,
            ),
            dict(
                dset_name="charadesSTA",
                clip_length=1,
                max_v_l=-1,
                distillation_coefficient=0.3,
                sim_loss_coef=0.4,
                lw_saliency=1.5,
            ),
        ),
        (  # CLIP-only video, 3 decoder layers, 6 queries
            dict(
                hidden_size=32, ffn_dim=64, num_decoder_layers=3, num_queries=6, queue_length=16, video_feature_dim=514
            ),
            dict(dset_name="hl", clip_length=2, max_v_l=75, v_feat_dirs=["../features/qvhighlight/clip_features"]),
        ),
    ],
)
def test_checkpoints_of_other_settings_convert_exactly(settings, opt, tmp_path):
    torch.manual_seed(0)
    source = LDDetrModel(
        tiny_config(
            text_feature_dim=512,
            num_decoder_loops=1,
            official_highlight_slicing=True,
            num_attention_heads=8,
            **settings,
        )
    ).eval()
    checkpoint = {"model": _to_official_layout(source.state_dict()), "opt": dict(ctx_mode="video_tef", **opt)}
    torch.save(checkpoint, tmp_path / "model_best.ckpt")

    converted = convert_official_checkpoint(tmp_path / "model_best.ckpt", tmp_path / "out").eval()
    config = converted.config
    for name, value in settings.items():
        assert getattr(config, name) == value, name
    assert config.clip_length == float(opt["clip_length"])
    assert config.max_video_clips == (None if opt["max_v_l"] < 0 else opt["max_v_l"])
    for key, value in source.state_dict().items():
        torch.testing.assert_close(converted.state_dict()[key], value, atol=0, rtol=0, msg=key)
    inputs, labels = random_batch(config, [7, 5], [4, 6])
    with torch.no_grad():
        expected, got = source(**inputs, labels=labels), converted(**inputs, labels=labels)
    assert_same_model_outputs(got.pred_spans, expected.pred_spans)
    assert_same_model_outputs(got.saliency_scores, expected.saliency_scores)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    processor = LDDetrProcessor.from_pretrained(tmp_path / "out")
    assert processor.feature_extractor.model_video_feature_dim == settings["video_feature_dim"]


def test_a_new_model_has_the_official_initialisation(fixture):
    """A model built from a config draws its weights as the official code does (the fixture's weights are an
    official random initialisation): per tensor the same spread, and zero where the official code zeroes."""
    checkpoint = load_official_checkpoint(fixture["checkpoint"])
    official = convert_official_state_dict(checkpoint["model"])
    torch.manual_seed(0)
    ours = LDDetrModel(config_from_official_checkpoint(checkpoint)).state_dict()
    # the fixture perturbed these after the initialisation (its README)
    perturbed = ("momentum_", "activation", "prelu", ".bn", "anchor_offset_head.layers.2")
    compared = 0
    for name, reference in official.items():
        if any(part in name for part in perturbed) or not reference.is_floating_point() or "queue" in name:
            continue
        if not reference.any():
            assert not ours[name].any(), f"{name} is zero in the official initialisation, not here"
        elif reference.numel() >= 128:
            assert ours[name].std().item() == pytest.approx(reference.std().item(), rel=0.15), name
            compared += 1
    assert compared > 150
    assert not ours["loop_decoder.decoder.anchor_offset_head.layers.2.bias"].any()
