"""User-level throughput of the `video-moment-retrieval` pipeline: several queries on one long video.

    python benchmarks/bench_pipeline.py [--seconds 150] [--queries 10] [--size 640x360] [--fps 30] [--device auto]

Generates one H.264 video (libx264, moving gradients), builds a CLIP of the ViT-B/32 shapes with random weights
(nothing is downloaded; the cost of a forward does not depend on the weights) and an untrained LD-DETR of the default
architecture (3 decoder loops) on CLIP features, saved as a model folder that `pipeline()` loads. Then it times, as a
user calls it, `pipe(video=..., query=[...])`:
  first call   the video decoded and encoded once for all queries, the queries encoded, one batched forward;
  second call  other queries on the same video: its features come from the disk cache, so only the text encoder
               and LD-DETR run;
and the stages of the first call separately (text encoder, video features, LD-DETR forward of all queries).
Prints seconds and queries/s.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from bench_video_features import save_vit_b32_clip, write_video
from modeling_lddetr import LDDetrConfig, LDDetrFeatureExtractor, LDDetrModel, LDDetrProcessor
from processing.inference.pipeline import TASK, ClipFeatureModels

CLIP_DIM = 512
WORDS = "person dog ball car street kitchen beach guitar cake window table phone water tree".split()


def queries(count: int, offset: int) -> list[str]:
    """`count` distinct short queries of about the length of QVHighlights' (8-12 words)."""
    return [" ".join(WORDS[(offset + i + 3 * k) % len(WORDS)] for k in range(8 + i % 5)) for i in range(count)]


def save_model_folder(folder: Path, clip_dir: str) -> str:
    torch.manual_seed(0)
    model = LDDetrModel(LDDetrConfig(video_feature_dim=CLIP_DIM + 2, text_feature_dim=CLIP_DIM))
    features = LDDetrFeatureExtractor(video_feature_dims=[CLIP_DIM], text_feature_dim=CLIP_DIM, clip_length=2.0, max_video_clips=75)
    model.save_pretrained(folder)
    LDDetrProcessor(features).save_pretrained(folder)
    ClipFeatureModels(image_model=clip_dir, text_model=clip_dir).save(folder)
    return str(folder)


def timed(function, repeats: int = 1) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls, and the last result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the video")
    parser.add_argument("--queries", type=int, default=10, help="queries per call")
    parser.add_argument("--size", default="640x360", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    transformers_logging.set_verbosity_error()  # one CLIP tower of a full checkpoint: the other's weights are unused
    transformers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        folder = Path(folder)
        video = folder / "video.mp4"
        write_video(video, args.seconds, args.fps, width, height, seed=0)
        model_dir = save_model_folder(folder / "model", save_vit_b32_clip(folder))
        pipe = pipeline(TASK, model=model_dir, device=args.device, cache_dir=folder / "cache")
        print(
            f"device {pipe.device}, torch threads {torch.get_num_threads()}; one {args.seconds:g}-s {width}x{height} "
            f"H.264 video at {args.fps} fps, {args.queries} queries per call; CLIP ViT-B/32 shapes (random weights), "
            "LD-DETR default architecture (3 decoder loops), untrained"
        )

        first_s, results = timed(lambda: pipe(video=video, query=queries(args.queries, 0), top_k=5))
        second_s, _ = timed(lambda: pipe(video=video, query=queries(args.queries, 1), top_k=5), repeats=3)
        print(f"first call   {first_s:7.2f} s, {args.queries / first_s:6.2f} queries/s (video features extracted once)")
        print(f"second call  {second_s:7.2f} s, {args.queries / second_s:6.2f} queries/s (video features from the cache; median of 3)")

        text_s, _ = timed(lambda: pipe.text_encoder(queries(args.queries, 2)), repeats=3)
        pipe.video_featurizer.cache = None  # extract again, not from the cache
        video_s, features = timed(lambda: pipe.video_featurizer(video))
        inputs = pipe.preprocess({"video": str(video), "queries": queries(args.queries, 3)})
        with torch.no_grad():
            forward_s, _ = timed(lambda: pipe._forward(inputs), repeats=3)
        print(
            f"stages       text encoder {text_s:.3f} s, video features {video_s:.2f} s ({features.num_clips} clips, "
            f"{features.num_clips / video_s:.1f} clips/s), LD-DETR forward of {args.queries} queries {forward_s:.3f} s "
            f"({len(inputs['windows'])} window(s) per query)"
        )
        if len(results) != args.queries or any(not result["moments"] for result in results):
            raise SystemExit("the pipeline returned no moments for some query")


if __name__ == "__main__":
    main()
