"""lddetr-index: index videos into a library that lddetr-search, VideoLibrary and lddetr-demo --library search.

    lddetr-index --videos-dir videos/ --model MODEL --output-dir LIB [--clip-model M] [--decode-workers 2]
    lddetr-index --dataset datasets/qvhighlights-clip --model MODEL --output-dir LIB
    lddetr-index ... --index-backend faiss            # also the approximate HNSW index (faiss.index in LIB)
    lddetr-index ... --index-backend qdrant --qdrant-location http://localhost:6333   # stage 1 in a Qdrant server

Running it again on a library adds only the videos it does not have yet. Videos that cannot be read are skipped and
listed in LIB.failures.jsonl beside the library (the raw-video builder's report); the exit status is still 0.
Exit status 1 with a one-line error when nothing can be indexed (bad arguments, a missing folder or model, a
library of another model).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import logging as transformers_logging

from .indexing import build_vector_index, index_dataset, index_videos
from .library_folder import LibraryError
from .vector_index import BACKENDS


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-index", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos-dir", type=Path, help="folder of video files to index")
    source.add_argument("--dataset", help="a dataset of lddetr-build-dataset (folder or Hub id): index its videos")
    parser.add_argument("--model", required=True, help="the LD-DETR model (folder or Hub id) that will search")
    parser.add_argument("--output-dir", required=True, type=Path, help="the library folder (created, or added to)")
    parser.add_argument("--clip-model", help="CLIP model for --videos-dir (default: the model's clip_feature_models)")
    parser.add_argument("--decode-workers", type=int, default=2, help="video decoding processes (--videos-dir)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--index-backend", choices=BACKENDS, default="exact",
                        help="exact: nothing more to build; faiss: also build faiss.index; qdrant: upload to Qdrant")
    parser.add_argument("--qdrant-location", default=":memory:", help="Qdrant folder (local mode) or server URL")
    parser.add_argument("--qdrant-collection", help="Qdrant collection (default: the library folder's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    report = None
    try:
        if args.dataset is not None:
            added = index_dataset(args.dataset, args.model, args.output_dir, not args.no_progress, args.device)
        else:
            added, report = index_videos(args.videos_dir, args.model, args.output_dir, args.clip_model,
                                         args.decode_workers, args.device, not args.no_progress)
        if added or args.index_backend != "exact":
            build_vector_index(args.output_dir, args.index_backend, args.qdrant_location, args.qdrant_collection)
    except (LibraryError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lddetr-index: error: {error}") from None
    if report is not None:
        print(f"some videos could not be read; listed in {report}", file=sys.stderr)
    print(f"{args.output_dir}: {added} videos added in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
