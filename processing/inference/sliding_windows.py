"""Run a model trained on videos of at most `window_clips` clips on longer videos: overlapping windows of clips.

A video of L clips that fits (L <= window_clips) is one window, exactly as in training. A longer one is cut into
windows of exactly `window_clips` clips, each starting `window_clips - overlap_clips` clips after the previous one,
the last one aligned to the end of the video, so that every clip is covered and every window has the length the model
was trained on. Each window is processed as a video of its own (its tef columns and normalised spans refer to the
window); its moments are then shifted by the window's start time, pooled over the windows, and overlapping duplicates
(the same moment seen by two windows) removed by temporal NMS. The saliency score of a clip is the mean of its scores
in the windows that contain it.

The moments are for people to read: the official post-processing rounds windows to clip multiples, which turns a short
window into an empty one (4.0-4.0 s) and several windows into the same one; those are dropped here (the best-scored
copy of a window is kept), while the official submission records (`LDDetrProcessor.post_process`) keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modeling_lddetr.span_ops import temporal_nms


@dataclass(frozen=True)
class ClipWindow:
    start: int  # first clip
    stop: int  # one past the last clip
    start_time: float  # seconds
    end_time: float  # seconds, the end of the video for the last window

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time


def plan_windows(
    num_clips: int, duration: float, clip_length: float, window_clips: int, overlap_clips: int
) -> list[ClipWindow]:
    """The windows covering a video of `num_clips` clips of `clip_length` seconds lasting `duration` seconds."""
    if num_clips < 1:
        raise ValueError(f"a video needs at least one clip, got {num_clips}")
    if window_clips < 1 or not 0 <= overlap_clips < window_clips:
        raise ValueError(
            f"need window_clips >= 1 and 0 <= overlap_clips < window_clips, got {window_clips}, {overlap_clips}"
        )
    if num_clips <= window_clips:
        starts = [0]
    else:
        starts = list(range(0, num_clips - window_clips + 1, window_clips - overlap_clips))
        if starts[-1] != num_clips - window_clips:
            starts.append(num_clips - window_clips)
    windows = []
    for start in starts:
        stop = min(start + window_clips, num_clips)
        # the last clip may be partial (or the video a little longer than its clips): the last window ends with it
        end_time = duration if stop == num_clips else stop * clip_length
        windows.append(ClipWindow(start, stop, start * clip_length, end_time))
    return windows


def merge_moments(
    windows: Sequence[ClipWindow],
    moments_per_window: Sequence[Sequence[Sequence[float]]],
    nms_threshold: float | None,
    top_k: int | None,
) -> list[list[float]]:
    """Pool `[start, end, score]` moments, each in seconds from its window's start, into moments in seconds from the
    start of the video, best first, of positive length and each window once, NMS applied at `nms_threshold` (None:
    none), at most `top_k` (None: all)."""
    if len(windows) != len(moments_per_window):
        raise ValueError(f"{len(moments_per_window)} lists of moments for {len(windows)} windows")
    pooled = [
        [round(start + window.start_time, 4), round(end + window.start_time, 4), score]
        for window, moments in zip(windows, moments_per_window)
        for start, end, score in moments
    ]
    pooled.sort(key=lambda moment: moment[2], reverse=True)  # stable: equal scores keep window order
    pooled = distinct_moments(pooled)
    if nms_threshold is not None:
        pooled = temporal_nms(pooled, nms_threshold)
    return pooled[:top_k]


def distinct_moments(ranked: Sequence[Sequence[float]]) -> list[list[float]]:
    """The `[start, end, score]` rows, best first, without empty windows and without repeats of a window."""
    seen = set()
    kept = []
    for start, end, score in ranked:
        if end > start and (start, end) not in seen:
            seen.add((start, end))
            kept.append([start, end, score])
    return kept


def average_saliency(
    windows: Sequence[ClipWindow], scores_per_window: Sequence[Sequence[float]], num_clips: int
) -> list[float]:
    """Per clip of the video, the mean of its saliency scores over the windows that contain it."""
    total = np.zeros(num_clips, dtype=np.float64)
    count = np.zeros(num_clips, dtype=np.int64)
    for window, scores in zip(windows, scores_per_window):
        if len(scores) != window.stop - window.start:
            raise ValueError(f"{len(scores)} saliency scores for a window of {window.stop - window.start} clips")
        total[window.start : window.stop] += scores
        count[window.start : window.stop] += 1
    if (count == 0).any():
        raise ValueError(f"clips {np.flatnonzero(count == 0).tolist()} are in no window")
    return (total / count).tolist()
