"""LDDetrDataCollator: batches of `queries` rows of an LD-DETR Hub dataset, joined to their videos, as model inputs.

A `queries` row (qid, query, vid, duration, relevant_windows, relevant_clip_ids, saliency_scores, text_features)
names its video by `vid`; the `videos` dataset (vid, video_features, optional audio_features) holds each video once.
The collator looks the video up through a vid -> row index dict built once, and runs the processor.

The batch holds the model's keyword arguments (`video_features`, `video_attention_mask`, `text_features`,
`text_attention_mask`, `audio_features` when used, `labels` when the rows are labelled) plus `meta`: a dict of
lists (`qid`, `vid`, `query`, `duration`) for post-processing. Pop `meta` before `model(**batch)`.

Randomness (easy saliency pairs, window subsets): each batch gets a numpy generator seeded with (`seed`, the qids of
its rows in order). A batch's labels are thus a function of its rows alone, whatever the DataLoader workers, the
prefetching or a resumed run (Trainer skips the batches done without collating them, and accelerate collates one batch
ahead, so drawing from a global generator would shift every later draw after a resume); shuffling changes the batches
every epoch, and with them the draws. `seed` defaults to `torch.initial_seed()` when the collator is built, which
`transformers.set_seed` sets.
"""

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .processing_lddetr import LDDetrProcessor

META_COLUMNS = ("qid", "vid", "query", "duration")


class LDDetrDataCollator:
    def __init__(self, processor: LDDetrProcessor, videos, seed: int | None = None):
        """`videos`: a `datasets.Dataset` with columns `vid`, `video_features` and, when the processor uses audio,
        `audio_features`."""
        self.processor = processor
        self.videos = videos
        self.uses_audio = processor.feature_extractor.audio_feature_dim > 0
        if self.uses_audio and "audio_features" not in videos.column_names:
            raise ValueError("the processor uses audio, but the videos dataset has no audio_features column")
        self.video_row = {}
        for index, vid in enumerate(videos["vid"]):
            if vid in self.video_row:
                raise ValueError(
                    f"vid {vid!r} appears twice in the videos dataset (rows {self.video_row[vid]} and {index})"
                )
            self.video_row[vid] = index
        self.seed = torch.initial_seed() if seed is None else int(seed)

    def __call__(self, rows: Sequence[Mapping]) -> dict:
        videos = {}  # vid -> row: queries of one video share it
        for row in rows:
            vid = row["vid"]
            if vid not in videos:
                if vid not in self.video_row:
                    raise ValueError(f"qid {row.get('qid')!r}: vid {vid!r} is not in the videos dataset")
                videos[vid] = self.videos[self.video_row[vid]]
        batch = self.processor(
            [videos[row["vid"]]["video_features"] for row in rows],
            [row["text_features"] for row in rows],
            annotations=rows,
            audio_features=[videos[row["vid"]]["audio_features"] for row in rows] if self.uses_audio else None,
            generator=self._generator(rows),
        )
        batch["meta"] = {name: [row.get(name) for row in rows] for name in META_COLUMNS}
        return batch

    def _generator(self, rows: Sequence[Mapping]) -> np.random.Generator:
        qid_keys = [
            zlib.crc32(str(row.get("qid")).encode()) for row in rows
        ]  # str(): stable across processes, unlike hash()
        return np.random.default_rng([self.seed, *qid_keys])


__all__ = ["LDDetrDataCollator"]
