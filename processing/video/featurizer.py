"""Per-clip features of a video file: one (L, D) array per feature type, in the order the model takes them.

The official LD-DETR checkpoints take, per clip, SlowFast (2304-d) then CLIP ViT-B/32 (512-d) features
(`video_feature_dims=[2304, 512]`). CLIP is built in (`ClipImageEncoder`). No SlowFast network is bundled: to run
such a checkpoint on raw videos, wrap one as a `CallableClipEncoder` (for example pytorchvideo's `slowfast_r50`
with its classification head removed, fed 2-s clips, which gives 2048 + 256 = 2304 dims) and put it first.
Without one, only checkpoints trained on CLIP features alone (`video_feature_dims=[512]`) can run on raw videos;
`VideoFeaturizer.check_feature_dims` says which case applies. Features are returned raw (not normalised),
as the datasets store them; the processor normalises them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .clip_encoders import ClipImageEncoder
from .decoding import SAMPLING_VERSION, VideoClip, VideoClipReader
from .feature_cache import FeatureCache
from .prefetch import prefetched

# Dims of the official feature types, to explain a mismatch with a checkpoint's video_feature_dims.
KNOWN_FEATURE_DIMS = {2304: "SlowFast", 512: "CLIP ViT-B/32"}


class ClipEncoder(Protocol):
    """Turns the sampled frames of video clips into one feature vector per clip."""

    name: str  # unique within a featurizer
    feature_dim: int
    frames_per_clip: int
    batch_size: int  # frames per forward pass
    identity: Mapping  # JSON-serialisable; changes whenever the features would (weights, dtype, preprocessing...)

    def encode_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """clips: each (frames_per_clip, H, W, 3) uint8 RGB -> (len(clips), feature_dim) float32."""


class CallableClipEncoder:
    """A clip encoder from a function, e.g. a SlowFast network.

    Args:
        name: feature type name ("slowfast").
        feature_dim: output dims per clip.
        frames_per_clip: frames sampled per clip, at the centres of equal sub-intervals.
        encode: (n, frames_per_clip, H, W, 3) uint8 RGB array -> (n, feature_dim) array or tensor.
        identity: a string that changes whenever the function's outputs would (model name and weights version):
            cached features are keyed on it.
        batch_size: frames per call.
    """

    def __init__(
        self,
        name: str,
        feature_dim: int,
        frames_per_clip: int,
        encode: Callable[[np.ndarray], np.ndarray | torch.Tensor],
        identity: str,
        batch_size: int = 64,
    ):
        if not identity:
            raise ValueError("identity must name the encoder's model and weights: cached features are keyed on it")
        self.name = name
        self.feature_dim = feature_dim
        self.frames_per_clip = frames_per_clip
        self.batch_size = batch_size
        self.identity = {"encoder": "callable", "identity": identity, "frames_per_clip": frames_per_clip}
        self._encode = encode

    def encode_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        features = self._encode(np.stack(clips))  # (n, k, H, W, 3) -> (n, D)
        if isinstance(features, torch.Tensor):
            features = features.detach().float().cpu().numpy()
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (len(clips), self.feature_dim):
            raise ValueError(
                f"encoder {self.name!r} returned shape {features.shape} for {len(clips)} clips, "
                f"expected ({len(clips)}, {self.feature_dim})"
            )
        return features


@dataclass
class VideoFeatures:
    features: dict[str, np.ndarray]  # feature type -> (L, D) float32, in the featurizer's order
    duration: float  # seconds, as decoded
    clip_length: float

    @property
    def num_clips(self) -> int:
        return len(next(iter(self.features.values())))

    def concatenated(self) -> np.ndarray:
        """(L, sum of dims): the feature types side by side, as the datasets' `video_features` column."""
        return np.concatenate(list(self.features.values()), axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"feature/{name}": value for name, value in self.features.items()}
        arrays["feature_names"] = np.array(list(self.features))
        arrays["duration"] = np.array(self.duration)
        arrays["clip_length"] = np.array(self.clip_length)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> VideoFeatures:
        names = [str(name) for name in arrays["feature_names"]]
        return cls(
            features={name: arrays[f"feature/{name}"] for name in names},
            duration=float(arrays["duration"]),
            clip_length=float(arrays["clip_length"]),
        )


@dataclass
class DecodedVideo:
    clips: list[VideoClip]
    duration: float  # seconds, as decoded


def decode_video(video_path: str | os.PathLike, clip_length: float, frames_per_clip: Sequence[int]) -> DecodedVideo:
    """All clips of a video with their sampled frames (a function, so that decoding workers need no encoder)."""
    reader = VideoClipReader(video_path, clip_length, frames_per_clip)
    clips = list(reader)
    return DecodedVideo(clips, reader.duration)


class VideoFeaturizer:
    """Decode a video once into clips and run every encoder on them; cache the result.

    Args:
        encoders: in the order of the model's `video_feature_dims`.
        clip_length: seconds per clip (2 for QVHighlights, 1 for Charades-STA).
        cache: where to cache features; None disables caching.
    """

    def __init__(self, encoders: Sequence[ClipEncoder], clip_length: float = 2.0, cache: FeatureCache | None = None):
        if not encoders:
            raise ValueError("at least one encoder is needed")
        names = [encoder.name for encoder in encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"encoder names must be unique, got {names}")
        self.encoders = list(encoders)
        self.clip_length = float(clip_length)
        self.cache = cache
        self.identity = {
            "clip_length": self.clip_length,
            "sampling": SAMPLING_VERSION,
            "encoders": [{"name": encoder.name, **encoder.identity} for encoder in self.encoders],
        }
        # clips per encoding step, so that no encoder gets more than its batch of frames at once
        self._clips_per_step = max(1, min(encoder.batch_size // encoder.frames_per_clip for encoder in self.encoders))

    @classmethod
    def from_clip(
        cls,
        model_name_or_path: str | None = None,
        backend: str = "transformers",
        clip_length: float = 2.0,
        frames_per_clip: int = 1,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        slowfast: ClipEncoder | None = None,
    ) -> VideoFeaturizer:
        """CLIP image features, preceded by `slowfast` when given (the official [2304, 512] order); `dtype` is what
        CLIP computes in (`ClipImageEncoder`), and part of the cache key."""
        clip = ClipImageEncoder(
            model_name_or_path,
            backend=backend,
            frames_per_clip=frames_per_clip,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            revision=revision,
        )
        encoders = [slowfast, clip] if slowfast is not None else [clip]
        return cls(encoders, clip_length, FeatureCache(cache_dir) if use_cache else None)

    @property
    def clips_per_step(self) -> int:
        """Clips per encoding step: no encoder gets more than its batch of frames at once."""
        return self._clips_per_step

    @property
    def feature_names(self) -> list[str]:
        return [encoder.name for encoder in self.encoders]

    @property
    def feature_dims(self) -> list[int]:
        return [encoder.feature_dim for encoder in self.encoders]

    def check_feature_dims(self, expected: Sequence[int]) -> None:
        """Raise a ValueError explaining why these features cannot feed a model expecting `expected` dims."""
        expected = [int(dim) for dim in expected]
        if expected == self.feature_dims:
            return
        described = ", ".join(f"{dim} ({KNOWN_FEATURE_DIMS.get(dim, 'unknown type')})" for dim in expected)
        message = (
            f"the model expects video features of dims {expected} [{described}], but the featurizer gives "
            f"{self.feature_dims} ({', '.join(self.feature_names)})."
        )
        if 2304 in expected and 2304 not in self.feature_dims:
            message += (
                " This checkpoint was trained with SlowFast features, and no SlowFast encoder is available: pass one "
                "(processing.video.featurizer.CallableClipEncoder) or use a checkpoint trained on CLIP features only."
            )
        raise ValueError(message)

    def __call__(self, video_path: str | os.PathLike, progress: bool = False) -> VideoFeatures:
        key = None
        if self.cache is not None:
            key = self.cache.key(video_path, self.identity)
            cached = self.cache.load(key)
            if cached is not None:
                return VideoFeatures.from_arrays(cached)
        features = self._extract(video_path, progress)
        if key is not None:
            self.cache.save(key, features.to_arrays())
        return features

    def decode(self, video_path: str | os.PathLike) -> DecodedVideo:
        """Every clip's sampled frames of a video, held in memory (the builder decodes in worker processes and then
        encodes the clips of several videos together); `__call__` streams instead."""
        return decode_video(video_path, self.clip_length, [encoder.frames_per_clip for encoder in self.encoders])

    def encode(self, videos: Sequence[DecodedVideo]) -> list[VideoFeatures]:
        """Features of decoded videos. Their clips share encoding steps of the size `__call__` uses, so that the
        encoders see full batches however short the videos are; clips of one frame size go together, since a step
        stacks its frames."""
        clips = [clip for video in videos for clip in video.clips]
        by_size: dict[tuple, list[int]] = {}
        for index, clip in enumerate(clips):
            by_size.setdefault(next(iter(clip.frames.values())).shape[1:], []).append(index)
        encoded: dict[str, list[np.ndarray | None]] = {encoder.name: [None] * len(clips) for encoder in self.encoders}
        for indices in by_size.values():
            for start in range(0, len(indices), self._clips_per_step):
                step = indices[start : start + self._clips_per_step]
                parts: dict[str, list[np.ndarray]] = {encoder.name: [] for encoder in self.encoders}
                self._encode_step([clips[i] for i in step], parts)
                for name, (features,) in parts.items():
                    for i, row in zip(step, features):
                        encoded[name][i] = row
        results, first = [], 0
        for video in videos:
            last = first + len(video.clips)
            features = {name: np.stack(rows[first:last]).astype(np.float32) for name, rows in encoded.items()}
            results.append(VideoFeatures(features, video.duration, self.clip_length))
            first = last
        return results

    def _extract(self, video_path: str | os.PathLike, progress: bool) -> VideoFeatures:
        reader = VideoClipReader(video_path, self.clip_length, [encoder.frames_per_clip for encoder in self.encoders])
        parts: dict[str, list[np.ndarray]] = {encoder.name: [] for encoder in self.encoders}
        step: list[VideoClip] = []
        # equal steps of at most clips_per_step (75 clips: 38 + 37, not 64 + 11): the first step encodes while the
        # decoding thread goes on with the second, and no step is a small, slow GEMM
        per_step = self._clips_per_step
        if reader.estimated_num_clips:
            per_step = math.ceil(reader.estimated_num_clips / math.ceil(reader.estimated_num_clips / per_step))
        # the next steps' clips decode in a thread while this step encodes; two steps ahead bounds the memory. Closed
        # on the way out, so that an encoder error stops the decoding thread and closes the file at once
        with contextlib.closing(prefetched(reader, depth=2 * per_step)) as decoded:
            clips = tqdm(
                decoded,
                total=reader.estimated_num_clips,
                unit="clip",
                desc=f"features of {os.path.basename(video_path)}",
                disable=not progress,
            )
            for clip in clips:
                step.append(clip)
                if len(step) == per_step:
                    self._encode_step(step, parts)
                    step = []
            if step:
                self._encode_step(step, parts)
        features = {name: np.concatenate(chunks).astype(np.float32) for name, chunks in parts.items()}
        return VideoFeatures(features, reader.duration, self.clip_length)

    def _encode_step(self, clips: list[VideoClip], parts: dict[str, list[np.ndarray]]) -> None:
        for encoder in self.encoders:
            frames = [clip.frames[encoder.frames_per_clip] for clip in clips]  # each (k, H, W, 3)
            parts[encoder.name].append(encoder.encode_clips(frames))
