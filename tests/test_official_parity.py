"""Parity with the official LD-DETR code: golden vectors of ../shared/fixtures/official_ldetr_qvh."""

import json

import pytest
import torch
from safetensors.torch import load_file

from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.convert_official_checkpoint import (
    config_from_official_checkpoint,
    convert_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
    main as convert_main,
    processor_from_official_checkpoint,
)

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
    assert settings.model_video_feature_dim == LDDetrModel.from_pretrained(tmp_path / "converted").config.video_feature_dim
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
    assert processor.feature_extractor.clip_length == 1.0 and processor.feature_extractor.saliency_label_type == "binary"
