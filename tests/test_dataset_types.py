"""The registry of dataset types: every part knows every registered type, and unknown types fail clearly."""

import pytest

from hub_datasets.specs import SPECS
from modeling_lddetr.dataset_types import DATASET_TYPES, dataset_type
from modeling_lddetr.feature_extraction_lddetr import SALIENCY_LABEL_TYPES
from processing.evaluation.metrics import compute_metrics
from training_scripts.presets import COMMON_TRAINING, PRESETS, preset_for_dataset


def test_every_registered_type_has_a_file_layout_a_preset_and_a_label_scheme():
    assert set(SPECS) == set(DATASET_TYPES)
    for name, registered in DATASET_TYPES.items():
        assert registered.name == name == SPECS[name].dataset_type
        assert registered.preset in PRESETS and preset_for_dataset(name) == registered.preset
        assert registered.saliency_label_type in SALIENCY_LABEL_TYPES
        assert (SPECS[name].clip_length, SPECS[name].max_video_clips) == (
            registered.clip_length,
            registered.max_video_clips,
        )


def test_each_type_is_scored_by_its_metric():
    record = {"qid": 1, "pred_relevant_windows": [[0.0, 4.0, 0.9]], "pred_saliency_scores": [0.1, 0.9, 0.3]}
    truth = {
        "qid": 1,
        "duration": 6,
        "relevant_windows": [[0.0, 4.0]],
        "relevant_clip_ids": [0, 1],
        "saliency_scores": [[4, 4, 4], [2, 2, 2]],
        "label": [[1, 2], [3, 4], [5, 1]],
    }
    briefs = {name: compute_metrics([record], [truth], name)["brief"] for name in DATASET_TYPES}
    assert "HL-min-VeryGood-mAP" in briefs["qvhighlights"] and "MR-full-mAP" in briefs["qvhighlights"]
    assert briefs["charades-sta"] == briefs["tacos"] and briefs["tacos"]["MR-full-R1@0.7"] == 100.0
    assert set(briefs["tvsum"]) == {"mAP", "mAP-all-clips"}
    # each type's preset keeps its best checkpoint by a metric that the type's report has
    for name, registered in DATASET_TYPES.items():
        training = {**COMMON_TRAINING, **PRESETS[registered.preset]["training"]}
        assert training["metric_for_best_model"] in briefs[name], name


def test_an_unknown_type_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset_type 'activitynet'; expected one of \['charades-sta'"):
        dataset_type("activitynet")
