"""The official moment-retrieval and highlight-detection metrics, vectorised with numpy.

Submissions use the official format: one record per query, `{"qid", "pred_relevant_windows": [[start, end, score],
...], "pred_saliency_scores": [one float per clip]}`. Ground-truth records are the dataset's annotation lines.
Every metric is a percentage rounded to 2 decimals, as the official evaluator writes them.

QVHighlights (`eval_qvhighlights`) reproduces LD-DETR's `standalone_eval/eval.py` key for key:
- buckets by ground-truth window length in seconds: short (0, 10], middle (10, 30], long (30, 150], and full. A
  bucket keeps only the windows in its range and drops queries left without one; full keeps every window, those
  longer than 150 s included (the official `[0, 150]` special case);
- MR-mAP: ActivityNet detection AP per query over the first 10 predicted windows, sorted by score (a stable sort, so
  tied scores keep the submission's order), each matched to the unmatched ground-truth window of highest IoU (equal
  IoUs: the later window first, as the official reversed argsort visits them), VOC-2011 interpolated precision, at
  IoU 0.5:0.05:0.95, averaged over queries; "average" is the mean over the thresholds;
- MR-R1 at IoU 0.3:0.05:0.95 and MR-mIoU: the first predicted window (the submission is sorted by score) against
  the ground-truth window it overlaps most. The official paired IoU divides by max(end) - min(start), which equals
  the true union whenever the windows overlap and multiplies a zero intersection otherwise: it *is* the true IoU.
  It is computed with that formula here (`span_ops.evaluator_paired_temporal_iou`) so that values on a threshold
  compare bit for bit as in the official code;
- HL-min-{Fair,Good,VeryGood}: the ground truth is an (int(duration / clip_length), annotators) matrix filled at
  `relevant_clip_ids`, binarised at >= 2 / 3 / 4. HL-Hit1: the argmax clip of the predicted saliency is a hit when
  any annotator marks it positive. HL-mAP: per (query, annotator) the average precision of the saliency (truncated
  or zero-padded to the clip count) over sklearn's precision-recall curve with monotone interpolation (an all-negative
  annotator scores 0, an all-positive one 1), averaged.

Charades-STA and TACoS (`eval_temporal_grounding`): the same R1 / mIoU code on the full bucket, at IoU 0.3, 0.5, 0.7.
Both have one ground-truth window per query, so the official pairing with the best ground-truth window is moot.

TVSum (`eval_tvsum`), the convention of LD-DETR's `compute_hl_results` (taken from UMT, shared by QD-DETR and the
detectors built on it): per video and per annotator (20), the clip scores are binarised at "> median" (the official
code takes torch's lower median; under ">" it splits exactly as numpy's median, since no score lies strictly between
the two middle ones), the clips are ranked by predicted saliency (a stable sort: tied scores keep clip order) and the
top 5 are kept. AP = sum over the hits j of (precision@(j-1) + precision@j) / 2, divided by the
number of hits *within the top 5* (precision@0 = 1); no hit gives 0. `mAP` is the mean over (video, annotator):
the number the papers report as TVSum (top-5) mAP. `mAP-all-clips` applies the same formula to the whole ranking.
Per-domain values sit under `per-domain` when the ground truth has a `domain` field.

Deliberate differences from the official code, none of which changes a valid QVHighlights evaluation:
- a malformed submission raises ValueError naming the query instead of failing an assert or yielding NaN; so does
  a ground-truth query without windows (the official R1 code fails on it with an IndexError);
- the HL metrics score the ground-truth queries that have `relevant_clip_ids` or `saliency_scores`, and are left out
  when none has: annotations of one's own videos often have windows only (`relevant_windows`), or a mix;
- a bucket with no query gets zeros under the same keys as a filled one (the official code writes float keys);
- an IoU whose union is 0 (two zero-length windows) is 0, not NaN;
- TVSum values are percentages like the others (the official code logs a fraction rounded to 5 decimals).
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from modeling_lddetr.dataset_types import dataset_type as registered_dataset_type
from modeling_lddetr.span_ops import evaluator_paired_temporal_iou, evaluator_temporal_iou


def _rounded_thresholds(start: float, stop: float, num: int) -> tuple[float, ...]:
    # the official code rounds linspace values to 2 decimals and keys results by str(threshold): "0.5", "0.55", ...
    return tuple(float(f"{value:.2f}") for value in np.linspace(start, stop, num))


MAP_IOU_THRESHOLDS = _rounded_thresholds(0.5, 0.95, 10)
QVHIGHLIGHTS_R1_IOU_THRESHOLDS = _rounded_thresholds(0.3, 0.95, 14)
GROUNDING_R1_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
LENGTH_BUCKETS = {"short": (0.0, 10.0), "middle": (10.0, 30.0), "long": (30.0, 150.0), "full": None}
SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}
MAX_PREDICTED_WINDOWS = 10
TVSUM_TOP_K = 5


def _percent(fraction: float) -> float:
    return float(f"{100 * fraction:.2f}")


# ---------------------------------------------------------------------------------------------------------------
# Input checks and alignment


def _qid_of(record, index: int, what: str) -> Hashable:
    if not isinstance(record, dict):
        raise ValueError(f"{what} record {index} is a {type(record).__name__}, expected a dict")
    if "qid" not in record:
        raise ValueError(f"{what} record {index} has no 'qid'")
    qid = record["qid"]
    if isinstance(qid, numbers.Integral) and not isinstance(qid, bool):
        return int(qid)
    if isinstance(qid, str):
        return qid
    raise ValueError(f"{what} record {index}: qid must be an int or a str, got {type(qid).__name__}")


def _index_by_qid(records: Sequence[dict], what: str) -> dict[Hashable, dict]:
    if isinstance(records, (str, bytes, dict)) or not isinstance(records, Sequence):
        raise ValueError(f"{what} must be a list of records, got {type(records).__name__}")
    if len(records) == 0:
        raise ValueError(f"{what} is empty")
    by_qid = {}
    for index, record in enumerate(records):
        qid = _qid_of(record, index, what)
        if qid in by_qid:
            raise ValueError(f"{what} has qid {qid!r} twice")
        by_qid[qid] = record
    return by_qid


def align_by_qid(submission: Sequence[dict], ground_truth: Sequence[dict], match_number: bool = True):
    """(qids, prediction records, ground-truth records) in ground-truth order.

    match_number=True requires the same qid sets (the official assert); False keeps the shared qids.
    """
    predictions = _index_by_qid(submission, "submission")
    references = _index_by_qid(ground_truth, "ground truth")
    if match_number and predictions.keys() != references.keys():
        missing = [qid for qid in references if qid not in predictions]
        extra = [qid for qid in predictions if qid not in references]
        raise ValueError(
            f"the submission's qids differ from the ground truth's: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unknown (e.g. {extra[:3]}); set match_number=False (lddetr-eval --shared-qids-only) "
            "to evaluate the shared qids"
        )
    qids = [qid for qid in references if qid in predictions]
    if not qids:
        raise ValueError("the submission and the ground truth share no qid")
    return qids, [predictions[qid] for qid in qids], [references[qid] for qid in qids]


def _present(record: dict, key: str) -> bool:
    return record.get(key) is not None


def _has_clip_scores(reference: dict) -> bool:
    """Ground truth with QVHighlights' per-clip annotator scores, which highlight detection needs."""
    return _present(reference, "relevant_clip_ids") or _present(reference, "saliency_scores")


def _field_in_all_or_none(records: list[dict], key: str) -> bool:
    present = [_present(record, key) for record in records]
    if any(present) and not all(present):
        raise ValueError(f"'{key}' is in some submission records but not in all of them")
    return all(present)


def _float_array(value, qid, key: str, columns: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"qid {qid!r}: '{key}' is not a numeric array ({error})") from None
    if array.size == 0:
        raise ValueError(f"qid {qid!r}: '{key}' is empty")
    if columns is None:
        if array.ndim != 1:
            raise ValueError(f"qid {qid!r}: '{key}' must be a flat list of numbers, got shape {array.shape}")
    elif array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"qid {qid!r}: '{key}' must be a list of {columns}-number rows, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"qid {qid!r}: '{key}' holds a non-finite value")
    return array


def _predicted_saliency(prediction: dict, qid) -> np.ndarray:
    if not _present(prediction, "pred_saliency_scores"):
        raise ValueError(f"qid {qid!r} has no 'pred_saliency_scores'")
    return _float_array(prediction["pred_saliency_scores"], qid, "pred_saliency_scores")


def _windows(record: dict, qid, key: str, columns: int) -> np.ndarray:
    if not _present(record, key):
        raise ValueError(f"qid {qid!r} has no '{key}'")
    windows = _float_array(record[key], qid, key, columns)
    reversed_rows = np.flatnonzero(windows[:, 1] < windows[:, 0])
    if reversed_rows.size:
        row = reversed_rows[0]
        raise ValueError(f"qid {qid!r}: '{key}' row {row} ends before it starts: {windows[row, :2].tolist()}")
    return windows


def _stack_padded(arrays: list[np.ndarray], fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_len, ...) array padded with `fill`, and the (N, max_len) validity mask."""
    lengths = np.array([len(array) for array in arrays])
    width = int(lengths.max())
    stacked = np.full((len(arrays), width) + arrays[0].shape[1:], fill, dtype=np.float64)
    for row, array in enumerate(arrays):
        stacked[row, : len(array)] = array
    return stacked, np.arange(width)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------------------------------------------
# Moment retrieval


def _cross_iou(windows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of (..., N, 2) against (..., M, 2) windows -> (..., N, M), the official cross IoU."""
    return evaluator_temporal_iou(
        torch.from_numpy(windows)[..., :, None, :], torch.from_numpy(others)[..., None, :, :]
    ).numpy()


def _interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """VOC-2011 AP along the last axis: precision made non-increasing, integrated over recall steps."""
    zeros = np.zeros(precision.shape[:-1] + (1,))
    precision = np.concatenate([zeros, precision, zeros], axis=-1)
    recall = np.concatenate([zeros, recall, np.ones_like(zeros)], axis=-1)
    precision = np.maximum.accumulate(precision[..., ::-1], axis=-1)[..., ::-1]
    return np.sum(np.diff(recall, axis=-1) * precision[..., 1:], axis=-1)


def _detection_average_precision(predicted, predicted_valid, truth, truth_valid, thresholds) -> np.ndarray:
    """Per-query ActivityNet AP, (Q, T), of (Q, P, 3) predictions against (Q, G, 2) ground-truth windows."""
    # stable sort by score, padding last
    order = np.argsort(np.where(predicted_valid, -predicted[..., 2], np.inf), axis=1, kind="stable")
    predicted = np.take_along_axis(predicted, order[..., None], axis=1)
    predicted_valid = np.take_along_axis(predicted_valid, order, axis=1)

    iou = np.where(truth_valid[:, None, :], _cross_iou(predicted[..., :2], truth), -np.inf)  # (Q, P, G)
    # the official code visits the ground truth in reversed ascending-argsort order: highest IoU first, and among
    # equal IoUs the later window first. visit_rank[q, p, g] is the position of window g in that visit.
    visit_order = np.argsort(iou, axis=-1, kind="stable")[..., ::-1]
    visit_rank = np.argsort(visit_order, axis=-1)

    thresholds = np.asarray(thresholds)[None, :, None]  # (1, T, 1)
    num_queries, num_predictions, num_truths = iou.shape
    matched = np.zeros((num_queries, thresholds.size, num_truths), dtype=bool)
    true_positive = np.zeros((num_queries, thresholds.size, num_predictions), dtype=bool)
    truth_index = np.arange(num_truths)
    # a prediction takes the first window of its visit order that is unmatched and above the threshold
    for p in range(num_predictions):
        candidates = (iou[:, None, p, :] >= thresholds) & ~matched & predicted_valid[:, None, p, None]
        chosen = np.argmin(np.where(candidates, visit_rank[:, None, p, :], num_truths), axis=-1)
        hit = candidates.any(axis=-1)
        true_positive[:, :, p] = hit
        matched |= hit[..., None] & (truth_index == chosen[..., None])
    false_positive = predicted_valid[:, None, :] & ~true_positive

    true_positives = np.cumsum(true_positive, axis=-1)
    predictions_so_far = true_positives + np.cumsum(false_positive, axis=-1)
    recall = true_positives / truth_valid.sum(axis=1)[:, None, None]
    precision = true_positives / np.maximum(predictions_so_far, 1)
    return _interpolated_average_precision(precision, recall)


def _recall_at_one(top_windows, truth, truth_valid, thresholds) -> tuple[dict[str, float], float]:
    """R1 at each IoU threshold and mIoU of the top windows (Q, 2) against their best ground-truth window."""
    overlap = np.where(truth_valid, _cross_iou(top_windows[:, None, :], truth)[:, 0, :], -np.inf)
    best_truth = truth[np.arange(len(truth)), np.argmax(overlap, axis=1)]
    iou = evaluator_paired_temporal_iou(torch.from_numpy(top_windows), torch.from_numpy(best_truth)).numpy()
    return {str(t): _percent(np.mean(iou >= t)) for t in thresholds}, _percent(np.mean(iou))


def _empty_bucket(r1_thresholds) -> dict:
    average_precision = {str(t): 0.0 for t in MAP_IOU_THRESHOLDS}
    average_precision["average"] = 0.0
    return {"MR-mIoU": 0.0, "MR-mAP": average_precision, "MR-R1": {str(t): 0.0 for t in r1_thresholds}}


def _moment_bucket(moments: dict, truth_kept: np.ndarray, r1_thresholds) -> dict:
    """Official metrics of one length bucket; truth_kept (Q, G) marks the ground-truth windows in the bucket."""
    rows = truth_kept.any(axis=1)
    if not rows.any():
        return _empty_bucket(r1_thresholds)
    truth, truth_kept = moments["truth"][rows], truth_kept[rows]
    per_query_ap = _detection_average_precision(
        moments["predicted"][rows], moments["predicted_valid"][rows], truth, truth_kept, MAP_IOU_THRESHOLDS
    )
    mean_ap = per_query_ap.mean(axis=0)
    average_precision = {str(t): _percent(value) for t, value in zip(MAP_IOU_THRESHOLDS, mean_ap)}
    average_precision["average"] = _percent(np.mean(mean_ap))
    recall, mean_iou = _recall_at_one(moments["top_windows"][rows], truth, truth_kept, r1_thresholds)
    return {"MR-mIoU": mean_iou, "MR-mAP": average_precision, "MR-R1": recall}


def _moment_arrays(qids, predictions, references) -> dict:
    predicted, truth = [], []
    for qid, prediction, reference in zip(qids, predictions, references):
        predicted.append(_windows(prediction, qid, "pred_relevant_windows", 3)[:MAX_PREDICTED_WINDOWS])
        truth.append(_windows(reference, qid, "relevant_windows", 2))
    predicted_padded, predicted_valid = _stack_padded(predicted, 0.0)
    truth_padded, truth_valid = _stack_padded(truth, 0.0)
    return {
        "predicted": predicted_padded,
        "predicted_valid": predicted_valid,
        "top_windows": predicted_padded[:, 0, :2],  # the first window as submitted
        "truth": truth_padded,
        "truth_valid": truth_valid,
    }


def eval_moment_retrieval(
    qids, predictions, references, buckets=LENGTH_BUCKETS, r1_thresholds=QVHIGHLIGHTS_R1_IOU_THRESHOLDS
) -> dict:
    """{bucket name: {"MR-mIoU", "MR-mAP", "MR-R1"}} for aligned prediction and ground-truth records.

    buckets: name -> (min, max] window length in seconds, or None to keep every window.
    """
    moments = _moment_arrays(qids, predictions, references)
    lengths = moments["truth"][..., 1] - moments["truth"][..., 0]
    results = {}
    for name, length_range in buckets.items():
        kept = moments["truth_valid"]
        if length_range is not None:
            low, high = length_range
            kept = kept & (lengths > low) & (lengths <= high)
        results[name] = _moment_bucket(moments, kept, r1_thresholds)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Highlight detection


def _saliency_matrix(reference: dict, qid, clip_length: float) -> np.ndarray:
    """(int(duration / clip_length), annotators) scores, zero outside `relevant_clip_ids`."""
    for key in ("duration", "relevant_clip_ids", "saliency_scores"):
        if not _present(reference, key):
            raise ValueError(f"ground truth of qid {qid!r} has no '{key}', needed for highlight detection")
    num_clips = int(float(reference["duration"]) / clip_length)
    if num_clips < 1:
        raise ValueError(f"qid {qid!r}: duration {reference['duration']} is shorter than one clip of {clip_length} s")
    clip_ids = np.asarray(reference["relevant_clip_ids"], dtype=np.int64).reshape(-1)
    scores = np.asarray(reference["saliency_scores"], dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(clip_ids):
        raise ValueError(
            f"qid {qid!r}: 'saliency_scores' must have one row per relevant clip id, "
            f"got shape {scores.shape} for {len(clip_ids)} ids"
        )
    if clip_ids.size and (clip_ids.min() < 0 or clip_ids.max() >= num_clips):
        outside = clip_ids[(clip_ids < 0) | (clip_ids >= num_clips)].tolist()
        raise ValueError(f"qid {qid!r}: relevant clip ids {outside} are outside the {num_clips} clips of the video")
    matrix = np.zeros((num_clips, scores.shape[1]))
    matrix[clip_ids] = scores
    return matrix


def _fit_length(scores: np.ndarray, length: int) -> np.ndarray:
    """Truncate, or zero-pad, predicted clip scores to the ground truth's clip count (as the official code)."""
    fitted = np.zeros(length)
    fitted[: min(length, len(scores))] = scores[:length]
    return fitted


def _saliency_average_precision(scores: np.ndarray, valid: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AP of sklearn's precision-recall curve with monotone interpolation (the official `get_ap`), vectorised.

    scores (Q, L) with valid (Q, L) prefix masks, labels (Q, L, A) bool -> (Q, A). On that curve tied scores form
    one point; the AP is the mean, over the points where recall grows (tie groups holding a positive), of the best
    precision at that recall or above (that group or a later one). The official special cases follow: all-negative
    labels have no such point (0), all-positive ones have precision 1 everywhere (1).
    """
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    ranked_valid = np.take_along_axis(valid, order, axis=1)
    ranked_labels = np.take_along_axis(labels & valid[..., None], order[..., None], axis=1)

    positions = np.arange(scores.shape[1])
    next_differs = np.concatenate([ranked[:, 1:] != ranked[:, :-1], np.ones((len(scores), 1), dtype=bool)], axis=1)
    next_valid = np.concatenate([ranked_valid[:, 1:], np.zeros((len(scores), 1), dtype=bool)], axis=1)
    group_end = ranked_valid & (next_differs | ~next_valid)
    group_begins = np.concatenate([np.ones((len(scores), 1), dtype=bool), ranked[:, 1:] != ranked[:, :-1]], axis=1)
    group_start = np.maximum.accumulate(np.where(group_begins, positions, 0), axis=1)

    hits = np.cumsum(ranked_labels, axis=1)  # (Q, L, A)
    precision = np.where(group_end[..., None], hits / (positions + 1)[None, :, None], 0.0)
    best_from_here = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    hits_before_group = np.where(
        (group_start > 0)[..., None], np.take_along_axis(hits, np.maximum(group_start - 1, 0)[..., None], axis=1), 0
    )
    recall_grows = group_end[..., None] & (hits > hits_before_group)
    recall_steps = np.maximum(recall_grows.sum(axis=1), 1)
    return np.where(recall_grows, best_from_here, 0.0).sum(axis=1) / recall_steps


def eval_highlight_detection(qids, predictions, references, clip_length: float = 2.0) -> dict:
    """{"HL-min-Fair" | "HL-min-Good" | "HL-min-VeryGood": {"HL-mAP", "HL-Hit1"}} for aligned records."""
    if clip_length <= 0:
        raise ValueError(f"clip_length must be positive, got {clip_length}")
    matrices, fitted_scores, top_clips = [], [], []
    for qid, prediction, reference in zip(qids, predictions, references):
        matrix = _saliency_matrix(reference, qid, clip_length)
        scores = _predicted_saliency(prediction, qid)
        matrices.append(matrix)
        fitted_scores.append(_fit_length(scores, len(matrix)))
        top_clips.append(int(np.argmax(scores)))  # over the untruncated scores, as the official code
    annotator_counts = {matrix.shape[1] for matrix in matrices}
    if len(annotator_counts) != 1:
        raise ValueError(f"ground-truth queries have different numbers of annotators: {sorted(annotator_counts)}")

    truth, valid = _stack_padded(matrices, 0.0)
    scores, _ = _stack_padded(fitted_scores, 0.0)
    top_clips = np.array(top_clips)
    top_clip_in_video = top_clips < valid.sum(axis=1)
    results = {}
    for name, minimum in SALIENCY_LEVELS.items():
        positive = (truth >= minimum) & valid[..., None]
        top_clip_labels = positive[np.arange(len(truth)), np.minimum(top_clips, truth.shape[1] - 1)]
        hit = top_clip_in_video & top_clip_labels.any(axis=1)
        average_precision = _saliency_average_precision(scores, valid, positive)
        results[f"HL-min-{name}"] = {
            "HL-mAP": _percent(np.mean(average_precision)),
            "HL-Hit1": _percent(np.mean(hit)),
        }
    return results


# ---------------------------------------------------------------------------------------------------------------
# Per-dataset reports


def eval_qvhighlights(submission, ground_truth, match_number: bool = True, clip_length: float = 2.0) -> dict:
    """The official QVHighlights report: `brief`, then `HL-min-*`, `full`, `long`, `middle`, `short` (sorted)."""
    qids, predictions, references = align_by_qid(submission, ground_truth, match_number)
    has_windows = _field_in_all_or_none(predictions, "pred_relevant_windows")
    has_saliency = _field_in_all_or_none(predictions, "pred_saliency_scores")
    if not has_windows and not has_saliency:
        raise ValueError("submission records have neither 'pred_relevant_windows' nor 'pred_saliency_scores'")
    details, brief = {}, {}
    if has_windows:
        moments = eval_moment_retrieval(qids, predictions, references)
        details.update(moments)
        moment_brief = {
            "MR-full-mAP": moments["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": moments["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": moments["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": moments["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": moments["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": moments["long"]["MR-mAP"]["average"],
            "MR-full-mIoU": moments["full"]["MR-mIoU"],
            "MR-full-R1@0.3": moments["full"]["MR-R1"]["0.3"],
            "MR-full-R1@0.5": moments["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": moments["full"]["MR-R1"]["0.7"],
        }
        brief.update(sorted(moment_brief.items()))
    # highlight detection scores the queries with annotator scores: none in windows-only ground truth, some in a
    # dataset of both forms ("mixed" saliency labels)
    scored = [i for i, reference in enumerate(references) if _has_clip_scores(reference)]
    if has_saliency and scored:
        highlights = eval_highlight_detection(
            [qids[i] for i in scored], [predictions[i] for i in scored], [references[i] for i in scored], clip_length
        )
        details.update(highlights)
        for level, values in highlights.items():
            brief[f"{level}-mAP"] = values["HL-mAP"]
            brief[f"{level}-Hit1"] = values["HL-Hit1"]
    return {"brief": brief, **dict(sorted(details.items()))}


def eval_temporal_grounding(submission, ground_truth, match_number: bool = True) -> dict:
    """Charades-STA / TACoS: R1@{0.3,0.5,0.7} and mIoU of the top window on every query (no length buckets), and the
    mAP over IoU 0.5:0.05:0.95 that model selection uses."""
    qids, predictions, references = align_by_qid(submission, ground_truth, match_number)
    full = eval_moment_retrieval(qids, predictions, references, {"full": None}, GROUNDING_R1_IOU_THRESHOLDS)["full"]
    brief = {f"MR-full-R1@{t}": full["MR-R1"][str(t)] for t in GROUNDING_R1_IOU_THRESHOLDS}
    brief["MR-full-mIoU"] = full["MR-mIoU"]
    # the official training selects its best checkpoint by MR-full-mAP on every dataset, Charades-STA and TACoS too
    brief["MR-full-mAP"] = full["MR-mAP"]["average"]
    return {"brief": brief, "full": full}


def _tvsum_labels(reference: dict, qid) -> np.ndarray:
    """(clips, annotators) TVSum scores: the `label` field of the TVSum jsonl, else a full `saliency_scores` matrix."""
    key = "label" if _present(reference, "label") else "saliency_scores"
    if not _present(reference, key):
        raise ValueError(f"TVSum ground truth of qid {qid!r} has neither 'label' nor 'saliency_scores'")
    labels = np.asarray(reference[key], dtype=np.float64)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"qid {qid!r}: TVSum '{key}' must be a (clips, annotators) matrix, got shape {labels.shape}")
    return labels


def tvsum_average_precision(scores: np.ndarray, labels: np.ndarray, top_k: int | None = TVSUM_TOP_K) -> np.ndarray:
    """Per-annotator AP, (A,), of clip scores (n,) against raw (n, A) TVSum scores; top_k=None ranks every clip."""
    binary = labels > np.median(labels, axis=0)
    ranked = binary[np.argsort(-scores, kind="stable")][:top_k]
    hits = np.cumsum(ranked, axis=0)
    precision = hits / np.arange(1, len(ranked) + 1)[:, None]
    previous_precision = np.concatenate([np.ones((1, binary.shape[1])), precision[:-1]], axis=0)
    area = np.where(ranked, (previous_precision + precision) / 2, 0.0).sum(axis=0)
    return np.where(hits[-1] > 0, area / np.maximum(hits[-1], 1), 0.0)


def eval_tvsum(submission, ground_truth, match_number: bool = True, top_k: int = TVSUM_TOP_K) -> dict:
    """TVSum highlight detection: `mAP` (top-k, the reported number) and `mAP-all-clips`, see the module doc."""
    qids, predictions, references = align_by_qid(submission, ground_truth, match_number)
    top_k_ap, all_clips_ap, domains = [], [], []
    for qid, prediction, reference in zip(qids, predictions, references):
        labels = _tvsum_labels(reference, qid)
        scores = _fit_length(_predicted_saliency(prediction, qid), len(labels))
        top_k_ap.append(tvsum_average_precision(scores, labels, top_k).mean())
        all_clips_ap.append(tvsum_average_precision(scores, labels, None).mean())
        domains.append(reference.get("domain"))
    # every video has the same number of annotators in TVSum, so the mean of per-video means is the (video,
    # annotator) mean of the official code
    top_k_ap, all_clips_ap = np.array(top_k_ap), np.array(all_clips_ap)
    report = {"brief": {"mAP": _percent(top_k_ap.mean()), "mAP-all-clips": _percent(all_clips_ap.mean())}}
    if all(domain is not None for domain in domains):
        domains = np.array(domains)
        report["per-domain"] = {
            domain: {
                "mAP": _percent(top_k_ap[domains == domain].mean()),
                "mAP-all-clips": _percent(all_clips_ap[domains == domain].mean()),
            }
            for domain in sorted(set(domains.tolist()))
        }
    return report


def compute_metrics(
    submission, ground_truth, dataset_type: str = "qvhighlights", clip_length: float = 2.0, match_number: bool = True
) -> dict:
    """The full report of a registered dataset type (`modeling_lddetr.dataset_types`); its `brief` entry is a flat
    {name: float}."""
    metric = registered_dataset_type(dataset_type).metric
    if metric == "qvhighlights":
        return eval_qvhighlights(submission, ground_truth, match_number, clip_length)
    if metric == "temporal_grounding":
        return eval_temporal_grounding(submission, ground_truth, match_number)
    return eval_tvsum(submission, ground_truth, match_number)


def evaluate_submission(
    submission, ground_truth, dataset_type: str = "qvhighlights", clip_length: float = 2.0, match_number: bool = True
) -> dict[str, float]:
    """The brief metrics, flat {name: float}: what training logs and selects the best checkpoint on."""
    return compute_metrics(submission, ground_truth, dataset_type, clip_length, match_number)["brief"]
