"""The dataset folder both builders write: its columns, `lddetr_dataset.json`, and the writer that stages it beside
the output and renames it into place at the end, so that an interrupted build never leaves a folder that loads as
if complete.

    OUTPUT/README.md                       dataset card: `configs` for load_dataset, columns, the rebuild command
    OUTPUT/lddetr_dataset.json             feature names, dims, dtype, clip length, splits
    OUTPUT/data/queries/{split}-*.parquet  one row per query: annotations + (N, Dt) text features
    OUTPUT/data/videos/train-*.parquet     one row per video: (L, D) video features (+ audio), stored once
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datasets import Array2D, Features, List, Value

from .annotations import QueryRow, saliency_label_type
from .card import card_context, hub_metadata, render_card
from .hub import INFO_FILE
from .parquet_shards import MAX_SHARD_BYTES, ShardedParquetWriter
from .specs import DatasetSpec

FEATURE_DTYPES = ("float32", "float16")


class OutputExistsError(FileExistsError):
    pass


@dataclass
class BuildReport:
    output_dir: Path
    info: dict  # lddetr_dataset.json; empty on the processes of a multi-process build that do not write the folder
    num_videos: int
    num_bytes: int
    seconds: float

    @classmethod
    def of_folder(cls, output_dir: Path, info: dict, num_videos: int, started: float) -> BuildReport:
        num_bytes = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
        return cls(output_dir, info, num_videos, num_bytes, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------- columns and info


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
    video_dim = sum(s.dim for s in spec.video_sources)
    columns = {"vid": Value("string"), "video_features": Array2D(shape=(None, video_dim), dtype=dtype)}
    if with_audio:
        columns["audio_features"] = Array2D(shape=(None, spec.audio_source.dim), dtype=dtype)
    return Features(columns)


def query_row(spec: DatasetSpec, row: QueryRow, text_features) -> dict:
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
        "saliency_label_type": saliency_label_type(spec.dataset_type, by_split),
    }


# ----------------------------------------------------------------------------------------- staging and publishing


def check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} is not empty; pass --overwrite to replace it")


def hidden_sibling(output_dir: Path, kind: str) -> Path:
    """A new hidden folder beside the output (same file system, so renames are atomic), with the usual permissions."""
    path = output_dir.parent / f".{output_dir.name}.{kind}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder into place. An existing output is replaced only with overwrite (or when empty);
    an output that another process published meanwhile raises OutputExistsError."""
    retired = None
    if output_dir.exists():
        check_output(output_dir, overwrite)
        retired = hidden_sibling(output_dir, "old") / "previous"
        output_dir.rename(retired)
    try:
        staging.rename(output_dir)
    except OSError:
        if output_dir.exists():
            raise OutputExistsError(f"{output_dir} was written by another process during this build") from None
        raise
    if retired is not None:
        shutil.rmtree(retired.parent, ignore_errors=True)


class DatasetFolderWriter:
    """Writes one dataset folder into a hidden staging folder beside `output_dir`; `publish` renames it into place.
    Leaving the `with` block without publishing (an error, an interrupt) deletes the staging folder.

        with DatasetFolderWriter(output_dir, spec, "float16") as folder:
            longest = folder.write_videos(video_rows)
            for split, rows in query_rows.items():
                folder.write_queries(split, rows)
            folder.publish(info, rebuild_command, card_folder=spec.card_folder)
    """

    def __init__(self, output_dir: Path, spec: DatasetSpec, feature_dtype: str, *, with_audio: bool = False,
                 overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES):
        self.output_dir, self.spec, self.overwrite, self.max_shard_bytes = output_dir, spec, overwrite, max_shard_bytes
        self.query_features = query_features(spec, feature_dtype)
        self.video_features = video_features(spec, feature_dtype, with_audio)
        self.path: Path | None = None  # the staging folder, while the writer is open
        self.num_videos = 0
        self.queries_per_split: dict[str, int] = {}

    def __enter__(self) -> DatasetFolderWriter:
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.path = hidden_sibling(self.output_dir, "partial")
        return self

    def __exit__(self, *exception) -> None:
        if self.path is not None:  # not published
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def write_videos(self, rows: Iterable[dict]) -> int:
        """The `videos` config, in the order given; returns the most clips of a video."""
        writer = ShardedParquetWriter(self.path / "data" / "videos", "train", self.video_features, self.max_shard_bytes)
        longest = 0
        for row in rows:
            longest = max(longest, row["video_features"].shape[0])
            writer.write(row)
            self.num_videos += 1
        writer.close()
        return longest

    def write_queries(self, split: str, rows: Iterable[dict]) -> None:
        writer = ShardedParquetWriter(self.path / "data" / "queries", split, self.query_features, self.max_shard_bytes)
        self.queries_per_split[split] = 0
        for row in rows:
            writer.write(row)
            self.queries_per_split[split] += 1
        writer.close()

    def publish(self, info: dict, rebuild_command: str, *, card_folder: str, **card_values) -> Path:
        """Write lddetr_dataset.json and the card (from `card_folder`'s template, `card_values` filling the
        placeholders of its own), then rename the folder into place."""
        (self.path / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        splits = list(self.queries_per_split)
        metadata = hub_metadata(self.query_features, self.video_features, splits, sum(self.queries_per_split.values()))
        context = card_context(self.spec, info, self.num_videos, rebuild_command) | card_values
        card = render_card(Path(__file__).parent / card_folder / "README.md", metadata, context)
        (self.path / "README.md").write_text(card, encoding="utf-8")
        publish(self.path, self.output_dir, self.overwrite)
        self.path = None
        return self.output_dir
