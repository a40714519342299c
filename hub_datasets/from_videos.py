"""`lddetr-build-dataset ... --videos-dir`: raw videos + annotations -> a Hub dataset folder with CLIP features.

    lddetr-build-dataset custom --annotations train.jsonl [--validation-annotations val.jsonl]
        [--test-annotations test.jsonl] --videos-dir videos/ --output-dir my-dataset [--clip-model M] [--clip-length 2]
    lddetr-build-dataset qvhighlights --annotations-dir data/ --videos-dir videos/ --output-dir qvhighlights-clip
    torchrun --nproc_per_node 8 --no-python lddetr-build-dataset ...   # or accelerate launch -m hub_datasets.cli

Annotations are QVHighlights jsonl rows (`qid`, `query`, `vid`, `duration`, `relevant_windows`, optional
`relevant_clip_ids` and `saliency_scores`); a row's video is its `video_path` field (relative to --videos-dir) or
`{vid}{ext}` in --videos-dir for the extensions of VIDEO_EXTENSIONS.

Features: per video, clips and CLIP image features by `VideoFeaturizer` (the code the `video-moment-retrieval`
pipeline runs, so a model trained on the dataset sees at inference the features it was trained on); per query, CLIP
text token features by `ClipTextEncoder`. The folder has today's layout (parquet shards, card, lddetr_dataset.json)
plus `clip_feature_models.json`, which lddetr-train copies beside the model so that the pipeline picks the same CLIP.

In Python: `build_from_videos(FromVideosOptions(name="custom", annotations=..., videos_dir=..., output_dir=...))`.
The parts: `video_inputs.py` (annotations -> video files), `video_workers.py` (one process's share: decoding,
encoding, work shards), `work_folder.py` (resumption), `processes.py` (torchrun), `dataset_folder.py` (the folder
both builders write); this file runs them and merges the work shards into the folder.

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

import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from processing.inference.pipeline import ClipFeatureModels
from processing.video.clip_encoders import DEFAULT_CLIP_MODEL, ClipTextEncoder
from processing.video.featurizer import VideoFeaturizer

from .annotations import QueryRow, read_annotations
from .card import build_command
from .dataset_folder import BuildReport, DatasetFolderWriter, check_output, dataset_info, query_row
from .parquet_shards import MAX_SHARD_BYTES
from .processes import Processes
from .specs import CLIP, SPECS, DatasetSpec
from .video_inputs import Failure, VideoJob, custom_spec, video_jobs, video_path_fields
from .video_workers import extract_share
from .work_folder import BuildSettingsError, WorkFolder, build_settings

CARD_FOLDER = "video-clip-features"
TEXT_CHUNK = 1024  # queries encoded per call, to bound memory


@dataclass(frozen=True)
class FromVideosOptions:
    """A build from raw videos; the fields are the flags of `lddetr-build-dataset ... --videos-dir`."""

    name: str  # a dataset type with CLIP features (its official annotations), or "custom"
    videos_dir: Path
    output_dir: Path
    annotations_dir: Path | None = None  # the official annotation files (not custom)
    annotations: Path | None = None  # custom: train annotations (QVHighlights jsonl)
    validation_annotations: Path | None = None
    test_annotations: Path | None = None
    splits: list[str] | None = None
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_backend: str = "transformers"
    clip_text_model: str | None = None  # default: clip_model
    clip_length: float = 2.0  # custom only: the official datasets have theirs
    device: str = "auto"
    fp16: bool = False  # the same as dtype float16
    dtype: str = "float32"  # what CLIP computes in (processing.video.precision)
    batch_size: int = 64
    decode_workers: int = 2
    videos_per_shard: int = 32
    report: Path | None = None  # default: OUTPUT.failures.jsonl beside the output
    feature_dtype: str = "float32"
    max_video_clips: int | None = None
    overwrite: bool = False
    max_shard_bytes: int = MAX_SHARD_BYTES
    progress: bool = True


def clip_dtype(options: FromVideosOptions) -> str:
    return "float16" if options.fp16 else options.dtype


def rebuild_command(options: FromVideosOptions) -> str:
    """The command line of the build, for its card."""
    if options.name == "custom":
        sources = ["--annotations TRAIN.jsonl"]
        sources += ["--validation-annotations VAL.jsonl"] if options.validation_annotations else []
        sources += ["--test-annotations TEST.jsonl"] if options.test_annotations else []
        settings = [f"--clip-length {options.clip_length:g}"]
    else:
        sources, settings = ["--annotations-dir ANNOTATIONS"], []
    clip_model = "CLIP_MODEL_FOLDER" if os.path.isdir(options.clip_model) else options.clip_model  # no local paths
    settings.append(f"--clip-model {clip_model}")
    if clip_dtype(options) != "float32":
        settings.append(f"--dtype {clip_dtype(options)}")
    return build_command(options.name, sources + ["--videos-dir VIDEOS"], feature_dtype=options.feature_dtype,
                         options=settings, splits=options.splits, max_video_clips=options.max_video_clips)


def merge(spec: DatasetSpec, by_split: dict[str, list[QueryRow]], jobs: list[VideoJob], failures: list[Failure],
          work: WorkFolder, text_encoder: ClipTextEncoder, clip_models: ClipFeatureModels, clip_length: float,
          options: FromVideosOptions, output_dir: Path, report_path: Path, computation_dtype: str) -> tuple[dict, int]:
    """Process 0: the final folder from the work shards (videos in annotation order), text features, card."""
    failed = {failure.vid for failure in failures}
    order = {job.vid: index for index, job in enumerate(jobs)}
    kept_rows = {split: [row for row in rows if row.vid not in failed] for split, rows in by_split.items()}
    write_report(report_path, failures, by_split)
    if not any(kept_rows.values()):
        raise ValueError(f"no usable video: all {len(jobs)} failed (see {report_path})")
    kept_rows = {split: rows for split, rows in kept_rows.items() if rows}
    dtype = options.feature_dtype

    # the work shards hold each video once; sorting their (vid, row) pairs by annotation order makes the folder
    # independent of how the videos were shared among processes
    located = sorted(((order[vid], path, index) for path, vid, index in work.index() if vid in order),
                     key=lambda item: item[0])
    with DatasetFolderWriter(output_dir, spec, dtype, overwrite=options.overwrite,
                             max_shard_bytes=options.max_shard_bytes) as folder:
        longest = folder.write_videos(_stored_videos(tqdm(located, desc="merging videos", unit="video",
                                                          disable=not options.progress)))
        for split, rows in kept_rows.items():
            folder.write_queries(split, _encoded_queries(spec, rows, text_encoder, dtype, split, options.progress))

        info = dataset_info(spec, kept_rows, dtype, False, options.max_video_clips, longest)
        if options.name == "custom":  # one's own videos: no official clip length or clip limit applies
            info.update(clip_length=clip_length, max_video_clips=options.max_video_clips or longest)
        info["video_source"] = "raw videos, CLIP features extracted by lddetr"
        info["feature_computation_dtype"] = computation_dtype
        clip_models.save(folder.path)
        clip_model = options.clip_model if not os.path.isdir(options.clip_model) else "a local CLIP folder"
        folder.publish(info, rebuild_command(options), card_folder=CARD_FOLDER, source_dataset=options.name,
                       clip_model=clip_model, clip_backend=options.clip_backend, num_failed=len(failures))
    return info, len(located)


def _stored_videos(located: Iterable[tuple[int, Path, int]]) -> Iterator[dict]:
    """The `videos` rows of the work shards, in the order of `located` ((order, shard, index in the shard))."""
    open_path, shard = None, None
    try:
        for _, path, index in located:
            if path != open_path:  # one process's shards come in order: each is opened once
                if shard is not None:
                    shard.close()
                open_path, shard = path, np.load(path, allow_pickle=False)
            yield {"vid": str(shard["vids"][index]), "video_features": shard[f"video_{index}"]}
    finally:
        if shard is not None:
            shard.close()


def _encoded_queries(spec: DatasetSpec, rows: list[QueryRow], text_encoder: ClipTextEncoder, dtype: str, split: str,
                     progress: bool):
    """The `queries` rows of one split, their text encoded TEXT_CHUNK queries at a time."""
    for start in tqdm(range(0, len(rows), TEXT_CHUNK), desc=f"{split} queries", unit="chunk", disable=not progress):
        chunk = rows[start : start + TEXT_CHUNK]
        for row, text in zip(chunk, text_encoder([row.query for row in chunk])):
            yield query_row(spec, row, text.astype(dtype))


def write_report(path: Path, failures: list[Failure], by_split: dict[str, list[QueryRow]]) -> None:
    """One JSON object per failed video, with the qids skipped with it; written atomically."""
    queries: dict[str, list] = {}
    for rows in by_split.values():
        for row in rows:
            queries.setdefault(row.vid, []).append(row.qid)
    lines = [json.dumps({"vid": f.vid, "path": f.path, "reason": f.reason, "queries": queries.get(f.vid, [])})
             for f in failures]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(temporary, path)


def build_from_videos(options: FromVideosOptions) -> BuildReport:
    """Run the build in this process (one of several under torchrun); process 0 writes the folder and gets its
    report, the others an empty one."""
    started = time.perf_counter()
    # loading one CLIP tower from a full CLIP checkpoint reports the other tower's weights as unused: expected noise
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    processes = Processes.from_environment()
    try:
        return _build(options, processes, started)
    finally:
        processes.close()


def _read_inputs(options: FromVideosOptions) -> tuple[DatasetSpec, dict[str, list[QueryRow]], Path]:
    if options.name == "custom":
        if options.annotations is None:
            raise ValueError("custom needs --annotations TRAIN.jsonl (and optionally --validation-annotations, "
                             "--test-annotations)")
        files = {"train": options.annotations}
        others = (("validation", options.validation_annotations), ("test", options.test_annotations))
        files.update({split: path for split, path in others if path})
        spec = custom_spec(files)
        annotations_dir = Path(".")
    else:
        if options.annotations_dir is None:
            raise ValueError(f"{options.name} needs --annotations-dir (the folder of the official annotation files)")
        spec = SPECS[options.name]
        if "clip" not in [source.name for source in spec.video_sources]:
            raise ValueError(f"{options.name} has no CLIP video features to extract; build it from its feature files "
                             "(--features-dir)")
        spec = replace(spec.with_video_features(["clip"]), audio_source=None)
        annotations_dir = options.annotations_dir
    by_split = read_annotations(spec, annotations_dir, options.splits)
    return spec, by_split, annotations_dir


def _build(options: FromVideosOptions, processes: Processes, started: float) -> BuildReport:
    output_dir = Path(options.output_dir).absolute()
    check_output(output_dir, options.overwrite)
    videos_dir = Path(options.videos_dir)
    if not videos_dir.is_dir():
        raise ValueError(f"--videos-dir {options.videos_dir} is not a folder")
    spec, by_split, annotations_dir = _read_inputs(options)
    rows = [row for split_rows in by_split.values() for row in split_rows]
    jobs = video_jobs(rows, videos_dir, video_path_fields(spec, annotations_dir))

    device = processes.device(options.device)
    clip_length = options.clip_length if options.name == "custom" else spec.clip_length
    featurizer = VideoFeaturizer.from_clip(options.clip_model, backend=options.clip_backend, clip_length=clip_length,
                                           batch_size=options.batch_size, device=device, dtype=clip_dtype(options),
                                           use_cache=False)
    text_model = options.clip_text_model or options.clip_model
    text_encoder = (
        ClipTextEncoder(text_model, device=device, dtype=clip_dtype(options)) if processes.rank == 0 else None
    )
    text_dim = text_encoder.feature_dim if text_encoder is not None else None
    spec = replace(spec, video_sources=(CLIP,)).with_dims(featurizer.feature_dims, text_dim)

    work = WorkFolder.beside(output_dir)
    if processes.rank == 0:
        done = set()
        try:
            work.prepare(build_settings(featurizer, text_encoder, options.feature_dtype, options.max_video_clips))
            done = {vid for _, vid, _ in work.index()}
            todo, problem = [job for job in jobs if job.vid not in done], None
        except BuildSettingsError as error:
            todo, problem = None, str(error)
        if done and not problem:
            print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} videos already in {work.path.name}",
                  file=sys.stderr)
    todo, problem = processes.broadcast((todo, problem) if processes.rank == 0 else None)
    if problem:
        raise BuildSettingsError(problem)

    failures = extract_share(processes.share(todo), featurizer, work, processes, decode_workers=options.decode_workers,
                             videos_per_shard=options.videos_per_shard, feature_dtype=options.feature_dtype,
                             max_video_clips=options.max_video_clips, progress=options.progress)
    gathered = processes.gather(failures)
    if processes.rank != 0:
        return BuildReport(output_dir, {}, 0, 0, time.perf_counter() - started)

    position = {job.vid: index for index, job in enumerate(jobs)}
    failures = sorted((f for share in gathered for f in share), key=lambda failure: position[failure.vid])
    report_path = options.report or output_dir.parent / f"{output_dir.name}.failures.jsonl"
    clip_models = ClipFeatureModels(image_model=options.clip_model, text_model=text_model,
                                    image_backend=options.clip_backend, frames_per_clip=1)
    info, num_videos = merge(spec, by_split, jobs, failures, work, text_encoder, clip_models, featurizer.clip_length,
                             options, output_dir, report_path,
                             str(featurizer.encoders[0].dtype).removeprefix("torch."))
    shutil.rmtree(work.path, ignore_errors=True)
    for failure in failures:
        print(f"skipped video {failure.vid!r}: {failure.reason}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(jobs)} videos failed; listed in {report_path}", file=sys.stderr)
    seconds = time.perf_counter() - started
    failed = {failure.vid for failure in failures}
    video_seconds = sum({row.vid: row.duration for row in rows if row.vid not in failed}.values())
    print(f"{num_videos / seconds:.2f} videos/s, {video_seconds / seconds:.1f} video-seconds/s "
          f"({num_videos} videos, {video_seconds:.0f} s of video, in {seconds:.1f} s)", file=sys.stderr)
    return BuildReport.of_folder(output_dir, info, num_videos, started)
