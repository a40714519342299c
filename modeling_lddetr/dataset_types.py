"""The registry of dataset types: what a dataset's `dataset_type` (its `lddetr_dataset.json`) implies, read by every
part.

It lives in `modeling_lddetr/` because the processor needs a type's saliency label type and the converter its
official name, and this folder may import nothing outside itself; the builder (`hub_datasets/specs.py`: file layout
and feature sources), the metrics, the training presets and the scripts import it from here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetType:
    name: str  # the `dataset_type` of lddetr_dataset.json
    official_name: str  # the official code's `dset_name`, as official checkpoints record it
    saliency_label_type: str  # LDDetrFeatureExtractor's label scheme: "qvhighlights", "binary" or "tvsum"
    has_moment_labels: bool  # ground-truth windows (`relevant_windows`); TVSum has clip scores (`label`) only
    metric: str  # which report of processing/evaluation/metrics.py scores it
    preset: str  # the training preset (training_scripts/presets.py) of the paper's recipe
    clip_length: float  # seconds per clip of the official features
    max_video_clips: int | None  # the official max_v_l; None: the official code keeps every clip

    @property
    def ground_truth_key(self) -> str:
        """The annotation field that holds a query's ground truth."""
        return "relevant_windows" if self.has_moment_labels else "label"


DATASET_TYPES = {
    dataset_type.name: dataset_type
    for dataset_type in (
        DatasetType("qvhighlights", "hl", "qvhighlights", True, "qvhighlights", "qvhighlights", 2.0, 75),
        DatasetType("charades-sta", "charadesSTA", "binary", True, "temporal_grounding", "charades-sta", 1.0, None),
        DatasetType("tacos", "tacos", "binary", True, "temporal_grounding", "tacos", 2.0, None),
        DatasetType("tvsum", "tvsum", "tvsum", False, "tvsum", "tvsum", 2.0, 1000),
    )
}


def dataset_type(name: str) -> DatasetType:
    """The registered type called `name`; a clear error for any other."""
    if name not in DATASET_TYPES:
        raise ValueError(f"unknown dataset_type {name!r}; expected one of {sorted(DATASET_TYPES)}")
    return DATASET_TYPES[name]
