"""LDDetrFeatureExtractor, LDDetrProcessor and LDDetrDataCollator: official preprocessing, labels checked by hand on
real annotations, label properties, bad input, post-processing, save/load (also as remote code), the collator."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Array2D, Dataset, Features, List, Value
from transformers import AutoFeatureExtractor
from transformers.trainer_utils import align_special_tokens

from modeling_lddetr import LDDetrModel
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from modeling_lddetr.configuration_lddetr import LDDetrConfig
from modeling_lddetr.feature_extraction_lddetr import LDDetrFeatureExtractor
from modeling_lddetr.processing_lddetr import LDDetrProcessor, temporal_nms, write_submission
from tests.helpers import tiny_config

AutoFeatureExtractor.register(LDDetrConfig, LDDetrFeatureExtractor, exist_ok=True)

SMALL = dict(video_feature_dims=[6, 4], text_feature_dim=5)  # fast synthetic features


def small_processor(**settings) -> LDDetrProcessor:
    return LDDetrProcessor(LDDetrFeatureExtractor(**{**SMALL, **settings}))


def features(rows: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def read_jsonl(path, qid=None):
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return rows if qid is None else next(row for row in rows if row["qid"] == qid)


def qvh(duration, windows, clip_ids, scores) -> dict:
    """An annotation in the official QVHighlights format."""
    return {"duration": duration, "relevant_windows": windows, "relevant_clip_ids": clip_ids, "saliency_scores": scores}


def labels_of(processor, clips, annotations, **kwargs):
    """Labels of a batch with random features of the given clip counts."""
    fe = processor.feature_extractor
    videos = [features(n, sum(fe.video_feature_dims), i) for i, n in enumerate(clips)]
    texts = [features(4, fe.text_feature_dim, i) for i in range(len(clips))]
    return processor(videos, texts, annotations=annotations, **kwargs)


# ------------------------------------------------------------------------------------ real annotations, by hand


def test_qvhighlights_val_qid_2579(shared_data_dir):
    row = read_jsonl(shared_data_dir / "qvhighlights" / "highlight_val_release.jsonl", 2579)
    labels = labels_of(LDDetrProcessor(), [75], [row], seed=0)["labels"][0]
    # window [82, 150] s over 75 clips x 2 s: (start, end) = (0.5467, 1.0) -> (center, width)
    torch.testing.assert_close(labels["spans"], torch.tensor([[0.7733, 0.4533]]), atol=1e-4, rtol=0)
    summed = np.asarray(row["saliency_scores"]).sum(1)
    expected = np.zeros(75, dtype=np.float32)
    expected[41:75] = summed
    assert summed[0] == 1 + 1 + 2 and summed[7] == 2 + 1 + 4  # clips 41 and 48
    np.testing.assert_array_equal(labels["saliency_scores"].numpy(), expected)
    pos, neg = labels["saliency_pos_indices"].tolist(), labels["saliency_neg_indices"].tolist()
    # clips 60, 69, 71, 72 share the top score 9 (the official unstable argsort picked 71): the stable sort takes 72;
    # the lowest score 4 is at clips 41 and 46: the first, 41, as officially
    assert expected[[60, 69, 71, 72]].tolist() == [9] * 4 and expected.max() == 9
    assert pos[0] == 72 and neg[0] == 41
    assert 41 <= pos[1] <= 74 and 0 <= neg[1] <= 40  # easy pair: a relevant clip, a clip outside


def test_charades_sta_qid_12404(shared_data_dir):
    row = read_jsonl(shared_data_dir / "charades_sta" / "charades_sta_val_tvr_format.jsonl", 12404)
    processor = small_processor(clip_length=1.0, max_video_clips=None, saliency_label_type="binary")
    for seed in range(5):
        labels = labels_of(processor, [31], [row], seed=seed)["labels"][0]
        # [24.3, 30.4] s over 31 clips x 1 s
        torch.testing.assert_close(labels["spans"], torch.tensor([[0.8823, 0.1968]]), atol=1e-4, rtol=0)
        # clip grid 30.96 / 31 s: first = int(24.3 / 0.9987) = 24, last = int(30.4 / 0.9987) - 1 = 29
        assert labels["saliency_scores"].nonzero().flatten().tolist() == list(range(24, 30))
        assert labels["saliency_scores"].sum() == 6
        pos, neg = labels["saliency_pos_indices"].tolist(), labels["saliency_neg_indices"].tolist()
        assert len(set(pos)) == 2 and set(pos) <= set(range(24, 30))
        assert len(set(neg)) == 2 and not set(neg) & set(range(24, 30)) and max(neg) < 31


def test_binary_clip_grid_comes_from_the_clips_before_the_cut(shared_data_dir):
    row = read_jsonl(shared_data_dir / "charades_sta" / "charades_sta_val_tvr_format.jsonl", 12404)  # 30.96 s
    row = {**row, "relevant_windows": [[10.5, 25.0]]}
    processor = small_processor(clip_length=1.0, max_video_clips=20, saliency_label_type="binary")
    labels = labels_of(processor, [31], [row], seed=0)["labels"][0]
    # grid 30.96 / 31 s: clips 10..24, of which 10..19 are kept (the official grid 30.96 / 20 s would give 6..15)
    assert labels["saliency_scores"].nonzero().flatten().tolist() == list(range(10, 20))
    torch.testing.assert_close(labels["spans"], torch.tensor([[(10.5 / 20 + 1) / 2, 1 - 10.5 / 20]]))


def test_tvsum_labels_from_annotator_scores(shared_data_dir):
    row = read_jsonl(shared_data_dir / "tvsum" / "tvsum_val.jsonl")[0]  # 74 clips x 20 annotators
    processor = small_processor(saliency_label_type="tvsum", max_video_clips=None)
    labels = labels_of(processor, [74], [row], seed=0)["labels"][0]
    assert labels["spans"].shape == (0, 2)
    scores = labels["saliency_scores"]
    assert scores.shape == (74,)
    assert scores[0].item() == pytest.approx(38 * 12 / 80)  # sum of (score - 1) over the annotators of clip 0
    assert labels["saliency_pos_indices"].tolist() == [5] and labels["saliency_neg_indices"].tolist() == [69]
    assert scores.argmax().item() == 5 and scores.argmin().item() == 69


def test_qvhighlights_test_split_gives_inputs_without_labels(shared_data_dir):
    rows = read_jsonl(shared_data_dir / "qvhighlights" / "highlight_test_release.jsonl")[:3]
    batch = labels_of(LDDetrProcessor(), [75, 71, 75], rows)
    assert "labels" not in batch and batch["video_features"].shape == (3, 75, 2818)


# -------------------------------------------------------------------------------------------------- features


def test_per_type_normalisation_tef_and_padding():
    processor = LDDetrProcessor(LDDetrFeatureExtractor(video_feature_dims=[2, 3], text_feature_dim=2))
    video_a = [[3, 4, 0, 0, 5], [3e-5, 4e-5, 1, 0, 0]]  # a tiny row pins the epsilon: 3e-5 / (5e-5 + 1e-5) = 0.5
    video_b = [[1, 0, 0, 3, 4], [6, 8, 0, 1, 0], [0, 0, 0, 0, 2], [1, 1, 1, 1, 1]]
    batch = processor([video_a, torch.tensor(video_b)], [[[6, 8]], [[1, 0], [0, 3]]])
    eps = 1e-5
    video, mask = batch["video_features"], batch["video_attention_mask"]
    assert video.shape == (2, 4, 7) and video.dtype == torch.float32
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # each feature type (2 then 3 columns) on its own: x / (||x|| + 1e-5); then tef [i / L, (i + 1) / L]
    expected_a = [
        [3 / (5 + eps), 4 / (5 + eps), 0, 0, 5 / (5 + eps), 0, 0.5],
        [0.5, 4 / 6, 1 / (1 + eps), 0, 0, 0.5, 1],
    ]
    torch.testing.assert_close(video[0, :2], torch.tensor(expected_a))
    assert video[0, 2:].abs().sum() == 0
    torch.testing.assert_close(video[1, :, -2:], torch.tensor([[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]]))
    torch.testing.assert_close(batch["text_features"][0], torch.tensor([[0.6, 0.8], [0, 0]]), atol=1e-5, rtol=0)
    assert batch["text_attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_truncation_and_audio_alignment():
    fe = LDDetrFeatureExtractor(**SMALL, audio_feature_dim=3, max_video_clips=4, max_text_tokens=2)
    batch = fe(
        [features(6, 10), features(5, 10)],
        [features(3, 5), features(1, 5)],
        audio_features=[features(9, 3), features(2, 3)],
    )
    # sample 0: min(video 6, audio 9) = 6, cut to 4; sample 1: min(5, 2) = 2
    assert batch["video_attention_mask"].sum(1).tolist() == [4, 2]
    assert batch["audio_features"].shape == (2, 4, 3 + 2) and batch["video_features"].shape == (2, 4, 10 + 2)
    torch.testing.assert_close(batch["audio_features"][1, :2, -2:], torch.tensor([[0, 0.5], [0.5, 1.0]]))
    torch.testing.assert_close(batch["audio_features"][0, :, -2:], batch["video_features"][0, :, -2:])
    assert batch["text_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert fe.model_video_feature_dim == 12 and fe.model_audio_feature_dim == 5


def test_numpy_tensors_without_tef_or_normalisation():
    fe = LDDetrFeatureExtractor(**SMALL, use_tef=False, normalize_features=False)
    video = features(3, 10)
    batch = fe([video], [features(2, 5)], return_tensors="np")
    assert isinstance(batch["video_features"], np.ndarray)
    np.testing.assert_array_equal(batch["video_features"][0], video)


# ---------------------------------------------------------------------------------------------- label properties


def random_qvhighlights_annotation(rng, clips: int) -> dict:
    duration = clips * 2
    windows, clip_ids = [], []
    start = int(rng.integers(0, clips // 2))
    while start < clips - 1 and len(windows) < 8:
        end = int(rng.integers(start + 1, min(start + 6, clips) + 1))
        windows.append([2.0 * start, 2.0 * end])
        clip_ids += list(range(start, end))
        start = end + int(rng.integers(1, 4))
    scores = rng.integers(0, 5, size=(len(clip_ids), 3)).tolist()
    return qvh(duration, windows, clip_ids, scores)


@pytest.mark.parametrize("max_video_clips", [None, 12])
def test_qvhighlights_label_properties(max_video_clips):
    rng = np.random.default_rng(0)
    processor = small_processor(max_video_clips=max_video_clips, num_saliency_pairs=4)
    for trial in range(20):
        clips = [int(n) for n in rng.integers(3, 30, size=4)]
        annotations = [random_qvhighlights_annotation(rng, n) for n in clips]
        batch = labels_of(processor, clips, annotations, seed=trial)
        kept = batch["video_attention_mask"].sum(1).tolist()
        for labels, n, annotation in zip(batch["labels"], kept, annotations):
            spans = labels["spans"]
            assert spans.ndim == 2 and spans.shape[1] == 2 and len(spans) <= 5
            start, end = spans[:, 0] - spans[:, 1] / 2, spans[:, 0] + spans[:, 1] / 2
            assert (spans[:, 1] > 0).all() and (start >= -1e-6).all() and (end <= 1 + 1e-6).all()
            scores = labels["saliency_scores"]
            assert scores.shape == (n,)
            relevant = {c for c in annotation["relevant_clip_ids"] if c < n}
            pos, neg = labels["saliency_pos_indices"], labels["saliency_neg_indices"]
            assert pos.shape == neg.shape == (4,) and pos.dtype == torch.int64
            assert ((pos >= 0) & (pos < n) & (neg >= 0) & (neg < n)).all()
            if relevant:
                assert set(pos.tolist()) <= relevant
                assert set(neg[:2].tolist()) <= relevant  # the "hard negatives" are the lowest-scored relevant clips
                if len(relevant) < n:
                    assert not set(neg[2:].tolist()) & relevant
                ranked = sorted(scores[c].item() for c in relevant)
                if len(relevant) >= 2:  # hard pairs: the two highest and the two lowest scored relevant clips
                    assert (
                        sorted(scores[pos[:2]].tolist()) == ranked[-2:]
                        and sorted(scores[neg[:2]].tolist()) == ranked[:2]
                    )


def test_binary_label_properties():
    rng = np.random.default_rng(1)
    processor = small_processor(clip_length=1.0, max_video_clips=None, saliency_label_type="binary")
    for trial in range(30):
        clips = int(rng.integers(1, 40))
        duration = clips + float(rng.uniform(-0.9, 0.9))
        start = float(rng.uniform(0, duration - 0.05))
        annotation = {"duration": duration, "relevant_windows": [[start, float(rng.uniform(start + 0.01, duration))]]}
        labels = labels_of(processor, [clips], [annotation], seed=trial)["labels"][0]
        scores, pos, neg = labels["saliency_scores"], labels["saliency_pos_indices"], labels["saliency_neg_indices"]
        inside = set(scores.nonzero().flatten().tolist())
        assert inside and set(pos.tolist()) <= inside
        if len(inside) < clips:
            assert not set(neg.tolist()) & inside
        else:
            assert neg.tolist() == pos.tolist()  # no clip outside the moment: the official fallback
        assert ((labels["spans"] >= 0) & (labels["spans"] <= 1)).all()


def test_same_seed_same_labels_other_seed_other_easy_pairs():
    annotation = qvh(60, [[10, 40]], list(range(5, 20)), [[1, 2, 3]] * 15)
    processor = small_processor(max_windows=5)
    first = labels_of(processor, [30] * 8, [annotation] * 8, seed=3)
    again = labels_of(processor, [30] * 8, [annotation] * 8, generator=np.random.default_rng(3))
    other = labels_of(processor, [30] * 8, [annotation] * 8, seed=4)

    def flat(batch):
        return torch.cat([torch.cat([b["saliency_pos_indices"], b["saliency_neg_indices"]]) for b in batch["labels"]])

    assert torch.equal(flat(first), flat(again)) and not torch.equal(flat(first), flat(other))
    torch.manual_seed(0)
    from_torch = labels_of(processor, [30] * 8, [annotation] * 8)
    torch.manual_seed(0)
    assert torch.equal(flat(from_torch), flat(labels_of(processor, [30] * 8, [annotation] * 8)))


def test_clip_ids_past_the_video_are_dropped_not_appended():
    # 10 clips kept; relevant clips 8..13: the official code grew the 10-long label array to 11
    annotation = qvh(28, [[16, 28]], list(range(8, 14)), [[4, 4, 4], [0, 0, 1]] + [[4, 4, 4]] * 4)
    labels = labels_of(small_processor(), [10], [annotation], seed=0)["labels"][0]
    assert labels["saliency_scores"].tolist() == [0] * 8 + [12, 1]
    pos, neg = labels["saliency_pos_indices"].tolist(), labels["saliency_neg_indices"].tolist()
    assert pos[0] == 8 and pos[1] in (8, 9) and neg[0] == 9 and neg[1] < 8
    # (16 s, 28 s) / (10 clips x 2 s) -> (0.8, 1.4) clamped to (0.8, 1.0)
    torch.testing.assert_close(labels["spans"], torch.tensor([[0.9, 0.2]]))


def test_moment_past_the_kept_clips():
    annotation = qvh(150, [[100, 120]], [50, 51], [[1, 1, 1]] * 2)
    labels = labels_of(small_processor(max_video_clips=40), [75], [annotation], seed=0)["labels"][0]
    assert labels["spans"].shape == (0, 2) and labels["saliency_scores"].shape == (40,)
    assert labels["saliency_scores"].sum() == 0 and labels["saliency_pos_indices"].tolist() == [39, 39]


def test_more_windows_than_max_windows_keeps_a_seeded_subset():
    windows = [[4.0 * i, 4.0 * i + 2] for i in range(9)]
    annotation = qvh(40, windows, [2 * i for i in range(9)], [[1, 1, 1]] * 9)
    processor = small_processor(max_windows=3)
    spans = [labels_of(processor, [20], [annotation], seed=s)["labels"][0]["spans"] for s in (0, 0, 1, 2)]
    assert all(s.shape == (3, 2) for s in spans) and torch.equal(spans[0], spans[1])
    assert not (torch.equal(spans[0], spans[2]) and torch.equal(spans[0], spans[3]))
    all_spans = {tuple(round(v, 4) for v in ((4 * i + 1) / 40, 2 / 40)) for i in range(9)}
    assert {tuple(round(v, 4) for v in row) for row in spans[0].tolist()} <= all_spans


# ------------------------------------------------------------------------------------------------- bad input


def _check_bad(call, match):
    with pytest.raises(ValueError, match=match):
        call()


GOOD_ANNOTATION = qvh(20, [[2, 6]], [1, 2], [[1, 2, 3], [2, 2, 2]])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(video=features(5, 9)), r"sample 1: video_features have width 9, expected sum\(video_feature_dims\) = 10"),
        (dict(text=features(3, 7)), r"sample 1: text_features have width 7, expected text_feature_dim = 5"),
        (dict(text=np.zeros((0, 5))), r"sample 1: text_features have no rows \(a query with no tokens\)"),
        (dict(video=np.zeros((0, 10))), r"sample 1: video_features have no rows \(a video shorter than one clip\)"),
        (dict(video=np.full((3, 10), np.nan)), r"sample 1: video_features contain NaN or inf"),
        (dict(text=np.full((2, 5), np.inf)), r"sample 1: text_features contain NaN or inf"),
        (dict(video=np.zeros(10)), r"sample 1: video_features must be a \(rows, width\) matrix"),
        (dict(annotation={**GOOD_ANNOTATION, "duration": 0}), r"sample 1: duration must be a positive number"),
        (dict(annotation={**GOOD_ANNOTATION, "duration": None}), r"sample 1: duration must be a positive number"),
        (dict(annotation={**GOOD_ANNOTATION, "relevant_windows": [[6, 6]]}), r"sample 1: relevant window \[6.0, 6.0\]"),
        (dict(annotation={**GOOD_ANNOTATION, "relevant_windows": [[8, 4]]}), r"sample 1: relevant window \[8.0, 4.0\]"),
        (dict(annotation={**GOOD_ANNOTATION, "relevant_windows": [[10, 25]]}), r"sample 1: .*end <= duration \(20\)"),
        (
            dict(annotation={**GOOD_ANNOTATION, "relevant_windows": [[-1, 5]]}),
            r"sample 1: relevant window \[-1.0, 5.0\]",
        ),
        (dict(annotation={**GOOD_ANNOTATION, "relevant_windows": [[1, 2, 3]]}), r"sample 1: relevant_windows must be"),
        (
            dict(annotation={**GOOD_ANNOTATION, "relevant_clip_ids": [1, -2]}),
            r"sample 1: relevant_clip_ids must be non-negative",
        ),
        (
            dict(annotation={**GOOD_ANNOTATION, "saliency_scores": [[1, 2, 3]]}),
            r"sample 1: saliency_scores must hold one",
        ),
        (dict(annotation={**GOOD_ANNOTATION, "saliency_scores": None}), r"sample 1: QVHighlights labels need"),
        (dict(annotation={"duration": 20}), r"samples \[1\] have no qvhighlights labels while others do"),
    ],
)
def test_bad_sample_raises_naming_it(change, match):
    processor = small_processor()
    videos = [features(5, 10), change.get("video", features(5, 10))]
    texts = [features(3, 5), change.get("text", features(3, 5))]
    annotations = [GOOD_ANNOTATION, change.get("annotation", GOOD_ANNOTATION)]
    _check_bad(lambda: processor(videos, texts, annotations=annotations, seed=0), match)


def test_bad_batch_and_settings():
    processor = small_processor()
    _check_bad(lambda: processor([features(5, 10)] * 2, [features(3, 5)]), r"2 video_features but 1 text_features")
    _check_bad(
        lambda: processor([features(5, 10)], [features(3, 5)], annotations=[]), r"1 video_features but 0 annotations"
    )
    _check_bad(lambda: processor([], []), r"batch is empty")
    _check_bad(
        lambda: processor([features(5, 10)], [features(3, 5)], audio_features=[features(5, 2)]),
        r"audio_feature_dim is 0",
    )
    _check_bad(
        lambda: small_processor(audio_feature_dim=2)([features(5, 10)], [features(3, 5)]),
        r"audio_features are required",
    )
    _check_bad(lambda: processor([features(5, 10)], [features(3, 5)], return_tensors="tf"), r"return_tensors")
    _check_bad(lambda: LDDetrFeatureExtractor(saliency_label_type="charades"), r"saliency_label_type must be one of")
    _check_bad(lambda: LDDetrFeatureExtractor(num_saliency_pairs=3), r"even for qvhighlights")
    _check_bad(lambda: LDDetrFeatureExtractor(max_video_clips=0), r"max_video_clips must be a positive integer or None")
    _check_bad(lambda: LDDetrFeatureExtractor(video_feature_dims=[]), r"video_feature_dims must be a non-empty")


# ------------------------------------------------------------------------------------------- post-processing


def test_post_process_moment_retrieval_by_hand():
    processor = LDDetrProcessor()  # clip_length 2
    logits = torch.tensor([[[-1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]], [[0.0, 0.0]] * 4])
    spans = torch.tensor(
        [[[0.95, 0.2], [0.5, 0.2], [0.1, 0.3], [0.5, 0.2]], [[0.9, 0.2], [0.5, 1.0], [0.1, 0.1], [0.2, 0.1]]]
    )
    outputs = {"logits": logits, "pred_spans": spans, "saliency_scores": torch.zeros(2, 3)}
    first, second = processor.post_process_moment_retrieval(outputs, torch.tensor([150.0, 143.0]))
    # softmax[..., 0]: 0.8808, 0.5 (twice: ties keep the query order), 0.1192; seconds: (0.4, 0.6) x 150 = (60, 90);
    # (-0.05, 0.25) x 150 clamped = (0, 37.5) -> clip grid (0, 38); (0.85, 1.05) x 150 -> (127.5, 150) -> (128, 150)
    assert first == [[60.0, 90.0, 0.8808], [0.0, 38.0, 0.5], [60.0, 90.0, 0.5], [128.0, 150.0, 0.1192]]
    # duration 143: (0.8, 1.0) x 143 = (114.4, 143) -> grid (114, 144) -> clamped again to 143
    assert second[0] == [114.0, 143.0, 0.5]
    unrounded = processor.post_process_moment_retrieval(outputs, [150, 143], round_to_clip=False, top_k=2)
    assert unrounded[0] == [[60.0, 90.0, 0.8808], [0.0, 37.5, 0.5]]
    deduplicated = processor.post_process_moment_retrieval(outputs, [150, 143], nms_threshold=0.5)
    assert deduplicated[0] == [[60.0, 90.0, 0.8808], [0.0, 38.0, 0.5], [128.0, 150.0, 0.1192]]


def test_temporal_nms_uses_the_true_iou_and_survives_zero_length_windows():
    ranked = [[0, 10, 0.9], [2, 12, 0.8], [0, 4, 0.7], [20, 20, 0.6], [20, 20, 0.5], [21, 21, 0.4]]
    # IoU([0, 10], [2, 12]) = 8 / 12 = 0.667; IoU([0, 10], [0, 4]) = 0.4; equal zero-length windows: 1, else 0
    assert temporal_nms(ranked, 0.5) == [[0, 10, 0.9], [0, 4, 0.7], [20, 20, 0.6], [21, 21, 0.4]]
    assert temporal_nms(ranked, 0.7) == [[0, 10, 0.9], [2, 12, 0.8], [0, 4, 0.7], [20, 20, 0.6], [21, 21, 0.4]]


class ModelOutput:
    def __init__(self, **values):
        self.__dict__.update(values)


def test_post_process_records_and_submission_file(tmp_path):
    processor = LDDetrProcessor()
    outputs = ModelOutput(
        logits=torch.tensor([[[3.0, 0.0]], [[0.0, 3.0]]]),
        pred_spans=torch.tensor([[[0.5, 0.5]], [[0.25, 0.5]]]),
        saliency_scores=torch.tensor([[0.5, -1.0, 2.0], [1.5, 9.0, 9.0]]),
    )
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    records = processor.post_process(
        outputs, mask, [100, 20], qids=[np.int64(7), 8], queries=["a", "b"], vids=["v1", "v2"]
    )
    assert records == [
        # (0.25, 0.75) x 100 = (25, 75) -> clip grid: 12.5 and 37.5 round half to even -> (24, 76)
        dict(
            qid=7,
            query="a",
            vid="v1",
            pred_relevant_windows=[[24.0, 76.0, 0.9526]],
            pred_saliency_scores=[0.5, -1.0, 2.0],
        ),
        dict(qid=8, query="b", vid="v2", pred_relevant_windows=[[0.0, 10.0, 0.0474]], pred_saliency_scores=[1.5]),
    ]
    assert processor.post_process_highlight_detection(outputs, mask)[1] == [1.5]
    path = write_submission(records, tmp_path / "preds" / "submission.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    with pytest.raises(ValueError, match="3 qids for a batch of 2"):
        processor.post_process(outputs, mask, [100, 20], qids=[1, 2, 3])
    with pytest.raises(ValueError, match="sample 1: duration must be a positive"):
        processor.post_process(outputs, mask, [100, 0])
    with pytest.raises(ValueError, match="no 'logits'"):
        processor.post_process({"pred_spans": outputs.pred_spans}, mask, [100, 20])


# ---------------------------------------------------------------------------------------------- save and load


def test_save_and_load_give_identical_batches(tmp_path):
    processor = small_processor(clip_length=1.0, saliency_label_type="binary", max_video_clips=None, max_windows=2)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    loaded = LDDetrProcessor.from_pretrained(tmp_path)
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    annotation = {"duration": 9.5, "relevant_windows": [[1, 3], [4, 6], [7, 9]]}
    a = labels_of(processor, [10, 7], [annotation] * 2, seed=5)
    b = labels_of(loaded, [10, 7], [annotation] * 2, seed=5)
    for key in a:
        if key == "labels":
            for x, y in zip(a[key], b[key]):
                assert all(torch.equal(x[k], y[k]) for k in x)
        else:
            assert torch.equal(a[key], b[key])


def test_from_dataset_info():
    info = {
        "dataset_type": "charades-sta",
        "video_feature_names": ["slowfast", "clip"],
        "video_feature_dims": [2304, 512],
        "text_feature_dim": 512,
        "audio_feature_dim": 0,
        "clip_length": 1.0,
        "max_video_clips": 194,
        "max_text_tokens": 32,
        "feature_dtype": "float16",
        "splits": {"train": 12404},
    }
    fe = LDDetrProcessor.from_dataset_info(info, max_windows=3).feature_extractor
    assert (fe.saliency_label_type, fe.clip_length, fe.max_video_clips, fe.max_windows) == ("binary", 1.0, 194, 3)
    assert fe.model_video_feature_dim == 2818
    with pytest.raises(ValueError, match="unknown dataset_type 'activitynet'"):
        LDDetrProcessor.from_dataset_info({**info, "dataset_type": "activitynet"})


@pytest.mark.slow
def test_saved_processor_loads_as_remote_code_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(LDDetrProcessor, "_auto_class", "AutoProcessor")
    monkeypatch.setattr(LDDetrFeatureExtractor, "_auto_class", "AutoFeatureExtractor")
    small_processor(clip_length=1.0).save_pretrained(tmp_path / "saved")
    saved = set(os.listdir(tmp_path / "saved"))
    assert {"processing_lddetr.py", "feature_extraction_lddetr.py", "span_ops.py"} <= saved
    script = (
        "import sys, numpy as np\n"
        "from transformers import AutoProcessor\n"
        "p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "assert 'modeling_lddetr' not in sys.modules and p.feature_extractor.clip_length == 1.0\n"
        "b = p([np.ones((4, 10))], [np.ones((2, 5))])\n"
        "print(tuple(b['video_features'].shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "saved")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(1, 4, 12)")


# ---------------------------------------------------------------------------------------------------- collator


def tiny_datasets():
    videos = Dataset.from_dict(
        {"vid": ["v0", "v1"], "video_features": [features(8, 10, 0), features(5, 10, 1)]},
        features=Features({"vid": Value("string"), "video_features": Array2D(shape=(None, 10), dtype="float32")}),
    )
    annotation_columns = {
        "qid": Value("int64"),
        "query": Value("string"),
        "vid": Value("string"),
        "duration": Value("float64"),
        "relevant_windows": List(List(Value("float64"))),
        "relevant_clip_ids": List(Value("int64")),
        "saliency_scores": List(List(Value("float32"))),
        "text_features": Array2D(shape=(None, 5), dtype="float32"),
    }
    rows = [
        dict(qid=1, query="a", vid="v1", **qvh(10.0, [[2, 6]], [1, 2], [[1, 2, 3], [4, 4, 4]])),
        dict(qid=2, query="b", vid="v0", **qvh(16.0, [[0, 4], [8, 12]], [0, 1, 4, 5], [[1, 1, 1]] * 4)),
        dict(qid=3, query="c", vid="v1", **qvh(10.0, [[6, 10]], [3, 4], [[0, 0, 1]] * 2)),
    ]
    for i, row in enumerate(rows):
        row["text_features"] = features(2 + i, 5, 10 + i)
    queries = Dataset.from_list(rows, features=Features(annotation_columns))
    # as `load_lddetr_dataset` gives them: feature matrices as float32 numpy arrays, the other columns as Python
    matrices = dict(type="numpy", output_all_columns=True, dtype=np.float32)
    return (
        queries.with_format(columns=["text_features"], **matrices),
        videos.with_format(columns=["video_features"], **matrices),
    )


def test_collator_joins_videos_and_batches_for_the_model():
    queries, videos = tiny_datasets()
    collator = LDDetrDataCollator(small_processor(max_video_clips=6), videos, seed=0)
    batch = collator([queries[i] for i in range(3)])
    assert batch["meta"] == {
        "qid": [1, 2, 3],
        "vid": ["v1", "v0", "v1"],
        "query": ["a", "b", "c"],
        "duration": [10.0, 16.0, 10.0],
    }
    assert batch["video_attention_mask"].sum(1).tolist() == [5, 6, 5]
    assert batch["text_attention_mask"].sum(1).tolist() == [2, 3, 4]
    alone = small_processor(max_video_clips=6)([videos[1]["video_features"]], [queries[0]["text_features"]])
    torch.testing.assert_close(batch["video_features"][0, :5], alone["video_features"][0])
    assert batch["labels"][1]["spans"].shape == (2, 2)
    assert batch["labels"][0]["saliency_scores"].tolist() == [0, 6, 12, 0, 0]

    batch.pop("meta")
    model = LDDetrModel(tiny_config(video_feature_dim=12, text_feature_dim=5)).eval()
    with torch.no_grad():
        output = model(**batch)
    assert torch.isfinite(output.loss) and output.pred_spans.shape[:2] == (3, model.config.num_queries)
    # Trainer.train aligns the model config with the processor's tokenizer tokens: a token-less processor must pass
    align_special_tokens(model, collator.processor)


def test_collator_labels_depend_on_the_rows_and_seed_only():
    """What makes resumed training exact: no state carried from batch to batch, nothing drawn from torch's generator."""
    queries, videos = tiny_datasets()
    rows = [queries[i] for i in (1, 2, 0)]

    def pairs(batch):
        return [torch.cat([b["saliency_pos_indices"], b["saliency_neg_indices"]]).tolist() for b in batch["labels"]]

    collator = LDDetrDataCollator(small_processor(), videos, seed=0)
    first = pairs(collator(rows))
    collator([queries[0]])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert pairs(collator(rows)) == first and torch.equal(torch.get_rng_state(), state)
    assert pairs(LDDetrDataCollator(small_processor(), videos, seed=0)(rows)) == first
    others = [pairs(LDDetrDataCollator(small_processor(), videos, seed=s)(rows)) for s in range(1, 6)]
    assert any(other != first for other in others)
    torch.manual_seed(7)
    assert LDDetrDataCollator(small_processor(), videos).seed == 7  # default: torch.initial_seed(), set by set_seed


def test_collator_on_unlabelled_rows_and_bad_videos():
    queries, videos = tiny_datasets()
    unlabelled = queries.map(lambda row: {"relevant_windows": None, "relevant_clip_ids": None, "saliency_scores": None})
    batch = LDDetrDataCollator(small_processor(), videos)([unlabelled[0], unlabelled[1]])
    assert "labels" not in batch and batch["meta"]["qid"] == [1, 2]
    with pytest.raises(ValueError, match="qid 1: vid 'v1' is not in the videos dataset"):
        LDDetrDataCollator(small_processor(), videos.select([0]))([queries[0]])
    doubled = Dataset.from_dict({"vid": ["v0", "v0"], "video_features": [features(2, 10)] * 2})
    with pytest.raises(ValueError, match="vid 'v0' appears twice"):
        LDDetrDataCollator(small_processor(), doubled)
    with pytest.raises(ValueError, match="no audio_features column"):
        LDDetrDataCollator(small_processor(audio_feature_dim=3), videos)
