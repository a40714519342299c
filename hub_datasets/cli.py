"""`lddetr-build-dataset`: the command line of both builders. `--features-dir` builds from the official feature files
(`build.py`), `--videos-dir` extracts CLIP features from raw videos (`from_videos.py`); then `--push-to-hub` uploads
the folder.

    lddetr-build-dataset qvhighlights --annotations-dir data/qvhighlight --features-dir features/qvhighlight \
        --output-dir qvhighlights-features --feature-dtype float16 [--with-audio] [--push-to-hub ORG/NAME]
    lddetr-build-dataset custom --annotations train.jsonl --videos-dir videos/ --output-dir my-dataset

Bad input (arguments, annotations, feature files, videos, an output in the way) ends with a one-line error and exit
status 1; argparse's own errors exit with status 2.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from processing.video.precision import DTYPE_CHOICES

from .annotations import SALIENCY_LABEL_SUMMARIES
from .build import build_dataset
from .dataset_folder import FEATURE_DTYPES, BuildReport, OutputExistsError
from .from_videos import FromVideosOptions, build_from_videos
from .hub import push_dataset_to_hub
from .parquet_shards import MAX_SHARD_BYTES
from .specs import SPECS


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FromVideosOptions  # the dataclass's defaults, so that Python and the command line agree
    group = parser.add_argument_group("from raw videos (--videos-dir)")
    group.add_argument("--videos-dir", type=Path, help="folder of video files: extract CLIP features from the videos")
    group.add_argument("--annotations", type=Path, help="custom: the train annotations (QVHighlights jsonl)")
    group.add_argument("--validation-annotations", type=Path, help="custom: validation annotations")
    group.add_argument("--test-annotations", type=Path, help="custom: test annotations (labels optional)")
    group.add_argument("--clip-model", default=defaults.clip_model,
                       help="CLIP model, Hub id or folder (default: %(default)s)")
    group.add_argument("--clip-backend", choices=("transformers", "timm"), default=defaults.clip_backend,
                       help="image tower implementation (the text tower is always transformers')")
    group.add_argument("--clip-text-model", help="another CLIP model for the text features (default: --clip-model)")
    group.add_argument("--clip-length", type=float, default=defaults.clip_length,
                       help="custom: seconds per clip (default: %(default)s)")
    group.add_argument("--device", default=defaults.device,
                       help="auto (this process's GPU when there is one), cpu, cuda:1, ...")
    group.add_argument("--dtype", choices=DTYPE_CHOICES, default=defaults.dtype,
                       help="what CLIP computes in (default: %(default)s; auto: bf16 where the CPU or GPU has bf16 "
                       "units)")
    group.add_argument("--fp16", action="store_true", help="half-precision CLIP (CUDA): --dtype float16")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="frames per CLIP forward (default: %(default)s)")
    group.add_argument("--decode-workers", type=int, default=defaults.decode_workers,
                       help="video decoding processes per process (0: decode inline)")
    group.add_argument("--videos-per-shard", type=int, default=defaults.videos_per_shard,
                       help="videos per work shard: the unit of resumption")
    group.add_argument("--report", type=Path,
                       help="failed videos, JSON lines (default: OUTPUT.failures.jsonl beside the output)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lddetr-build-dataset",
        description="Build a Hub dataset folder (parquet + dataset card) from official annotations and feature files.",
    )
    parser.add_argument("name", choices=sorted(SPECS) + ["custom"],
                        help="source dataset (custom: your videos, --videos-dir)")
    parser.add_argument("--annotations-dir", type=Path, help="folder with the official annotation jsonl files")
    parser.add_argument("--features-dir", type=Path, help="folder with the official feature folders")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="dataset folder to write (must be empty or absent)")
    parser.add_argument("--feature-dtype", choices=FEATURE_DTYPES, default="float32")
    parser.add_argument("--splits", nargs="+",
                        help="splits to build (default: every split whose annotation file exists)")
    parser.add_argument("--max-video-clips", type=int, help="keep at most this many clips per video (default: all)")
    parser.add_argument("--with-audio", action="store_true", help="also store PANN audio features (QVHighlights)")
    parser.add_argument(
        "--video-features",
        nargs="+",
        metavar="TYPE",
        help="video feature types to store (default: all, e.g. slowfast clip); `clip` alone gives a dataset for a "
        "CLIP-only model that lddetr-predict can run on any video",
    )
    parser.add_argument("--video-feature-dims", type=int, nargs="+",
                        help="dims of the video feature types, if not the official ones")
    parser.add_argument("--text-feature-dim", type=int, help="dim of the text features, if not the official one")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--max-shard-mb", type=int, default=MAX_SHARD_BYTES // 2**20, help="parquet shard size")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--push-to-hub", metavar="REPO_ID",
                        help="then upload the folder to this Hub dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    _add_video_arguments(parser)
    args = parser.parse_args(argv)
    if (args.features_dir is None) == (args.videos_dir is None):
        parser.error("give either --features-dir (official feature files) or --videos-dir (raw videos)")
    if args.name == "custom" and args.videos_dir is None:
        parser.error("custom builds from raw videos: give --videos-dir and --annotations")
    if args.features_dir is not None and args.annotations_dir is None:
        parser.error("--features-dir needs --annotations-dir")
    return args


def from_videos_options(args: argparse.Namespace) -> FromVideosOptions:
    named = {field.name: getattr(args, field.name) for field in dataclasses.fields(FromVideosOptions)
             if hasattr(args, field.name)}
    return FromVideosOptions(**named, max_shard_bytes=args.max_shard_mb * 2**20, progress=not args.no_progress)


def _build_from_feature_files(args: argparse.Namespace) -> BuildReport:
    spec = SPECS[args.name].with_video_features(args.video_features)
    return build_dataset(
        spec.with_dims(args.video_feature_dims, args.text_feature_dim),
        args.annotations_dir,
        args.features_dir,
        args.output_dir,
        feature_dtype=args.feature_dtype,
        splits=args.splits,
        max_video_clips=args.max_video_clips,
        with_audio=args.with_audio,
        overwrite=args.overwrite,
        max_shard_bytes=args.max_shard_mb * 2**20,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.videos_dir is not None:
            report = build_from_videos(from_videos_options(args))
            if not report.info:  # a process other than the first: process 0 writes the folder and reports
                return
        else:
            report = _build_from_feature_files(args)
    # bad input is reported in one line; anything else is a bug and keeps its traceback
    except (ValueError, OutputExistsError, FileNotFoundError) as e:
        raise SystemExit(f"lddetr-build-dataset: error: {e}") from None
    queries = ", ".join(f"{split} {n}" for split, n in report.info["splits"].items())
    labels = SALIENCY_LABEL_SUMMARIES[report.info["saliency_label_type"]]
    print(
        f"wrote {report.output_dir}: queries {queries}; {report.num_videos} videos; saliency labels {labels}; "
        f"{report.num_bytes / 2**20:.1f} MiB in {report.seconds:.1f} s",
        file=sys.stderr,
    )
    if args.push_to_hub:
        url = push_dataset_to_hub(report.output_dir, args.push_to_hub, private=args.private)
        print(f"uploaded to {url}", file=sys.stderr)


if __name__ == "__main__":
    main()
