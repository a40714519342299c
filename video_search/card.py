"""The library's dataset card (README.md): Hub metadata whose `configs` point `load_dataset` at the shards."""

from __future__ import annotations

import yaml

from .library_folder import DATA_GLOB, LibraryInfo


def render_card(info: LibraryInfo) -> str:
    front = {
        "configs": [{"config_name": "videos", "data_files": [{"split": "train", "path": DATA_GLOB}], "default": True}],
        "tags": ["lddetr", "video-search", "video-moment-retrieval"],
        "library_name": "lddetr",
    }
    features = ", ".join(f"{name} ({dim})" for name, dim in zip(info.video_feature_names, info.video_feature_dims))
    sources = "\n".join(f"- `{part['source']}`: {part['num_videos']} videos" for part in info.parts)
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# LD-DETR video library

{info.num_videos} videos indexed for search with the LD-DETR model `{info.model}`: per video its clip features
({features}; {info.clip_length} s clips, {info.feature_dtype}) and its stage-1 embedding (`{info.embedding}`,
{info.embedding_dim} dims, unit length).

```python
from video_search import VideoLibrary

library = VideoLibrary("this-folder")
library.search("a dog jumps into a pool", top_k=10)
```

or `lddetr-search this-folder "a dog jumps into a pool" --top-k 10`. `datasets.load_dataset("this-folder")` reads
the rows (`vid`, `path`, `duration`, `num_clips`, `video_features`, `embedding`).

## Parts

{sources}
"""
