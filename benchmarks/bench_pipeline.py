"""User-level latency of the `video-moment-retrieval` pipeline, fp32 beside `auto`: several queries on one long video.

    python benchmarks/bench_pipeline.py [--seconds 150] [--queries 10] [--size 640x360] [--fps 25] [--rounds 3]
        [--dtypes float32 auto] [--device cpu]

Generates one H.264 video (libx264, moving gradients), builds a CLIP of the ViT-B/32 shapes with random weights
(nothing is downloaded; the cost of a forward does not depend on the weights) and an untrained LD-DETR of the default
architecture (3 decoder loops) on CLIP features, saved as a model folder that `pipeline()` loads once per dtype. Each
round then times, for every dtype in turn (the order alternating between rounds, so that a drift of the machine's
speed hits both), as a user calls it:
  first call    `pipe(video=..., query=[...])` on an empty feature cache: decode + CLIP image (overlapped), CLIP
                text, one batched LD-DETR forward
  cached call   other queries on the same video: its features come from the disk cache
and the stages of a first call alone:
  decode        every frame decoded, the sampled ones converted to RGB (no encoder)
  CLIP image    the image forward (preprocessing included) of the video's sampled frames, already decoded
  video feats   decode + CLIP image as the first call runs them (the decoding thread overlapping the encoder)
  CLIP text     the queries' text features
  LD-DETR       the forward of all queries on the video's features
  GEMM          a 2048^3 matmul in the dtype: the peak the GFLOP/s of the stages are compared with
Prints one table, median seconds of the rounds per stage and dtype, the GFLOP of each stage (matmuls, convolutions
and attention, counted by torch.utils.flop_counter) and its fraction of the GEMM peak of the same dtype in the same
run. `auto` is bf16 on a CPU with AVX-512 BF16 or AMX units (a GPU with bf16), fp32 elsewhere.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_video_features import save_vit_b32_clip, write_video
from torch.utils.flop_counter import FlopCounterMode
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from modeling_lddetr import LDDetrConfig, LDDetrFeatureExtractor, LDDetrModel, LDDetrProcessor
from processing.inference.pipeline import TASK, ClipFeatureModels
from processing.video.decoding import VideoClipReader
from processing.video.precision import cpu_has_native_bf16, dtype_name, resolve_dtype

CLIP_DIM = 512
GEMM_SIZE = 2048
WORDS = "person dog ball car street kitchen beach guitar cake window table phone water tree".split()
STAGES = ("first call", "cached call", "decode", "CLIP image", "video feats", "CLIP text", "LD-DETR", "GEMM")


def queries(count: int, offset: int) -> list[str]:
    """`count` distinct short queries of about the length of QVHighlights' (8-12 words)."""
    return [" ".join(WORDS[(offset + i + 3 * k) % len(WORDS)] for k in range(8 + i % 5)) for i in range(count)]


def save_model_folder(folder: Path, clip_dir: str) -> str:
    torch.manual_seed(0)
    model = LDDetrModel(LDDetrConfig(video_feature_dim=CLIP_DIM + 2, text_feature_dim=CLIP_DIM))
    features = LDDetrFeatureExtractor(
        video_feature_dims=[CLIP_DIM], text_feature_dim=CLIP_DIM, clip_length=2.0, max_video_clips=75
    )
    model.save_pretrained(folder)
    LDDetrProcessor(features).save_pretrained(folder)
    ClipFeatureModels(image_model=clip_dir, text_model=clip_dir).save(folder)
    return str(folder)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def seconds_of(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def gflop_of(function) -> float:
    """GFLOP of the matmuls, convolutions and attention that `function` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return counter.get_total_flops() / 1e9


class Column:
    """One dtype: its pipeline and the stages as functions; `run` times them all once."""

    def __init__(self, requested: str, model_dir: str, video: Path, cache_root: Path, device: str, num_queries: int):
        self.requested = requested
        self.dtype = resolve_dtype(requested, device)
        self.cache_root = cache_root
        self.pipe = pipeline(TASK, model=model_dir, device=device, cache_dir=cache_root / "warm", torch_dtype=requested)
        self.video = video
        self.num_queries = num_queries
        self.times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.rounds = 0
        featurizer = self.pipe.video_featurizer
        self.encoder = featurizer.encoders[0]
        self.frames = [clip.frames[1] for clip in featurizer.decode(video).clips]
        self.inputs = self.pipe.preprocess({"video": str(video), "queries": queries(num_queries, 3)})
        left = torch.randn(GEMM_SIZE, GEMM_SIZE, device=self.pipe.device, dtype=self.dtype)
        right = torch.randn(GEMM_SIZE, GEMM_SIZE, device=self.pipe.device, dtype=self.dtype)
        self.stages = {
            "first call": self.first_call,
            "cached call": lambda: self.pipe(video=video, query=queries(num_queries, 1), top_k=5),
            "decode": lambda: list(VideoClipReader(video, featurizer.clip_length)),
            "CLIP image": lambda: self.encoder.encode_clips(self.frames),
            "video feats": self.uncached_features,
            "CLIP text": lambda: self.pipe.text_encoder(queries(num_queries, 2)),
            "LD-DETR": self.forward,
            "GEMM": lambda: self.synchronize(left @ right),
        }
        self.stages["cached call"]()  # fills the cache the cached call reads, and warms every part up
        self.gflop = {"decode": 0.0, "GEMM": 2 * GEMM_SIZE**3 / 1e9}
        # frozen while counting: under no_grad a view of a parameter (the decoder's anchors) still requires grad,
        # with no grad function, and the counter's module tracker raises on it
        self.pipe.model.requires_grad_(False)
        for stage in ("CLIP image", "CLIP text", "LD-DETR"):
            self.gflop[stage] = gflop_of(self.stages[stage])
        self.pipe.model.requires_grad_(True)
        self.gflop["video feats"] = self.gflop["CLIP image"]
        self.gflop["first call"] = self.gflop["CLIP image"] + self.gflop["CLIP text"] + self.gflop["LD-DETR"]
        self.gflop["cached call"] = self.gflop["CLIP text"] + self.gflop["LD-DETR"]

    def synchronize(self, result=None):
        if self.pipe.device.type == "cuda":
            torch.cuda.synchronize(self.pipe.device)
        return result

    def first_call(self):
        self.pipe.video_featurizer.cache.cache_dir = self.cache_root / f"cold-{self.rounds}"  # an empty cache
        try:
            return self.pipe(video=self.video, query=queries(self.num_queries, 0), top_k=5)
        finally:
            self.pipe.video_featurizer.cache.cache_dir = self.cache_root / "warm"

    def uncached_features(self):
        cache, self.pipe.video_featurizer.cache = self.pipe.video_featurizer.cache, None
        try:
            return self.pipe.video_featurizer(self.video)
        finally:
            self.pipe.video_featurizer.cache = cache

    def forward(self):
        with torch.no_grad():
            return self.synchronize(self.pipe._forward(self.inputs))

    def run(self) -> None:
        for stage, function in self.stages.items():
            self.times[stage].append(seconds_of(function))
        self.rounds += 1

    def median(self, stage: str) -> float:
        return statistics.median(self.times[stage])

    def peak(self) -> float:
        return self.gflop["GEMM"] / self.median("GEMM")

    def cells(self, stage: str) -> str:
        """seconds, GFLOP, % of this dtype's GEMM peak: 25 characters."""
        seconds, gflop = self.median(stage), self.gflop[stage]
        share = f"{100 * gflop / seconds / self.peak():.0f} %" if gflop else "-"
        return f"{seconds:8.3f} {gflop:8.1f} {share:>7}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the video")
    parser.add_argument("--queries", type=int, default=10, help="queries per call")
    parser.add_argument("--size", default="640x360", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every stage and dtype (medians are printed)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"], help="columns (default: float32 auto)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.rounds < 1 or args.queries < 1:
        parser.error("--rounds and --queries must be >= 1")
    try:
        width, height = (int(side) for side in args.size.split("x"))
        for requested in args.dtypes:
            resolve_dtype(requested, args.device)
    except ValueError as error:
        parser.error(str(error))
    transformers_logging.set_verbosity_error()  # one CLIP tower of a full checkpoint: the other's weights are unused
    transformers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        folder = Path(folder)
        video = folder / "video.mp4"
        write_video(video, args.seconds, args.fps, width, height, seed=0)
        model_dir = save_model_folder(folder / "model", save_vit_b32_clip(folder))
        load_before = os.getloadavg()[0]
        columns = [
            Column(requested, model_dir, video, folder / f"cache-{index}", args.device, args.queries)
            for index, requested in enumerate(args.dtypes)
        ]
        for round_index in range(args.rounds):
            for column in columns if round_index % 2 == 0 else columns[::-1]:
                column.run()
        load_after = os.getloadavg()[0]

        clips = len(columns[0].frames)
        print(
            f"{cpu_model()}; native bf16: {'yes' if cpu_has_native_bf16() else 'no'}; device {args.device}, torch "
            f"threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}; 1-min load average {load_before:.2f} "
            f"before, {load_after:.2f} after"
        )
        print(
            f"one {args.seconds:g}-s {width}x{height} H.264 video at {args.fps} fps ({clips} clips), {args.queries} "
            f"queries per call; CLIP ViT-B/32 shapes (random weights), LD-DETR default architecture, untrained; "
            f"median of {args.rounds} round(s)"
        )
        print(f"{'':<12}" + "".join(f" | {f'{c.requested} ({dtype_name(c.dtype)})':^25}" for c in columns))
        print(f"{'stage':<12}" + f" | {'s':>8} {'GFLOP':>8} {'% peak':>7}" * len(columns))
        for stage in STAGES:
            print(f"{stage:<12}" + "".join(f" | {column.cells(stage)}" for column in columns))
        print("GEMM peak: " + ", ".join(f"{c.requested} {c.peak():.0f} GFLOP/s" for c in columns))
        for column in columns[1:]:
            ratio = columns[0].median("first call") / column.median("first call")
            print(f"first call, {columns[0].requested} / {column.requested}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
