"""The video-moment-retrieval pipeline, its sliding windows, lddetr-predict and its plot: on a video made here, with
a tiny random CLIP and a tiny random LD-DETR (and, where exact answers are needed, a stand-in model with known
outputs)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_CLIP_PROJECTION_DIM as PROJECTION_DIM
from helpers import TINY_CLIP_TEXT_DIM as TEXT_DIM
from helpers import constant_rate, tiny_config, write_video
from transformers import pipeline

from modeling_lddetr import LDDetrModel, LDDetrOutput
from modeling_lddetr.feature_extraction_lddetr import LDDetrFeatureExtractor
from modeling_lddetr.processing_lddetr import LDDetrProcessor
from processing.inference import predict
from processing.inference.pipeline import (
    CLIP_FEATURE_MODELS_FILE,
    TASK,
    ClipFeatureModels,
    VideoMomentRetrievalPipeline,
)
from processing.inference.plotting import plot_results
from processing.inference.sliding_windows import (
    ClipWindow,
    average_saliency,
    distinct_moments,
    merge_moments,
    plan_windows,
)
from tests.test_video_features import BLUE, RED

RED_CLIPS = [4, 5]  # red in [8, 12) s: 2-s clips 4 and 5


def red_from_8_to_12_s(index, time):
    return RED if 8.0 <= time < 12.0 else BLUE


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """20 s at 8 fps, 64 x 64, blue except red in [8, 12) s: 10 clips of 2 s."""
    path = tmp_path_factory.mktemp("video") / "red_ball.mp4"
    return write_video(path, constant_rate(20, 8), red_from_8_to_12_s, fps=8)


def tiny_processor(max_video_clips=75, video_feature_dims=(PROJECTION_DIM,)) -> LDDetrProcessor:
    return LDDetrProcessor(
        LDDetrFeatureExtractor(
            video_feature_dims=list(video_feature_dims),
            text_feature_dim=TEXT_DIM,
            clip_length=2.0,
            max_video_clips=max_video_clips,
        )
    )


def tiny_model(max_video_clips=75, video_feature_dim=PROJECTION_DIM + 2) -> LDDetrModel:
    torch.manual_seed(0)
    config = tiny_config(
        video_feature_dim=video_feature_dim,
        text_feature_dim=TEXT_DIM,
        clip_length=2,
        num_queries=6,
        max_video_clips=max_video_clips,
    )
    return LDDetrModel(config).eval()


def save_model_folder(folder, clip_dir, max_video_clips=75):
    tiny_model(max_video_clips).save_pretrained(folder)
    tiny_processor(max_video_clips).save_pretrained(folder)
    ClipFeatureModels(image_model=clip_dir, text_model=clip_dir).save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_clip_dir):
    return save_model_folder(tmp_path_factory.mktemp("lddetr"), tiny_clip_dir)


@pytest.fixture(scope="module")
def short_window_model_dir(tmp_path_factory, tiny_clip_dir):
    """The model trained (say) on 4 clips at most: the 10-clip video needs several windows."""
    return save_model_folder(tmp_path_factory.mktemp("lddetr-4-clips"), tiny_clip_dir, max_video_clips=4)


@pytest.fixture
def pipe(model_dir, tmp_path):
    # fp32: on a CPU with bf16 units "auto" computes in bf16, whose agreement with fp32 test_video_precision checks;
    # here the by-hand references run in fp32
    return pipeline(TASK, model=model_dir, device="cpu", cache_dir=tmp_path / "cache", torch_dtype="float32")


def check_result(result, query, num_clips=10, duration=20.0, top_k=10, num_queries=6):
    assert set(result) == {"query", "moments", "saliency", "clip_length", "duration"}
    assert result["query"] == query and result["clip_length"] == 2.0
    assert result["duration"] == pytest.approx(duration, abs=1e-3)
    assert len(result["saliency"]) == num_clips and np.isfinite(result["saliency"]).all()
    moments = result["moments"]
    assert 1 <= len(moments) <= min(top_k, num_queries)
    assert all(set(moment) == {"start", "end", "score"} for moment in moments)
    scores = [moment["score"] for moment in moments]
    assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores)
    for moment in moments:
        assert 0 <= moment["start"] <= moment["end"] <= result["duration"]
        for time in (moment["start"], moment["end"]):  # on the clip grid, or the end of the video
            assert time % 2.0 == pytest.approx(0, abs=1e-6) or time == pytest.approx(result["duration"])


# ------------------------------------------------------------------------------------------------ end to end


def test_pipeline_from_a_model_folder_matches_the_processor_and_model_run_by_hand(pipe, video, tiny_clip_dir):
    assert isinstance(pipe, VideoMomentRetrievalPipeline)
    assert pipe.clip_feature_models == ClipFeatureModels(tiny_clip_dir, tiny_clip_dir)  # read from the json

    result = pipe(video=video, query="a red ball", top_k=4)

    check_result(result, "a red ball", top_k=4)
    assert len(result["moments"]) == 4

    # the same features through the processor (L2 normalisation, tef) and the model, by hand
    features = pipe.video_featurizer(video)
    text = pipe.text_encoder("a red ball")
    batch = pipe.processor(video_features=[features.concatenated()], text_features=text, return_tensors="pt")
    with torch.no_grad():
        outputs = pipe.model(**batch)
    (record,) = pipe.processor.post_process(outputs, batch["video_attention_mask"], [features.duration], top_k=None)
    shown = distinct_moments(record["pred_relevant_windows"])[:4]
    assert [[m["start"], m["end"], m["score"]] for m in result["moments"]] == shown
    np.testing.assert_allclose(result["saliency"], record["pred_saliency_scores"], atol=1e-6)


def test_a_short_video_shows_no_empty_or_repeated_moments_while_the_submission_records_keep_them(pipe, tmp_path):
    # 4.6 s: two whole 2-s clips and 0.6 s more, so rounded windows pile up on 0, 2, 4 and 4.6 s
    path = write_video(tmp_path / "short.mp4", constant_rate(4.6, 10), red_from_8_to_12_s, size=32, fps=10)

    result = pipe(video=path, query="a red ball", top_k=10)

    check_result(result, "a red ball", num_clips=2, duration=4.6)
    windows = [(m["start"], m["end"]) for m in result["moments"]]
    assert all(end > start for start, end in windows)
    assert len(set(windows)) == len(windows)

    # the official records of the same forward pass do hold empty or repeated windows: what the filter is for
    features = pipe.video_featurizer(path)
    batch = pipe.processor(
        video_features=[features.concatenated()], text_features=pipe.text_encoder("a red ball"), return_tensors="pt"
    )
    with torch.no_grad():
        outputs = pipe.model(**batch)
    (record,) = pipe.processor.post_process(outputs, batch["video_attention_mask"], [features.duration], top_k=None)
    official = [(start, end) for start, end, _ in record["pred_relevant_windows"]]
    assert len(official) == 6 and (any(end <= start for start, end in official) or len(set(official)) < 6)
    assert windows == [(start, end) for start, end, _ in distinct_moments(record["pred_relevant_windows"])]


def moment_rows(result):
    """The moments as (start, end, score) rows in time order: near-equal scores of a random model may swap ranks."""
    return sorted((m["start"], m["end"], m["score"]) for m in result["moments"])


def test_several_queries_share_one_extraction_and_the_cache_serves_later_calls(pipe, video, decodes):
    queries = ["a red ball", "blue sky", "something else entirely"]

    results = pipe(video=video, query=queries)

    assert len(decodes) == 1
    assert [result["query"] for result in results] == queries
    for query, result in zip(queries, results):
        check_result(result, query)

    alone = pipe(video, query="blue sky")  # another call: features from the cache, and batching changes nothing
    assert len(decodes) == 1
    np.testing.assert_allclose(moment_rows(alone), moment_rows(results[1]), atol=2e-4)
    np.testing.assert_allclose(alone["saliency"], results[1]["saliency"], atol=1e-5)

    for result in pipe(video=video, query=queries, nms_threshold=0.5):
        rows = moment_rows(result)
        for i, a in enumerate(rows):  # no two moments left overlap by more than the threshold
            for b in rows[:i]:
                intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
                union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
                assert union <= 0 or intersection / union <= 0.5
    assert len(decodes) == 1


def test_long_video_runs_in_windows_that_cover_it(short_window_model_dir, video, monkeypatch):
    pipe = pipeline(TASK, model=short_window_model_dir, device="cpu", use_cache=False, torch_dtype="float32")
    assert pipe.max_window_clips == 4
    seen = []
    forward = pipe.model.forward

    def recording_forward(**inputs):
        seen.append(inputs["video_attention_mask"].shape)
        return forward(**inputs)

    monkeypatch.setattr(pipe.model, "forward", recording_forward)

    results = pipe(video=video, query=["a red ball", "blue sky"], top_k=20)

    # 10 clips, windows of 4 overlapping by 2: clips 0-3, 2-5, 4-7, 6-9, for each query, in one batch
    assert seen == [torch.Size([8, 4])]
    for query, result in zip(["a red ball", "blue sky"], results):
        check_result(result, query, top_k=20, num_queries=6 * 4)
        assert len(result["moments"]) > 6  # moments come from several windows
        assert max(m["end"] for m in result["moments"]) > 8.0  # later windows map to later seconds


def redness_model(red: torch.Tensor, blue: torch.Tensor):
    """A stand-in forward with known outputs: the saliency of a clip is how much closer its CLIP feature is to red
    than to blue; one moment spans the window's red clips, scored by their number (a window without red clips: the
    whole window, scored near 0)."""

    def forward(video_features, video_attention_mask, text_features, text_attention_mask, **unused):
        clips = F.normalize(video_features[..., :PROJECTION_DIM], dim=-1)
        saliency = clips @ red - clips @ blue  # (B, L)
        valid = video_attention_mask.bool()
        is_red = (saliency > 0) & valid
        positions = torch.arange(saliency.shape[1])
        lengths = valid.sum(1)
        first = torch.where(is_red, positions, saliency.shape[1]).min(1).values
        last = torch.where(is_red, positions, -1).max(1).values
        found = last >= 0
        start = torch.where(found, first / lengths, 0.0)
        end = torch.where(found, (last + 1) / lengths, 1.0)
        spans = torch.stack([(start + end) / 2, end - start], dim=-1)[:, None]  # (B, 1, 2) (center, width)
        foreground = torch.where(found, is_red.sum(1).float(), -10.0)
        logits = torch.stack([foreground, torch.zeros_like(foreground)], dim=-1)[:, None]  # (B, 1, 2)
        return LDDetrOutput(logits=logits, pred_spans=spans, saliency_scores=saliency)

    return forward


def test_windowed_predictions_map_back_to_seconds_of_the_whole_video(model_dir, video, monkeypatch):
    pipe = pipeline(TASK, model=model_dir, device="cpu", use_cache=False, torch_dtype="float32")
    encoder = pipe.video_featurizer.encoders[0]
    solid_frames = np.stack([np.full((64, 64, 3), colour, np.uint8) for colour in (RED, BLUE)])
    red, blue = F.normalize(encoder.encode_frames(solid_frames), dim=-1)
    monkeypatch.setattr(pipe.model, "forward", redness_model(red, blue))
    whole = pipe(video=video, query="a red ball")

    # windows of 5 clips overlapping by 2: clips 0-4 (red clip 4 only), 3-7 (both red clips), 5-9 (red clip 5 only)
    windowed = VideoMomentRetrievalPipeline(
        model=pipe.model,
        processor=tiny_processor(max_video_clips=5),
        video_featurizer=pipe.video_featurizer,
        text_encoder=pipe.text_encoder,
        window_overlap=0.4,
        device="cpu",
        torch_dtype="float32",
    )
    result = windowed(video=video, query="a red ball")

    two_red_clips = pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-4)
    assert list(whole["moments"][0].values()) == [8.0, 12.0, two_red_clips]
    best, *others = [(m["start"], m["end"]) for m in result["moments"]]
    assert best == (8.0, 12.0)  # found whole by the middle window, and ranked above the halves the others saw
    assert {(8.0, 10.0), (10.0, 12.0)} <= set(others)
    # a clip's saliency does not depend on its window here, so the average over windows is that value
    np.testing.assert_allclose(result["saliency"], whole["saliency"], atol=1e-5)
    assert np.flatnonzero(np.asarray(result["saliency"]) > 0).tolist() == RED_CLIPS


# ---------------------------------------------------------------------------------------------------- the CLI


def test_cli_prints_the_moments_and_writes_json_and_a_plot(model_dir, video, tmp_path, capsys):
    output, plot = tmp_path / "out.json", tmp_path / "out.png"
    arguments = ["--model", model_dir, "--video", str(video), "--query", "a red ball", "--query", "blue sky"]
    arguments += ["--output", str(output), "--plot", str(plot), "--device", "cpu", "--top-k", "3", "--no-cache"]

    results = predict.predict(arguments)

    printed = capsys.readouterr().out
    assert "Query 1/2: 'a red ball'" in printed and "Query 2/2: 'blue sky'" in printed
    assert "most salient clip" in printed
    document = json.loads(output.read_text())
    assert document["video"] == str(video) and document["results"] == results
    for query, result in zip(["a red ball", "blue sky"], document["results"]):
        check_result(result, query, top_k=3)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_plot_needs_results(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        plot_results([], tmp_path / "empty.png")


# -------------------------------------------------------------------------------------------------- bad input


def test_bad_videos_and_queries_give_clear_errors(pipe, video, tmp_path, decodes):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        pipe(video=tmp_path / "missing.mp4", query="a ball")

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(ValueError, match="notes.mp4"):
        pipe(video=text, query="a ball")

    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        pipe(video=empty, query="a ball")

    short = write_video(tmp_path / "short.mp4", constant_rate(0.5, 8), red_from_8_to_12_s, size=16, fps=8)
    with pytest.raises(ValueError, match="shorter than half a clip"):
        pipe(video=short, query="a ball")

    decoded = len(decodes)
    for query in ("", "   ", [], ["a ball", ""]):
        with pytest.raises(ValueError, match="query"):
            pipe(video=video, query=query)
    assert len(decodes) == decoded  # a bad query fails before the video is decoded

    with pytest.raises(ValueError, match="a video and a query"):
        pipe(video=video)
    with pytest.raises(ValueError, match="one video file"):
        pipe(video=[video, video], query="a ball")
    with pytest.raises(ValueError, match="top_k"):
        pipe(video=video, query="a ball", top_k=0)
    with pytest.raises(ValueError, match="nms_threshold"):
        pipe(video=video, query="a ball", nms_threshold=1.5)


def test_a_slowfast_checkpoint_without_a_slowfast_encoder_is_refused(tiny_clip_dir):
    model = tiny_model(video_feature_dim=2304 + PROJECTION_DIM + 2)
    processor = tiny_processor(video_feature_dims=(2304, PROJECTION_DIM))
    with pytest.raises(ValueError, match="SlowFast"):
        pipeline(TASK, model=model, processor=processor, clip_model=tiny_clip_dir, device="cpu")


def test_mismatched_processor_or_clip_model_is_refused(tiny_clip_dir, tmp_path):
    with pytest.raises(ValueError, match="processor gives 18 video dims .* model takes 22"):
        pipeline(TASK, model=tiny_model(video_feature_dim=22), processor=tiny_processor(), device="cpu")
    wide = LDDetrProcessor(LDDetrFeatureExtractor(video_feature_dims=[PROJECTION_DIM], text_feature_dim=64))
    model = tiny_model()
    model.config.text_feature_dim = 64  # the check reads the config; no forward pass is run
    with pytest.raises(ValueError, match="text encoder gives 32-d token features but the model takes 64"):
        pipeline(TASK, model=model, processor=wide, clip_model=tiny_clip_dir, device="cpu")
    with pytest.raises(ValueError, match="needs the model's LDDetrProcessor"):
        VideoMomentRetrievalPipeline(model=tiny_model(), device="cpu")
    (tmp_path / CLIP_FEATURE_MODELS_FILE).write_text(json.dumps({"image_modle": "x"}))
    with pytest.raises(ValueError, match="image_modle"):
        ClipFeatureModels.beside_model(str(tmp_path))


def test_save_pretrained_round_trips_through_pipeline(pipe, video, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    again = pipeline(TASK, model=str(tmp_path / "saved"), device="cpu", use_cache=False, torch_dtype="float32")
    assert again.clip_feature_models == pipe.clip_feature_models
    expected, actual = pipe(video=video, query="a red ball"), again(video=video, query="a red ball")
    np.testing.assert_allclose(moment_rows(actual), moment_rows(expected), atol=2e-4)
    np.testing.assert_allclose(actual["saliency"], expected["saliency"], atol=1e-5)


# ------------------------------------------------------------------------------------------- sliding windows


@pytest.mark.parametrize(
    "num_clips, window, overlap, starts",
    [
        (10, 75, 37, [0]),
        (75, 75, 37, [0]),
        (10, 4, 2, [0, 2, 4, 6]),
        (10, 5, 2, [0, 3, 5]),
        (11, 4, 0, [0, 4, 7]),
        (5, 1, 0, [0, 1, 2, 3, 4]),
    ],
)
def test_windows_have_the_trained_length_and_cover_every_clip(num_clips, window, overlap, starts):
    duration = 2.0 * num_clips - 0.5  # a last partial clip
    windows = plan_windows(num_clips, duration, clip_length=2.0, window_clips=window, overlap_clips=overlap)
    assert [w.start for w in windows] == starts
    assert all(w.stop - w.start == min(window, num_clips) for w in windows)
    assert set().union(*(range(w.start, w.stop) for w in windows)) == set(range(num_clips))
    assert windows[-1].end_time == duration  # the last window ends with the video
    assert all(w.start_time == 2.0 * w.start and w.duration > 0 for w in windows)


def test_bad_window_settings():
    with pytest.raises(ValueError, match="at least one clip"):
        plan_windows(0, 1.0, 2.0, 4, 2)
    with pytest.raises(ValueError, match="overlap_clips < window_clips"):
        plan_windows(10, 20.0, 2.0, 4, 4)


def test_merged_moments_are_shifted_sorted_deduplicated_and_cut_to_top_k():
    windows = [ClipWindow(0, 4, 0.0, 8.0), ClipWindow(2, 6, 4.0, 12.0)]
    moments = [[[4.0, 8.0, 0.9], [0.0, 2.0, 0.3]], [[0.0, 4.0, 0.8], [2.0, 4.0, 0.5]]]

    # the second copy of 4-8 s is dropped even without NMS
    assert merge_moments(windows, moments, None, None) == [[4.0, 8.0, 0.9], [6.0, 8.0, 0.5], [0.0, 2.0, 0.3]]
    assert merge_moments(windows, moments, 0.7, None) == [[4.0, 8.0, 0.9], [6.0, 8.0, 0.5], [0.0, 2.0, 0.3]]
    assert merge_moments(windows, moments, 0.4, 2) == [[4.0, 8.0, 0.9], [0.0, 2.0, 0.3]]
    with pytest.raises(ValueError, match="1 lists of moments for 2 windows"):
        merge_moments(windows, moments[:1], None, None)


def test_distinct_moments_drop_empty_windows_and_repeats_keeping_the_best_copy():
    ranked = [[4.0, 4.0, 0.9], [2.0, 4.0, 0.8], [0.0, 4.0, 0.7], [2.0, 4.0, 0.6], [4.0, 4.6, 0.5], [4.6, 4.6, 0.4]]
    assert distinct_moments(ranked) == [[2.0, 4.0, 0.8], [0.0, 4.0, 0.7], [4.0, 4.6, 0.5]]


def test_saliency_is_averaged_over_the_windows_that_contain_a_clip():
    windows = [ClipWindow(0, 3, 0.0, 6.0), ClipWindow(2, 5, 4.0, 10.0)]
    assert average_saliency(windows, [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], 5) == [1.0, 2.0, 4.0, 6.0, 7.0]
    with pytest.raises(ValueError, match=r"clips \[5\] are in no window"):
        average_saliency(windows, [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], 6)
    with pytest.raises(ValueError, match="2 saliency scores for a window of 3 clips"):
        average_saliency(windows, [[1.0, 2.0], [5.0, 6.0, 7.0]], 5)
