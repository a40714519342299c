"""Every annotation form people have, through the installed console scripts: rows with `relevant_windows` only,
QVHighlights rows (+ `relevant_clip_ids`, `saliency_scores`), a file mixing both, and rows without windows (a test
split). Each builds from generated videos with a tiny CLIP, trains (`lddetr-train`, 2 steps), predicts its
validation split (`lddetr-predict-split`) and is scored (`lddetr-eval`); what training cannot use is refused in one
line. Also: a console script whose optional extra is missing says which to install, without a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Array2D, Dataset, Features, List, Value
from helpers import constant_rate, write_video

from hub_datasets.annotations import read_split, saliency_label_type
from hub_datasets.specs import SPECS
from modeling_lddetr import LDDetrProcessor
from modeling_lddetr.labels_lddetr import binary_saliency, label_form, qvhighlights_saliency
from processing.evaluation.metrics import compute_metrics
from training_scripts.dataset_checks import DatasetProblem, check_columns, check_labels, check_preset, column_kind

BIN = Path(sys.executable).parent
# vid: seconds of video (5 fps, 32 px): 3, 4 and 4 clips of 2 s
VIDEOS = {"park": 6.0, "kitchen": 8.0, "street": 8.0}
# a sitecustomize.py that makes the [demo] extra's imports fail as if it were not installed
BLOCKER = '''
import importlib.abc
import sys


class HideTheDemoExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gradio":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideTheDemoExtra())
'''


def script(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is not installed in {BIN}: pip install -e ."
    return str(path)


def start(name: str, *arguments, **env) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([script(name), *map(str, arguments)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(name: str, *arguments, **env) -> subprocess.CompletedProcess:
    return finish(start(name, *arguments, **env))


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def assert_one_line_error(result: subprocess.CompletedProcess, name: str, *words: str) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-4000:]
    assert lines[0].startswith(f"{name}: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ annotations


def windows_row(qid, vid, query, window):
    return dict(qid=qid, query=query, vid=vid, duration=VIDEOS[vid], relevant_windows=[list(window)])


def qvhighlights_row(qid, vid, query, window):
    start, end = window
    clip_ids = list(range(int(start // 2), int(-(-end // 2))))
    scores = [[1 + (qid + i) % 4, 2, 4 - (qid + i) % 3] for i in range(len(clip_ids))]
    return dict(windows_row(qid, vid, query, window), relevant_clip_ids=clip_ids, saliency_scores=scores)


def unlabelled_row(qid, vid, query):
    return dict(qid=qid, query=query, vid=vid, duration=VIDEOS[vid])


MOMENTS = {
    "train": [(1, "park", "a dog runs", (0, 4)), (2, "kitchen", "someone cooks", (2, 6)),
              (3, "street", "a car passes", (4, 8)), (4, "kitchen", "the pan is washed", (6, 8))],
    "validation": [(5, "park", "the dog sits", (2, 6)), (6, "street", "people cross", (0, 4)),
                   (7, "kitchen", "a knife cuts", (0, 2))],
}
# per form, the row maker of each query (mixed: the forms alternate, in one file)
FORMS = {
    "windows": lambda index: windows_row,
    "qvhighlights": lambda index: qvhighlights_row,
    "mixed": lambda index: qvhighlights_row if index % 2 else windows_row,
}
TEST_ROWS = [unlabelled_row(8, "street", "a bus stops"), unlabelled_row(9, "park", "a ball is thrown")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def annotation_files(folder: Path, form: str) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {}
    for split, moments in MOMENTS.items():
        rows = [FORMS[form](index)(*moment) for index, moment in enumerate(moments)]
        files[split] = write_jsonl(folder / f"{split}.jsonl", rows)
    files["test"] = write_jsonl(folder / "test.jsonl", TEST_ROWS)
    return files


def moving_colour(index, time):
    return (int(50 * time) % 256, (index * 11) % 256, 200 - int(20 * time) % 200)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_clip_dir):
    """form -> (dataset folder, annotation files, the builder's stderr): the three forms built side by side from one
    set of videos, each with the unlabelled test split."""
    root = tmp_path_factory.mktemp("annotation-forms")
    videos = root / "videos"
    videos.mkdir()
    for vid, seconds in VIDEOS.items():
        write_video(videos / f"{vid}.mp4", constant_rate(seconds, 5), moving_colour, size=32, fps=5)
    running = {}
    for form in FORMS:
        files = annotation_files(root / f"{form}-annotations", form)
        output = root / f"{form}-dataset"
        running[form] = (output, files, start(
            "lddetr-build-dataset", "custom", "--annotations", files["train"], "--validation-annotations",
            files["validation"], "--test-annotations", files["test"], "--videos-dir", videos, "--output-dir", output,
            "--clip-model", tiny_clip_dir, "--device", "cpu", "--decode-workers", "0", "--no-progress",
        ))
    results = {}
    for form, (output, files, process) in running.items():
        result = finish(process)
        assert_succeeded(result)
        results[form] = (output, files, result.stderr)
    return results


def train_arguments(dataset: Path, output: Path, *extra) -> list:
    return ["--dataset", dataset, "--preset", "demo", "--output_dir", output, "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--report_to", "none", *extra]


def train_predict_evaluate(dataset: Path, validation: Path, tmp_path: Path) -> str:
    """lddetr-train, lddetr-predict-split on the validation split, lddetr-eval on its output: the metrics printed."""
    model = tmp_path / "model"
    assert_succeeded(run("lddetr-train", *train_arguments(dataset, model)))
    # the model's processor keeps the dataset's scheme
    saved = json.loads((model / "processor_config.json").read_text())["feature_extractor"]
    assert saved["saliency_label_type"] == recorded_scheme(dataset)
    submission = tmp_path / "val_submission.jsonl"
    predicted = run("lddetr-predict-split", "--model", model, "--dataset", dataset, "--split", "validation",
                    "--output", submission, "--device", "cpu")
    assert_succeeded(predicted)
    assert [json.loads(line)["qid"] for line in submission.read_text().splitlines()] == [5, 6, 7]
    scored = run("lddetr-eval", "--predictions", submission, "--ground-truth", validation)
    assert_succeeded(scored)
    assert "MR-full-mAP" in scored.stdout
    return scored.stdout


def recorded_scheme(dataset: Path) -> str:
    return json.loads((dataset / "lddetr_dataset.json").read_text())["saliency_label_type"]


@pytest.mark.slow
def test_windows_only_rows_train_with_binary_saliency_labels(built, tmp_path):
    dataset, files, build_log = built["windows"]
    assert recorded_scheme(dataset) == "binary"
    assert "saliency labels binary (from relevant_windows" in build_log
    assert "`saliency_label_type` \"binary\"" in (dataset / "README.md").read_text()
    metrics = train_predict_evaluate(dataset, files["validation"], tmp_path)
    assert "HL-min" not in metrics  # no annotator scores to score the saliency against


@pytest.mark.slow
def test_qvhighlights_rows_train_with_their_annotator_scores(built, tmp_path):
    dataset, files, build_log = built["qvhighlights"]
    assert recorded_scheme(dataset) == "qvhighlights" and "saliency labels qvhighlights" in build_log
    metrics = train_predict_evaluate(dataset, files["validation"], tmp_path)
    assert "HL-min-VeryGood-mAP" in metrics


@pytest.mark.slow
def test_a_file_mixing_both_forms_labels_each_row_by_its_own(built, tmp_path):
    dataset, files, build_log = built["mixed"]
    assert recorded_scheme(dataset) == "mixed" and "saliency labels mixed (per row" in build_log
    metrics = train_predict_evaluate(dataset, files["validation"], tmp_path)
    assert "HL-min-VeryGood-mAP" in metrics  # scored on the validation query with annotator scores


@pytest.mark.slow
def test_rows_without_windows_build_and_predict_and_training_refuses_them(built, tmp_path):
    dataset, _, build_log = built["windows"]
    assert "test 2" in build_log
    untrained = tmp_path / "untrained"
    assert_succeeded(run("lddetr-train", *train_arguments(dataset, untrained, "--max_steps", "1")))
    submission = tmp_path / "test_submission.jsonl"
    predicted = run("lddetr-predict-split", "--model", untrained, "--dataset", dataset, "--split", "test",
                    "--output", submission, "--device", "cpu")
    assert_succeeded(predicted)
    records = [json.loads(line) for line in submission.read_text().splitlines()]
    assert [record["qid"] for record in records] == [8, 9]
    assert all(record["pred_relevant_windows"] for record in records)

    refusals = {
        "--train_split": ("test", "split 'test', qid 8 has no labels (relevant_windows)"),
        "--eval_split": ("test", "split 'test', qid 8 has no labels"),
    }
    running = {option: start("lddetr-train", *train_arguments(dataset, tmp_path / "refused", option, split))
               for option, (split, _) in refusals.items()}
    for option, process in running.items():
        assert_one_line_error(finish(process), "lddetr-train", f"dataset {dataset}", refusals[option][1],
                              "lddetr-predict-split")
    assert not (tmp_path / "refused").exists()


def with_wrong_duration_type(dataset: Path, copy: Path) -> Path:
    """A copy of the dataset whose train split stores `duration` as strings."""
    shutil.copytree(dataset, copy)
    for shard in (copy / "data" / "queries").glob("train-*.parquet"):
        table = pq.read_table(shard)
        index = table.schema.get_field_index("duration")
        durations = pa.array([str(value) for value in table.column("duration").to_pylist()])
        pq.write_table(table.set_column(index, "duration", durations), shard)
    return copy


def with_recorded_scheme(dataset: Path, copy: Path, scheme: str | None) -> Path:
    """A copy of the dataset with another recorded saliency-label scheme (None: none, as folders built before)."""
    shutil.copytree(dataset, copy)
    info = json.loads((copy / "lddetr_dataset.json").read_text())
    info.pop("saliency_label_type")
    if scheme is not None:
        info["saliency_label_type"] = scheme
    (copy / "lddetr_dataset.json").write_text(json.dumps(info))
    return copy


@pytest.mark.slow
def test_every_data_problem_of_training_is_one_line_naming_the_dataset_and_what_to_do(built, tmp_path):
    dataset, _, _ = built["windows"]
    before_the_scheme = with_recorded_scheme(dataset, tmp_path / "old-folder", None)
    wrong_type = with_wrong_duration_type(dataset, tmp_path / "wrong-type")
    cases = {
        "missing split": ([dataset, "--eval_split", "dev"], ["no split 'dev'", "pass --eval_split one of"]),
        "labels unfit for the preset": ([dataset, "--preset", "tvsum"],
                                        ["preset 'tvsum' cannot train", "--preset out"]),
        "labels unfit for the scheme": ([before_the_scheme], ["relevant_windows without relevant_clip_ids",
                                                              "\"saliency_label_type\": \"mixed\""]),
        "column of the wrong type": ([wrong_type], ["column 'duration' of split 'train' is string, expected number",
                                                    "rebuild it with lddetr-build-dataset"]),
    }
    # a second --preset overrides the first
    running = {case: start("lddetr-train", *train_arguments(folder, tmp_path / "out", *extra))
               for case, ((folder, *extra), _) in cases.items()}
    for case, process in running.items():
        folder = cases[case][0][0]
        assert_one_line_error(finish(process), "lddetr-train", f"dataset {folder}", *cases[case][1])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ missing extras


@pytest.mark.slow
def test_the_demo_without_its_extra_names_the_extra_to_install(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    hidden = os.pathsep.join(path for path in (str(tmp_path), os.environ.get("PYTHONPATH")) if path)
    # lddetr-demo is the one console script with an optional extra (setup.py: extras_require "demo")
    result = run("lddetr-demo", "--model", tmp_path, PYTHONPATH=hidden)
    assert_one_line_error(result, "lddetr-demo", "needs gradio", "pip install 'lddetr[demo]'")


# ------------------------------------------------------------------------------------------------ the rules, fast


def _processor(scheme: str) -> LDDetrProcessor:
    return LDDetrProcessor.from_dataset_info(
        {"dataset_type": "qvhighlights", "video_feature_dims": [4], "text_feature_dim": 3, "clip_length": 2.0,
         "max_video_clips": 10, "max_text_tokens": 8, "saliency_label_type": scheme}
    )


def test_each_row_form_gets_its_saliency_labels_under_the_mixed_scheme():
    windows = windows_row(1, "kitchen", "x", (2, 6))
    scored = qvhighlights_row(2, "kitchen", "y", (2, 6))
    forms = label_form(windows), label_form(scored), label_form(unlabelled_row(3, "park", "z"))
    assert forms == ("binary", "qvhighlights", None)
    rng = np.random.default_rng(0)
    features = [np.ones((4, 4), np.float32)] * 2, [np.ones((2, 3), np.float32)] * 2
    labels = _processor("mixed")(*features, annotations=[windows, scored], return_tensors="np", generator=rng)["labels"]
    expected = np.random.default_rng(0)
    binary = binary_saliency(np.array(windows["relevant_windows"], float), 8.0, 4, 4, 2, expected)
    annotator = qvhighlights_saliency(scored["relevant_clip_ids"], scored["saliency_scores"], 4, 2, expected)
    for got, want in zip(labels, (binary, annotator)):
        np.testing.assert_array_equal(got["saliency_scores"], want[0])
        np.testing.assert_array_equal(got["saliency_pos_indices"], want[1])
        np.testing.assert_array_equal(got["saliency_neg_indices"], want[2])
    np.testing.assert_array_equal(labels[0]["saliency_scores"], [0, 1, 1, 0])  # clips 1 and 2 lie in [2, 6] s
    assert labels[1]["saliency_scores"].max() > 1  # summed annotator scores


def test_the_builder_picks_the_scheme_of_the_rows(tmp_path):
    spec = SPECS["qvhighlights"]
    rows = {form: read_split(spec, write_jsonl(tmp_path / f"{form}.jsonl", [FORMS[form](i)(*m) for i, m in
                                                                               enumerate(MOMENTS["train"])]))
            for form in FORMS}
    test = read_split(spec, write_jsonl(tmp_path / "test.jsonl", TEST_ROWS))
    assert {form: saliency_label_type("qvhighlights", {"train": r, "test": test}) for form, r in rows.items()} == {
        "windows": "binary", "qvhighlights": "qvhighlights", "mixed": "mixed"}
    # splits of different forms make a mixed dataset; the official types keep their own scheme
    splits_of_both_forms = {"train": rows["windows"], "validation": rows["qvhighlights"]}
    assert saliency_label_type("qvhighlights", splits_of_both_forms) == "mixed"
    assert saliency_label_type("tacos", {"train": rows["qvhighlights"]}) == "binary"


def test_highlight_metrics_score_the_queries_with_annotator_scores():
    truth = [qvhighlights_row(1, "kitchen", "a", (2, 6)), windows_row(2, "kitchen", "b", (0, 4)),
             qvhighlights_row(3, "street", "c", (4, 8))]
    submission = [{"qid": row["qid"], "pred_relevant_windows": [[0.0, 4.0, 0.9], [2.0, 6.0, 0.5]],
                   "pred_saliency_scores": [0.1, 0.8, 0.4, 0.2]} for row in truth]
    mixed = compute_metrics(submission, truth)["brief"]
    scored_only = compute_metrics(submission[::2], truth[::2])["brief"]
    highlights = {key: value for key, value in mixed.items() if key.startswith("HL-")}
    assert highlights and highlights == {key: value for key, value in scored_only.items() if key.startswith("HL-")}
    windows_only = compute_metrics(submission[1:2], truth[1:2])["brief"]
    assert "MR-full-mAP" in windows_only and not any(key.startswith("HL-") for key in windows_only)


def _queries(**columns) -> Dataset:
    base = {"qid": [1], "vid": ["park"], "duration": [6.0], "relevant_windows": [[[0.0, 4.0]]],
            "text_features": [np.zeros((2, 3), np.float32)]}
    features = {"qid": Value("int64"), "vid": Value("string"), "duration": Value("float64"),
                "relevant_windows": List(List(Value("float64"))), "text_features": Array2D((None, 3), "float32")}
    for name, (values, feature) in columns.items():
        base[name], features[name] = values, feature
    return Dataset.from_dict(base, features=Features(features))


def test_training_checks_name_the_problem():
    info = {"video_feature_dims": [4], "text_feature_dim": 3, "audio_feature_dim": 0}
    videos = Dataset.from_dict(
        {"vid": ["park"], "video_features": [np.zeros((3, 4), np.float32)]},
        features=Features({"vid": Value("string"), "video_features": Array2D((None, 4), "float32")}),
    )
    assert column_kind(_queries().features["relevant_windows"]) == "list of list of number"
    check_columns("dataset D", "train", _queries(), videos, info, "binary")
    check_labels("dataset D", "train", _queries(), _processor("binary"))
    wider_text = _queries(text_features=([np.zeros((2, 5), np.float32)], Array2D((None, 5), "float32")))
    with pytest.raises(DatasetProblem, match=r"^dataset D: column 'text_features' of split 'train' is matrix of "
                                             r"width 5, expected matrix of width 3: rebuild it"):
        check_columns("dataset D", "train", wider_text, videos, info, "binary")
    with pytest.raises(DatasetProblem, match=r"^dataset D: the videos config has no column 'video_features'"):
        check_columns("dataset D", "train", _queries(), videos.remove_columns("video_features"), info, "binary")
    reversed_window = _queries(relevant_windows=([[[5.0, 4.0]]], List(List(Value("float64")))))
    with pytest.raises(DatasetProblem, match=r"qid 1: relevant window \[5.0, 4.0\] must satisfy .*: fix the row"):
        check_labels("dataset D", "train", reversed_window, _processor("binary"))
    with pytest.raises(DatasetProblem, match=r"'qvhighlights': rebuild it with lddetr-build-dataset"):
        check_labels("dataset D", "train", _queries(), _processor("qvhighlights"))
    with pytest.raises(DatasetProblem, match=r"preset 'qvhighlights' cannot train: leave --preset out \(it is 'tvsum'"):
        check_preset("dataset D", "tvsum", "qvhighlights", "tvsum")
