"""`$LDDETR_CACHE`: the one folder where lddetr keeps what it can rebuild (default `~/.cache/lddetr`).

Inside it, `features/` holds the video features of the inference pipeline (`video/feature_cache.py`) and
`qvhighlights-demo-v1/` the embedded demo dataset, built on first use (`hub_datasets/demo.py`).
"""

import os
from pathlib import Path

CACHE_ENV_VAR = "LDDETR_CACHE"


def default_cache_dir() -> Path:
    """$LDDETR_CACHE, else ~/.cache/lddetr."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "lddetr")
