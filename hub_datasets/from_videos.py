"""`lddetr-build-dataset ... --videos-dir`: raw videos + annotations -> a Hub dataset folder with CLIP features.

    lddetr-build-dataset custom --annotations train.jsonl [--validation-annotations val.jsonl]
        [--test-annotations test.jsonl] --videos-dir videos/ --output-dir my-dataset [--clip-model M] [--clip-length 2]
    lddetr-build-dataset qvhighlights --annotations-dir data/ --videos-dir videos/ --output-dir qvhighlights-clip
    torchrun --nproc_per_node 8 --no-python lddetr-build-dataset ...   # or accelerate launch -m hub_datasets.build

Annotations are QVHighlights jsonl rows (`qid`, `query`, `vid`, `duration`, `relevant_windows`, optional
`relevant_clip_ids` and `saliency_scores`); a row's video is its `video_path` field (relative to --videos-dir) or
`{vid}{ext}` in --videos-dir for the extensions of VIDEO_EXTENSIONS.

Features: per video, clips and CLIP image features by `VideoFeaturizer` (the code the `video-moment-retrieval`
pipeline runs, so a model trained on the dataset sees at inference the features it was trained on); per query, CLIP
text token features by `ClipTextEncoder`. The folder has today's layout (parquet shards, card, lddetr_dataset.json)
plus `clip_feature_models.json`, which lddetr-train copies beside the model so that the pipeline picks the same CLIP.

Scale and resumption. Videos are decoded in `--decode-workers` processes while the encoder runs; the clips of
several videos share encoder batches. Under torchrun or `accelerate launch` (WORLD_SIZE > 1) each process takes a
contiguous share of the videos not yet done, on its own GPU, and writes its own work shards; process 0 then merges
them into the final folder in annotation order (the same folder whatever the number of processes) and writes the
card. Work shards (`.npz`, a few videos each) are written to a temporary file and renamed, into a work folder beside
the output (`.NAME.work`); a killed build run again with the same arguments skips the videos already in a work
shard. The work folder records the feature settings; a build with other settings refuses it rather than mixing
features. A video that cannot be used (missing, corrupt, shorter than half a clip) is recorded in the report
(`--report`, default `NAME.failures.jsonl` beside the output: one JSON object per line with `vid`, `path`,
`reason`, `queries`) and skipped with its queries; the others go on.

Exit status: 0 when the folder is written, failed videos included (they are listed on stderr and in the report);
1 with a one-line error when nothing could be built (bad arguments or annotations, no usable video, a work folder of
other settings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from processing.inference.pipeline import ClipFeatureModels
from processing.video.clip_encoders import DEFAULT_CLIP_MODEL, ClipTextEncoder, resolve_device
from processing.video.feature_cache import save_npz_atomically
from processing.video.featurizer import DecodedVideo, VideoFeaturizer, decode_video

from .annotations import AnnotationError, QueryRow, read_annotations
from .build import (
    BuildReport,
    _check_output,
    _hidden_sibling,
    _publish,
    dataset_info,
    query_features,
    query_row,
    video_features,
)
from .card import card_context, hub_metadata, render_card
from .hub import INFO_FILE
from .parquet_shards import ShardedParquetWriter
from .specs import CLIP, SPECS, DatasetSpec

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".flv")
CARD_FOLDER = "video-clip-features"
SETTINGS_FILE = "build_settings.json"
# test hook: SIGKILL this process after it has written this many work shards (as a crash or a pre-empted job would)
KILL_AFTER_SHARDS_ENV = "LDDETR_BUILD_KILL_AFTER_SHARDS"
TEXT_CHUNK = 1024  # queries encoded per call, to bound memory


class BuildSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class VideoJob:
    vid: str
    path: str | None  # None: no file found


@dataclass
class Failure:
    vid: str
    path: str | None
    reason: str


# ------------------------------------------------------------------------------------------------ inputs


def custom_spec(annotation_files: dict[str, Path]) -> DatasetSpec:
    """QVHighlights-format annotations of one's own videos: QVHighlights labels and metrics (the clip length and
    clip limit are the build's, not the registry's: see `merge`)."""
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


# ------------------------------------------------------------------------------------------------ decoding workers


class DecodingDataset(Dataset):
    """Decodes one video per item in a DataLoader worker: (job, DecodedVideo) or (job, the reason it failed)."""

    def __init__(self, jobs: list[VideoJob], clip_length: float, frames_per_clip: list[int]):
        self.jobs, self.clip_length, self.frames_per_clip = jobs, clip_length, frames_per_clip

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[VideoJob, DecodedVideo | str]:
        job = self.jobs[index]
        if job.path is None:
            return job, f"no video file for vid {job.vid!r} (looked for {job.vid}{{{','.join(VIDEO_EXTENSIONS)}}})"
        try:
            return job, decode_video(job.path, self.clip_length, self.frames_per_clip)
        except (OSError, ValueError) as error:  # the reader names the file and the problem
            return job, str(error)


def _unbatched(items):
    return items[0]


def decoded_videos(jobs: list[VideoJob], featurizer: VideoFeaturizer, workers: int) -> Iterator[tuple[VideoJob, DecodedVideo | str]]:
    dataset = DecodingDataset(jobs, featurizer.clip_length, [encoder.frames_per_clip for encoder in featurizer.encoders])
    loader = DataLoader(dataset, batch_size=1, collate_fn=_unbatched, num_workers=workers,
                        prefetch_factor=2 if workers else None)
    yield from loader


# ------------------------------------------------------------------------------------------------ work folder


class WorkFolder:
    """Work shards: `videos/*.npz`, each the vids of a few videos and one (L, D) feature array per video."""

    def __init__(self, path: Path):
        self.path = path
        self.videos = path / "videos"

    def prepare(self, settings: dict) -> None:
        """Create the folder, or check that an existing one was made with the same settings."""
        self.videos.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        recorded = self.path / SETTINGS_FILE
        if recorded.is_file():
            previous = json.loads(recorded.read_text(encoding="utf-8"))
            if previous != settings:
                changed = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
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


# ------------------------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> Processes:
        """torchrun and accelerate launch set these; a plain run is process 0 of 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        processes = cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if world_size > 1 and not torch.distributed.is_initialized():
            # gloo whatever the device: only small Python objects travel; a long timeout, since process 0 waits
            # for the slowest share
            torch.distributed.init_process_group("gloo", timeout=timedelta(days=7))
        return processes

    def device(self, requested: str) -> torch.device:
        if requested == "auto" and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return resolve_device(requested)

    def share(self, items: list) -> list:
        """A contiguous share, so that process order is annotation order."""
        count = len(items)
        return items[self.rank * count // self.world_size : (self.rank + 1) * count // self.world_size]

    def broadcast(self, value):
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """Every process's value on process 0 (None elsewhere)."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size if self.rank == 0 else None
        torch.distributed.gather_object(value, gathered, dst=0)
        return gathered

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------ the build


def extract_share(jobs: list[VideoJob], featurizer: VideoFeaturizer, work: WorkFolder, processes: Processes, *,
                  decode_workers: int, videos_per_shard: int, feature_dtype: str, max_video_clips: int | None,
                  progress: bool) -> list[Failure]:
    """Features of this process's videos into work shards; returns the videos that failed."""
    failures: list[Failure] = []
    pending: list[tuple[VideoJob, DecodedVideo]] = []
    shard: dict[str, list] = {"vids": [], "features": []}
    shards_written = 0
    kill_after = int(os.environ.get(KILL_AFTER_SHARDS_ENV, "0"))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def encode_pending() -> None:
        for (job, _), features in zip(pending, featurizer.encode([video for _, video in pending])):
            matrix = features.concatenated()[:max_video_clips] if max_video_clips else features.concatenated()
            shard["vids"].append(job.vid)
            shard["features"].append(matrix.astype(feature_dtype))
        pending.clear()

    def write_shard() -> None:
        nonlocal shards_written
        name = f"rank{processes.rank:03d}-{stamp}-{shards_written:06d}"
        work.write_shard(name, shard["vids"], shard["features"])
        for values in shard.values():
            values.clear()
        shards_written += 1
        if kill_after and shards_written >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    bar = tqdm(total=len(jobs), unit="video", desc=f"videos (process {processes.rank + 1}/{processes.world_size})",
               disable=not progress or processes.rank != 0, dynamic_ncols=True)
    for job, decoded in decoded_videos(jobs, featurizer, decode_workers):
        if isinstance(decoded, str):
            failures.append(Failure(job.vid, job.path, decoded))
        else:
            pending.append((job, decoded))
            # the encoders run once enough clips are in for a full step (or the share ends)
            if sum(len(video.clips) for _, video in pending) >= featurizer.clips_per_step:
                encode_pending()
        if len(shard["vids"]) >= videos_per_shard:  # a shard may hold a few more: one encoding step's videos
            write_shard()
        bar.update(1)
    encode_pending()
    if shard["vids"]:
        write_shard()
    bar.close()
    return failures


def build_settings(featurizer: VideoFeaturizer, text_encoder: ClipTextEncoder, feature_dtype: str,
                   max_video_clips: int | None) -> dict:
    """What the stored features depend on: a work folder is resumed only under the same settings."""
    return {
        "video_featurizer": featurizer.identity,
        "text_encoder": text_encoder.identity,
        "feature_dtype": feature_dtype,
        "max_video_clips": max_video_clips,
    }


def build_command(args: argparse.Namespace) -> str:
    """The command line that rebuilds the folder, with placeholder paths (the card must not carry local paths)."""
    if args.name == "custom":
        parts = ["lddetr-build-dataset custom --annotations TRAIN.jsonl"]
        parts += ["--validation-annotations VAL.jsonl"] if args.validation_annotations else []
        parts += ["--test-annotations TEST.jsonl"] if args.test_annotations else []
        parts.append(f"--clip-length {args.clip_length:g}")
    else:
        parts = [f"lddetr-build-dataset {args.name} --annotations-dir ANNOTATIONS"]
    parts.append("--videos-dir VIDEOS --output-dir OUTPUT")
    parts.append(f"--clip-model {args.clip_model if not os.path.isdir(args.clip_model) else 'CLIP_MODEL_FOLDER'}")
    parts.append(f"--feature-dtype {args.feature_dtype}")
    if args.max_video_clips:
        parts.append(f"--max-video-clips {args.max_video_clips}")
    return " ".join(parts)


def merge(spec: DatasetSpec, by_split: dict[str, list[QueryRow]], jobs: list[VideoJob], failures: list[Failure],
          work: WorkFolder, text_encoder: ClipTextEncoder, clip_models: ClipFeatureModels, clip_length: float,
          args: argparse.Namespace, output_dir: Path, report_path: Path, progress: bool) -> tuple[dict, int]:
    """Process 0: the final folder from the work shards (videos in annotation order), text features, card."""
    failed = {failure.vid for failure in failures}
    order = {job.vid: index for index, job in enumerate(jobs)}
    kept_rows = {split: [row for row in rows if row.vid not in failed] for split, rows in by_split.items()}
    write_report(report_path, failures, by_split)
    if not any(kept_rows.values()):
        raise ValueError(f"no usable video: all {len(jobs)} failed (see {report_path})")
    kept_rows = {split: rows for split, rows in kept_rows.items() if rows}

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(output_dir, "partial")
    try:
        # the work shards hold each video once; sorting their (vid, row) pairs by annotation order makes the folder
        # independent of how the videos were shared among processes
        located = sorted(((order[vid], path, index) for path, vid, index in work.index() if vid in order),
                         key=lambda item: item[0])
        videos = ShardedParquetWriter(staging / "data" / "videos", "train", video_features(spec, args.feature_dtype, False),
                                      args.max_shard_mb * 2**20)
        longest, open_path, shard = 0, None, None
        for _, path, index in tqdm(located, desc="merging videos", unit="video", disable=not progress):
            if path != open_path:  # one process's shards come in order: each is opened once
                if shard is not None:
                    shard.close()
                open_path, shard = path, np.load(path, allow_pickle=False)
            matrix = shard[f"video_{index}"]
            longest = max(longest, matrix.shape[0])
            videos.write({"vid": str(shard["vids"][index]), "video_features": matrix})
        if shard is not None:
            shard.close()
        videos.close()

        features = query_features(spec, args.feature_dtype)
        for split, rows in kept_rows.items():
            writer = ShardedParquetWriter(staging / "data" / "queries", split, features, args.max_shard_mb * 2**20)
            for start in tqdm(range(0, len(rows), TEXT_CHUNK), desc=f"{split} queries", unit="chunk", disable=not progress):
                chunk = rows[start : start + TEXT_CHUNK]
                for row, text in zip(chunk, text_encoder([row.query for row in chunk])):
                    writer.write(query_row(spec, row, text.astype(args.feature_dtype)))
            writer.close()

        info = dataset_info(spec, kept_rows, args.feature_dtype, False, args.max_video_clips, longest)
        if args.name == "custom":  # one's own videos: no official clip length or clip limit applies
            info.update(clip_length=clip_length, max_video_clips=args.max_video_clips or longest)
        info["video_source"] = "raw videos, CLIP features extracted by lddetr"
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        clip_models.save(staging)
        metadata = hub_metadata(features, video_features(spec, args.feature_dtype, False), list(kept_rows),
                                sum(map(len, kept_rows.values())))
        context = card_context(spec, info, len(located), build_command(args))
        context.update(
            source_dataset=args.name,
            clip_model=args.clip_model if not os.path.isdir(args.clip_model) else "a local CLIP folder",
            clip_backend=args.clip_backend,
            num_failed=len(failures),
        )
        card = render_card(Path(__file__).parent / CARD_FOLDER / "README.md", metadata, context)
        (staging / "README.md").write_text(card, encoding="utf-8")
        _publish(staging, output_dir, args.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info, len(located)


def write_report(path: Path, failures: list[Failure], by_split: dict[str, list[QueryRow]]) -> None:
    """One JSON object per failed video, with the qids skipped with it; written atomically."""
    queries: dict[str, list] = {}
    for rows in by_split.values():
        for row in rows:
            queries.setdefault(row.vid, []).append(row.qid)
    lines = [json.dumps({"vid": f.vid, "path": f.path, "reason": f.reason, "queries": queries.get(f.vid, [])}) for f in failures]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(temporary, path)


def build_from_videos(args: argparse.Namespace) -> BuildReport:
    started = time.perf_counter()
    # loading one CLIP tower from a full CLIP checkpoint reports the other tower's weights as unused: expected noise
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    processes = Processes.from_environment()
    try:
        return _build(args, processes, started)
    finally:
        processes.close()


def _read_inputs(args: argparse.Namespace) -> tuple[DatasetSpec, dict[str, list[QueryRow]], Path]:
    if args.name == "custom":
        if args.annotations is None:
            raise ValueError("custom needs --annotations TRAIN.jsonl (and optionally --validation-annotations, --test-annotations)")
        files = {"train": args.annotations}
        files.update({split: path for split, path in (("validation", args.validation_annotations), ("test", args.test_annotations)) if path})
        spec = custom_spec(files)
        annotations_dir = Path(".")
    else:
        if args.annotations_dir is None:
            raise ValueError(f"{args.name} needs --annotations-dir (the folder of the official annotation files)")
        spec = SPECS[args.name]
        if "clip" not in [source.name for source in spec.video_sources]:
            raise ValueError(f"{args.name} has no CLIP video features to extract; build it from its feature files (--features-dir)")
        spec = replace(spec.with_video_features(["clip"]), audio_source=None)
        annotations_dir = args.annotations_dir
    by_split = read_annotations(spec, annotations_dir, args.splits)
    return spec, by_split, annotations_dir


def _build(args: argparse.Namespace, processes: Processes, started: float) -> BuildReport:
    output_dir = args.output_dir.absolute()
    _check_output(output_dir, args.overwrite)
    if not args.videos_dir.is_dir():
        raise ValueError(f"--videos-dir {args.videos_dir} is not a folder")
    spec, by_split, annotations_dir = _read_inputs(args)
    rows = [row for split_rows in by_split.values() for row in split_rows]
    jobs = video_jobs(rows, args.videos_dir, video_path_fields(spec, annotations_dir))

    device = processes.device(args.device)
    clip_length = args.clip_length if args.name == "custom" else spec.clip_length
    featurizer = VideoFeaturizer.from_clip(args.clip_model, backend=args.clip_backend, clip_length=clip_length,
                                           batch_size=args.batch_size, device=device, fp16=args.fp16, use_cache=False)
    text_model = args.clip_text_model or args.clip_model
    text_encoder = ClipTextEncoder(text_model, device=device, fp16=args.fp16) if processes.rank == 0 else None
    text_dim = text_encoder.feature_dim if text_encoder is not None else None
    spec = replace(spec, video_sources=(CLIP,)).with_dims(featurizer.feature_dims, text_dim)

    work = WorkFolder(output_dir.parent / f".{output_dir.name}.work")
    if processes.rank == 0:
        done = set()
        try:
            work.prepare(build_settings(featurizer, text_encoder, args.feature_dtype, args.max_video_clips))
            done = {vid for _, vid, _ in work.index()}
            todo, problem = [job for job in jobs if job.vid not in done], None
        except BuildSettingsError as error:
            todo, problem = None, str(error)
        if done and not problem:
            print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} videos already in {work.path.name}", file=sys.stderr)
    todo, problem = processes.broadcast((todo, problem) if processes.rank == 0 else None)
    if problem:
        raise BuildSettingsError(problem)

    failures = extract_share(processes.share(todo), featurizer, work, processes, decode_workers=args.decode_workers,
                             videos_per_shard=args.videos_per_shard, feature_dtype=args.feature_dtype,
                             max_video_clips=args.max_video_clips, progress=not args.no_progress)
    gathered = processes.gather(failures)
    if processes.rank != 0:
        return BuildReport(output_dir, {}, 0, 0, time.perf_counter() - started)

    position = {job.vid: index for index, job in enumerate(jobs)}
    failures = sorted((f for share in gathered for f in share), key=lambda failure: position[failure.vid])
    report_path = args.report or output_dir.parent / f"{output_dir.name}.failures.jsonl"
    clip_models = ClipFeatureModels(image_model=args.clip_model, text_model=text_model,
                                    image_backend=args.clip_backend, frames_per_clip=1)
    info, num_videos = merge(spec, by_split, jobs, failures, work, text_encoder, clip_models, featurizer.clip_length,
                             args, output_dir, report_path, not args.no_progress)
    shutil.rmtree(work.path, ignore_errors=True)
    for failure in failures:
        print(f"skipped video {failure.vid!r}: {failure.reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(jobs)} videos failed; listed in {report_path}", file=sys.stderr)
    num_bytes = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
    return BuildReport(output_dir, info, num_videos, num_bytes, time.perf_counter() - started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("from raw videos (--videos-dir)")
    group.add_argument("--videos-dir", type=Path, help="folder of video files: extract CLIP features from the videos")
    group.add_argument("--annotations", type=Path, help="custom: the train annotations (QVHighlights jsonl)")
    group.add_argument("--validation-annotations", type=Path, help="custom: validation annotations")
    group.add_argument("--test-annotations", type=Path, help="custom: test annotations (labels optional)")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP model, Hub id or folder (default: %(default)s)")
    group.add_argument("--clip-backend", choices=("transformers", "timm"), default="transformers",
                       help="image tower implementation (the text tower is always transformers')")
    group.add_argument("--clip-text-model", help="another CLIP model for the text features (default: --clip-model)")
    group.add_argument("--clip-length", type=float, default=2.0, help="custom: seconds per clip (default: %(default)s)")
    group.add_argument("--device", default="auto", help="auto (this process's GPU when there is one), cpu, cuda:1, ...")
    group.add_argument("--fp16", action="store_true", help="half-precision CLIP (CUDA)")
    group.add_argument("--batch-size", type=int, default=64, help="frames per CLIP forward (default: %(default)s)")
    group.add_argument("--decode-workers", type=int, default=2, help="video decoding processes per process (0: decode inline)")
    group.add_argument("--videos-per-shard", type=int, default=32, help="videos per work shard: the unit of resumption")
    group.add_argument("--report", type=Path, help="failed videos, JSON lines (default: OUTPUT.failures.jsonl beside the output)")
