"""On-disk cache of extracted video features.

Key: sha256 of the video file's *content* (streamed in 1 MiB blocks) together with the featurizer's identity (model
weights fingerprint, backend, dtype, preprocessing, clip length, frames per clip, sampling rule). Hashing the whole
file costs about a second per GB, far less than decoding it, and unlike size + mtime it survives copies and renames
and never serves stale features for a file rewritten in place. Within one cache object the digest of a path is
remembered while its size and mtime are unchanged, so repeated calls on the same file hash it once.

Entries are `.npz` files under `cache_dir/features/<key[:2]>/<key>.npz`, written to a temporary file in the same
folder and then renamed, so a reader never sees half an entry and concurrent writers of one key are harmless. An
unreadable entry counts as a miss and is overwritten.

`cache_dir` is the lddetr cache folder, by default $LDDETR_CACHE, else ~/.cache/lddetr (`processing/cache_dir.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from processing.cache_dir import default_cache_dir

_BLOCK_SIZE = 1 << 20
FEATURES_FOLDER = "features"  # beside the demo dataset in the same cache folder


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._digests: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> content sha256

    def _content_digest(self, path: str | os.PathLike) -> str:
        real_path = os.path.realpath(path)
        stat = os.stat(real_path)
        signature = (real_path, stat.st_size, stat.st_mtime_ns)
        if signature not in self._digests:
            self._digests[signature] = file_sha256(real_path)
        return self._digests[signature]

    def key(self, video_path: str | os.PathLike, identity: Mapping) -> str:
        """Cache key of a video file under a featurizer identity (a JSON-serialisable mapping)."""
        if not os.path.isfile(video_path):
            raise FileNotFoundError(f"video file not found: {video_path}")
        payload = json.dumps({"video_sha256": self._content_digest(video_path), "featurizer": identity}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.cache_dir / FEATURES_FOLDER / key[:2] / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under key, or None on a miss (no entry, or an unreadable one)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                return {name: entry[name] for name in entry.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    def save(self, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_npz_atomically(path, arrays)


def save_npz_atomically(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """np.savez to a temporary file beside `path`, synced, then renamed: a reader (or a killed run) never sees a
    partial file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
