"""The library folder: a Hub parquet dataset of videos, their clip features and their stage-1 embeddings.

    LIB/
      README.md                         card; its `configs` make `datasets.load_dataset(LIB)` read the shards
      lddetr_library.json               the model, the embedding, the feature layout, the parts (LibraryInfo)
      data/part-00000/train-*.parquet   one part per `lddetr-index` run: a run that adds videos adds a part
      faiss.index                       only with --index-backend faiss: the approximate stage-1 index

A row: `vid`, `path` (the video file, or null for a dataset without files), `duration` (s), `num_clips`,
`video_features` (L, D) raw clip features as the model's dataset stored them, `embedding` (d,) the unit stage-1
embedding. Row groups are small (about ROW_GROUP_BYTES), so that stage 2 reads a candidate's clip features with one
small row-group read instead of a whole shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Array2D, Features, List, Value

from hub_datasets.parquet_shards import ShardedParquetWriter

INFO_FILE = "lddetr_library.json"
FORMAT = "lddetr-video-library"
FORMAT_VERSION = 1
DATA_GLOB = "data/part-*/train-*.parquet"
# about 3 videos of 75 CLIP float16 clips: stage 2 decodes the candidates' whole row groups, and nested-list
# decoding is the cost (50 candidates of a 10 000-video library: 595 ms at 1 MiB groups, 181 ms here, 69 ms at one
# video per group, whose footers made opening the library 3x slower: 0.79 s instead of 0.27 s)
ROW_GROUP_BYTES = 2**18
SCALAR_COLUMNS = ["vid", "path", "duration", "num_clips", "embedding"]


class LibraryError(ValueError):
    """A library folder that is missing, malformed or does not fit what is asked of it."""


@dataclass
class LibraryInfo:
    model: str  # the model folder or Hub id the embeddings were made with
    model_sha256: str  # its weights: a search with other weights would compare other embeddings
    embedding: str  # "distill-align"
    embedding_dim: int
    clip_length: float
    video_feature_names: list[str]
    video_feature_dims: list[int]
    text_feature_dim: int
    feature_dtype: str
    clip_feature_models: dict | None = None  # CLIP models of the features (libraries built from video files)
    parts: list[dict] = field(default_factory=list)  # per lddetr-index run: its source and number of videos
    format: str = FORMAT
    version: int = FORMAT_VERSION

    @property
    def num_videos(self) -> int:
        return sum(part["num_videos"] for part in self.parts)

    def clip_columns(self) -> slice | None:
        """Where the CLIP image features sit in `video_features` (None: the features have none)."""
        if "clip" not in self.video_feature_names:
            return None
        index = self.video_feature_names.index("clip")
        start = sum(self.video_feature_dims[:index])
        return slice(start, start + self.video_feature_dims[index])

    def save(self, folder: Path) -> None:
        temporary = folder / f".{INFO_FILE}.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, folder / INFO_FILE)

    @classmethod
    def load(cls, folder: Path) -> LibraryInfo:
        path = folder / INFO_FILE
        if not folder.is_dir():
            raise LibraryError(f"no such library folder: {folder}")
        if not path.is_file():
            raise LibraryError(f"{folder} has no {INFO_FILE}: not a library written by lddetr-index")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            info = cls(**values)
        except (json.JSONDecodeError, TypeError) as error:
            raise LibraryError(f"{path}: not a library description ({error})") from None
        if info.format != FORMAT or info.version > FORMAT_VERSION:
            raise LibraryError(f"{path}: format {info.format!r} version {info.version} is not one this package reads")
        return info


def row_features(info: LibraryInfo) -> Features:
    return Features(
        {
            "vid": Value("string"),
            "path": Value("string"),
            "duration": Value("float32"),
            "num_clips": Value("int32"),
            "video_features": Array2D(shape=(None, sum(info.video_feature_dims)), dtype=info.feature_dtype),
            "embedding": List(Value("float32"), length=info.embedding_dim),
        }
    )


def part_folder(folder: Path, number: int) -> Path:
    return folder / "data" / f"part-{number:05d}"


class PartWriter:
    """Writes one part: rows go to parquet shards in a hidden folder, renamed into place by `close`, so that an
    interrupted run leaves no half-written part that loads."""

    def __init__(self, folder: Path, info: LibraryInfo, number: int):
        self.final = part_folder(folder, number)
        self.staging = self.final.with_name(f".{self.final.name}.partial")
        self.writer = ShardedParquetWriter(self.staging, "train", row_features(info), row_group_bytes=ROW_GROUP_BYTES)
        self.feature_dtype = np.dtype(info.feature_dtype)
        self.count = 0

    def write(self, vid: str, path: str | None, duration: float, features: np.ndarray, embedding: np.ndarray) -> None:
        self.writer.write(
            {
                "vid": vid,
                "path": path,
                "duration": float(duration),
                "num_clips": len(features),
                "video_features": np.ascontiguousarray(features, dtype=self.feature_dtype),
                "embedding": np.asarray(embedding, dtype=np.float32),
            }
        )
        self.count += 1

    def close(self) -> Path:
        self.writer.close()
        os.replace(self.staging, self.final)
        return self.final


@dataclass
class RowLocation:
    shard: int
    row_group: int
    row: int  # within the row group


class LibraryShards:
    """Reads a library's rows: every video's scalar columns and embedding at once, clip features by row."""

    def __init__(self, folder: Path):
        self.paths = sorted(folder.glob(DATA_GLOB))
        if not self.paths:
            raise LibraryError(f"{folder}: no parquet shards under {DATA_GLOB}")
        self.files = [pq.ParquetFile(path) for path in self.paths]
        tables, self.locations = [], []
        for shard, file in enumerate(self.files):
            tables.append(file.read(columns=SCALAR_COLUMNS))
            for row_group in range(file.num_row_groups):
                rows = file.metadata.row_group(row_group).num_rows
                self.locations.extend(RowLocation(shard, row_group, row) for row in range(rows))
        table = pa.concat_tables(tables)
        self.vids: list[str] = table.column("vid").to_pylist()
        self.paths_of_videos: list[str | None] = table.column("path").to_pylist()
        self.durations = table.column("duration").to_numpy().astype(np.float64)
        self.num_clips = table.column("num_clips").to_numpy()
        embedding = table.column("embedding").combine_chunks()
        self.embeddings = embedding.values.to_numpy().reshape(len(self.vids), -1)  # (V, d) float32, unit rows
        self.row_of = {vid: index for index, vid in enumerate(self.vids)}
        if len(self.row_of) != len(self.vids):
            raise LibraryError(f"{folder}: a vid appears twice")
        self.in_memory: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.vids)

    def keep_in_memory(self) -> None:
        """Read every video's clip features once and answer later reads from memory (evaluation runs)."""
        self.in_memory = dict(enumerate(self.clip_features(list(range(len(self))))))

    def clip_features(self, rows: list[int]) -> list[np.ndarray]:
        """The (L, D) raw clip features of the given rows, float32, one row-group read per group touched."""
        if self.in_memory is not None:
            return [self.in_memory[row] for row in rows]
        by_group: dict[tuple[int, int], list[int]] = {}
        for row in rows:
            location = self.locations[row]
            by_group.setdefault((location.shard, location.row_group), []).append(row)
        matrices = {}
        for (shard, row_group), members in by_group.items():
            column = self.files[shard].read_row_group(row_group, columns=["video_features"]).column(0)
            for row, matrix in zip(members, _matrices(column, [self.locations[r].row for r in members])):
                matrices[row] = matrix
        return [matrices[row] for row in rows]


def _matrices(column: pa.ChunkedArray, positions: list[int]) -> list[np.ndarray]:
    """Rows of an Array2D column (list of lists) as float32 (L, D) numpy arrays."""
    array = column.combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    clip_offsets = array.offsets.to_numpy()
    inner = array.values
    value_offsets = inner.offsets.to_numpy()
    values = inner.values.to_numpy(zero_copy_only=False)
    result = []
    for position in positions:
        first, last = clip_offsets[position], clip_offsets[position + 1]
        flat = values[value_offsets[first] : value_offsets[last]]
        result.append(flat.reshape(last - first, -1).astype(np.float32))
    return result
