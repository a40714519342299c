"""Synthetic features for the embedded demo: made up, but generated from the real annotations so that the task is
learnable, and written in the official feature layout so that the real builder reads them.

Each query gets a random "topic" direction. Its text tokens are the topic plus noise (in the same space as the
`clip` video features, as with real CLIP). A video's clips hold a per-video scene vector plus noise; the clips of a
query's relevant windows also carry that query's topic, scaled up with the clip's saliency (summed annotator
scores), in the `clip` space and, through a fixed random projection, in the `slowfast` space. Relevant clips also
share one fixed "highlight" direction, scaled the same way: a query-independent cue, like real highlight-ness, that
a model picks up early. A distractor direction that matches no query sits on a few clips outside every window, so
that "find the unusual clips" is not enough.
Videos with several queries carry every query's topic in its own windows. Everything is seeded by qid and vid:
the same annotations always give the same arrays.
"""

import math
import zlib
from pathlib import Path

import numpy as np

from .annotations import QueryRow, read_annotations
from .specs import DatasetSpec

SEED = 2501_10787
SCENE_WEIGHT = 1.0
NOISE_WEIGHT = 1.0
TOPIC_WEIGHT = 2.0
DISTRACTOR_WEIGHT = 1.5
HIGHLIGHT_WEIGHT = 1.5  # a direction every relevant clip shares: quick to learn, like real "highlight-ness"
TEXT_OFFSET_WEIGHT = 1.0  # a direction shared by every text (real text features are not centred)
MIN_RELEVANCE = 0.4  # a relevant clip with all scores 0 still shows its topic, so that windows stay learnable


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *keys])


def _vid_key(vid: str) -> int:
    return zlib.crc32(vid.encode("utf-8"))


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def _noise(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    return rng.standard_normal((rows, dim)) * (NOISE_WEIGHT / math.sqrt(dim))


def _topic(qid: int, dim: int) -> np.ndarray:
    return _unit(_rng(1, qid), dim)


def _relevance(row: QueryRow, num_clips: int) -> np.ndarray:
    """0 outside the relevant clips; MIN_RELEVANCE..1 inside, growing with the summed annotator scores (0-12)."""
    weights = np.zeros(num_clips)
    for clip, scores in zip(row.relevant_clip_ids or [], row.saliency_scores or []):
        if clip < num_clips:
            weights[clip] = MIN_RELEVANCE + (1 - MIN_RELEVANCE) * min(sum(scores), 12.0) / 12.0
    return weights


def synthetic_video(
    vid: str, rows: list[QueryRow], clip_length: float, dims: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(slowfast-like, clip-like) float32 features of one video, from the queries that use it."""
    slowfast_dim, clip_dim = dims
    rng = _rng(2, _vid_key(vid))
    num_clips = math.ceil(rows[0].duration / clip_length)
    projection = _rng(0).standard_normal((slowfast_dim, clip_dim))  # a fixed map from the clip space to slowfast
    projection /= np.linalg.norm(projection, axis=0, keepdims=True)

    clip = SCENE_WEIGHT * _unit(rng, clip_dim) + _noise(rng, num_clips, clip_dim)
    slowfast = SCENE_WEIGHT * _unit(rng, slowfast_dim) + _noise(rng, num_clips, slowfast_dim)
    highlight = np.zeros(num_clips)
    for row in rows:
        relevance = _relevance(row, num_clips)
        topic = _topic(row.qid, clip_dim)
        clip += TOPIC_WEIGHT * relevance[:, None] * topic
        slowfast += TOPIC_WEIGHT * relevance[:, None] * (projection @ topic)
        highlight = np.maximum(highlight, relevance)
    clip += HIGHLIGHT_WEIGHT * highlight[:, None] * _unit(_rng(5), clip_dim)
    slowfast += HIGHLIGHT_WEIGHT * highlight[:, None] * _unit(_rng(6), slowfast_dim)
    any_relevant = highlight > 0

    outside = np.flatnonzero(~any_relevant)
    if len(outside):
        start = rng.integers(len(outside))
        chosen = outside[start : start + int(rng.integers(4, 13))]
        distractor = _unit(rng, clip_dim)
        clip[chosen] += DISTRACTOR_WEIGHT * distractor
        slowfast[chosen] += DISTRACTOR_WEIGHT * (projection @ distractor)
    return slowfast.astype(np.float32), clip.astype(np.float32)


def synthetic_text(row: QueryRow, dim: int) -> np.ndarray:
    """(tokens, dim) float32: one token per word plus start and end tokens, like CLIP's."""
    rng = _rng(3, row.qid)
    num_tokens = len(row.query.split()) + 2
    offset = TEXT_OFFSET_WEIGHT * _unit(_rng(4), dim)
    return (TOPIC_WEIGHT * _topic(row.qid, dim) + offset + _noise(rng, num_tokens, dim)).astype(np.float32)


def write_synthetic_features(spec: DatasetSpec, annotations_dir: Path, features_dir: Path) -> None:
    """Write `slowfast_features/{vid}.npz`, `clip_features/{vid}.npz` and `clip_text_features/qid{qid}.npz`."""
    slowfast_source, clip_source = spec.video_sources
    if spec.text_source.dim != clip_source.dim:
        raise ValueError("the synthetic text features live in the clip feature space: their dims must match")
    rows = [row for split_rows in read_annotations(spec, annotations_dir, None).values() for row in split_rows]
    by_video: dict[str, list[QueryRow]] = {}
    for row in rows:
        by_video.setdefault(row.vid, []).append(row)

    for source in (slowfast_source, clip_source):
        (features_dir / source.directory).mkdir(parents=True, exist_ok=True)
    (features_dir / spec.text_source.directory).mkdir(parents=True, exist_ok=True)
    for vid, video_rows in by_video.items():
        slowfast, clip = synthetic_video(vid, video_rows, spec.clip_length, (slowfast_source.dim, clip_source.dim))
        np.savez(features_dir / slowfast_source.directory / f"{vid}.npz", features=slowfast)
        np.savez(features_dir / clip_source.directory / f"{vid}.npz", features=clip)
    for row in rows:
        tokens = synthetic_text(row, spec.text_source.dim)
        path = features_dir / spec.text_source.directory / spec.text_source.file_name.format(qid=row.qid)
        np.savez(path, **{spec.text_source.key: tokens, "pooler_output": tokens[-1]})
