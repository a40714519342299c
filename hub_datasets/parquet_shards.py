"""Write one split of one config as Hub parquet shards, straight from numpy with pyarrow.

Feature matrices are `Array2D(shape=(None, D))` columns: variable rows per example, read back by `datasets` as an
(L, D) array per row. The files carry the `datasets` features in their schema metadata, so they load without a
cast. Rows are buffered into row groups of about `row_group_bytes` and the shard is closed once it reaches
`max_shard_bytes`; shard names get their final `{split}-{i:05d}-of-{n:05d}.parquet` form when the split is closed.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Array2D, Features

ROW_GROUP_BYTES = 64 * 2**20
MAX_SHARD_BYTES = 512 * 2**20


def array2d_column(matrices: list[np.ndarray], arrow_type: pa.DataType) -> pa.Array:
    """An Array2D extension array from (L_i, D) matrices, without a per-element Python conversion."""
    lengths = np.array([m.shape[0] for m in matrices], dtype=np.int64)
    dim = matrices[0].shape[1]
    if lengths.sum() * dim >= 2**31:
        raise ValueError("a row group holds too many feature values for 32-bit list offsets")
    outer = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    inner = (np.arange(lengths.sum() + 1) * dim).astype(np.int32)
    values = pa.array(np.concatenate([m.reshape(-1) for m in matrices]))
    storage = pa.ListArray.from_arrays(pa.array(outer), pa.ListArray.from_arrays(pa.array(inner), values))
    return pa.ExtensionArray.from_storage(arrow_type, storage)


class ShardedParquetWriter:
    def __init__(self, folder: Path, split: str, features: Features, max_shard_bytes: int = MAX_SHARD_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES):
        self.folder, self.split, self.features = folder, split, features
        self.schema = features.arrow_schema
        self.matrix_columns = {name for name, feature in features.items() if isinstance(feature, Array2D)}
        self.max_shard_bytes, self.row_group_bytes = max_shard_bytes, min(row_group_bytes, max_shard_bytes)
        self.rows, self.buffered_bytes = [], 0
        self.writer, self.shard_bytes, self.partial_paths = None, 0, []
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.buffered_bytes += sum(row[name].nbytes for name in self.matrix_columns if row.get(name) is not None)
        if self.buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _table(self) -> pa.Table:
        columns = []
        for field in self.schema:
            values = [row.get(field.name) for row in self.rows]
            if field.name in self.matrix_columns:
                columns.append(array2d_column(values, field.type))
            else:
                columns.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            path = self.folder / f"{self.split}-{len(self.partial_paths):05d}.parquet.partial"
            scalar_columns = [
                f.name for f in self.schema if not pa.types.is_nested(f.type) and f.name not in self.matrix_columns
            ]
            self.writer = pq.ParquetWriter(path, self.schema, write_statistics=scalar_columns)
            self.partial_paths.append(path)
        self.writer.write_table(self._table())
        self.shard_bytes += self.buffered_bytes
        self.rows, self.buffered_bytes = [], 0
        if self.shard_bytes >= self.max_shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.shard_bytes = None, 0

    def close(self) -> list[Path]:
        """Write what is buffered and give every shard its final name."""
        self._flush()
        self._close_shard()
        total = len(self.partial_paths)
        final = []
        for index, path in enumerate(self.partial_paths):
            target = self.folder / f"{self.split}-{index:05d}-of-{total:05d}.parquet"
            path.rename(target)
            final.append(target)
        return final
