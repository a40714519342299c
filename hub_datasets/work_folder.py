"""The work folder of a build from raw videos (`.NAME.work` beside the output): the features of finished videos in
work shards, so that a killed build run again with the same arguments skips them. It records the feature settings;
a build with other settings refuses it rather than mixing features."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from processing.video.clip_encoders import ClipTextEncoder
from processing.video.feature_cache import save_npz_atomically
from processing.video.featurizer import VideoFeaturizer

SETTINGS_FILE = "build_settings.json"


class BuildSettingsError(ValueError):
    pass


def build_settings(featurizer: VideoFeaturizer, text_encoder: ClipTextEncoder, feature_dtype: str,
                   max_video_clips: int | None) -> dict:
    """What the stored features depend on: a work folder is resumed only under the same settings."""
    return {
        "video_featurizer": featurizer.identity,
        "text_encoder": text_encoder.identity,
        "feature_dtype": feature_dtype,
        "max_video_clips": max_video_clips,
    }


class WorkFolder:
    """Work shards: `videos/*.npz`, each the vids of a few videos and one (L, D) feature array per video."""

    def __init__(self, path: Path):
        self.path = path
        self.videos = path / "videos"

    @classmethod
    def beside(cls, output_dir: Path) -> WorkFolder:
        return cls(output_dir.parent / f".{output_dir.name}.work")

    def prepare(self, settings: dict) -> None:
        """Create the folder, or check that an existing one was made with the same settings."""
        self.videos.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        recorded = self.path / SETTINGS_FILE
        if recorded.is_file():
            previous = json.loads(recorded.read_text(encoding="utf-8"))
            if previous != settings:
                keys = settings.keys() | previous.keys()
                changed = sorted(key for key in keys if settings.get(key) != previous.get(key))
                raise BuildSettingsError(
                    f"{self.path} holds the work of a build with other settings ({', '.join(changed)} differ): "
                    "run with the same arguments to resume it, or delete it to start again"
                )
        else:
            recorded.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for leftover in self.videos.glob(".*.tmp"):  # a shard being written when a run was killed
            leftover.unlink(missing_ok=True)

    def shard_paths(self) -> list[Path]:
        return sorted(self.videos.glob("*.npz"))

    def index(self) -> Iterator[tuple[Path, str, int]]:
        """(shard, vid, index in the shard) of every stored video, each vid once."""
        seen = set()
        for path in self.shard_paths():
            with np.load(path, allow_pickle=False) as shard:
                for index, vid in enumerate(str(vid) for vid in shard["vids"]):
                    if vid not in seen:
                        seen.add(vid)
                        yield path, vid, index

    def write_shard(self, name: str, vids: list[str], features: list[np.ndarray]) -> Path:
        arrays = {f"video_{i}": array for i, array in enumerate(features)}
        return save_npz_atomically(self.videos / f"{name}.npz", {"vids": np.array(vids), **arrays})
