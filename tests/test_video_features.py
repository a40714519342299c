"""Video decoding into clips, CLIP image/text features, the feature cache: on videos and tiny CLIP models made here."""

import bisect
import itertools
import threading

import av
import numpy as np
import pytest
import torch
from helpers import TINY_CLIP_PROJECTION_DIM as PROJECTION_DIM
from helpers import constant_rate, write_video

from processing.cache_dir import CACHE_ENV_VAR, default_cache_dir
from processing.video import featurizer as video_features
from processing.video.clip_encoders import ClipImageEncoder, ClipImagePreprocessing, ClipTextEncoder
from processing.video.decoding import VideoClipReader, count_clips
from processing.video.feature_cache import FeatureCache
from processing.video.featurizer import CallableClipEncoder, VideoFeaturizer
from processing.video.prefetch import prefetched

BLUE, RED = (20, 40, 220), (220, 30, 30)


def red_from_4_to_6_s(index, time):
    return RED if 4.0 <= time < 6.0 else BLUE


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory):
    """10 s at 10 fps, blue except red in [4, 6) s, i.e. in 2-s clip 2."""
    return write_video(tmp_path_factory.mktemp("video") / "colours.mp4", constant_rate(10, 10), red_from_4_to_6_s)


@pytest.fixture(scope="module")
def image_encoder(tiny_clip_dir):
    return ClipImageEncoder(tiny_clip_dir, device="cpu")


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize(
    "duration, clip_length, clips",
    [(150.0, 2.0, 75), (11.0, 2.0, 6), (10.9, 2.0, 5), (1.0, 2.0, 1), (0.9, 2.0, 0), (7.5, 1.0, 8)],
)
def test_count_clips_keeps_a_last_clip_of_at_least_half_a_clip(duration, clip_length, clips):
    assert count_clips(duration, clip_length) == clips


def test_reader_samples_the_frame_on_screen_at_each_sample_time_of_a_variable_rate_video(tmp_path):
    # dense, then sparse, then dense frames: sampling by frame index would pick the wrong ones
    times = [*(i / 20 for i in range(40)), *(2 + 0.7 * i for i in range(5)), *(5 + i / 10 for i in range(16))]

    def level(index):  # the grey level names the frame; neighbours differ by 4, beyond the RGB-YUV round trip (±2)
        return 4 * index

    def grey(index, time):
        return (level(index),) * 3

    path = write_video(tmp_path / "vfr.mkv", times, grey, codec="ffv1", pix_fmt="yuv444p", fps=25)

    reader = VideoClipReader(path, clip_length=1.0, frames_per_clip=(1, 3))
    clips = list(reader)

    assert times[-1] + 0.01 < reader.duration < times[-1] + 0.1  # the last frame lasts its (muxer-guessed) duration
    assert reader.num_clips == len(clips) == 7  # 6 full clips and a last one of over half a clip
    for clip in clips:
        for k, frames in clip.frames.items():
            assert frames.shape == (k, 64, 64, 3) and frames.dtype == np.uint8
            centres = [clip.index + (slot + 0.5) / k for slot in range(k)]
            # the last frame strictly before each centre (ffmpeg's fps filter)
            expected = [level(max(bisect.bisect_left(times, centre) - 1, 0)) for centre in centres]
            np.testing.assert_allclose(frames[:, 0, 0, 0], expected, atol=2)


@pytest.mark.parametrize("seconds, clips", [(11.0, 6), (10.8, 5)])
def test_reader_keeps_the_last_partial_clip_only_when_it_covers_half_a_clip(tmp_path, seconds, clips):
    path = write_video(tmp_path / "partial.mp4", constant_rate(seconds, 10), red_from_4_to_6_s, size=16)
    reader = VideoClipReader(path, clip_length=2.0)
    decoded = list(reader)
    assert reader.duration == pytest.approx(seconds, abs=1e-3)
    assert [clip.index for clip in decoded] == list(range(clips))
    assert decoded[-1].end == pytest.approx(min(2.0 * clips, seconds))


def test_reader_errors_name_the_problem(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        VideoClipReader(missing, 2.0)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(ValueError, match="notes.mp4"):
        VideoClipReader(text, 2.0)

    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        VideoClipReader(empty, 2.0)

    with pytest.raises(ValueError, match="shorter than half a clip"):
        list(VideoClipReader(write_video(tmp_path / "short.mp4", constant_rate(0.5, 10), red_from_4_to_6_s, 16), 2.0))

    with pytest.raises(ValueError, match="clip_length"):
        VideoClipReader(write_video(tmp_path / "ok.mp4", constant_rate(2, 10), red_from_4_to_6_s, 16), 0)


def test_reader_rejects_a_video_stream_without_frames(tmp_path):
    path = tmp_path / "no_frames.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        for packet in [*audio.encode(samples), *audio.encode()]:
            container.mux(packet)
    with pytest.raises(ValueError, match="no video frames"):
        list(VideoClipReader(path, 2.0))


# ------------------------------------------------------------------------------------------------ CLIP features


def test_preprocessing_matches_the_clip_image_processor():
    from transformers import CLIPImageProcessor

    rows, cols = np.mgrid[0:48, 0:80]
    image = np.stack([rows * 5, cols * 3, (rows + cols) * 2], axis=-1).clip(0, 255).astype(np.uint8)  # (48, 80, 3)
    reference = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = reference(images=image, return_tensors="pt").pixel_values  # (1, 3, 32, 32)
    preprocessing = ClipImagePreprocessing(32, 32, tuple(reference.image_mean), tuple(reference.image_std))

    actual = preprocessing(torch.from_numpy(image)[None])

    assert actual.shape == expected.shape
    # torch's antialiased bicubic is close to, not identical with, PIL's: one grey level is 0.015 after normalising
    assert (actual - expected).abs().mean() < 0.02


def test_clip_features_per_clip_separate_the_changed_interval(colour_video, tiny_clip_dir, tmp_path):
    extractor = VideoFeaturizer.from_clip(tiny_clip_dir, clip_length=2.0, device="cpu", cache_dir=tmp_path)

    features = extractor(colour_video)

    assert features.num_clips == 5 and features.duration == pytest.approx(10.0, abs=1e-3)
    clip = features.features["clip"]
    assert clip.shape == (5, PROJECTION_DIM) and clip.dtype == np.float32
    blue_clips = clip[[0, 1, 3, 4]]
    spread_within_blue = np.abs(blue_clips - blue_clips.mean(0)).max()
    red_to_blue = np.abs(clip[2] - blue_clips.mean(0)).max()
    assert red_to_blue > 10 * max(spread_within_blue, 1e-4)


def test_timm_backend_gives_per_clip_features(colour_video, tmp_path):
    import timm
    from timm.models import save_for_hf

    architecture = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=PROJECTION_DIM)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch32_clip_224", pretrained=False, **architecture)
    save_for_hf(model, tmp_path / "timm", model_args=architecture)
    encoder = ClipImageEncoder(str(tmp_path / "timm"), backend="timm", device="cpu")
    extractor = VideoFeaturizer([encoder], clip_length=2.0)

    clip = extractor(colour_video).features["clip"]

    assert clip.shape == (5, PROJECTION_DIM)
    assert np.abs(clip[2] - clip[0]).max() > 10 * max(np.abs(clip[0] - clip[4]).max(), 1e-4)


def test_several_frames_per_clip_are_averaged(image_encoder):
    frames = np.stack([np.full((40, 40, 3), value, np.uint8) for value in (0, 90, 180, 250)])  # (4, H, W, 3)
    per_frame = image_encoder.encode_frames(frames).numpy()  # (4, D)

    encoder = ClipImageEncoder(image_encoder.identity["model"], frames_per_clip=2, batch_size=3, device="cpu")
    per_clip = encoder.encode_clips([frames[:2], frames[2:]])

    np.testing.assert_allclose(per_clip, [per_frame[:2].mean(0), per_frame[2:].mean(0)], atol=1e-5)


def test_bad_image_encoder_arguments(tiny_clip_dir):
    with pytest.raises(ValueError, match="backend"):
        ClipImageEncoder(tiny_clip_dir, backend="open_clip")
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        ClipImageEncoder(tiny_clip_dir, device="cpu", dtype="float16")


def test_text_features_are_the_last_hidden_state_of_every_token(tiny_clip_dir):
    encoder = ClipTextEncoder(tiny_clip_dir, device="cpu")
    queries = ["a dog runs", "cat"]

    batched = encoder(queries)

    for query, features in zip(queries, batched):
        tokens = encoder.tokenizer(query).input_ids  # start and end tokens included
        assert features.shape == (len(tokens), 32) and features.dtype == np.float32
        np.testing.assert_allclose(features, encoder(query)[0], atol=1e-5)  # padding in a batch changes nothing


@pytest.mark.parametrize("queries", ["", "   ", [], ["a dog", ""], [None]])
def test_empty_queries_are_rejected(tiny_clip_dir, queries):
    encoder = ClipTextEncoder(tiny_clip_dir, device="cpu")
    with pytest.raises(ValueError, match="query"):
        encoder(queries)


# ------------------------------------------------------------------------------------------------ extractor


def fake_slowfast(dim=8, frames_per_clip=4):
    """The mean colours of the sampled frames: a stand-in for a SlowFast network (needs dim <= 3 * frames_per_clip)."""

    def encode(clips):  # (n, k, H, W, 3) -> (n, dim)
        means = clips.mean(axis=(2, 3))  # (n, k, 3)
        return means.reshape(len(clips), -1)[:, :dim]

    return CallableClipEncoder("slowfast", dim, frames_per_clip, encode, identity="fake-slowfast-v1")


def test_features_come_in_encoder_order_and_concatenate(colour_video, image_encoder):
    extractor = VideoFeaturizer([fake_slowfast(), image_encoder], clip_length=2.0)

    features = extractor(colour_video)

    assert list(features.features) == ["slowfast", "clip"] and extractor.feature_dims == [8, PROJECTION_DIM]
    assert features.concatenated().shape == (5, 8 + PROJECTION_DIM)
    assert features.features["slowfast"][2, 0] == pytest.approx(RED[0], abs=3)  # clip 2 is red
    extractor.check_feature_dims([8, PROJECTION_DIM])


def test_feature_dims_mismatch_explains_missing_slowfast(image_encoder):
    extractor = VideoFeaturizer([image_encoder])
    extractor.check_feature_dims([PROJECTION_DIM])
    with pytest.raises(ValueError, match="SlowFast"):
        extractor.check_feature_dims([2304, PROJECTION_DIM])
    with pytest.raises(ValueError, match=r"\[32\]"):
        extractor.check_feature_dims([32])


def test_callable_encoder_output_shape_is_checked(colour_video):
    broken = CallableClipEncoder("slowfast", 8, 1, lambda clips: np.zeros((len(clips), 7)), identity="broken")
    with pytest.raises(ValueError, match=r"expected \(\d+, 8\)"):
        VideoFeaturizer([broken])(colour_video)
    with pytest.raises(ValueError, match="identity"):
        CallableClipEncoder("slowfast", 8, 1, lambda clips: clips, identity="")


# ------------------------------------------------------------------------------------------------ cache


def test_cache_hit_returns_identical_features_without_decoding(colour_video, image_encoder, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    first = VideoFeaturizer([image_encoder], 2.0, cache)(colour_video)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the video was decoded despite a cache hit")

    monkeypatch.setattr(video_features, "VideoClipReader", no_decoding)
    again = VideoFeaturizer([image_encoder], 2.0, FeatureCache(tmp_path / "cache"))(colour_video)
    np.testing.assert_array_equal(again.features["clip"], first.features["clip"])
    assert again.duration == first.duration and again.clip_length == 2.0

    # another clip length, or other file content, is another entry
    with pytest.raises(AssertionError, match="decoded"):
        VideoFeaturizer([image_encoder], 1.0, cache)(colour_video)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(colour_video.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="decoded"):
        VideoFeaturizer([image_encoder], 2.0, cache)(copy)


def test_cache_treats_a_corrupt_entry_as_a_miss_and_honours_the_environment(tmp_path, monkeypatch, colour_video):
    cache = FeatureCache(tmp_path)
    key = cache.key(colour_video, {"model": "x"})
    assert key != cache.key(colour_video, {"model": "y"})
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"not an npz")
    assert cache.load(key) is None

    cache.save(key, {"a": np.arange(3)})
    np.testing.assert_array_equal(cache.load(key)["a"], np.arange(3))
    assert [path.name for path in cache.path(key).parent.iterdir()] == [f"{key}.npz"]  # no temporary file left

    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        cache.key(tmp_path / "nowhere.mp4", {})
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    assert FeatureCache().cache_dir == tmp_path / "elsewhere"


def test_videos_encoded_together_get_the_features_of_each_alone(colour_video, image_encoder, tmp_path):
    # another frame size (so steps group clips by size) and steps of 3 clips, so that steps cross videos
    other = write_video(tmp_path / "other.mp4", constant_rate(7, 10), red_from_4_to_6_s, size=(48, 32))
    small_batches = ClipImageEncoder(image_encoder.identity["model"], batch_size=3, device="cpu")
    extractor = VideoFeaturizer([small_batches, fake_slowfast(dim=6, frames_per_clip=2)], clip_length=2.0)
    assert extractor.clips_per_step == 3
    videos = [colour_video, other, colour_video]

    together = extractor.encode([extractor.decode(path) for path in videos])

    for path, features in zip(videos, together):
        alone = extractor(path)
        assert features.duration == alone.duration and list(features.features) == ["clip", "slowfast"]
        for name in alone.features:
            np.testing.assert_allclose(features.features[name], alone.features[name], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ prefetch


def test_prefetched_gives_every_item_in_order_and_the_producers_error_at_its_place():
    def numbers_then_failure():
        yield from range(5)
        raise ValueError("cannot decode x.mp4: broken")

    seen = []
    with pytest.raises(ValueError, match="cannot decode x.mp4: broken"):
        for item in prefetched(numbers_then_failure(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        list(prefetched([], depth=0))


def test_a_consumer_that_stops_early_stops_the_producer_and_closes_its_iterator():
    closed, produced = [], []

    def endless():
        try:
            for number in itertools.count():
                produced.append(number)
                yield number
        finally:
            closed.append(threading.current_thread().name)

    for item in prefetched(endless(), depth=2):
        if item == 3:
            break
    assert closed == ["lddetr-prefetch"]  # closed in the producer's thread, which opened it
    assert len(produced) <= 3 + 1 + 2 + 1  # the consumed items, the one in hand, the buffer, one blocked put


def test_the_featurizer_stream_equals_decoding_then_encoding(colour_video, image_encoder):
    featurizer = VideoFeaturizer([image_encoder], clip_length=2.0)
    streamed = featurizer(colour_video).features["clip"]
    batched = featurizer.encode([featurizer.decode(colour_video)])[0].features["clip"]
    np.testing.assert_allclose(streamed, batched, atol=1e-5)
