"""Every console script as users run it: the installed entry point in a subprocess. Success is exit status 0; bad
input is a non-zero status and one line on stderr naming the problem, without a traceback. (lddetr-demo, a server,
is run in tests/test_demo.py.)"""

import argparse
import fractions
import os
import shutil
import subprocess

import pytest
import torch
from helpers import TINY_SIZES, constant_rate, write_video
from test_hub_datasets import output_dir, write_tree

from hub_datasets import load_lddetr_dataset
from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.convert_official_checkpoint import OFFICIAL_CHECKPOINT_GLOBALS, load_official_checkpoint
from modeling_lddetr.convert_official_checkpoint import main as convert_main
from processing.inference import predict
from tests.test_video_pipeline import model_dir, red_from_8_to_12_s  # noqa: F401
from training_scripts.train import model_config_for


def start(script, *arguments) -> subprocess.Popen:
    executable = shutil.which(script)
    assert executable is not None, f"{script} is not on the PATH: pip install -e ."
    command = [executable, *map(str, arguments)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(script, *arguments) -> subprocess.CompletedProcess:
    return finish(start(script, *arguments))


def assert_succeeded(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def assert_one_line_error(result, script, *words):
    assert result.returncode != 0, result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def qvh_tree(tmp_path_factory, shared_data_dir):
    return write_tree(tmp_path_factory.mktemp("qvh-scripts"), shared_data_dir, "qvhighlights")


@pytest.fixture(scope="module")
def built_dataset(qvh_tree, tmp_path_factory):
    out = output_dir(tmp_path_factory.mktemp("built"))
    arguments = ["qvhighlights", "--annotations-dir", qvh_tree.annotations, "--features-dir", qvh_tree.features]
    assert_succeeded(run("lddetr-build-dataset", *arguments, "--output-dir", out, "--no-progress"))
    return out


@pytest.fixture(scope="module")
def tiny_model_folder(built_dataset, tmp_path_factory):
    _, _, info = load_lddetr_dataset(built_dataset)
    processor = LDDetrProcessor.from_dataset_info(info)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    LDDetrModel(model_config_for(processor, **TINY_SIZES)).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------- success


def test_predict_split_then_eval_succeed(built_dataset, tiny_model_folder, qvh_tree, tmp_path):
    submission = tmp_path / "val_submission.jsonl"
    result = run(
        "lddetr-predict-split", "--model", tiny_model_folder, "--dataset", built_dataset, "--split", "validation",
        "--output", submission, "--device", "cpu",
    )
    assert_succeeded(result)
    assert "predictions written to" in result.stdout
    (ground_truth,) = qvh_tree.annotations.glob("*val*.jsonl")
    result = run("lddetr-eval", "--predictions", submission, "--ground-truth", ground_truth)
    assert_succeeded(result)
    assert "MR-full-mAP" in result.stdout


@pytest.mark.slow
def test_train_succeeds(tmp_path):
    result = run(
        "lddetr-train", "--preset", "demo", "--output_dir", tmp_path / "run", "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--disable_tqdm", "true",
    )
    assert_succeeded(result)
    assert (tmp_path / "run" / "config.json").is_file()


def test_predict_succeeds_with_the_results_on_stdout_only(model_dir, tmp_path):  # noqa: F811
    video = write_video(tmp_path / "ball.mp4", constant_rate(4.6, 10), red_from_8_to_12_s, size=32, fps=10)
    result = run("lddetr-predict", "--model", model_dir, "--video", video, "--query", "a red ball", "--device", "cpu")
    assert_succeeded(result)
    assert "Query 1/1: 'a red ball'" in result.stdout and "'moments'" not in result.stderr


# ------------------------------------------------------------------------------------------------ lddetr-convert


def crafted_checkpoint(official_fixture_dir, path, extra_option):
    """The official fixture, re-saved with one more training option."""
    checkpoint = torch.load(official_fixture_dir / "model_best.ckpt", weights_only=False)
    checkpoint["opt"].extra = extra_option
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_convert_loads_official_checkpoints_without_unpickling_other_types(official_fixture_dir, tmp_path):
    official = official_fixture_dir / "model_best.ckpt"
    assert_succeeded(run("lddetr-convert", "--checkpoint", official, "--output-dir", tmp_path / "official"))
    assert (tmp_path / "official" / "config.json").is_file()

    # any other type is refused, by name, and nothing is written, unless the user trusts the file
    other = crafted_checkpoint(official_fixture_dir, tmp_path / "other.ckpt", fractions.Fraction(1, 3))
    refused = run("lddetr-convert", "--checkpoint", other, "--output-dir", tmp_path / "refused")
    assert_one_line_error(refused, "lddetr-convert", "fractions.Fraction", "--trust-checkpoint")
    assert not (tmp_path / "refused").exists()
    trusted = run("lddetr-convert", "--checkpoint", other, "--output-dir", tmp_path / "trusted", "--trust-checkpoint")
    assert_succeeded(trusted)
    assert (tmp_path / "trusted" / "config.json").is_file()


def test_a_torch_device_in_the_options_is_allowed(official_fixture_dir, tmp_path):
    # real runs' options hold one (opt.device); the fixture's do not
    path = crafted_checkpoint(official_fixture_dir, tmp_path / "device.ckpt", torch.device("cpu"))
    assert load_official_checkpoint(path)["opt"].extra == torch.device("cpu")


def test_the_allowlist_is_what_official_checkpoints_need(official_fixture_dir):
    assert set(OFFICIAL_CHECKPOINT_GLOBALS) == {argparse.Namespace, torch.device}
    found = torch.serialization.get_unsafe_globals_in_checkpoint(official_fixture_dir / "model_best.ckpt")
    assert found == ["argparse.Namespace"]


# ----------------------------------------------------------------------------------------------------- errors


def test_bad_input_is_one_line_without_a_traceback(model_dir, tmp_path):  # noqa: F811
    missing = tmp_path / "missing"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_text("not a checkpoint")
    out = tmp_path / "out"
    cases = {
        "lddetr-convert": (["--checkpoint", corrupt, "--output-dir", out], "corrupt.ckpt"),
        "lddetr-build-dataset": (
            ["qvhighlights", "--annotations-dir", missing, "--features-dir", missing, "--output-dir", out], "missing"
        ),
        "lddetr-train": (["--dataset", missing, "--output_dir", out], "no such dataset folder"),
        "lddetr-eval": (["--predictions", missing, "--ground-truth", missing], "missing"),
        "lddetr-predict-split": (["--model", missing, "--output", out / "x.jsonl"], "no such model folder"),
        "lddetr-predict": (["--model", model_dir, "--video", text, "--query", "x"], "notes.mp4"),
    }
    # side by side: each spends most of its time importing torch and transformers
    running = {script: start(script, *arguments) for script, (arguments, _) in cases.items()}
    for script, process in running.items():
        assert_one_line_error(finish(process), script, cases[script][1])
    assert not out.exists()


def test_predict_names_a_bad_video_model_or_query(model_dir, tmp_path):  # noqa: F811
    whole = write_video(tmp_path / "whole.mp4", constant_rate(4.6, 10), red_from_8_to_12_s, size=32, fps=10)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    cases = [
        (["--model", tmp_path / "missing", "--video", whole, "--query", "x"], "no such model folder"),
        (["--model", model_dir, "--video", tmp_path / "missing.mp4", "--query", "x"], "missing.mp4"),
        (["--model", model_dir, "--video", truncated, "--query", "x"], "truncated.mp4"),
        (["--model", model_dir, "--video", whole, "--query", " "], "query"),
    ]
    for arguments, word in cases:
        with pytest.raises(SystemExit, match=f"^lddetr-predict: error: .*{word}") as raised:
            predict.main([*map(str, arguments), "--device", "cpu", "--no-cache"])
        assert "\n" not in str(raised.value)


def test_convert_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="^lddetr-convert: error: official checkpoint not found: .*missing.ckpt"):
        convert_main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--output-dir", str(tmp_path / "out")])
