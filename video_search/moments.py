"""Stage 2: LD-DETR on the candidate videos of one query, in batches of windows, moments ranked across videos.

Each candidate is cut into the windows the model was trained on (`plan_windows`, as the pipeline does for long
videos); all windows of all candidates go through the model in batches of `windows_per_batch`, with the query's
token features repeated. A video's moments are merged over its windows (temporal NMS where there are several).

A moment's foreground probability p answers "is this the moment, given that this video is the one"; it is
calibrated within a video, not across videos (a video without the moment still has a best moment, often with a
high p). The joint score multiplies it by the video's share of the query under the model's own contrastive
softmax, exp((s - s_max) / T), with s the Distill Align similarity of query and video and T Distill Align's learned
temperature: p(moment | video, query) * p(video | query) up to a constant that is the same for every video of the
query, so it ranks moments of different videos on one scale. `lddetr-eval-library` measures both scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modeling_lddetr import LDDetrModel, LDDetrProcessor
from processing.inference.pipeline import WINDOW_MERGE_NMS_THRESHOLD
from processing.inference.sliding_windows import merge_moments, plan_windows

SCORES = ("joint", "foreground")
WINDOWS_PER_BATCH = 64


@dataclass
class Moment:
    candidate: int  # index into the candidates given
    start: float  # seconds
    end: float
    score: float  # what the ranking uses
    foreground: float  # LD-DETR's foreground probability


class MomentRanker:
    def __init__(
        self,
        model: LDDetrModel,
        processor: LDDetrProcessor,
        window_overlap: float = 0.5,
        windows_per_batch: int = WINDOWS_PER_BATCH,
    ):
        self.model, self.processor = model.eval(), processor
        self.window_clips = int(model.config.max_video_clips or processor.feature_extractor.max_video_clips)
        self.window_overlap = window_overlap
        self.windows_per_batch = windows_per_batch
        self.clip_length = processor.feature_extractor.clip_length

    @torch.no_grad()
    def __call__(
        self,
        text_features: np.ndarray,
        videos: Sequence[np.ndarray],
        durations: Sequence[float],
        similarities: np.ndarray,
        temperature: float,
        score: str = "joint",
        moments_per_video: int = 10,
    ) -> list[Moment]:
        """text_features (N, Dt) raw; videos: the candidates' raw (L_i, D) clip features; similarities (C,) their
        Distill Align similarity to the query. Returns every candidate's moments, best first by `score`."""
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        pairs = []  # (candidate, window)
        for candidate, (features, duration) in enumerate(zip(videos, durations)):
            overlap = min(int(self.window_clips * self.window_overlap), self.window_clips - 1)
            for window in plan_windows(len(features), duration, self.clip_length, self.window_clips, overlap):
                pairs.append((candidate, window))
        per_window = []
        for first in range(0, len(pairs), self.windows_per_batch):
            chunk = pairs[first : first + self.windows_per_batch]
            batch = self.processor(
                video_features=[videos[c][w.start : w.stop] for c, w in chunk],
                text_features=[text_features] * len(chunk),
            )
            inputs = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in batch.items()}
            outputs = self.model(**inputs)
            per_window += self.processor.post_process_moment_retrieval(
                outputs, [w.duration for _, w in chunk], top_k=None
            )
        windows_of: dict[int, list] = {}
        for (candidate, window), moments in zip(pairs, per_window):
            windows_of.setdefault(candidate, []).append((window, moments))
        similarities = np.asarray(similarities, dtype=np.float64)
        moments = []
        for candidate, entries in windows_of.items():
            windows = [window for window, _ in entries]
            nms = WINDOW_MERGE_NMS_THRESHOLD if len(windows) > 1 else None
            merged = merge_moments(windows, [m for _, m in entries], nms, moments_per_video)
            foreground = np.array([m[2] for m in merged])
            if score == "joint":
                share = np.exp((similarities[candidate] - similarities.max()) / temperature)
                ranked = foreground * share
            else:
                ranked = foreground
            for (start, end, p), value in zip(merged, ranked):
                moments.append(Moment(candidate, start, end, float(value), float(p)))
        moments.sort(key=lambda moment: moment.score, reverse=True)
        return moments
