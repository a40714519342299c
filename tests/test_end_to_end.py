"""From the official layout to a scored submission: build -> load_dataset -> processor -> model -> post-process ->
submission -> evaluator, and lddetr-predict-split on labelled and unlabelled (QVHighlights test) splits."""

import json

import pytest
import torch
from datasets import load_dataset
from helpers import TINY_SIZES
from test_hub_datasets import build, output_dir, write_tree

from hub_datasets import load_lddetr_dataset
from modeling_lddetr import LDDetrDataCollator, LDDetrModel, LDDetrProcessor, write_submission
from processing.evaluation.metrics import compute_metrics
from training_scripts.evaluate import load_jsonl
from training_scripts.predict_split import main as predict_split_main
from training_scripts.train import model_config_for


@pytest.fixture(scope="module")
def qvh_dataset(tmp_path_factory, shared_data_dir):
    root = tmp_path_factory.mktemp("qvh-e2e")
    tree = write_tree(root, shared_data_dir, "qvhighlights")
    out = output_dir(root)
    build(tree, "qvhighlights", out)
    return out


@pytest.fixture(scope="module")
def model_folder(qvh_dataset, tmp_path_factory):
    _, _, info = load_lddetr_dataset(qvh_dataset)
    processor = LDDetrProcessor.from_dataset_info(info)
    torch.manual_seed(0)
    model = LDDetrModel(model_config_for(processor, **TINY_SIZES))
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_built_dataset_to_a_submission_the_evaluator_accepts(qvh_dataset, model_folder, tmp_path):
    assert sorted(load_dataset(str(qvh_dataset))) == ["test", "train", "validation"]  # plain datasets loads it
    queries, videos, _ = load_lddetr_dataset(qvh_dataset)
    model = LDDetrModel.from_pretrained(model_folder).eval()
    processor = LDDetrProcessor.from_pretrained(model_folder)
    rows = queries["validation"].to_list()
    batch = LDDetrDataCollator(processor, videos, seed=0)(rows)
    meta = batch.pop("meta")
    with torch.no_grad():
        outputs = model(**batch)
    assert torch.isfinite(outputs.loss)
    records = processor.post_process(
        outputs,
        batch["video_attention_mask"],
        meta["duration"],
        qids=meta["qid"],
        queries=meta["query"],
        vids=meta["vid"],
    )
    path = write_submission(records, tmp_path / "val_submission.jsonl")

    submission = load_jsonl(path)
    assert [r["qid"] for r in submission] == [r["qid"] for r in rows]
    for record, row in zip(submission, rows):
        assert all(0 <= start <= end <= row["duration"] for start, end, _ in record["pred_relevant_windows"])
        assert len(record["pred_saliency_scores"]) == int(batch["video_attention_mask"][rows.index(row)].sum())
    metrics = compute_metrics(submission, rows, dataset_type="qvhighlights", clip_length=2.0)
    assert {"MR-full-mAP", "MR-full-R1@0.5", "HL-min-VeryGood-mAP"} <= set(metrics["brief"])


def test_predict_split_writes_the_test_submission_and_scores_validation(qvh_dataset, model_folder, tmp_path, capsys):
    test_path = tmp_path / "hl_test_submission.jsonl"
    code = predict_split_main(
        ["--model", str(model_folder), "--dataset", str(qvh_dataset), "--split", "test", "--output", str(test_path)]
    )
    assert code == 0
    queries, _, _ = load_lddetr_dataset(qvh_dataset)
    submission = load_jsonl(test_path)
    assert [r["qid"] for r in submission] == queries["test"]["qid"]
    assert all(r["pred_relevant_windows"] and r["pred_saliency_scores"] for r in submission)

    # the test split has no ground truth: asking for metrics is an error that names the split
    code = predict_split_main(
        [
            "--model", str(model_folder), "--dataset", str(qvh_dataset), "--split", "test", "--output",
            str(tmp_path / "again.jsonl"), "--metrics", str(tmp_path / "m.json"),
        ]
    )
    assert code == 1 and "'test' has no ground truth" in capsys.readouterr().err

    code = predict_split_main(
        [
            "--model", str(model_folder), "--dataset", str(qvh_dataset), "--split", "validation", "--output",
            str(tmp_path / "val.jsonl"), "--metrics", str(tmp_path / "val_metrics.json"), "--top-k", "3",
        ]
    )
    assert code == 0
    assert all(len(r["pred_relevant_windows"]) <= 3 for r in load_jsonl(tmp_path / "val.jsonl"))
    report = json.loads((tmp_path / "val_metrics.json").read_text())
    assert "MR-full-mAP" in report["brief"] and "HL-min-VeryGood-mAP" in report["brief"]


def test_predict_split_names_a_missing_split_or_model(qvh_dataset, model_folder, tmp_path, capsys):
    assert (
        predict_split_main(
            [
                "--model", str(model_folder), "--dataset", str(qvh_dataset), "--split", "dev", "--output",
                str(tmp_path / "x.jsonl"),
            ]
        )
        == 1
    )
    assert "no split 'dev'" in capsys.readouterr().err
    assert (
        predict_split_main(
            ["--model", str(tmp_path / "nothing"), "--dataset", str(qvh_dataset), "--output", str(tmp_path / "x.jsonl")]
        )
        == 1
    )
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
