"""Video search at scale: synthetic libraries of 1 000 to 100 000 videos, their size, build time and query latency.

    python benchmarks/bench_library.py [--sizes 1000 10000 100000] [--candidates 50] [--queries 20] [--threads 2]
        [--work-dir DIR]

Each library is written in the real format (`video_search/library_folder.py`) with generated features: 75 clips
per video of CLIP-only clip features (512-d, float16, what a library built from video files with ViT-B/32
holds) and a 256-d float32 stage-1 embedding per video (the default model's hidden size). The embeddings are drawn
around 1 000 random topics (a unit topic direction plus noise), so that the approximate index faces neighbours
that are close, as real embeddings are; the clip features are random (their values do not change any cost; 512
distinct matrices are cycled, which no parquet page can deduplicate). The model is an untrained LD-DETR of the
default architecture on CLIP features (stage 2's cost does not depend on its weights).

Prints per size: the library's size on disk (parquet, faiss.index), the build time (writing the parquet shards;
the HNSW build; the same HNSW through `datasets.Dataset.add_faiss_index`), and per query, the median over
`--queries` queries of: stage 1 (query embedding + index search) exact (a torch matmul) and HNSW, reading the
candidates' clip features from the shards, stage 2 (LD-DETR on the candidates) and the total; and the recall of
the HNSW candidates against the exact ones (|HNSW top-C ∩ exact top-C| / C, for queries near a topic).
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from modeling_lddetr import LDDetrConfig, LDDetrFeatureExtractor, LDDetrModel, LDDetrProcessor
from video_search import VideoLibrary
from video_search.card import render_card
from video_search.embeddings import encoders_fingerprint
from video_search.library_folder import LibraryInfo, PartWriter
from video_search.vector_index import ExactIndex, FaissIndex

CLIPS, CLIP_DIM, TEXT_TOKENS, TEXT_DIM = 75, 512, 20, 512
TOPICS, POOL = 1000, 512


def save_model(folder: Path) -> str:
    torch.manual_seed(0)
    model = LDDetrModel(LDDetrConfig(video_feature_dim=CLIP_DIM + 2, text_feature_dim=TEXT_DIM))
    model.save_pretrained(folder)
    extractor = LDDetrFeatureExtractor(video_feature_dims=[CLIP_DIM], text_feature_dim=TEXT_DIM)
    LDDetrProcessor(extractor).save_pretrained(folder)
    return str(folder)


def topic_embeddings(count: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, dim) unit vectors near TOPICS random directions, and the topics."""
    topics = rng.standard_normal((TOPICS, dim), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    vectors = topics[rng.integers(0, TOPICS, count)] + 0.08 * rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), topics


def write_library(folder: Path, model_dir: str, count: int, embeddings: np.ndarray, rng: np.random.Generator) -> float:
    model = LDDetrModel.from_pretrained(model_dir)
    info = LibraryInfo(
        model=model_dir, model_sha256=encoders_fingerprint(model), embedding="distill-align",
        embedding_dim=embeddings.shape[1], clip_length=2.0, video_feature_names=["clip"],
        video_feature_dims=[CLIP_DIM], text_feature_dim=TEXT_DIM, feature_dtype="float16",
    )
    pool = rng.standard_normal((POOL, CLIPS, CLIP_DIM), dtype=np.float32).astype(np.float16)
    started = time.perf_counter()
    folder.mkdir(parents=True)
    writer = PartWriter(folder, info, 0)
    for index in range(count):
        writer.write(f"v{index:07d}", None, CLIPS * 2.0, pool[index % POOL], embeddings[index])
    writer.close()
    info.parts.append({"source": "bench_library.py", "num_videos": count})
    info.save(folder)
    (folder / "README.md").write_text(render_card(info), encoding="utf-8")
    return time.perf_counter() - started


def datasets_faiss_build(embeddings: np.ndarray) -> float:
    import faiss
    from datasets import Dataset

    started = time.perf_counter()
    dataset = Dataset.from_dict({"embedding": embeddings})
    dataset.add_faiss_index("embedding", string_factory="HNSW32", metric_type=faiss.METRIC_INNER_PRODUCT)
    return time.perf_counter() - started


def megabytes(paths) -> float:
    return sum(path.stat().st_size for path in paths) / 2**20


def bench_size(count: int, model_dir: str, work: Path, args) -> dict:
    rng = np.random.default_rng(count)
    embeddings, topics = topic_embeddings(count, 256, rng)
    folder = work / f"library-{count}"
    write_seconds = write_library(folder, model_dir, count, embeddings, rng)
    started = time.perf_counter()
    FaissIndex.build(embeddings).save(folder)
    hnsw_seconds = time.perf_counter() - started
    datasets_seconds = datasets_faiss_build(embeddings) if args.datasets_faiss else float("nan")

    near = topics[rng.integers(0, TOPICS, args.recall_queries)]
    near = near + 0.05 * rng.standard_normal(near.shape, dtype=np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    _, exact_rows = ExactIndex(embeddings).search(near, args.candidates)
    _, hnsw_rows = FaissIndex.load(folder).search(near, args.candidates)
    recall = np.mean([len(set(a) & set(b)) / args.candidates for a, b in zip(exact_rows, hnsw_rows)])

    timings = {}
    for backend in ("exact", "faiss"):
        library = VideoLibrary(folder, index_backend=backend)
        rows = []
        for query in range(args.queries + 1):  # the first one warms up
            text = rng.standard_normal((TEXT_TOKENS, TEXT_DIM), dtype=np.float32)
            started = time.perf_counter()
            library.search(text, top_k=10, candidates=args.candidates)
            total = time.perf_counter() - started
            t = library.timings
            rows.append((t.stage_one, t.read_features, t.stage_two, total))
        timings[backend] = [statistics.median(column) for column in zip(*rows[1:])]
    result = {
        "videos": count,
        "parquet MB": megabytes(folder.glob("data/**/*.parquet")),
        "faiss MB": megabytes([folder / "faiss.index"]),
        "write s": write_seconds,
        "HNSW build s": hnsw_seconds,
        "datasets HNSW build s": datasets_seconds,
        "stage 1 exact ms": 1000 * timings["exact"][0],
        "stage 1 HNSW ms": 1000 * timings["faiss"][0],
        "read features ms": 1000 * timings["exact"][1],
        "stage 2 ms": 1000 * timings["exact"][2],
        "query exact ms": 1000 * timings["exact"][3],
        "query HNSW ms": 1000 * timings["faiss"][3],
        f"HNSW recall@{args.candidates}": recall,
    }
    shutil.rmtree(folder)  # the next size needs the disk
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--queries", type=int, default=20, help="timed queries per size and backend")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, help="where the libraries are written (default: a temporary folder)")
    parser.add_argument("--no-datasets-faiss", dest="datasets_faiss", action="store_false",
                        help="skip the build through datasets.Dataset.add_faiss_index")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    print(f"{args.candidates} candidates, {args.threads} threads, medians over {args.queries} queries", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-library-", dir=args.work_dir) as scratch:
        work = Path(scratch)
        model_dir = save_model(work / "model")
        for number, count in enumerate(args.sizes):
            row = bench_size(count, model_dir, work, args)
            if number == 0:
                print("| " + " | ".join(row) + " |")
                print("|" + "---|" * len(row))
            cells = (f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values())
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
