"""Training labels of LD-DETR from annotations in the official jsonl format, for `LDDetrFeatureExtractor`.

Moment spans are (center, width) normalised by `L * clip_length` (the number of kept clips times the clip length,
*not* the duration, as in the official code; inference de-normalises with the duration, and the two agree when the
features cover the video). Saliency labels follow `saliency_label_type`: "qvhighlights" (summed annotator scores;
hard and easy positive/negative clips), "binary" (Charades-STA, TACoS: 1 inside the moment) or "tvsum" (scaled
annotator scores; hard positive/negative clips only). Each sample also gets `saliency_pairs` positive/negative clip
pairs for the saliency loss.

Which scheme a row's own fields give (`label_form`): a row with `relevant_windows`, `relevant_clip_ids` and
`saliency_scores` (QVHighlights) gives "qvhighlights" labels; a row with `relevant_windows` only (the form of
Charades-STA, TACoS, ActivityNet Captions, DiDeMo and most people's annotations) gives "binary" labels, derived from
the windows as the official code does for Charades-STA and TACoS: the clips inside a window are positive (1), the
others negative (0), and the `saliency_pairs` pairs are random clips inside and random clips outside. A dataset
whose labelled rows are of both forms uses "mixed": each row by its own form, so that one file may mix them (both
forms draw the same number of pairs, and the rank-contrastive saliency loss reads a binary row at its single level).
`dataset_saliency_label_type` picks the scheme of a dataset from its rows; the builder records it in
`lddetr_dataset.json` as `saliency_label_type`.

Deliberate differences from the official code (bugs fixed):
- a relevant clip id past the kept clips is dropped; the official code grows the label array by one element, which
  breaks the saliency loss when that sample is the longest of its batch. Hard and easy positives/negatives are chosen
  among the kept clips only (the official easy positive is not clamped and can index past the video);
- an annotation without labels (the QVHighlights test split: no windows, clip ids or scores) yields no labels
  instead of a KeyError;
- ties between hard positive (or negative) candidates are broken by a stable sort: the highest-scored clip that comes
  last, the lowest-scored that comes first. The official `np.argsort` (quicksort) breaks ties in an order that
  depends on the numpy version and CPU (QVHighlights val qid 2579: the official run picked clip 71, this picks 72;
  both have the top score 9);
- span endpoints are clamped to [0, 1] and windows that start after the last kept clip are dropped (a window past
  the features gave spans beyond 1 that no prediction can match); more than `max_windows` windows: a random subset
  drawn from the seedable generator (the official code shuffles the annotation list in place, with Python's `random`);
- "binary": the clip grid is duration / number of clips *before* the `max_video_clips` cut (the official code uses
  the cut count, which stretches the grid when a video is cut; without a cut both agree); every window counts (the
  official code reads only the first; the datasets have one); with a single clip outside the moment, that clip is
  the negative (the official code then copies the positives);
- with fewer candidates than pairs to draw, clips are drawn with replacement (the official `random.sample` raises);
- "tvsum": no span labels (an empty (0, 2) array) instead of the official zero-width span [[0, 0]];
- malformed input raises a ValueError naming the sample, instead of failing later or training on NaN.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

SALIENCY_LABEL_TYPES = ("qvhighlights", "binary", "tvsum", "mixed")
# saliency pairs per sample in the official code: QVHighlights 1 hard + 1 easy, Charades/TACoS 2 random, TVSum 1 hard;
# "mixed" rows are of the first two kinds, which both draw 2
OFFICIAL_SALIENCY_PAIRS = {"qvhighlights": 2, "binary": 2, "tvsum": 1, "mixed": 2}
# schemes whose rows may be QVHighlights rows: an even number of pairs (half hard, half easy)
EVEN_PAIR_TYPES = ("qvhighlights", "mixed")
# TVSum: 20 annotators x (scores 1..5 shifted to 0..4) = 80, rescaled to the 0..12 range of QVHighlights
TVSUM_SCORE_SCALE = 12 / 80


@dataclass(frozen=True)
class LabelMaker:
    """Label dicts (`spans`, `saliency_scores`, `saliency_pos_indices`, `saliency_neg_indices`) for a batch."""

    saliency_label_type: str
    saliency_pairs: int
    clip_length: float
    max_windows: int

    def __call__(
        self, annotations, clips: list[int], clips_before_cut: list[int], rng: np.random.Generator
    ) -> list[dict] | None:
        """Per-sample label dicts, or None when no annotation carries labels (e.g. a test split)."""
        has_labels = [self.check_annotation(annotation, index) for index, annotation in enumerate(annotations)]
        if not any(has_labels):
            return None
        if not all(has_labels):
            missing = [index for index, present in enumerate(has_labels) if not present][:10]
            raise ValueError(
                f"samples {missing} have no {self.saliency_label_type} labels while others do: a batch is either "
                "all labelled or all unlabelled"
            )
        return [
            self._sample_labels(annotation, length, before_cut, rng)
            for annotation, length, before_cut in zip(annotations, clips, clips_before_cut)
        ]

    def check_annotation(self, annotation: Mapping, index: int) -> bool:
        """Validate one annotation; return whether it carries labels of this saliency_label_type."""
        if not isinstance(annotation, Mapping):
            raise ValueError(f"sample {index}: an annotation must be a dict, got {type(annotation).__name__}")
        duration = annotation.get("duration")
        if not _is_number(duration) or not duration > 0:
            raise ValueError(f"sample {index}: duration must be a positive number of seconds, got {duration!r}")
        windows = annotation.get("relevant_windows")
        if _given(windows):
            array = np.asarray(windows, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
                raise ValueError(
                    f"sample {index}: relevant_windows must be [[start, end], ...] in seconds, got {windows!r}"
                )
            for start, end in array:
                if not 0 <= start < end <= duration:
                    raise ValueError(
                        f"sample {index}: relevant window [{start}, {end}] must satisfy "
                        f"0 <= start < end <= duration ({duration})"
                    )
        if self.saliency_label_type == "tvsum":
            scores = _tvsum_scores(annotation)
            if scores is None:
                return False
            array = np.asarray(scores, dtype=np.float64)
            if array.ndim != 2 or len(array) == 0 or not np.isfinite(array).all():
                raise ValueError(
                    f"sample {index}: TVSum annotator scores must be a non-empty (clips, annotators) matrix"
                )
            return True
        if not _given(windows):
            return False
        clip_ids, scores = annotation.get("relevant_clip_ids"), annotation.get("saliency_scores")
        if self.saliency_label_type == "qvhighlights" and (not _given(clip_ids) or scores is None):
            raise ValueError(
                f"sample {index}: QVHighlights labels need relevant_clip_ids and saliency_scores besides "
                "relevant_windows; rows with relevant_windows only take saliency_label_type 'binary' (or 'mixed' "
                "beside QVHighlights rows)"
            )
        if self.saliency_label_type in EVEN_PAIR_TYPES and label_form(annotation) == "qvhighlights":
            ids = np.asarray(clip_ids)
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
                raise ValueError(f"sample {index}: relevant_clip_ids must be non-negative integers, got {clip_ids!r}")
            score_array = np.asarray(scores, dtype=np.float64)
            if score_array.ndim != 2 or len(score_array) != len(ids) or not np.isfinite(score_array).all():
                raise ValueError(
                    f"sample {index}: saliency_scores must hold one list of annotator scores per relevant clip id "
                    f"({len(ids)} ids)"
                )
        return True

    def _sample_labels(self, annotation: Mapping, clips: int, clips_before_cut: int, rng: np.random.Generator) -> dict:
        pairs = self.saliency_pairs
        if self.saliency_label_type == "tvsum":
            spans = np.zeros((0, 2), dtype=np.float32)
            scores, pos, neg = tvsum_saliency(_tvsum_scores(annotation), clips, pairs)
        else:
            windows = np.asarray(annotation["relevant_windows"], dtype=np.float64)
            spans = span_labels(windows, clips, self.clip_length, self.max_windows, rng)
            if self.saliency_label_type in EVEN_PAIR_TYPES and label_form(annotation) == "qvhighlights":
                scores, pos, neg = qvhighlights_saliency(
                    annotation["relevant_clip_ids"], annotation["saliency_scores"], clips, pairs, rng
                )
            else:
                scores, pos, neg = binary_saliency(
                    windows, float(annotation["duration"]), clips_before_cut, clips, pairs, rng
                )
        return {"spans": spans, "saliency_scores": scores, "saliency_pos_indices": pos, "saliency_neg_indices": neg}


def label_form(annotation: Mapping) -> str | None:
    """The saliency labels a row's own fields give: "qvhighlights" (relevant_windows, relevant_clip_ids and
    saliency_scores), "binary" (relevant_windows only) or None (no windows: an unlabelled row, e.g. a test split).
    TVSum rows (clip scores, no windows) are None here: their scheme comes from the dataset type."""
    if not _given(annotation.get("relevant_windows")):
        return None
    has_clip_scores = _given(annotation.get("relevant_clip_ids")) and annotation.get("saliency_scores") is not None
    return "qvhighlights" if has_clip_scores else "binary"


def dataset_saliency_label_type(default: str, forms) -> str:
    """The scheme of a dataset from the `label_form`s of its rows: a dataset type's own scheme where it has no
    choice (`default` "binary" or "tvsum"), else "qvhighlights" when every labelled row has clip scores, "binary" when
    none has, "mixed" when both forms occur (and the default when no row is labelled)."""
    if default != "qvhighlights":
        return default
    kinds = {form for form in forms if form is not None}
    if len(kinds) == 2:
        return "mixed"
    return kinds.pop() if kinds else default


def numpy_generator(seed: int | None, generator: np.random.Generator | torch.Generator | None) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    if generator is not None:
        raise ValueError(f"generator must be a numpy or torch Generator, got {type(generator).__name__}")
    if seed is not None:
        return np.random.default_rng(seed)
    return np.random.default_rng(int(torch.randint(2**62, (1,))))


def span_labels(
    windows: np.ndarray, clips: int, clip_length: float, max_windows: int, rng: np.random.Generator
) -> np.ndarray:
    """(n, 2) windows in seconds -> (m <= max_windows, 2) float32 (center, width), normalised by clips * clip_length."""
    extent = clips * clip_length
    start_end = np.clip(windows / extent, 0.0, 1.0)
    start_end = start_end[start_end[:, 1] > start_end[:, 0]]  # windows that start after the last kept clip vanish
    if len(start_end) > max_windows:
        start_end = start_end[np.sort(rng.choice(len(start_end), max_windows, replace=False))]
    center_width = np.stack([start_end.mean(axis=1), start_end[:, 1] - start_end[:, 0]], axis=1)
    return center_width.astype(np.float32).reshape(-1, 2)


def qvhighlights_saliency(clip_ids, annotator_scores, clips: int, pairs: int, rng: np.random.Generator):
    """QVHighlights (`get_saliency_labels_all`): summed annotator scores at the relevant clips (0 elsewhere);
    positives = [hard..., easy...], negatives = [hard..., easy...] with pairs / 2 of each:
    hard positive = highest summed score, hard negative = *lowest* summed score among the relevant clips (a relevant
    clip, as in the official code), easy positive = a random relevant clip, easy negative = a random other clip
    (no other clip: the hard pairs are repeated, as officially).
    Returns scores (clips,) float32, pos (pairs,) and neg (pairs,) int64."""
    ids = np.asarray(clip_ids, dtype=np.int64)
    summed = np.asarray(annotator_scores, dtype=np.float64).sum(axis=1)
    kept = ids < clips
    ids, summed = ids[kept], summed[kept]
    scores = np.zeros(clips, dtype=np.float32)
    scores[ids] = summed
    if (
        len(ids) == 0
    ):  # every relevant clip lies past the kept clips: no usable pair; the last clip, as clamped officially
        last = np.full(pairs, clips - 1, dtype=np.int64)
        return scores, last, last.copy()
    per_kind = pairs // 2
    ranked = ids[np.argsort(summed, kind="stable")]  # increasing score
    hard_pos, hard_neg = _take(ranked[-per_kind:], per_kind), _take(ranked[:per_kind], per_kind)
    outside = np.setdiff1d(np.arange(clips), ids)
    if len(outside):
        easy_pos, easy_neg = _draw(ids, per_kind, rng), _draw(outside, per_kind, rng)
    else:
        easy_pos, easy_neg = hard_pos, hard_neg
    return scores, np.concatenate([hard_pos, easy_pos]), np.concatenate([hard_neg, easy_neg])


def binary_saliency(
    windows: np.ndarray, duration: float, clips_before_cut: int, clips: int, pairs: int, rng: np.random.Generator
):
    """Charades-STA / TACoS (`get_saliency_labels_sub_as_query`): 1 on the clips of the moments, 0 elsewhere, on a
    grid of duration / clips; random positives inside, random negatives outside (none outside: the positives).
    Returns scores (clips,) float32, pos (pairs,), neg (pairs,) int64."""
    clip_seconds = duration / clips_before_cut
    relevant = np.zeros(clips, dtype=bool)
    for start, end in windows.tolist():
        first = int(start / clip_seconds)
        last = max(0, min(int(end / clip_seconds), clips_before_cut) - 1)
        relevant[min(first, last) : last + 1] = True
    inside, outside = np.flatnonzero(relevant), np.flatnonzero(~relevant)
    if len(inside) == 0:  # the moment lies past the kept clips
        last = np.full(pairs, clips - 1, dtype=np.int64)
        return relevant.astype(np.float32), last, last.copy()
    pos = _draw(inside, pairs, rng)
    neg = _draw(outside, pairs, rng) if len(outside) else pos.copy()
    return relevant.astype(np.float32), pos, neg


def tvsum_saliency(annotator_scores, clips: int, pairs: int):
    """TVSum (`get_saliency_labels_all_tvsum`): sum over annotators of (score - 1), rescaled by 12 / 80; the
    highest- and lowest-scored clips are the positives and negatives. Returns scores (clips,) float32, pos, neg."""
    summed = (np.asarray(annotator_scores, dtype=np.float64) - 1).sum(axis=1)[:clips]
    scores = np.zeros(clips, dtype=np.float32)
    scores[: len(summed)] = summed * TVSUM_SCORE_SCALE
    ranked = np.argsort(summed, kind="stable")
    return scores, _take(ranked[-pairs:], pairs), _take(ranked[:pairs], pairs)


def _draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct clips of the pool, or with replacement when the pool is smaller."""
    return rng.choice(pool, count, replace=len(pool) < count).astype(np.int64)


def _take(clips: np.ndarray, count: int) -> np.ndarray:
    """The clips, repeated cyclically up to `count` when there are fewer."""
    return np.resize(clips, count).astype(np.int64)


def _tvsum_scores(annotation: Mapping):
    """TVSum per-clip annotator scores: `saliency_scores` in the Hub datasets, `label` in the official jsonl."""
    scores = annotation.get("saliency_scores")
    return annotation.get("label") if scores is None else scores


def _given(value) -> bool:
    """A label field that is present and non-empty (test splits have None or nothing)."""
    return value is not None and len(value) > 0


def _is_number(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and bool(np.isfinite(value))
    )
