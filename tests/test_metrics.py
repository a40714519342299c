"""The official metrics: the official evaluator's report on recorded predictions reproduced key for key, hand-worked
cases, cross-checks against plain loops (and sklearn's precision-recall curve), malformed input, the `evaluate`
module and the lddetr-eval command."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from processing.evaluation.metrics import (
    compute_metrics,
    eval_highlight_detection,
    eval_moment_retrieval,
    eval_qvhighlights,
    eval_temporal_grounding,
    eval_tvsum,
    evaluate_submission,
    tvsum_average_precision,
)
from training_scripts import evaluate as lddetr_eval

METRIC_DIR = Path(__file__).resolve().parents[1] / "processing" / "evaluation" / "mr_hd_metric"


def read_jsonl(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope="module")
def reference(shared_data_dir):
    folder = shared_data_dir / "eval_reference"
    return {
        "submission": read_jsonl(folder / "sample_val_preds.jsonl"),
        "ground_truth": read_jsonl(shared_data_dir / "qvhighlights" / "highlight_val_release.jsonl"),
        "report": json.loads((folder / "sample_val_preds_metrics_full.json").read_text()),
    }


def assert_same_report(expected, actual, path="report"):
    """Same keys in the same order, and the same values, at every depth."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert list(actual) == list(expected), path
        for key in expected:
            assert_same_report(expected[key], actual[key], f"{path}/{key}")
    else:
        assert actual == expected, path


def prediction_record(qid, windows, saliency=None):
    record = {"qid": qid, "pred_relevant_windows": windows}
    if saliency is not None:
        record["pred_saliency_scores"] = saliency
    return record


def truth_record(qid, windows, duration=150, clip_ids=None, scores=None):
    record = {"qid": qid, "duration": duration, "relevant_windows": windows}
    if clip_ids is not None:
        record.update(relevant_clip_ids=clip_ids, saliency_scores=scores)
    return record


def full_map(submission, ground_truth, threshold="0.5"):
    qids = [record["qid"] for record in ground_truth]
    return eval_moment_retrieval(qids, submission, ground_truth, {"full": None})["full"]["MR-mAP"][threshold]


# ---------------------------------------------------------------------------------------------------------------
# The official reference


def test_reproduces_the_official_report(reference):
    # its speed is a benchmark figure: benchmarks/bench_metrics.py
    assert_same_report(reference["report"], eval_qvhighlights(reference["submission"], reference["ground_truth"]))


def test_shuffled_submission_gives_the_same_report(reference):
    shuffled = list(reference["submission"])
    np.random.default_rng(0).shuffle(shuffled)
    assert_same_report(reference["report"], eval_qvhighlights(shuffled, reference["ground_truth"]))


def test_evaluate_submission_is_the_flat_brief(reference):
    brief = evaluate_submission(reference["submission"], reference["ground_truth"], "qvhighlights")
    assert brief == reference["report"]["brief"]
    assert all(isinstance(value, float) for value in brief.values())


# ---------------------------------------------------------------------------------------------------------------
# Moment retrieval: hand-worked cases


def test_duplicate_windows_count_once():
    truth = [truth_record(1, [[0, 10], [20, 30]])]
    # TP, FP (its window is taken), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 + 1/2 * 2/3
    submission = [prediction_record(1, [[0, 10, 0.9], [0, 10, 0.8], [20, 30, 0.7]])]
    assert full_map(submission, truth) == pytest.approx(100 * (0.5 + 0.5 * 2 / 3), abs=0.005)


def test_tied_scores_keep_the_submitted_order():
    truth = [truth_record(1, [[0, 10]])]
    miss_first = [prediction_record(1, [[50, 60, 0.5], [0, 10, 0.5]])]
    hit_first = [prediction_record(1, [[0, 10, 0.5], [50, 60, 0.5]])]
    assert full_map(miss_first, truth) == 50.0
    assert full_map(hit_first, truth) == 100.0


def test_windows_are_ranked_by_score_for_map_but_r1_takes_the_first():
    truth = [truth_record(1, [[0, 10]])]
    submission = [prediction_record(1, [[50, 60, 0.1], [0, 10, 0.9]])]
    full = eval_moment_retrieval([1], submission, truth, {"full": None})["full"]
    assert full["MR-mAP"]["0.5"] == 100.0
    assert full["MR-R1"]["0.5"] == 0.0


def test_fewer_than_ten_windows_and_only_the_first_ten_count():
    truth = [truth_record(1, [[0, 10]]), truth_record(2, [[0, 10]])]
    one_window = prediction_record(1, [[0, 10, 0.3]])
    misses = [[100 + 4 * i, 102 + 4 * i, 1.0 - 0.01 * i] for i in range(10)]
    eleventh_hits = prediction_record(2, misses + [[0, 10, 0.01]])
    assert full_map([one_window], truth[:1]) == 100.0
    assert full_map([eleventh_hits], truth[1:]) == 0.0


def test_r1_and_miou_of_the_top_window():
    truth = [truth_record(1, [[5, 15], [40, 60]]), truth_record(2, [[0, 10]])]
    # query 1: [0, 10] overlaps [5, 15] best, IoU 5/15; query 2: [0, 8] in [0, 10], IoU 0.8
    submission = [prediction_record(1, [[0, 10, 0.9]]), prediction_record(2, [[0, 8, 0.9]])]
    full = eval_moment_retrieval([1, 2], submission, truth, {"full": None})["full"]
    assert full["MR-mIoU"] == pytest.approx(100 * (1 / 3 + 0.8) / 2, abs=0.005)
    assert full["MR-R1"]["0.3"] == 100.0
    assert full["MR-R1"]["0.5"] == 50.0
    assert full["MR-R1"]["0.8"] == 50.0
    assert full["MR-R1"]["0.85"] == 0.0


def test_buckets_drop_queries_without_a_window_in_range():
    truth = [truth_record(1, [[0, 8]]), truth_record(2, [[0, 40]]), truth_record(3, [[0, 6], [10, 50]])]
    submission = [
        prediction_record(1, [[0, 8, 1.0]]),
        prediction_record(2, [[100, 110, 1.0]]),
        prediction_record(3, [[10, 50, 1.0]]),
    ]
    report = eval_qvhighlights(submission, truth)
    # short: queries 1 (hit) and 3 (its short window [0, 6] is missed); long: query 2 (miss) and 3 (hit)
    assert report["short"]["MR-mAP"]["0.5"] == 50.0
    assert report["long"]["MR-mAP"]["0.5"] == 50.0
    assert report["full"]["MR-mAP"]["0.5"] == pytest.approx(100 * (1 + 0 + 0.5) / 3, abs=0.005)
    # no window in (10, 30]: the bucket is reported with zeros under the usual keys
    assert list(report["middle"]) == ["MR-mIoU", "MR-mAP", "MR-R1"]
    assert report["middle"]["MR-mAP"]["average"] == 0.0 and report["middle"]["MR-R1"]["0.5"] == 0.0


def test_full_bucket_keeps_windows_longer_than_150_seconds():
    truth = [truth_record("s1-d1_0", [[0, 200]], duration=300)]
    report = eval_qvhighlights([prediction_record("s1-d1_0", [[0, 200, 1.0]])], truth)
    assert report["full"]["MR-mAP"]["average"] == 100.0
    assert report["long"]["MR-mAP"]["average"] == 0.0


def naive_detection_ap(windows, truth, threshold):
    """ActivityNet AP written as plain loops: VOC AP = sum over hits of max precision from that rank on / #truth."""
    windows = sorted(windows[:10], key=lambda window: -window[2])
    taken, hits = set(), []
    for start, end, _ in windows:
        ious = []
        for truth_start, truth_end in truth:
            intersection = max(0.0, min(end, truth_end) - max(start, truth_start))
            union = (end - start) + (truth_end - truth_start) - intersection
            ious.append(intersection / union if union > 0 else 0.0)
        hit = False
        for j in sorted(range(len(truth)), key=lambda j: (ious[j], j), reverse=True):
            if ious[j] < threshold:
                break
            if j not in taken:
                taken.add(j)
                hit = True
                break
        hits.append(hit)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return sum(precision[k:].max() for k in range(len(hits)) if hits[k]) / len(truth)


def random_qvhighlights(count, seed):
    """Submission and ground truth on coarse grids: many tied IoUs and scores, duplicate windows, saliency lists
    shorter (zero-padded) or longer (truncated) than the clip count."""
    rng = np.random.default_rng(seed)
    submission, truth = [], []
    for qid in range(count):
        clips = int(rng.integers(3, 20))
        starts = rng.integers(0, 10, size=rng.integers(1, 13)) * 4
        windows = [[float(s), float(s + 4 * rng.integers(1, 6)), float(rng.integers(0, 4)) / 4] for s in starts]
        saliency = (rng.integers(0, 4, size=clips + int(rng.integers(-2, 3))) / 4).tolist()
        truth_windows = [
            [float(s), float(s + 4 * rng.integers(1, 6))] for s in rng.integers(0, 10, size=rng.integers(1, 4)) * 4
        ]
        clip_ids = sorted(rng.choice(clips, size=int(rng.integers(1, clips + 1)), replace=False).tolist())
        scores = rng.integers(0, 5, size=(len(clip_ids), 3)).tolist()
        submission.append(prediction_record(qid, windows, saliency))
        truth.append(truth_record(qid, truth_windows, 2 * clips, clip_ids, scores))
    return submission, truth


def test_map_matches_plain_loops_on_random_submissions():
    submission, truth = random_qvhighlights(300, seed=1)
    full = eval_moment_retrieval(list(range(300)), submission, truth, {"full": None})["full"]["MR-mAP"]
    for threshold in ("0.5", "0.7", "0.95"):
        naive = [
            naive_detection_ap(p["pred_relevant_windows"], g["relevant_windows"], float(threshold))
            for p, g in zip(submission, truth)
        ]
        assert full[threshold] == float(f"{100 * np.mean(naive):.2f}")


# ---------------------------------------------------------------------------------------------------------------
# Highlight detection


def naive_saliency_ap(labels, scores):
    """The official get_ap, written out: sklearn's curve, precision made monotone, mean where recall changes."""
    if labels.min() == labels.max():
        return float(labels[0])
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision = np.maximum.accumulate(precision)
    return np.mean(precision[np.flatnonzero(np.diff(recall))])


def test_saliency_map_and_hit1_match_plain_loops():
    submission, truth = random_qvhighlights(200, seed=2)
    expected_ap, expected_hit = [], []
    for prediction, reference in zip(submission, truth):
        clips = int(reference["duration"]) // 2
        binary = np.zeros((clips, 3), dtype=bool)
        binary[reference["relevant_clip_ids"]] = np.array(reference["saliency_scores"]) >= 3
        saliency = prediction["pred_saliency_scores"]
        fitted = np.zeros(clips)
        fitted[: min(clips, len(saliency))] = saliency[:clips]
        expected_ap.append(np.mean([naive_saliency_ap(binary[:, a].astype(int), fitted) for a in range(3)]))
        top = int(np.argmax(saliency))
        expected_hit.append(top < clips and binary[top].any())
    good = eval_highlight_detection(list(range(200)), submission, truth)["HL-min-Good"]
    assert good["HL-mAP"] == float(f"{100 * np.mean(expected_ap):.2f}")
    assert good["HL-Hit1"] == float(f"{100 * np.mean(expected_hit):.2f}")


def test_saliency_edge_cases():
    truth = [
        truth_record(1, [[0, 2]], 8, [0, 1, 2, 3], [[4, 4, 4]] * 4),  # all positive: AP 1
        truth_record(2, [[0, 2]], 8, [0], [[1, 1, 1]]),  # all negative at >= 2: AP 0
    ]
    # query 1's top clip (index 5) lies beyond its 4 clips: a miss
    submission = [
        prediction_record(1, [[0, 2, 1.0]], [0, 0, 0, 0, 0, 9]),
        prediction_record(2, [[0, 2, 1.0]], [1, 0, 0, 0]),
    ]
    fair = eval_highlight_detection([1, 2], submission, truth)["HL-min-Fair"]
    assert fair == {"HL-mAP": 50.0, "HL-Hit1": 0.0}


def test_clip_length_sets_the_ground_truth_clip_count():
    truth = [truth_record(1, [[0, 2]], 6, [5], [[4, 4, 4]])]
    submission = [prediction_record(1, [[0, 2, 1.0]], [0, 0, 0, 0, 0, 1])]
    assert eval_highlight_detection([1], submission, truth, clip_length=1.0)["HL-min-VeryGood"]["HL-Hit1"] == 100.0
    with pytest.raises(ValueError, match="outside the 3 clips"):
        eval_highlight_detection([1], submission, truth, clip_length=2.0)


# ---------------------------------------------------------------------------------------------------------------
# Charades-STA / TACoS and TVSum


def test_temporal_grounding_report():
    truth = [truth_record("s1_0", [[10.0, 20.0]], 300), truth_record("s1_1", [[0.0, 160.0]], 300)]
    submission = [
        prediction_record("s1_0", [[12.0, 20.0, 0.9], [10, 20, 0.1]]),
        prediction_record("s1_1", [[0.0, 80.0, 0.9]]),
    ]
    report = eval_temporal_grounding(submission, truth)
    # IoUs 0.8 and 0.5
    expected = {"MR-full-R1@0.3": 100.0, "MR-full-R1@0.5": 100.0, "MR-full-R1@0.7": 50.0, "MR-full-mIoU": 65.0}
    assert {k: v for k, v in report["brief"].items() if k != "MR-full-mAP"} == expected
    assert report["brief"]["MR-full-mAP"] == report["full"]["MR-mAP"]["average"]
    assert compute_metrics(submission, truth, "tacos") == compute_metrics(submission, truth, "charades-sta") == report


def test_tvsum_average_precision_by_hand():
    labels = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])  # lower median 3: clips 3, 4, 5 positive
    scores = np.array([0.9, 0.7, 0.0, 0.6, 0.8, 1.0])  # ranking 5, 0, 4, 1, 3 | 2: hit, miss, hit, miss, hit
    expected = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (1 / 2 + 3 / 5) / 2) / 3
    assert tvsum_average_precision(scores, labels, top_k=5) == pytest.approx([expected])
    # the hits are counted within the top k: (hit, miss) gives 1, (miss, hit) gives (0 + 1/2) / 2, a lone miss 0
    assert tvsum_average_precision(scores, labels, top_k=2) == pytest.approx([1.0])
    assert tvsum_average_precision(-scores, labels, top_k=2) == pytest.approx([0.25])
    assert tvsum_average_precision(-scores, labels, top_k=1) == pytest.approx([0.0])
    # tied scores keep clip order: clips 0..4, hits at ranks 4 and 5
    tied = ((0 + 1 / 4) / 2 + (1 / 4 + 2 / 5) / 2) / 2
    assert tvsum_average_precision(np.zeros(6), labels, top_k=5) == pytest.approx([tied])


def test_tvsum_report_on_real_annotations(shared_data_dir):
    truth = read_jsonl(shared_data_dir / "tvsum" / "tvsum_val.jsonl")
    oracle = [{"qid": d["qid"], "pred_saliency_scores": np.mean(d["label"], axis=1).tolist()} for d in truth]
    inverse = [{"qid": d["qid"], "pred_saliency_scores": (-np.mean(d["label"], axis=1)).tolist()} for d in truth]
    good, bad = eval_tvsum(oracle, truth), eval_tvsum(inverse, truth)
    assert list(good["brief"]) == ["mAP", "mAP-all-clips"]
    assert good["brief"]["mAP"] > 80 > 20 > bad["brief"]["mAP"]
    assert set(good["per-domain"]) == {d["domain"] for d in truth}
    assert evaluate_submission(oracle, truth, "tvsum") == good["brief"]
    # the Hub dataset's layout: the annotator scores in `saliency_scores`, no `label`
    hub_rows = [{"qid": d["qid"], "saliency_scores": d["label"], "relevant_clip_ids": None} for d in truth]
    assert eval_tvsum(oracle, hub_rows)["brief"] == good["brief"]


# ---------------------------------------------------------------------------------------------------------------
# Malformed input and qid matching


@pytest.mark.parametrize(
    "submission, message",
    [
        ([], "submission is empty"),
        ([{"pred_relevant_windows": [[0, 10, 1.0]]}], "has no 'qid'"),
        ([{"qid": 1}], "neither"),
        ([prediction_record(1, [[10, 0, 1.0]])], "ends before it starts"),
        ([prediction_record(1, [[0, 10, float("nan")]])], "non-finite"),
        ([prediction_record(1, [[0, 10]])], "3-number rows"),
        ([prediction_record(1, [])], "is empty"),
        ([prediction_record(1, [[0, 10, 1.0]], [0.1, float("inf")])], "non-finite"),
        ([prediction_record(1, [[0, 10, 1.0]]), prediction_record(1, [[0, 10, 1.0]])], "twice"),
        ([prediction_record(2, [[0, 10, 1.0]])], "differ"),
    ],
)
def test_malformed_submissions_raise(submission, message):
    truth = [truth_record(1, [[0, 10]], 150, [0], [[4, 4, 4]])]
    with pytest.raises(ValueError, match=message):
        eval_qvhighlights(submission, truth)


def test_malformed_ground_truth_raises():
    with pytest.raises(ValueError, match="has no 'relevant_windows'"):
        eval_qvhighlights([prediction_record(1, [[0, 10, 1.0]])], [{"qid": 1}])
    # clip ids without the annotators' scores: highlight detection cannot be scored, and it says which field
    half_labelled = {**truth_record(1, [[0, 10]]), "relevant_clip_ids": [0]}
    with pytest.raises(ValueError, match="qid 1 has no 'saliency_scores'"):
        eval_qvhighlights([prediction_record(1, [[0, 10, 1.0]], [0.5])], [half_labelled])
    with pytest.raises(ValueError, match="unknown dataset_type"):
        compute_metrics([prediction_record(1, [[0, 10, 1.0]])], [truth_record(1, [[0, 10]])], "activitynet")


def test_highlight_detection_scores_only_the_queries_with_annotator_scores():
    labelled = truth_record(1, [[0, 10]], clip_ids=[0, 1], scores=[[4, 4, 4], [0, 0, 0]])
    submission = [prediction_record(1, [[0, 10, 1.0]], [0.9, 0.1] + [0.0] * 73)]
    windows_only = eval_qvhighlights(
        submission + [prediction_record(2, [[0, 10, 1.0]], [0.5] * 75)], [labelled, truth_record(2, [[0, 10]])]
    )
    assert windows_only["brief"]["HL-min-VeryGood-mAP"] == eval_qvhighlights(submission, [labelled])["brief"][
        "HL-min-VeryGood-mAP"
    ]
    assert not any(key.startswith("HL") for key in eval_qvhighlights(submission, [truth_record(1, [[0, 10]])])["brief"])


def test_match_number_false_evaluates_shared_qids():
    truth = [truth_record(1, [[0, 10]]), truth_record(2, [[0, 10]])]
    submission = [prediction_record(1, [[0, 10, 1.0]]), prediction_record(3, [[0, 10, 1.0]])]
    with pytest.raises(ValueError, match="1 missing .* 1 unknown"):
        eval_qvhighlights(submission, truth)
    assert eval_qvhighlights(submission, truth, match_number=False) == eval_qvhighlights(submission[:1], truth[:1])
    with pytest.raises(ValueError, match="share no qid"):
        eval_qvhighlights(submission[1:], truth, match_number=False)


# ---------------------------------------------------------------------------------------------------------------
# The evaluate module and the command line


@pytest.mark.slow  # importing evaluate takes seconds
def test_evaluate_module_loads_offline_and_matches():
    import evaluate  # here, not at the top: it imports transformers' pipelines, which no other test here needs

    metric = evaluate.load(str(METRIC_DIR))
    submission, truth = random_qvhighlights(300, seed=3)
    assert metric.compute(predictions=submission, references=truth) == compute_metrics(submission, truth)
    metric.add_batch(predictions=submission[:100], references=truth[:100])
    metric.add_batch(predictions=submission[100:], references=truth[100:])
    assert metric.compute(dataset_type="charades-sta") == compute_metrics(submission, truth, "charades-sta")
    tacos_submission = [{**record, "qid": f"s{record['qid']}"} for record in submission]
    tacos_truth = [{**record, "qid": f"s{record['qid']}"} for record in truth]
    expected = compute_metrics(tacos_submission, tacos_truth, "tacos")
    assert metric.compute(predictions=tacos_submission, references=tacos_truth, dataset_type="tacos") == expected


def test_command_line_prints_the_table_and_writes_the_report(tmp_path, capsys):
    truth = [truth_record(1, [[0, 10]], 150, [0, 1], [[4, 4, 4], [1, 1, 1]])]
    submission = [prediction_record(1, [[0, 10, 0.9]], [0.9, 0.1])]
    (tmp_path / "preds.jsonl").write_text("\n".join(json.dumps(r) for r in submission) + "\n")
    (tmp_path / "gt.jsonl").write_text("\n".join(json.dumps(r) for r in truth) + "\n")
    output = tmp_path / "out" / "metrics.json"
    arguments = ["--predictions", str(tmp_path / "preds.jsonl"), "--ground-truth", str(tmp_path / "gt.jsonl")]
    assert lddetr_eval.main(arguments + ["--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "MR-full-mAP" in printed and "100.00" in printed
    assert json.loads(output.read_text()) == compute_metrics(submission, truth)

    (tmp_path / "preds.jsonl").write_text(json.dumps(prediction_record(1, [[10, 0, 1.0]])) + "\n")
    assert lddetr_eval.main(arguments) == 1
    assert "ends before it starts" in capsys.readouterr().err
