"""Test set-up: no network, and every Hugging Face cache in a throw-away folder.

The environment variables must be set before anything from Hugging Face is imported,
because huggingface_hub reads its offline flag once, at import time.
"""

import atexit
import os
import shutil
import tempfile

_cache = tempfile.mkdtemp(prefix="lddetr-test-hf-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(_cache, "home"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_cache, "datasets"))
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_cache, "modules"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the web demo: no analytics or version checks (no network), uploads in the throw-away folder
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(_cache, "gradio"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE_DIR = SHARED / "fixtures" / "official_ldetr_qvh"
DATA_DIR = SHARED / "data"


TRAJECTORY_DIR = SHARED / "fixtures" / "official_train_trajectory"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        # locally the reference data is optional; a CI run that lost it must not pass by skipping
        message = f"../shared (the reference fixtures and data, expected at {SHARED}) is not beside the checkout"
        if _in_ci():
            pytest.fail(f"{message}; CI=true needs it", pytrace=False)
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def official_fixture_dir(shared_dir) -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def official_trajectory_dir(shared_dir) -> Path:
    return TRAJECTORY_DIR


@pytest.fixture(scope="session")
def shared_data_dir(shared_dir) -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny CLIP folder (helpers.save_tiny_clip), shared by the video tests."""
    from helpers import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def decodes(monkeypatch) -> list:
    """The paths of the videos decoded into clips while the test runs (the clip reader is counted, not replaced)."""
    from processing.video import featurizer

    opened = []
    reader = featurizer.VideoClipReader

    def counting_reader(path, *args, **kwargs):
        opened.append(path)
        return reader(path, *args, **kwargs)

    monkeypatch.setattr(featurizer, "VideoClipReader", counting_reader)
    return opened
