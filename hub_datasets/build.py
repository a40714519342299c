"""The feature-file builder of `lddetr-build-dataset`: official annotations + official feature files -> a Hub dataset
folder (`dataset_folder.py`; the command line is `cli.py`).

    lddetr-build-dataset qvhighlights --annotations-dir data/qvhighlight --features-dir features/qvhighlight \
        --output-dir qvhighlights-features --feature-dtype float16 [--with-audio] [--push-to-hub ORG/NAME]

The folder holds `README.md` (dataset card with the `configs` that `load_dataset` reads), `lddetr_dataset.json`
(feature names, dims and dtype: the processor and the model config are built from it),
`data/queries/{split}-*.parquet` (annotations + text features, one row per query) and
`data/videos/train-*.parquet` (video features, one row per video, stored once however many queries use it).
Features are stored raw (the processor normalises them). Everything is written into a hidden folder beside the
output and renamed at the end, so an interrupted build never leaves a folder that loads as if complete.
With `--videos-dir` instead of `--features-dir` (and `custom` for one's own annotations), CLIP features are
extracted from the raw videos: `from_videos.py`.
"""

import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .annotations import QueryRow, read_annotations
from .card import build_command
from .dataset_folder import FEATURE_DTYPES, BuildReport, DatasetFolderWriter, check_output, dataset_info, query_row
from .feature_files import (
    FeatureFileError,
    load_feature_type,
    load_text_features,
    missing_video_files,
    text_feature_path,
)
from .parquet_shards import MAX_SHARD_BYTES
from .specs import SPECS, DatasetSpec

MAX_LISTED_MISSING = 10


def rebuild_command(spec: DatasetSpec, dtype: str, splits: list[str] | None, max_video_clips: int | None,
                    with_audio: bool) -> str:
    """The options of the build that differ from the official dataset's, for its card."""
    options = []
    official = SPECS.get(spec.dataset_type)
    names = [s.name for s in spec.video_sources]
    if official is not None and [s.name for s in official.video_sources] != names:
        options.append("--video-features " + " ".join(names))
        official = official.with_video_features(names)
    if official is not None and [s.dim for s in official.video_sources] != [s.dim for s in spec.video_sources]:
        options.append("--video-feature-dims " + " ".join(str(s.dim) for s in spec.video_sources))
    if official is not None and official.text_source.dim != spec.text_source.dim:
        options.append(f"--text-feature-dim {spec.text_source.dim}")
    if with_audio:
        options.append("--with-audio")
    return build_command(spec.dataset_type, ["--annotations-dir ANNOTATIONS", "--features-dir FEATURES"],
                         feature_dtype=dtype, options=options, splits=splits, max_video_clips=max_video_clips)


def _check_feature_files(spec: DatasetSpec, features_dir: Path, rows: list[QueryRow], video_owner: dict,
                         with_audio: bool) -> None:
    """Report every missing file at once, before hours of reading are spent on the others."""
    sources = list(spec.video_sources) + ([spec.audio_source] if with_audio else [])
    problems = []
    for vid, owner in video_owner.items():
        missing = missing_video_files(features_dir, sources, vid)
        problems += [f"{path} (vid {vid!r}, used by {owner})" for path in missing]
    for row in rows:
        path = text_feature_path(spec, features_dir, row.qid)
        if not path.is_file():
            problems.append(f"{path} (text features of {row.describe()})")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_MISSING])
        more = f"\n  ... and {len(problems) - MAX_LISTED_MISSING} more" if len(problems) > MAX_LISTED_MISSING else ""
        raise FeatureFileError(f"{len(problems)} feature file(s) not found under {features_dir}:\n  {listed}{more}")


def _video_row(spec: DatasetSpec, features_dir: Path, vid: str, owner: str, dtype: str, with_audio: bool,
               max_clips: int | None) -> dict:
    """The feature types truncated to the shortest (and to max_clips), concatenated in order."""
    context = f"vid {vid!r}, used by {owner}"
    types = [load_feature_type(features_dir, s, vid, context, dtype) for s in spec.video_sources]
    audio = load_feature_type(features_dir, spec.audio_source, vid, context, dtype) if with_audio else None
    length = min(a.shape[0] for a in types + ([audio] if audio is not None else []))
    if max_clips:
        length = min(length, max_clips)
    row = {"vid": vid, "video_features": np.concatenate([a[:length] for a in types], axis=1)}
    if audio is not None:
        row["audio_features"] = np.ascontiguousarray(audio[:length])
    return row


def build_dataset(
    spec: DatasetSpec | str,
    annotations_dir: str | Path,
    features_dir: str | Path,
    output_dir: str | Path,
    *,
    feature_dtype: str = "float32",
    splits: list[str] | None = None,
    max_video_clips: int | None = None,
    with_audio: bool = False,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = True,
) -> BuildReport:
    started = time.perf_counter()
    spec = SPECS[spec] if isinstance(spec, str) else spec
    annotations_dir, features_dir, output_dir = Path(annotations_dir), Path(features_dir), Path(output_dir).absolute()
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {feature_dtype!r}")
    if with_audio and spec.audio_source is None:
        raise ValueError(f"{spec.dataset_type} has no audio features")
    if max_video_clips is not None and max_video_clips < 1:
        raise ValueError(f"max_video_clips must be at least 1, got {max_video_clips}")
    check_output(output_dir, overwrite)

    by_split = read_annotations(spec, annotations_dir, splits)
    all_rows = [row for rows in by_split.values() for row in rows]
    video_owner = {}
    for row in all_rows:
        video_owner.setdefault(row.vid, row.describe())
    _check_feature_files(spec, features_dir, all_rows, video_owner, with_audio)

    with DatasetFolderWriter(output_dir, spec, feature_dtype, with_audio=with_audio, overwrite=overwrite,
                             max_shard_bytes=max_shard_bytes) as folder:
        owners = tqdm(video_owner.items(), desc="videos", unit="video", disable=not progress)
        longest = folder.write_videos(_video_row(spec, features_dir, vid, owner, feature_dtype, with_audio,
                                                 max_video_clips) for vid, owner in owners)
        for split, rows in by_split.items():
            folder.write_queries(split, (
                query_row(spec, row, load_text_features(spec, features_dir, row.qid, row.describe(), feature_dtype))
                for row in tqdm(rows, desc=f"{split} queries", unit="query", disable=not progress)
            ))
        if (annotations_dir / "LICENSE").is_file():
            shutil.copyfile(annotations_dir / "LICENSE", folder.path / "LICENSE")
        info = dataset_info(spec, by_split, feature_dtype, with_audio, max_video_clips, longest)
        command = rebuild_command(spec, feature_dtype, splits, max_video_clips, with_audio)
        folder.publish(info, command, card_folder=spec.card_folder)
    return BuildReport.of_folder(output_dir, info, len(video_owner), started)
