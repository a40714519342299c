"""The inputs of a build from raw videos: the annotations of one's own videos (`custom`), and which file is each
annotated video: a row's `video_path` field (relative to the videos folder) or `{vid}{ext}` for the extensions of
VIDEO_EXTENSIONS."""

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .annotations import AnnotationError, QueryRow
from .specs import SPECS, DatasetSpec

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclass(frozen=True)
class VideoJob:
    vid: str
    path: str | None  # None: no file found


@dataclass
class Failure:
    vid: str
    path: str | None
    reason: str


def custom_spec(annotation_files: dict[str, Path]) -> DatasetSpec:
    """QVHighlights-format annotations of one's own videos: QVHighlights labels and metrics (the clip length and
    clip limit are the build's, not the registry's: see `from_videos.merge`)."""
    first = _first_record(annotation_files["train"])
    qid_type = int if isinstance(first.get("qid"), int) and not isinstance(first.get("qid"), bool) else str
    return replace(
        SPECS["qvhighlights"],
        split_files={split: str(path.absolute()) for split, path in annotation_files.items()},
        qid_type=qid_type,
        audio_source=None,
    )


def _first_record(path: Path) -> dict:
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise AnnotationError(f"{path} line 1: not valid JSON ({error})") from None
                return record if isinstance(record, dict) else {}
    raise AnnotationError(f"{path}: no annotation rows")


def video_path_fields(spec: DatasetSpec, annotations_dir: Path) -> dict[str, str]:
    """vid -> the `video_path` field of its annotation rows, where they have one."""
    paths = {}
    for name in spec.split_files.values():
        path = annotations_dir / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as file:
            for line in file:
                record = json.loads(line) if line.strip() else None
                if isinstance(record, dict) and isinstance(record.get("video_path"), str):
                    paths.setdefault(record.get("vid"), record["video_path"])
    return paths


def find_video(videos_dir: Path, vid: str, video_path: str | None) -> str | None:
    if video_path is not None:
        path = videos_dir / video_path
        return str(path) if path.is_file() else None
    for extension in VIDEO_EXTENSIONS:
        path = videos_dir / f"{vid}{extension}"
        if path.is_file():
            return str(path)
    return None


def video_jobs(rows: list[QueryRow], videos_dir: Path, video_paths: dict[str, str]) -> list[VideoJob]:
    """One job per video, in the order of the first query that uses it."""
    vids = dict.fromkeys(row.vid for row in rows)
    return [VideoJob(vid, find_video(videos_dir, vid, video_paths.get(vid))) for vid in vids]
