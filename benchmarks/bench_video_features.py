"""Videos per second of `lddetr-build-dataset --videos-dir`, per stage, and the cost of a large build.

    python benchmarks/bench_video_features.py [--seconds 30] [--videos 3] [--size 640x360] [--fps 30]
        [--device auto] [--gpu-tflops 100] [--cpu-cores-per-gpu 8]

Generates H.264 videos (libx264, moving gradients), builds a CLIP of the ViT-B/32 shapes with random weights (the
cost of a forward does not depend on the weights; nothing is downloaded), then measures
  decode      all frames of a video decoded, the sampled ones converted to RGB (VideoFeaturizer.decode), per core
  preprocess  resize + centre crop + normalise of the sampled frames (ClipImagePreprocessing)
  forward     CLIP ViT-B/32 image forward, batches of 64 frames, and its FLOPs per frame
  build       lddetr-build-dataset custom on the generated videos, end to end (1 process)
and prints the cost model of 10 000 videos of 150 s on 1 and 8 GPUs from those figures: decoding runs on
--cpu-cores-per-gpu cores per GPU, the forward at --gpu-tflops effective TFLOP/s (an assumption, printed as such).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processing.video.clip_encoders import ClipImageEncoder  # noqa: E402
from processing.video.featurizer import VideoFeaturizer  # noqa: E402

PATCH, IMAGE, WIDTH, LAYERS, MLP = 32, 224, 768, 12, 3072  # CLIP ViT-B/32


def vit_b32_flops_per_frame() -> float:
    """Multiply-adds x 2 of one 224-px ViT-B/32 image forward (patch embedding, 12 blocks, projection)."""
    tokens = (IMAGE // PATCH) ** 2 + 1
    patch_embedding = (tokens - 1) * 3 * PATCH * PATCH * WIDTH
    per_block = tokens * (4 * WIDTH * WIDTH + 2 * WIDTH * MLP) + 2 * tokens * tokens * WIDTH  # qkv+out, MLP, attention
    return 2.0 * (patch_embedding + LAYERS * per_block + WIDTH * 512)


def write_video(path: Path, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(int(seconds * fps)):
            shift = index * 3 + seed * 50
            rgb = np.stack([(cols + shift) % 256, (rows + shift // 2) % 256, (cols + rows + seed * 40) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_vit_b32_clip(folder: Path) -> str:
    """A random-weight CLIP of ViT-B/32 shapes, with a tiny tokenizer (the text cost is not what is measured)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz "
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(f"{letter}</w>" for letter in letters)]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(patch_size=PATCH, image_size=IMAGE),
        projection_dim=512,
    )
    model_dir = folder / "clip-vit-b32-random"
    CLIPModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    CLIPImageProcessor().save_pretrained(model_dir)
    return str(model_dir)


def timed(function, repeats: int = 3, clock=time.perf_counter) -> float:
    """Median seconds of `repeats` calls (wall time, or CPU time of every thread with time.process_time)."""
    times = []
    for _ in range(repeats):
        started = clock()
        function()
        times.append(clock() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated video")
    parser.add_argument("--videos", type=int, default=3, help="videos for the end-to-end build")
    parser.add_argument("--size", default="640x360", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpu-tflops", type=float, default=100.0, help="assumed effective fp16 TFLOP/s of one GPU")
    parser.add_argument("--cpu-cores-per-gpu", type=int, default=8, help="assumed decoding cores per GPU")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    torch.manual_seed(0)
    transformers_logging.set_verbosity_error()  # one CLIP tower of a full checkpoint: the other's weights are unused
    transformers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="bench-video-") as folder:
        folder = Path(folder)
        videos = folder / "videos"
        videos.mkdir()
        for index in range(args.videos):
            write_video(videos / f"v{index}.mp4", args.seconds, args.fps, width, height, index)
        clip_dir = save_vit_b32_clip(folder)
        encoder = ClipImageEncoder(clip_dir, device=args.device)
        featurizer = VideoFeaturizer([encoder], clip_length=2.0)
        device = encoder.device
        threads = torch.get_num_threads()
        print(f"device {device}, torch threads {threads}, CPU cores {os.cpu_count()}; videos {args.videos} x "
              f"{args.seconds:g} s, {width}x{height} H.264 at {args.fps} fps")

        first = videos / "v0.mp4"
        # the decoder runs frame threads: its CPU time, not its wall time, is what a core-count model needs
        decode_wall_s = timed(lambda: featurizer.decode(first))
        decode_s = timed(lambda: featurizer.decode(first), clock=time.process_time)
        decoded = featurizer.decode(first)
        frames = np.concatenate([clip.frames[1] for clip in decoded.clips])  # (clips, H, W, 3)
        decoded_frames = int(args.seconds * args.fps)
        print(f"decode      {decode_wall_s:.3f} s wall, {decode_s:.3f} CPU-s per video ({decoded_frames} frames "
              f"decoded, {len(frames)} sampled): {args.seconds / decode_s:.1f} video-seconds per CPU-second")

        batch = torch.from_numpy(frames).to(device)
        preprocess_s = timed(lambda: encoder.preprocessing(batch))
        print(f"preprocess  {1000 * preprocess_s / len(frames):.2f} ms per frame ({len(frames)} frames in one batch)")

        flops = vit_b32_flops_per_frame()
        pixels = encoder.preprocessing(batch[:1]).repeat(64, 1, 1, 1)
        with torch.no_grad():
            forward_s = timed(lambda: encoder._embed(pixels)) / 64
        print(f"forward     {1000 * forward_s:.1f} ms per frame (batch 64), {flops / 1e9:.2f} GFLOPs per frame, "
              f"{flops / forward_s / 1e9:.0f} GFLOP/s achieved")

        from hub_datasets.cli import main as build_main

        records = [
            {"qid": index, "query": "a moving gradient", "vid": f"v{index}", "duration": args.seconds,
             "relevant_windows": [[0.0, 4.0]]}
            for index in range(args.videos)
        ]
        annotations = folder / "train.jsonl"
        annotations.write_text("".join(json.dumps(record) + "\n" for record in records))
        started = time.perf_counter()
        build_main(["custom", "--annotations", str(annotations), "--videos-dir", str(videos), "--output-dir",
                    str(folder / "dataset"), "--clip-model", clip_dir, "--device", args.device, "--no-progress",
                    "--decode-workers", "1"])
        build_s = time.perf_counter() - started
        print(f"build       {build_s:.1f} s for {args.videos} videos (model loading included): "
              f"{args.videos / build_s:.3f} videos/s, {args.videos * args.seconds / build_s:.1f} video-seconds/s")

    # the cost model: 10 000 videos of 150 s, one sampled frame per 2-s clip
    videos_total, seconds, sampled = 10_000, 150.0, 75
    decode_core_s = videos_total * seconds / (args.seconds / decode_s)  # core-seconds of decoding
    gpu_s = videos_total * sampled * flops / (args.gpu_tflops * 1e12)
    print(f"\ncost model, {videos_total} videos x {seconds:g} s at {width}x{height} {args.fps} fps "
          f"({sampled} frames per video):")
    print(f"  decoding  {decode_core_s / 3600:.1f} CPU-core-hours (the measured CPU time above)")
    print(f"  forward   {videos_total * sampled * flops / 1e15:.1f} PFLOPs = {gpu_s / 60:.1f} GPU-minutes at an "
          f"assumed {args.gpu_tflops:g} TFLOP/s; on this device {videos_total * sampled * forward_s / 3600:.1f} hours")
    for gpus in (1, 8):
        decode_wall = decode_core_s / (gpus * args.cpu_cores_per_gpu)
        wall = max(decode_wall, gpu_s / gpus)
        bound = "decode-bound" if decode_wall >= gpu_s / gpus else "GPU-bound"
        print(f"  {gpus} GPU(s), {args.cpu_cores_per_gpu} decoding cores each: {wall / 3600:.2f} h ({bound})")


if __name__ == "__main__":
    main()
