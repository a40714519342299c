"""The clip reader picks the frames of ffmpeg's `fps=1/clip_length` filter and the preprocessing has the geometry of
its `scale` + `crop` (how the official CLIP features were made), checked against the ffmpeg command line itself.

The generated videos carry their frame index in the pixels (12 black or white bars), so that a test can tell which
source frame was picked; H.264 as most real videos, at 25, 29.97 and 30 fps and at a variable frame rate.
"""

import os
import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from processing.video.clip_encoders import ClipImagePreprocessing
from processing.video.decoding import VideoClipReader, count_clips

BITS, BAR = 12, 16  # frame index in 12 bars of 16 px: robust to compression
WIDTH, HEIGHT = BITS * BAR, 32


@pytest.fixture(scope="module")
def ffmpeg():
    path = shutil.which("ffmpeg")
    if path is None:
        message = "ffmpeg is not installed (.ci/run installs Debian's)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def numbered_frame(index: int) -> np.ndarray:
    bits = [(index >> bit) & 1 for bit in range(BITS)]
    rgb = np.repeat(np.array(bits, np.uint8) * 255, BAR)  # (WIDTH,)
    return np.broadcast_to(rgb[None, :, None], (HEIGHT, WIDTH, 3)).copy()


def frame_number(rgb: np.ndarray) -> int:
    bars = rgb[:, : BITS * BAR].reshape(rgb.shape[0], BITS, BAR, 3).mean(axis=(0, 2, 3))  # (BITS,)
    return int(sum(1 << bit for bit, level in enumerate(bars) if level > 127))


def write_numbered_video(path, pts, time_base: Fraction, rate: Fraction, codec="libx264"):
    """Frame i at presentation time pts[i] * time_base, showing the number i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = time_base
        for index, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(numbered_frame(index), format="rgb24")
            frame.pts, frame.time_base = value, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def ffmpeg_frames(ffmpeg, path, filters, width, height) -> np.ndarray:
    """(n, height, width, 3) rgb24 frames out of `ffmpeg -vf filters`."""
    command = [ffmpeg, "-v", "error", "-i", str(path), "-vf", filters, "-fps_mode", "passthrough",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    result = subprocess.run(command, capture_output=True, check=True, timeout=60)
    return np.frombuffer(result.stdout, np.uint8).reshape(-1, height, width, 3)


def reader_frames(path, clip_length, frames_per_clip=1) -> tuple[np.ndarray, VideoClipReader]:
    reader = VideoClipReader(path, clip_length, frames_per_clip)
    frames = np.concatenate([clip.frames[frames_per_clip] for clip in reader])  # (clips * k, H, W, 3)
    return frames, reader


CONSTANT_RATES = {
    # name: (frame rate, seconds): 5.5 s ends on a half clip, which ffmpeg's fps filter keeps
    "25fps": (Fraction(25), 11.0),
    "29.97fps": (Fraction(30000, 1001), 10.3),
    "30fps": (Fraction(30), 7.0),
}


@pytest.mark.parametrize("name", sorted(CONSTANT_RATES))
@pytest.mark.parametrize("clip_length, frames_per_clip", [(2.0, 1), (1.0, 1), (2.0, 2)])
def test_sampled_frames_are_ffmpeg_fps_filter_frames_at_constant_rates(
    ffmpeg, tmp_path, name, clip_length, frames_per_clip
):
    rate, seconds = CONSTANT_RATES[name]
    count = round(seconds * rate)
    path = write_numbered_video(tmp_path / f"{name}.mp4", range(count), 1 / rate, rate)
    rate_filter = Fraction(frames_per_clip) / Fraction(clip_length)

    expected = ffmpeg_frames(ffmpeg, path, f"fps={rate_filter}", WIDTH, HEIGHT)
    actual, reader = reader_frames(path, clip_length, frames_per_clip)

    # with k frames per clip, a kept last half clip has samples past the end of the video, which ffmpeg does not
    # output and the reader fills with the last frame
    assert reader.num_clips == count_clips(seconds, clip_length) == -(-len(expected) // frames_per_clip)
    past_end = actual[len(expected) :]
    assert [frame_number(f) for f in past_end] == [count - 1] * len(past_end)
    actual = actual[: len(expected)]
    assert [frame_number(f) for f in actual] == [frame_number(f) for f in expected]
    np.testing.assert_array_equal(actual, expected)  # the same decode and conversion: equal pixels


def test_frames_on_a_clip_centre_go_to_the_next_clip_as_in_ffmpeg(ffmpeg, tmp_path):
    # the measured ffmpeg 5.1 frames of 2-s clips: 25 fps -> 24, 74, 124 (0.96 s, ...); 30 fps -> 29, 89, 149
    for rate, expected in ((Fraction(25), [24, 74, 124]), (Fraction(30), [29, 89, 149])):
        path = write_numbered_video(tmp_path / f"{rate}.mp4", range(int(6 * rate)), 1 / rate, rate)
        actual, _ = reader_frames(path, 2.0)
        assert [frame_number(f) for f in actual] == expected
        assert [frame_number(f) for f in ffmpeg_frames(ffmpeg, path, "fps=1/2", WIDTH, HEIGHT)] == expected


def test_sampled_frames_are_ffmpeg_fps_filter_frames_at_a_variable_rate(ffmpeg, tmp_path):
    # millisecond timestamps: dense, a gap over several clip centres, frames exactly on centres (1 s, 3 s, 9 s),
    # then sparse; the nominal rate of the container is not the real one
    times_ms = [*range(0, 1040, 40), 2990, 3000, 3010, *range(5000, 9001, 250), *range(9300, 12400, 700)]
    path = write_numbered_video(tmp_path / "vfr.mkv", times_ms, Fraction(1, 1000), Fraction(25))

    expected = ffmpeg_frames(ffmpeg, path, "fps=1/2", WIDTH, HEIGHT)
    actual, _ = reader_frames(path, 2.0)

    assert [frame_number(f) for f in actual] == [frame_number(f) for f in expected]
    np.testing.assert_array_equal(actual, expected)
    picked = [times_ms[frame_number(f)] for f in actual]
    assert picked[:3] == [960, 2990, 3010]  # strictly before 1, 3 and 5 s; the gap repeats the frame before it


def test_resize_and_centre_crop_have_ffmpeg_geometry(ffmpeg, tmp_path):
    # 334 x 250: short side to 224 gives 299 x 224 (int(334 * 224 / 250)); the crop margin 75 is odd, so the
    # official x = int(75 / 2) = 37, where rounding the half (torchvision) would give 38
    width, height, rate = 334, 250, Fraction(25)
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(tmp_path / "wide.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for index in range(50):
            rgb = np.stack([cols * 255 // width, rows * 255 // height, (cols * 7 + rows * 3 + index) % 256], axis=-1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path = tmp_path / "wide.mp4"

    cropped = ffmpeg_frames(ffmpeg, path, "fps=1/2,scale=299:224,crop=224:224:37:0", 224, 224)
    scaled = ffmpeg_frames(ffmpeg, path, "fps=1/2,scale=299:224", 299, 224)
    frames, _ = reader_frames(path, 2.0)
    preprocessing = ClipImagePreprocessing(224, 224, (0.5,) * 3, (0.5,) * 3)
    ours = preprocessing.resize_and_crop(torch.from_numpy(frames)).permute(0, 2, 3, 1).numpy()  # (n, 224, 224, 3)

    assert ours.shape == cropped.shape
    np.testing.assert_array_equal(cropped, scaled[:, :, 37 : 37 + 224])
    # ffmpeg's bicubic and ours differ by a level or two; a crop one pixel off differs far more on this texture
    errors = {x: np.abs(ours - scaled[:, :, x : x + 224]).mean() for x in (36, 37, 38)}
    assert min(errors, key=errors.get) == 37 and errors[37] < 2.5, errors
