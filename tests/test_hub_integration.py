"""save_pretrained / from_pretrained, Auto classes, remote code and push_to_hub (offline, upload intercepted)."""

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.hf_api import RepoUrl
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from modeling_lddetr import LDDetrConfig, LDDetrModel
from tests.helpers import assert_same_model_outputs, old_key, random_batch, tiny_config


def _trained_model():
    torch.manual_seed(0)
    model = LDDetrModel(tiny_config())
    inputs, labels = random_batch(model.config, [8, 6], [4, 3])
    model.train()
    model(**inputs, labels=labels).loss.backward()  # move queue and BatchNorm state away from their init
    return model.eval(), inputs


@pytest.mark.slow
def test_round_trip_keeps_outputs_and_drops_queues_by_default(tmp_path):
    model, inputs = _trained_model()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "distill_align.video_queue" not in keys and "distill_align.queue_ptr" not in keys
    assert "momentum_video_encoder.linear1.weight" in keys
    assert "convolutional_fuser.convolutional_blocks.0.bn1.running_mean" in keys

    loaded = LDDetrModel.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        if "queue" not in key:
            assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert_same_model_outputs(loaded(**inputs).pred_spans, model(**inputs).pred_spans)
        assert_same_model_outputs(loaded(**inputs).saliency_scores, model(**inputs).saliency_scores)
    # the missing queues start fresh: unit columns, pointer at 0
    queue = loaded.distill_align.video_queue
    torch.testing.assert_close(queue.norm(dim=0), torch.ones(queue.shape[1]), atol=1e-5, rtol=0)
    assert loaded.distill_align.queue_ptr.item() == 0


def test_training_checkpoints_keep_the_queues(tmp_path):
    model, _ = _trained_model()
    model.save_pretrained(tmp_path, save_queues=True)
    loaded = LDDetrModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.distill_align.video_queue, model.distill_align.video_queue)
    assert loaded.distill_align.queue_ptr.item() == model.distill_align.queue_ptr.item() == 2


def test_folder_saved_with_the_old_parameter_names_loads_to_the_same_model(tmp_path):
    model, inputs = _trained_model()
    model.save_pretrained(tmp_path, save_queues=True)
    weights = load_file(tmp_path / "model.safetensors")
    old_weights = {old_key(key): value for key, value in weights.items()}
    assert "distill_align.h.weight" in old_weights and "anchor_embed.weight" in old_weights
    save_file(old_weights, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = LDDetrModel.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert_same_model_outputs(loaded(**inputs).pred_spans, model(**inputs).pred_spans)
    # saved again, it has the current names
    loaded.save_pretrained(tmp_path / "again")
    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as f:
        assert "loop_decoder.anchor_embed.weight" in f.keys() and "anchor_embed.weight" not in f.keys()


def test_auto_classes(tmp_path):
    model, _ = _trained_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LDDetrConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), LDDetrModel)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_lddetr.LDDetrModel"


@pytest.mark.slow
def test_saved_folder_loads_with_remote_code_where_the_package_is_missing(tmp_path):
    model, inputs = _trained_model()
    model.save_pretrained(tmp_path / "model")
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).pred_spans, tmp_path / "expected.pt")
    script = textwrap.dedent(
        """
        import sys
        sys.modules["modeling_lddetr"] = None  # the package must not be importable here
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained(sys.argv[1] + "/model", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load(sys.argv[1] + "/inputs.pt")
        with torch.no_grad():
            spans = model(**inputs).pred_spans
        # float rounding only, as tests.helpers.assert_same_model_outputs says why
        torch.testing.assert_close(spans, torch.load(sys.argv[1] + "/expected.pt"), atol=1e-6, rtol=1e-6)
        print("remote code ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


def test_push_to_hub_sends_weights_config_and_code(tmp_path):
    model, _ = _trained_model()
    sent = {}

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                sent[op.path_in_repo] = op.path_or_fileobj
        return mock.MagicMock()

    with (
        mock.patch.object(
            HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}")
        ),
        mock.patch.object(HfApi, "create_commit", create_commit),
        mock.patch.object(HfApi, "preupload_lfs_files", lambda self, *a, **kw: None, create=True),
    ):
        model.push_to_hub("some-user/lddetr-tiny")
    assert {
        "config.json",
        "model.safetensors",
        "modeling_lddetr.py",
        "configuration_lddetr.py",
        "loop_decoder.py",
    } <= set(sent)
