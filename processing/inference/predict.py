"""lddetr-predict: the moments of a video that match text queries, with the `video-moment-retrieval` pipeline.

    lddetr-predict --model lddetr-clip-qvhighlights --video x.mp4 --query "a man throws a ball" \
        [--query ...] [--output out.json] [--plot out.png] [--top-k 10]

Prints the best moments of each query, and optionally writes them as JSON (`--output`) and plots the saliency curves
with the moments shaded (`--plot`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from transformers import pipeline
from transformers.utils import logging as transformers_logging

from ..hub_ids import require_folder_or_hub_id
from ..video.clip_encoders import resolve_device
from ..video.precision import DTYPE_CHOICES
from .pipeline import TASK
from .plotting import plot_results


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="LD-DETR model folder or Hub id (model + processor)")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--query", required=True, action="append", help="text query; repeat for several queries")
    parser.add_argument("--output", help="write the results to this JSON file")
    parser.add_argument("--plot", help="plot the saliency curves and moments to this image file (e.g. out.png)")
    parser.add_argument(
        "--clip-model", help="CLIP model for the features (default: clip_feature_models.json beside the model, "
        "else openai/clip-vit-base-patch32)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto",
        help="what CLIP and LD-DETR compute in (default: auto, bf16 where the CPU or GPU has bf16 units, else float32)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="moments per query (default 10)")
    parser.add_argument("--nms-threshold", type=float, help="IoU above which a worse overlapping moment is dropped")
    parser.add_argument(
        "--cache-dir",
        help="lddetr cache folder; video features go under its features/ (default $LDDETR_CACHE or ~/.cache/lddetr)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not cache video features")
    return parser.parse_args(argv)


def format_results(results: Sequence[Mapping], top_k: int) -> str:
    """Human-readable summary: per query its best moments and its most salient clip."""
    lines = []
    for number, result in enumerate(results, 1):
        clips = len(result["saliency"])
        lines.append(f"Query {number}/{len(results)}: {result['query']!r}")
        lines.append(f"  video: {result['duration']:.1f} s, {clips} clips of {result['clip_length']:g} s")
        lines.append("  rank      start        end   score")
        for rank, moment in enumerate(result["moments"][:top_k], 1):
            lines.append(f"  {rank:>4}  {moment['start']:>7.1f} s  {moment['end']:>7.1f} s  {moment['score']:.4f}")
        best = max(range(clips), key=result["saliency"].__getitem__)
        start = best * result["clip_length"]
        end = min(start + result["clip_length"], result["duration"])
        lines.append(f"  most salient clip: {start:.1f}-{end:.1f} s (saliency {result['saliency'][best]:.3f})")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    # returns nothing: the console-script wrapper passes the return value to sys.exit, which would fail the run
    predict(argv)


def predict(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the command line; returns the per-query results."""
    args = parse_arguments(argv)
    # loading one CLIP tower from a full CLIP checkpoint reports the other tower's weights as unused: expected noise
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        require_folder_or_hub_id(args.model, "model")
        pipe = pipeline(
            TASK,
            model=args.model,
            device=resolve_device(args.device),
            clip_model=args.clip_model,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            torch_dtype=args.dtype,
        )
        results = pipe(
            video=args.video, query=args.query, top_k=args.top_k, nms_threshold=args.nms_threshold, progress=True
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"lddetr-predict: error: {error}") from None

    print(format_results(results, args.top_k))
    if args.output:
        document = {"model": args.model, "video": os.fspath(args.video), "results": results}
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot:
        plot_results(results, args.plot, top_k=min(args.top_k, 5), title=os.path.basename(args.video))
        print(f"wrote {args.plot}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
