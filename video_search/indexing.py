"""Index videos into a library: their clip features and their stage-1 embeddings, as one new part per run.

From a built dataset (`index_dataset`): its `videos` config as stored. From a folder of video files
(`index_videos`): the raw-video dataset builder (`lddetr-build-dataset custom --videos-dir`, called as a library:
its decoding workers, torchrun shares, resumption and failure report) extracts the CLIP features of the videos
the library does not have yet into a dataset beside the library, which is then indexed and removed. Either way only
videos whose vid is not in the library yet are added, so running the same command again after adding files
indexes only the new ones.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from tqdm.auto import tqdm

from hub_datasets import load_lddetr_dataset
from hub_datasets.video_inputs import VIDEO_EXTENSIONS
from processing.inference.pipeline import ClipFeatureModels
from processing.video.clip_encoders import DEFAULT_CLIP_MODEL

from .card import render_card
from .embeddings import DistillAlignEmbedder, encoders_fingerprint
from .library import load_model
from .library_folder import LibraryError, LibraryInfo, LibraryShards, PartWriter
from .vector_index import FaissIndex, QdrantIndex

EMBED_CHUNK = 256  # videos embedded and written at a time


def open_or_create(folder: Path, model_name: str, model, processor, dataset_info: dict, clip_models: dict | None):
    """The library's info, or a new one for this model and feature layout; refuses a library of another model or
    of other features."""
    settings = processor.feature_extractor
    fingerprint = encoders_fingerprint(model)
    if (folder / "lddetr_library.json").is_file():
        info = LibraryInfo.load(folder)
        if info.model_sha256 != fingerprint:
            raise LibraryError(f"{folder} was indexed with another model ({info.model}): use it, or a new library")
        if info.video_feature_dims != list(dataset_info["video_feature_dims"]):
            raise LibraryError(
                f"{folder} holds {info.video_feature_dims} clip features, these videos have "
                f"{dataset_info['video_feature_dims']}"
            )
        return info
    if list(dataset_info["video_feature_dims"]) != list(settings.video_feature_dims):
        raise LibraryError(
            f"the model takes {settings.video_feature_dims} clip features, the videos have "
            f"{dataset_info['video_feature_dims']}"
        )
    local = Path(model_name).is_dir()  # recorded absolute, so that a search from another folder finds it
    return LibraryInfo(
        model=str(Path(model_name).resolve()) if local else str(model_name),
        model_sha256=fingerprint,
        embedding="distill-align",
        embedding_dim=model.config.hidden_size,
        clip_length=float(dataset_info["clip_length"]),
        video_feature_names=list(dataset_info["video_feature_names"]),
        video_feature_dims=list(dataset_info["video_feature_dims"]),
        text_feature_dim=int(dataset_info["text_feature_dim"]),
        feature_dtype=str(dataset_info.get("feature_dtype") or "float32"),
        clip_feature_models=clip_models,
    )


def write_part(
    folder: Path,
    info: LibraryInfo,
    embedder: DistillAlignEmbedder,
    rows: Iterable[tuple[str, str | None, float, np.ndarray]],
    total: int,
    source: str,
    progress: bool = True,
) -> int:
    """Embed and write (vid, path, duration, raw clip features) rows as the library's next part; returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(folder, info, len(info.parts))
    pending = []

    def flush():
        embeddings = embedder.videos([row[3] for row in pending], [row[2] for row in pending])
        for (vid, path, duration, features), embedding in zip(pending, embeddings):
            writer.write(vid, path, duration, features, embedding)
        pending.clear()

    for row in tqdm(rows, total=total, desc="embedding videos", unit="video", disable=not progress):
        pending.append(row)
        if len(pending) == EMBED_CHUNK:
            flush()
    if pending:
        flush()
    writer.close()
    info.parts.append({"source": source, "num_videos": writer.count})
    info.save(folder)
    (folder / "README.md").write_text(render_card(info), encoding="utf-8")
    return writer.count


def existing_vids(folder: Path) -> set[str]:
    """The vids already in the library (none for a new one); refuses a folder that holds something else."""
    if (folder / "lddetr_library.json").is_file():
        return set(LibraryShards(folder).vids)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise LibraryError(f"{folder} exists and is not a library: give an empty or new --output-dir")
    return set()


def index_dataset(
    dataset: str, model_name: str, folder: Path, progress: bool = True, device: str = "cpu", only: set | None = None
) -> int:
    """Add the videos of a built dataset (folder or Hub id) that the library does not have (of those in `only`,
    when given); returns how many."""
    known = existing_vids(folder)
    queries, videos, dataset_info = load_lddetr_dataset(dataset)
    model, processor = load_model(model_name, device)
    clip_models = ClipFeatureModels.beside_model(str(dataset)) if Path(dataset).is_dir() else None
    info = open_or_create(folder, model_name, model, processor, dataset_info, _as_dict(clip_models))
    durations = {}
    for split in queries.values():
        for vid, duration in zip(split["vid"], split["duration"]):
            durations[vid] = max(durations.get(vid, 0.0), float(duration))
    new = [index for index, vid in enumerate(videos["vid"]) if vid not in known and (only is None or vid in only)]
    if not new:
        return 0

    def rows():
        for index in new:
            row = videos[index]
            features = row["video_features"]
            duration = durations.get(row["vid"], len(features) * info.clip_length)
            yield row["vid"], None, duration, features

    embedder = DistillAlignEmbedder(model, processor)
    return write_part(folder, info, embedder, rows(), len(new), f"dataset {dataset}", progress)


def video_files(videos_dir: Path) -> dict[str, Path]:
    """vid (the file name without its extension) -> path, for every video file directly in the folder."""
    files = sorted(path for path in videos_dir.iterdir() if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file())
    by_vid = {}
    for path in files:
        if path.stem in by_vid:
            raise LibraryError(f"two videos share the vid {path.stem!r}: {by_vid[path.stem].name} and {path.name}")
        by_vid[path.stem] = path
    return by_vid


def probe_duration(path: Path) -> float:
    """Seconds, from the container (a file PyAV cannot open gets 1 s: the builder then reports why it failed)."""
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.video[0]
            return float(stream.duration * stream.time_base)
    except (av.error.FFmpegError, IndexError, TypeError):
        return 1.0


def index_videos(
    videos_dir: Path,
    model_name: str,
    folder: Path,
    clip_model: str | None = None,
    decode_workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[int, Path | None]:
    """Add the video files of a folder that the library does not have: (how many, the builder's failure report)."""
    from hub_datasets.cli import from_videos_options, parse_args
    from hub_datasets.from_videos import build_from_videos

    if not videos_dir.is_dir():
        raise LibraryError(f"--videos-dir {videos_dir} is not a folder")
    known = existing_vids(folder)
    files = video_files(videos_dir)
    if not files:
        raise LibraryError(f"{videos_dir} holds no video file ({', '.join(VIDEO_EXTENSIONS)})")
    new = {vid: path for vid, path in files.items() if vid not in known}
    if not new:
        return 0, None
    model, processor = load_model(model_name, device)
    beside = ClipFeatureModels.beside_model(model_name)
    image_model = clip_model or (beside.image_model if beside else DEFAULT_CLIP_MODEL)
    text_model = clip_model or (beside.text_model if beside else image_model)
    folder.parent.mkdir(parents=True, exist_ok=True)
    build_dir = folder.parent / f".{folder.name}.videos"  # the builder resumes from its own work folder beside it
    report = folder.parent / f"{folder.name}.failures.jsonl"
    with tempfile.TemporaryDirectory(prefix="lddetr-index-") as scratch:
        annotations = Path(scratch) / "videos.jsonl"
        with annotations.open("w", encoding="utf-8") as file:
            for number, (vid, path) in enumerate(new.items()):
                duration = probe_duration(path)
                # one placeholder query per video: the builder extracts features for the videos its queries use
                row = {"qid": number, "query": "video", "vid": vid, "duration": duration,
                       "relevant_windows": [[0, duration]], "video_path": path.name}
                file.write(json.dumps(row) + "\n")
        argv = ["custom", "--annotations", str(annotations), "--videos-dir", str(videos_dir),
                "--output-dir", str(build_dir), "--overwrite", "--clip-model", image_model,
                "--clip-text-model", text_model, "--clip-length", str(processor.feature_extractor.clip_length),
                "--decode-workers", str(decode_workers), "--device", device, "--report", str(report)]
        if not progress:
            argv.append("--no-progress")
        try:
            build_from_videos(from_videos_options(parse_args(argv)))
        except ValueError as error:  # e.g. no new video could be read
            raise LibraryError(f"{error} (failed videos: {report})") from None
    try:
        _, videos, dataset_info = load_lddetr_dataset(build_dir)
        clip_models = {"image_model": image_model, "text_model": text_model}
        info = open_or_create(folder, model_name, model, processor, dataset_info, clip_models)
        built = videos["vid"]

        def rows():
            for index, vid in enumerate(built):
                features = videos[index]["video_features"]
                yield vid, str(new[vid].resolve()), probe_duration(new[vid]), features

        embedder = DistillAlignEmbedder(model, processor)
        count = write_part(folder, info, embedder, rows(), len(built), f"videos {videos_dir}", progress)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    failed = report if report.is_file() and report.read_text().strip() else None
    return count, failed


def build_vector_index(folder: Path, backend: str, qdrant_location: str, qdrant_collection: str | None) -> None:
    """The approximate or external stage-1 index over every embedding of the library (faiss: rebuilt)."""
    shards = LibraryShards(folder)
    if backend == "faiss":
        FaissIndex.build(shards.embeddings).save(folder)
    elif backend == "qdrant":
        info = LibraryInfo.load(folder)
        collection = qdrant_collection or folder.resolve().name
        QdrantIndex(qdrant_location, collection, info.embedding_dim).sync(shards.embeddings)


def _as_dict(models: ClipFeatureModels | None) -> dict | None:
    return None if models is None else {"image_model": models.image_model, "text_model": models.text_model}
