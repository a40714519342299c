"""The embedded demo dataset: real QVHighlights annotations (a small subset, committed in `qvhighlights-demo/`)
with synthetic features, built on first use into a cache folder.

`demo_dataset_path()` writes the synthetic features in the official layout to a temporary folder and runs the
real builder on them, into `$LDDETR_CACHE/qvhighlights-demo-v1` (default `~/.cache/lddetr/...`, see
`processing/cache_dir.py`). A complete folder is reused; the builder publishes atomically, so a folder that exists
is complete. Several processes (DDP ranks) may call it at once: one publishes, the others find the finished folder.
"""

import tempfile
from dataclasses import replace
from pathlib import Path

from processing.cache_dir import default_cache_dir

from .build import build_dataset
from .dataset_folder import OutputExistsError
from .hub import INFO_FILE
from .specs import SPECS, DatasetSpec
from .synthetic_features import write_synthetic_features

# bump when the annotations subset or the synthetic features change, so that stale caches are not reused
DEMO_NAME = "qvhighlights-demo-v1"
ANNOTATIONS_DIR = Path(__file__).resolve().parent / "qvhighlights-demo"
VIDEO_FEATURE_DIMS = [128, 128]  # "slowfast", "clip": small, so that the demo trains on 2 CPU cores in minutes
TEXT_FEATURE_DIM = 128  # = the "clip" dim: text and clip features share one space, as with real CLIP


def demo_spec() -> DatasetSpec:
    spec = SPECS["qvhighlights"].with_dims(VIDEO_FEATURE_DIMS, TEXT_FEATURE_DIM)
    return replace(spec, card_folder="qvhighlights-demo")


def demo_dataset_path(cache_dir: str | Path | None = None) -> Path:
    """The demo dataset folder (built on first call); load it with `load_lddetr_dataset`."""
    path = Path(cache_dir or default_cache_dir()) / DEMO_NAME
    if (path / INFO_FILE).is_file():
        return path
    spec = demo_spec()
    with tempfile.TemporaryDirectory(prefix="lddetr-demo-features-") as features_dir:
        write_synthetic_features(spec, ANNOTATIONS_DIR, Path(features_dir))
        try:
            build_dataset(spec, ANNOTATIONS_DIR, features_dir, path, progress=False)
        except OutputExistsError:
            if not (path / INFO_FILE).is_file():  # not another process's finished build
                raise
    return path
