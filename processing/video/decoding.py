"""Stream a video file into fixed-length clips of sampled RGB frames, with PyAV.

Clip i covers [i * clip_length, (i + 1) * clip_length) seconds, counted from the first frame. For each requested
frames-per-clip count k, the clip gets k frames, sampled at the centres of k equal sub-intervals (k = 1: the clip
centre). The frame sampled at time t is the last frame whose presentation time (pts · time_base) is strictly
before t, so variable-frame-rate videos are sampled by time, not by frame index.

This is ffmpeg's `fps=k/clip_length` filter, which made the official QVHighlights / Moment-DETR CLIP features: with
its default rounding (`round=near`) it puts a frame of time t into output slot round(t · rate), halves rounding up,
and keeps the last frame of each slot (repeating the previous one for an empty slot). Output frame i is therefore
the last frame before (i + 1/2) / rate, and a frame exactly at a centre belongs to the next slot: at 25 fps and 2-s
clips the frames at 0.96, 2.96, 4.96 s (indices 24, 74, 124), not those at 1, 3, 5 s. Times are compared as exact
fractions (pts · time_base against the clip length as a fraction), as ffmpeg compares integers, so that a frame on a
centre is never misplaced by float rounding. ffmpeg counts time from the file's start; the two agree when the video
stream starts the file (the first frame at time 0), as in nearly all files.

Clip count: a last partial clip is kept when it covers at least half a clip, so the number of clips is
round-half-up(duration / clip_length) (150 s at 2 s -> 75 clips, 11 s -> 6, 10.9 s -> 5), as ffmpeg's fps filter
ends. Its sample times past the end of the video take the last frame. A video too short to give one clip
(< clip_length / 2) is an error.

Only the frames of the clip being assembled are held in memory, and only sampled frames are converted to RGB.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

# Bump when the sampling or clip-counting rule changes: feature caches key on it.
SAMPLING_VERSION = "last-frame-before-centre-of-subintervals/round-half-up/v2"

# Float slack so that a video of exactly n + 1/2 clips keeps its half clip despite rounding in pts · time_base.
_HALF_CLIP_SLACK = 1e-6


def count_clips(duration: float, clip_length: float) -> int:
    """Number of clips of a video: full clips plus a last partial clip if it covers at least half a clip."""
    return math.floor(duration / clip_length + 0.5 + _HALF_CLIP_SLACK)


@dataclass(frozen=True)
class VideoClip:
    index: int
    start: float  # seconds from the first frame
    end: float  # seconds, clipped to the end of the video
    frames: dict[int, np.ndarray]  # frames-per-clip count k -> (k, H, W, 3) uint8 RGB


def _open_container(path: str) -> av.container.InputContainer:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"video file is empty (0 bytes): {path}")
    try:
        container = av.open(path)
    except av.FFmpegError as error:
        raise ValueError(f"cannot open {path} as a video: {error}") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


class VideoClipReader:
    """Iterate over the clips of one video; `duration` and `num_clips` are known once the iteration has finished.

    Args:
        path: video file.
        clip_length: seconds per clip (2 for QVHighlights, 1 for Charades-STA).
        frames_per_clip: one count, or several (one per feature type that samples differently); each clip carries
            a (k, H, W, 3) array for every count k.
    """

    def __init__(self, path: str | os.PathLike, clip_length: float, frames_per_clip: int | Sequence[int] = 1):
        if clip_length <= 0:
            raise ValueError(f"clip_length must be positive, got {clip_length}")
        counts = (frames_per_clip,) if isinstance(frames_per_clip, int) else tuple(frames_per_clip)
        if not counts or any(not isinstance(k, int) or k < 1 for k in counts):
            raise ValueError(f"frames_per_clip must be positive integers, got {frames_per_clip!r}")
        self.path = os.fspath(path)
        self.clip_length = float(clip_length)
        # exact, as ffmpeg's fps=1/clip_length rate: a frame on a sample time must not land on either side by rounding
        self._exact_clip_length = Fraction(self.clip_length).limit_denominator(1_000_000)
        self.frame_counts = tuple(sorted(set(counts)))
        self._duration: float | None = None
        with _open_container(self.path) as container:
            self.estimated_num_clips = self._estimate_num_clips(container)

    @property
    def duration(self) -> float:
        """Seconds from the start of the first frame to the end of the last one."""
        if self._duration is None:
            raise RuntimeError("the duration is known only after iterating over the whole video")
        return self._duration

    @property
    def num_clips(self) -> int:
        return count_clips(self.duration, self.clip_length)

    def _estimate_num_clips(self, container) -> int | None:
        """Clip count from the container's metadata, for progress bars only (it can be missing or wrong)."""
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            return None
        return max(count_clips(seconds, self.clip_length), 1)

    def _sample_times(self, clip_index: int) -> list[tuple[Fraction, int, int]]:
        """(time, k, slot) for every sampled frame of a clip, sorted by time."""
        length = self._exact_clip_length
        start = clip_index * length
        times = [
            (start + (slot + Fraction(1, 2)) * length / k, k, slot) for k in self.frame_counts for slot in range(k)
        ]
        return sorted(times)

    def _samples(self) -> Iterator[tuple[Fraction, int, int, int]]:
        """(time, clip index, k, slot) of every sampled frame of the video and beyond, in time order."""
        for clip_index in itertools.count():
            for time, k, slot in self._sample_times(clip_index):
                yield time, clip_index, k, slot

    def _timed_frames(self, container, ticks_per_second: int) -> Iterator[tuple[av.VideoFrame, int, int | None]]:
        """(frame, ticks since the first frame, ticks the frame stays on screen if known), in time order.

        A tick is 1 / ticks_per_second s, a whole fraction of the stream's time base and of its nominal frame period,
        so that every time here is an exact integer: the loop over frames does integer arithmetic only."""
        stream = container.streams.video[0]
        ticks_per_pts = ticks_per_second * stream.time_base.numerator // stream.time_base.denominator
        rate = Fraction(stream.average_rate) if stream.average_rate else None
        nominal_step = ticks_per_second * rate.denominator // rate.numerator if rate else None
        first_pts = previous = None
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    first_pts = frame.pts if first_pts is None else first_pts
                    ticks = (frame.pts - first_pts) * ticks_per_pts
                elif previous is None:
                    ticks = 0
                elif nominal_step is not None:
                    ticks = previous + nominal_step  # no pts (some raw streams): assume the nominal frame rate
                else:
                    raise ValueError(f"{self.path} has frames without timestamps and no frame rate")
                if previous is not None and ticks <= previous:
                    continue  # duplicated or out-of-order timestamp: it does not change what is on screen
                previous = ticks
                yield frame, ticks, frame.duration * ticks_per_pts if frame.duration else nominal_step
        except av.FFmpegError as error:
            raise ValueError(f"cannot decode {self.path}: {error}") from error

    def __iter__(self) -> Iterator[VideoClip]:
        with _open_container(self.path) as container:
            yield from self._clips(container)

    def _clips(self, container) -> Iterator[VideoClip]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ticks_per_second = _ticks_per_second(stream)
        collector = _ClipCollector(self.frame_counts)
        samples = self._samples()
        time, clip_index, k, slot = next(samples)
        threshold = _ceil_ticks(time, ticks_per_second)
        last_ticks, last_step = 0, None
        for frame, ticks, step in self._timed_frames(container, ticks_per_second):
            # every sample up to this frame's time, that time included, takes the frame before it (ffmpeg's rule)
            while collector.has_frame and threshold <= ticks:
                frames = collector.sample(k, slot)
                if frames is not None:
                    yield self._make_clip(clip_index, frames)
                time, clip_index, k, slot = next(samples)
                threshold = _ceil_ticks(time, ticks_per_second)
            collector.show(frame)
            last_ticks, last_step = ticks, step
        if not collector.has_frame:
            raise ValueError(f"{self.path} contains no video frames")

        # the last frame stays on screen for its own duration, or the nominal frame period
        self._duration = (last_ticks + (last_step or 0)) / ticks_per_second
        num_clips = count_clips(self._duration, self.clip_length)
        if num_clips == 0:
            raise ValueError(
                f"{self.path} lasts {self._duration:.3f} s, shorter than half a clip "
                f"({self.clip_length / 2:g} s with clip_length={self.clip_length:g})"
            )
        while clip_index < num_clips:
            # the rest of the last clip, samples past the end included, sees the last frame
            frames = collector.sample(k, slot)
            if frames is not None:
                yield self._make_clip(clip_index, frames)
            time, clip_index, k, slot = next(samples)

    def _make_clip(self, index: int, frames: dict[int, np.ndarray]) -> VideoClip:
        start = index * self.clip_length
        end = start + self.clip_length
        if self._duration is not None:
            end = min(end, self._duration)
        return VideoClip(index, start, end, frames)


def _ticks_per_second(stream) -> int:
    """The smallest tick rate in which the stream's time base and nominal frame period are whole numbers of ticks."""
    denominators = [stream.time_base.denominator]
    if stream.average_rate:
        denominators.append(Fraction(stream.average_rate).numerator)
    return math.lcm(*denominators)


def _ceil_ticks(time: Fraction, ticks_per_second: int) -> int:
    """The first whole tick at or after `time`: a frame at `ticks` is at or after `time` iff ticks >= this."""
    return -(-time.numerator * ticks_per_second // time.denominator)


class _ClipCollector:
    """Holds the frame on screen and gathers the sampled frames of the current clip."""

    def __init__(self, frame_counts: tuple[int, ...]):
        self._frame_counts = frame_counts
        self._frame: av.VideoFrame | None = None
        self._rgb: np.ndarray | None = None  # (H, W, 3) uint8, converted on first use
        self._size: tuple[int, int] | None = None  # (width, height) of the first frame
        self._reset()

    @property
    def has_frame(self) -> bool:
        return self._frame is not None

    def show(self, frame: av.VideoFrame) -> None:
        self._frame, self._rgb = frame, None
        self._size = self._size or (frame.width, frame.height)

    def sample(self, k: int, slot: int) -> dict[int, np.ndarray] | None:
        """Record the frame on screen as sample `slot` of count k; return the clip's frames once all are in."""
        if self._rgb is None:
            # a mid-stream resolution change is scaled back to the first size, so clips stack into one array
            width, height = self._size
            self._rgb = self._frame.to_ndarray(format="rgb24", width=width, height=height)
        self._sampled[k][slot] = self._rgb
        self._missing -= 1
        if self._missing:
            return None
        frames = {count: np.stack(rgbs) for count, rgbs in self._sampled.items()}  # k -> (k, H, W, 3)
        self._reset()
        return frames

    def _reset(self) -> None:
        self._sampled: dict[int, list[np.ndarray | None]] = {k: [None] * k for k in self._frame_counts}
        self._missing = sum(self._frame_counts)
