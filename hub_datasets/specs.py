"""Where each source dataset keeps its annotation and feature files (the layout of the official LD-DETR code).

A spec says which jsonl file holds which split, which feature folders make up a video's features and in what
order, and where a query's text features are. There is one spec per registered dataset type
(`modeling_lddetr.dataset_types`), which gives the official clip length and clip limit.
"""

from dataclasses import dataclass, replace

from modeling_lddetr.dataset_types import DATASET_TYPES


@dataclass(frozen=True)
class FeatureSource:
    """One feature type stored as one array file per video under `directory`.

    Each part is read from `{vid}{part}.npz` (key `features`) or else `{vid}{part}.npy`; several parts (TVSum's
    `_rgb` and `_opt`) are concatenated along the feature axis, as the official loader does.
    """

    name: str
    directory: str
    dim: int
    parts: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class TextSource:
    directory: str
    file_name: str  # formatted with qid=...
    key: str
    dim: int


@dataclass(frozen=True)
class DatasetSpec:
    dataset_type: str
    card_folder: str  # folder of hub_datasets/ that holds the dataset card template
    split_files: dict[str, str]  # split -> annotation jsonl file name, in split order
    video_sources: tuple[FeatureSource, ...]
    text_source: TextSource
    qid_type: type
    max_text_tokens: int = 32
    audio_source: FeatureSource | None = None
    has_domain: bool = False  # TVSum rows carry a video category ("domain"); training runs per domain

    @property
    def clip_length(self) -> float:
        return DATASET_TYPES[self.dataset_type].clip_length

    @property
    def max_video_clips(self) -> int | None:
        return DATASET_TYPES[self.dataset_type].max_video_clips

    def with_video_features(self, names: list[str] | None = None) -> "DatasetSpec":
        """The same layout keeping only the named video feature types, in the official order (e.g. ["clip"] for a
        CLIP-only model that runs on any video without a SlowFast extractor)."""
        if not names:
            return self
        known = [s.name for s in self.video_sources]
        unknown = [name for name in names if name not in known]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"{self.dataset_type} video feature types are {known}; got {names}")
        return replace(self, video_sources=tuple(s for s in self.video_sources if s.name in names))

    def with_dims(self, video_dims: list[int] | None = None, text_dim: int | None = None) -> "DatasetSpec":
        """The same layout with other feature dims (features from another backbone, the synthetic demo)."""
        sources = self.video_sources
        if video_dims is not None:
            if len(video_dims) != len(sources):
                names = [s.name for s in sources]
                raise ValueError(
                    f"{self.dataset_type} has {len(sources)} video feature types {names}, got dims {video_dims}"
                )
            sources = tuple(replace(s, dim=int(d)) for s, d in zip(sources, video_dims))
        text = self.text_source if text_dim is None else replace(self.text_source, dim=int(text_dim))
        return replace(self, video_sources=sources, text_source=text)


SLOWFAST = FeatureSource("slowfast", "slowfast_features", 2304)
CLIP = FeatureSource("clip", "clip_features", 512)
PANN = FeatureSource("pann", "pann_features", 2048)

SPECS = {
    "qvhighlights": DatasetSpec(
        dataset_type="qvhighlights",
        card_folder="qvhighlights-features",
        split_files={
            "train": "highlight_train_release.jsonl",
            "validation": "highlight_val_release.jsonl",
            "test": "highlight_test_release.jsonl",
        },
        video_sources=(SLOWFAST, CLIP),
        text_source=TextSource("clip_text_features", "qid{qid}.npz", "last_hidden_state", 512),
        qid_type=int,
        audio_source=PANN,
    ),
    "charades-sta": DatasetSpec(
        dataset_type="charades-sta",
        card_folder="charades-sta-features",
        # the "val" file is the official test split (3720 queries); the official code selects checkpoints on it
        split_files={"train": "charades_sta_train_tvr_format.jsonl", "test": "charades_sta_val_tvr_format.jsonl"},
        video_sources=(SLOWFAST, CLIP),
        text_source=TextSource("clip_text_features", "qid{qid}.npz", "last_hidden_state", 512),
        qid_type=int,
    ),
    "tacos": DatasetSpec(
        dataset_type="tacos",
        card_folder="tacos-features",
        split_files={"train": "train.jsonl", "validation": "evl.jsonl", "test": "test.jsonl"},
        video_sources=(SLOWFAST, CLIP),
        text_source=TextSource("clip_text_features", "{qid}.npz", "last_hidden_state", 512),
        qid_type=str,
    ),
    "tvsum": DatasetSpec(
        dataset_type="tvsum",
        card_folder="tvsum-features",
        split_files={"train": "tvsum_train.jsonl", "validation": "tvsum_val.jsonl"},
        video_sources=(FeatureSource("i3d", "video_features", 2048, parts=("_rgb", "_opt")),),
        text_source=TextSource("query_features", "{qid}.npz", "token", 512),
        qid_type=str,
        has_domain=True,
    ),
}
