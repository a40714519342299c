"""Video corpus moment retrieval metrics, as TVR defines them, and stage-1 video recall.

R@K, IoU >= t: the share of queries for which one of the K best moments over the whole corpus is in the right
video and overlaps one of the query's ground-truth windows with a temporal IoU of at least t. Video recall@N: the
share of queries whose video is among stage 1's N best videos. Percentages, over every query given (a query whose
video is not in the library counts as a miss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RECALL_AT = (1, 5, 10)
IOU_THRESHOLDS = (0.5, 0.7)
VIDEO_RECALL_AT = (1, 5, 10, 50)


def temporal_iou(moment: Sequence[float], windows: Sequence[Sequence[float]]) -> float:
    """The best IoU of one (start, end) with any of the ground-truth windows."""
    start, end = moment
    best = 0.0
    for window_start, window_end in windows:
        intersection = max(0.0, min(end, window_end) - max(start, window_start))
        union = max(end, window_end) - min(start, window_start)
        if union > 0:
            best = max(best, intersection / union)
    return best


def moment_recalls(
    ranked: Sequence[Sequence[Mapping]], ground_truth: Sequence[Mapping]
) -> dict[str, float]:
    """ranked: per query its moments best first (`vid`, `start`, `end`); ground_truth: per query `vid` and
    `relevant_windows`. Returns {"R@1 IoU=0.5": ..., ...} in percent."""
    if len(ranked) != len(ground_truth):
        raise ValueError(f"{len(ranked)} ranked lists for {len(ground_truth)} queries")
    hits = np.zeros((len(ground_truth), len(RECALL_AT), len(IOU_THRESHOLDS)), dtype=bool)
    for query, (moments, truth) in enumerate(zip(ranked, ground_truth)):
        ious = [
            temporal_iou((m["start"], m["end"]), truth["relevant_windows"]) if m["vid"] == truth["vid"] else 0.0
            for m in moments[: max(RECALL_AT)]
        ]
        for k_index, k in enumerate(RECALL_AT):
            best = max(ious[:k], default=0.0)
            for t_index, threshold in enumerate(IOU_THRESHOLDS):
                hits[query, k_index, t_index] = best >= threshold
    recalls = 100 * hits.mean(axis=0)
    return {
        f"R@{k} IoU={threshold}": round(float(recalls[k_index, t_index]), 2)
        for t_index, threshold in enumerate(IOU_THRESHOLDS)
        for k_index, k in enumerate(RECALL_AT)
    }


def video_recalls(ranked_vids: Sequence[Sequence[str]], ground_truth: Sequence[Mapping]) -> dict[str, float]:
    """ranked_vids: per query stage 1's videos best first. Returns {"video R@1": ..., ...} in percent."""
    recalls = {}
    for n in VIDEO_RECALL_AT:
        hits = [truth["vid"] in list(vids[:n]) for vids, truth in zip(ranked_vids, ground_truth)]
        recalls[f"video R@{n}"] = round(100 * float(np.mean(hits)), 2)
    return recalls
