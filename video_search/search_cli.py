"""lddetr-search: the best moments for one query across every video of a library.

    lddetr-search LIB "a dog jumps into a pool" [--top-k 10] [--candidates 50] [--output results.json]
        [--index-backend exact|faiss|qdrant] [--qdrant-location URL] [--score joint|foreground] [--model MODEL]

Prints one moment per line (rank, vid, start-end seconds, score, video path) and, with --output, writes them as JSON:
`{"query", "results": [{"vid", "path", "start", "end", "score", "foreground", "similarity"}], "seconds"}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from transformers.utils import logging as transformers_logging

from .library import DEFAULT_CANDIDATES, VideoLibrary
from .library_folder import LibraryError
from .moments import SCORES
from .vector_index import BACKENDS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-search", description=__doc__.split("\n\n")[0])
    parser.add_argument("library", type=Path, help="library folder (lddetr-index --output-dir)")
    parser.add_argument("query", help="what happens in the moment you are looking for")
    parser.add_argument("--top-k", type=positive_int, default=10, help="moments to return (default: %(default)s)")
    parser.add_argument("--candidates", type=positive_int, default=DEFAULT_CANDIDATES,
                        help="videos stage 1 passes to LD-DETR (default: %(default)s)")
    parser.add_argument("--score", choices=SCORES, default="joint", help="how moments of different videos are ranked")
    parser.add_argument("--model", help="LD-DETR model (default: the one the library was indexed with)")
    parser.add_argument("--index-backend", choices=BACKENDS, default="exact", help="stage-1 index (default: exact)")
    parser.add_argument("--qdrant-location", default=":memory:", help="Qdrant folder (local mode) or server URL")
    parser.add_argument("--qdrant-collection", help="Qdrant collection (default: the library folder's name)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--output", type=Path, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        library = VideoLibrary(args.library, model=args.model, index_backend=args.index_backend,
                               qdrant_location=args.qdrant_location, qdrant_collection=args.qdrant_collection,
                               device=args.device)
        results = library.search(args.query, top_k=args.top_k, candidates=args.candidates, score=args.score)
    except (LibraryError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lddetr-search: error: {error}") from None
    timings = library.timings
    for rank, result in enumerate(results, 1):
        print(f"{rank:3d}. {result.vid}  {result.start:.1f}-{result.end:.1f} s  score {result.score:.4f}  "
              f"{result.path or ''}".rstrip())
    seconds = {"stage_one": timings.stage_one, "read_features": timings.read_features, "stage_two": timings.stage_two}
    print(
        f"{len(library)} videos, {min(args.candidates, len(library))} candidates: "
        f"stage 1 {seconds['stage_one']:.3f} s, "
        f"features {seconds['read_features']:.3f} s, LD-DETR {seconds['stage_two']:.3f} s",
        file=sys.stderr,
    )
    if args.output is not None:
        document = {"query": args.query, "results": [r.as_dict() for r in results], "seconds": seconds}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
