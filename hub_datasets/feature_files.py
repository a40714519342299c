"""Find, load and check the official feature files of one video or one query.

Checks: the file exists and holds a 2-D float array with the expected feature dim, at least one row, and only
finite values (also after the cast to the stored dtype: float16 overflows to inf above 65504).
A failed check raises `FeatureFileError` naming the file and the video or query it belongs to.
"""

import zipfile
from pathlib import Path

import numpy as np

from .specs import DatasetSpec, FeatureSource


class FeatureFileError(ValueError):
    pass


# what numpy raises for a truncated, corrupt or pickled (refused) file
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _candidates(features_dir: Path, source: FeatureSource, vid: str, part: str) -> list[Path]:
    folder = features_dir / source.directory
    return [folder / f"{vid}{part}.npz", folder / f"{vid}{part}.npy"]


def text_feature_path(spec: DatasetSpec, features_dir: Path, qid) -> Path:
    text = spec.text_source
    return features_dir / text.directory / text.file_name.format(qid=qid)


def missing_video_files(features_dir: Path, sources: list[FeatureSource], vid: str) -> list[str]:
    """A description of every expected video feature file that does not exist (npz or npy)."""
    missing = []
    for source in sources:
        for part in source.parts:
            npz, npy = _candidates(features_dir, source, vid, part)
            if not npz.is_file() and not npy.is_file():
                missing.append(f"{npz} (or {npy.name})")
    return missing


def _checked(array: np.ndarray, path: Path, dim: int, owner: str, dtype: np.dtype) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise FeatureFileError(f"{path} ({owner}): expected numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != dim:
        raise FeatureFileError(f"{path} ({owner}): expected shape (rows, {dim}), got {array.shape}")
    if array.shape[0] == 0:
        raise FeatureFileError(f"{path} ({owner}): no rows")
    if not np.isfinite(array).all():
        raise FeatureFileError(f"{path} ({owner}): contains NaN or inf")
    with np.errstate(over="ignore"):  # overflow is reported below, with the file name
        stored = array.astype(dtype)
    if not np.isfinite(stored).all():
        raise FeatureFileError(f"{path} ({owner}): values beyond the {np.dtype(dtype).name} range")
    return stored


def _read_array(path: Path, owner: str, key: str | None = None) -> np.ndarray:
    """The array of a .npy file, or the array `key` of a .npz archive."""
    try:
        if key is None:
            return np.load(path)
        with np.load(path) as archive:
            names = archive.files
            array = archive[key] if key in names else None
    except READ_ERRORS as e:
        raise FeatureFileError(f"{path} ({owner}): cannot read ({type(e).__name__}: {e})") from None
    if array is None:
        raise FeatureFileError(f"{path} ({owner}): no array {key!r} (it has {names})")
    return array


def _load_part(features_dir: Path, source: FeatureSource, vid: str, part: str, owner: str) -> tuple[np.ndarray, Path]:
    npz, npy = _candidates(features_dir, source, vid, part)
    if npz.is_file():
        return _read_array(npz, owner, key="features"), npz
    if npy.is_file():
        return _read_array(npy, owner), npy
    raise FeatureFileError(f"{npz} ({owner}): feature file not found (nor {npy.name})")


def load_feature_type(features_dir: Path, source: FeatureSource, vid: str, owner: str, dtype) -> np.ndarray:
    """(L, source.dim) features of one video, parts concatenated along the feature axis."""
    arrays, paths = zip(*(_load_part(features_dir, source, vid, part, owner) for part in source.parts))
    if len(arrays) == 1:
        return _checked(arrays[0], paths[0], source.dim, owner, dtype)
    if any(a.ndim != 2 for a in arrays) or len({a.shape[0] for a in arrays}) > 1:
        shapes = ", ".join(f"{p.name} {a.shape}" for a, p in zip(arrays, paths))
        raise FeatureFileError(f"{paths[0].parent} ({owner}): the parts must be 2-D with equal row counts: {shapes}")
    joined = paths[0].parent / f"{vid}{{{','.join(source.parts)}}}"
    return _checked(np.concatenate(arrays, axis=1), joined, source.dim, owner, dtype)


def load_text_features(spec: DatasetSpec, features_dir: Path, qid, owner: str, dtype) -> np.ndarray:
    path = text_feature_path(spec, features_dir, qid)
    if not path.is_file():
        raise FeatureFileError(f"{path} ({owner}): text feature file not found")
    return _checked(_read_array(path, owner, key=spec.text_source.key), path, spec.text_source.dim, owner, dtype)
