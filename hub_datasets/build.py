"""`lddetr-build-dataset`: official annotations + official feature files -> a Hub dataset folder.

    lddetr-build-dataset qvhighlights --annotations-dir data/qvhighlight --features-dir features/qvhighlight \
        --output-dir qvhighlights-features --feature-dtype float16 [--with-audio] [--push-to-hub ORG/NAME]

The folder holds `README.md` (dataset card with the `configs` that `load_dataset` reads), `lddetr_dataset.json`
(feature names, dims and dtype: the processor and the model config are built from it),
`data/queries/{split}-*.parquet` (annotations + text features, one row per query) and
`data/videos/train-*.parquet` (video features, one row per video, stored once however many queries use it).
Features are stored raw (the processor normalises them). Everything is written into a hidden folder beside the
output and renamed at the end, so an interrupted build never leaves a folder that loads as if complete.
With `--videos-dir` instead of `--features-dir` (and `custom` for one's own annotations), CLIP features are
extracted from the raw videos: `hub_datasets/from_videos.py`.
"""

import argparse
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Array2D, Features, List, Value
from tqdm.auto import tqdm

from .annotations import QueryRow, read_annotations
from .card import card_context, hub_metadata, render_card
from .feature_files import FeatureFileError, load_feature_type, load_text_features, missing_video_files, text_feature_path
from .hub import INFO_FILE, push_dataset_to_hub
from .parquet_shards import MAX_SHARD_BYTES, ShardedParquetWriter
from .specs import SPECS, DatasetSpec

FEATURE_DTYPES = ("float32", "float16")
MAX_LISTED_MISSING = 10


class OutputExistsError(FileExistsError):
    pass


@dataclass
class BuildReport:
    output_dir: Path
    info: dict
    num_videos: int
    num_bytes: int
    seconds: float


def query_features(spec: DatasetSpec, dtype: str) -> Features:
    columns = {
        "qid": Value("int64" if spec.qid_type is int else "string"),
        "query": Value("string"),
        "vid": Value("string"),
        "duration": Value("float64"),
        "relevant_windows": List(List(Value("float64"))),
        "relevant_clip_ids": List(Value("int64")),
        "saliency_scores": List(List(Value("float32"))),
    }
    if spec.has_domain:
        columns["domain"] = Value("string")
    columns["text_features"] = Array2D(shape=(None, spec.text_source.dim), dtype=dtype)
    return Features(columns)


def video_features(spec: DatasetSpec, dtype: str, with_audio: bool) -> Features:
    columns = {"vid": Value("string"), "video_features": Array2D(shape=(None, sum(s.dim for s in spec.video_sources)), dtype=dtype)}
    if with_audio:
        columns["audio_features"] = Array2D(shape=(None, spec.audio_source.dim), dtype=dtype)
    return Features(columns)


def build_command(spec: DatasetSpec, dtype: str, splits: list[str] | None, max_video_clips: int | None, with_audio: bool) -> str:
    """The command line that rebuilds the folder, with placeholder paths (the card must not carry local paths)."""
    parts = [f"lddetr-build-dataset {spec.dataset_type} --annotations-dir ANNOTATIONS --features-dir FEATURES --output-dir OUTPUT"]
    parts.append(f"--feature-dtype {dtype}")
    official = SPECS.get(spec.dataset_type)
    names = [s.name for s in spec.video_sources]
    if official is not None and [s.name for s in official.video_sources] != names:
        parts.append("--video-features " + " ".join(names))
        official = official.with_video_features(names)
    if official is not None and [s.dim for s in official.video_sources] != [s.dim for s in spec.video_sources]:
        parts.append("--video-feature-dims " + " ".join(str(s.dim) for s in spec.video_sources))
    if official is not None and official.text_source.dim != spec.text_source.dim:
        parts.append(f"--text-feature-dim {spec.text_source.dim}")
    if splits:
        parts.append("--splits " + " ".join(splits))
    if max_video_clips:
        parts.append(f"--max-video-clips {max_video_clips}")
    if with_audio:
        parts.append("--with-audio")
    return " ".join(parts)


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} is not empty; pass --overwrite to replace it")


def _check_feature_files(spec: DatasetSpec, features_dir: Path, rows: list[QueryRow], video_owner: dict, with_audio: bool) -> None:
    """Report every missing file at once, before hours of reading are spent on the others."""
    sources = list(spec.video_sources) + ([spec.audio_source] if with_audio else [])
    problems = []
    for vid, owner in video_owner.items():
        problems += [f"{path} (vid {vid!r}, used by {owner})" for path in missing_video_files(features_dir, sources, vid)]
    for row in rows:
        path = text_feature_path(spec, features_dir, row.qid)
        if not path.is_file():
            problems.append(f"{path} (text features of {row.describe()})")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_MISSING])
        more = f"\n  ... and {len(problems) - MAX_LISTED_MISSING} more" if len(problems) > MAX_LISTED_MISSING else ""
        raise FeatureFileError(f"{len(problems)} feature file(s) not found under {features_dir}:\n  {listed}{more}")


def _video_row(spec: DatasetSpec, features_dir: Path, vid: str, owner: str, dtype: str, with_audio: bool, max_clips: int | None) -> dict:
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


def query_row(spec: DatasetSpec, row: QueryRow, text_features: np.ndarray) -> dict:
    """The `queries` row of an annotation row and its (N, Dt) text features."""
    values = {
        "qid": row.qid,
        "query": row.query,
        "vid": row.vid,
        "duration": row.duration,
        "relevant_windows": row.relevant_windows,
        "relevant_clip_ids": row.relevant_clip_ids,
        "saliency_scores": row.saliency_scores,
        "text_features": text_features,
    }
    if spec.has_domain:
        values["domain"] = row.domain
    return values


def dataset_info(spec: DatasetSpec, by_split: dict, feature_dtype: str, with_audio: bool, max_video_clips: int | None,
                 longest: int) -> dict:
    """The contents of lddetr_dataset.json."""
    return {
        "dataset_type": spec.dataset_type,
        "video_feature_names": [s.name for s in spec.video_sources],
        "video_feature_dims": [s.dim for s in spec.video_sources],
        "text_feature_dim": spec.text_source.dim,
        "audio_feature_dim": spec.audio_source.dim if with_audio else 0,
        "clip_length": spec.clip_length,
        # what the processor should keep: the requested limit, the official one, or (no official limit) all
        "max_video_clips": max_video_clips or spec.max_video_clips or longest,
        "max_text_tokens": spec.max_text_tokens,
        "feature_dtype": feature_dtype,
        "splits": {split: len(rows) for split, rows in by_split.items()},
    }


def _hidden_sibling(output_dir: Path, kind: str) -> Path:
    """A new hidden folder beside the output (same file system, so renames are atomic), with the usual permissions."""
    path = output_dir.parent / f".{output_dir.name}.{kind}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def _publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder into place. An existing output is replaced only with overwrite (or when empty);
    an output that another process published meanwhile raises OutputExistsError."""
    retired = None
    if output_dir.exists():
        _check_output(output_dir, overwrite)
        retired = _hidden_sibling(output_dir, "old") / "previous"
        output_dir.rename(retired)
    try:
        staging.rename(output_dir)
    except OSError:
        if output_dir.exists():
            raise OutputExistsError(f"{output_dir} was written by another process during this build") from None
        raise
    if retired is not None:
        shutil.rmtree(retired.parent, ignore_errors=True)


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
    _check_output(output_dir, overwrite)

    by_split = read_annotations(spec, annotations_dir, splits)
    all_rows = [row for rows in by_split.values() for row in rows]
    video_owner = {}
    for row in all_rows:
        video_owner.setdefault(row.vid, row.describe())
    _check_feature_files(spec, features_dir, all_rows, video_owner, with_audio)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(output_dir, "partial")
    try:
        videos = ShardedParquetWriter(staging / "data" / "videos", "train", video_features(spec, feature_dtype, with_audio), max_shard_bytes)
        longest = 0
        for vid, owner in tqdm(video_owner.items(), desc="videos", unit="video", disable=not progress):
            row = _video_row(spec, features_dir, vid, owner, feature_dtype, with_audio, max_video_clips)
            longest = max(longest, row["video_features"].shape[0])
            videos.write(row)
        videos.close()
        features = query_features(spec, feature_dtype)
        for split, rows in by_split.items():
            writer = ShardedParquetWriter(staging / "data" / "queries", split, features, max_shard_bytes)
            for row in tqdm(rows, desc=f"{split} queries", unit="query", disable=not progress):
                text = load_text_features(spec, features_dir, row.qid, row.describe(), feature_dtype)
                writer.write(query_row(spec, row, text))
            writer.close()

        info = dataset_info(spec, by_split, feature_dtype, with_audio, max_video_clips, longest)
        if (annotations_dir / "LICENSE").is_file():
            shutil.copyfile(annotations_dir / "LICENSE", staging / "LICENSE")
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        metadata = hub_metadata(features, video_features(spec, feature_dtype, with_audio), list(by_split), len(all_rows))
        command = build_command(spec, feature_dtype, splits, max_video_clips, with_audio)
        context = card_context(spec, info, len(video_owner), command)
        card = render_card(Path(__file__).parent / spec.card_folder / "README.md", metadata, context)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _publish(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    num_bytes = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
    return BuildReport(output_dir, info, len(video_owner), num_bytes, time.perf_counter() - started)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lddetr-build-dataset",
        description="Build a Hub dataset folder (parquet + dataset card) from official annotations and feature files.",
    )
    parser.add_argument("name", choices=sorted(SPECS) + ["custom"], help="source dataset (custom: your videos, --videos-dir)")
    parser.add_argument("--annotations-dir", type=Path, help="folder with the official annotation jsonl files")
    parser.add_argument("--features-dir", type=Path, help="folder with the official feature folders")
    parser.add_argument("--output-dir", required=True, type=Path, help="dataset folder to write (must be empty or absent)")
    parser.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="float32")
    parser.add_argument("--splits", nargs="+", help="splits to build (default: every split whose annotation file exists)")
    parser.add_argument("--max-video-clips", type=int, help="keep at most this many clips per video (default: all)")
    parser.add_argument("--with-audio", action="store_true", help="also store PANN audio features (QVHighlights)")
    parser.add_argument(
        "--video-features",
        nargs="+",
        metavar="TYPE",
        help="video feature types to store (default: all, e.g. slowfast clip); `clip` alone gives a dataset for a "
        "CLIP-only model that lddetr-predict can run on any video",
    )
    parser.add_argument("--video-feature-dims", type=int, nargs="+", help="dims of the video feature types, if not the official ones")
    parser.add_argument("--text-feature-dim", type=int, help="dim of the text features, if not the official one")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--max-shard-mb", type=int, default=MAX_SHARD_BYTES // 2**20, help="parquet shard size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the folder to this Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    from . import from_videos  # here, not at the top: it imports this module, and torch and CLIP

    from_videos.add_arguments(parser)
    args = parser.parse_args(argv)
    if (args.features_dir is None) == (args.videos_dir is None):
        parser.error("give either --features-dir (official feature files) or --videos-dir (raw videos)")
    if args.name == "custom" and args.videos_dir is None:
        parser.error("custom builds from raw videos: give --videos-dir and --annotations")
    if args.features_dir is not None and args.annotations_dir is None:
        parser.error("--features-dir needs --annotations-dir")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.videos_dir is not None:
            from . import from_videos

            report = from_videos.build_from_videos(args)
            if not report.info:  # a process other than the first: process 0 writes the folder and reports
                return
        else:
            report = _build_from_feature_files(args)
    # bad input is reported in one line; anything else is a bug and keeps its traceback
    except (ValueError, OutputExistsError, FileNotFoundError) as e:
        raise SystemExit(f"lddetr-build-dataset: error: {e}") from None
    queries = ", ".join(f"{split} {n}" for split, n in report.info["splits"].items())
    print(
        f"wrote {report.output_dir}: queries {queries}; {report.num_videos} videos; "
        f"{report.num_bytes / 2**20:.1f} MiB in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    if args.push_to_hub:
        url = push_dataset_to_hub(report.output_dir, args.push_to_hub, private=args.private)
        print(f"uploaded to {url}", file=sys.stderr)


def _build_from_feature_files(args: argparse.Namespace) -> BuildReport:
    spec = SPECS[args.name].with_video_features(args.video_features).with_dims(args.video_feature_dims, args.text_feature_dim)
    return build_dataset(
        spec,
        args.annotations_dir,
        args.features_dir,
        args.output_dir,
        feature_dtype=args.feature_dtype,
        splits=args.splits,
        max_video_clips=args.max_video_clips,
        with_audio=args.with_audio,
        overwrite=args.overwrite,
        max_shard_bytes=args.max_shard_mb * 2**20,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
