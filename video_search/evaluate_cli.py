"""lddetr-eval-library: video corpus moment retrieval on a library, with TVR's metrics, three ways side by side.

    lddetr-eval-library --library LIB --dataset datasets/qvhighlights-clip [--split validation] [--candidates 50]
    lddetr-eval-library --library LIB --ground-truth val.jsonl          # queries encoded with the library's CLIP
    lddetr-eval-library --demo                                          # the demo corpus (below)

Rows: stage 1 alone (the top videos, each with its best-scoring window), two stages (LD-DETR on stage 1's
candidates), and LD-DETR on every video of the library (the upper bound the candidates approximate); the last two
with the joint score and with the foreground probability alone (`moments.py`). Columns: R@1/5/10 at IoU 0.5 and
0.7 (a hit needs the right video and the IoU) and stage-1 video recall@1/5/10/50. With `--compare-clip-max`, a
row of video recall for the CLIP max-over-clips stage 1 (`embeddings.py`), the query embedding being the mean of
its token features: only meaningful where those live in the clip space (the demo's synthetic features do).

`--demo`: the embedded demo dataset's validation split as the corpus (its 102 videos indexed into
`--library`, default a temporary folder), with `--model` (default `lddetr-output`, what plain lddetr-train saves).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from hub_datasets import load_lddetr_dataset

from .corpus_metrics import moment_recalls, video_recalls
from .library import VideoLibrary
from .library_folder import LibraryError

MOMENTS_KEPT = 10  # R@10 needs no more


def read_queries(args: argparse.Namespace, library: VideoLibrary) -> tuple[list[np.ndarray], list[dict]]:
    """Per query its (N, Dt) token features and its ground truth (`vid`, `relevant_windows`)."""
    if args.dataset is not None:
        queries, _, _ = load_lddetr_dataset(args.dataset)
        if args.split not in queries:
            raise LibraryError(f"{args.dataset} has no split {args.split!r}; it has {list(queries)}")
        split = queries[args.split]
        truth = [{"vid": vid, "relevant_windows": w} for vid, w in zip(split["vid"], split["relevant_windows"])]
        return [row["text_features"] for row in split], truth
    rows = []
    with open(args.ground_truth, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise LibraryError(f"{args.ground_truth}:{number}: not valid JSON ({error})") from None
    missing = [number for number, row in enumerate(rows, 1) if not {"query", "vid", "relevant_windows"} <= set(row)]
    if missing:
        raise LibraryError(f"{args.ground_truth}: rows {missing[:5]} lack query, vid or relevant_windows")
    truth = [{"vid": row["vid"], "relevant_windows": row["relevant_windows"]} for row in rows]
    return [library.text_features(row["query"]) for row in rows], truth


def as_moments(results) -> list[dict]:
    return [{"vid": r.vid, "start": r.start, "end": r.end} for r in results]


def evaluate(library: VideoLibrary, texts, truth, candidates: int, every_video: bool, clip_max: bool,
             progress: bool = True) -> dict[str, dict]:
    library.shards.keep_in_memory()
    vids = library.shards.vids
    everything = np.arange(len(library))
    lists = {name: [] for name in ("stage 1 alone", "two stages", "two stages, foreground score",
                                   "every video", "every video, foreground score")}
    ranked_vids, clip_max_vids = [], []
    for text in tqdm(texts, desc="queries", unit="query", disable=not progress):
        query = library.embedder.queries([text])[0]
        similarities, rows = library.stage_one(text, max(candidates, 50))
        ranked_vids.append([vids[row] for row in rows])
        stage_one = []
        for similarity, row in zip(similarities[:MOMENTS_KEPT], rows[:MOMENTS_KEPT]):
            start, end, _ = library.best_window(int(row), query)
            stage_one.append({"vid": vids[row], "start": start, "end": end})
        lists["stage 1 alone"].append(stage_one)
        runs = [("two stages", rows[:candidates], similarities[:candidates])]
        if every_video:
            runs.append(("every video", everything, library.shards.embeddings @ query))
        for name, run_rows, run_similarities in runs:
            moments = library.rank_moments(text, run_rows, run_similarities)
            lists[name].append(as_moments(library.results(moments[:MOMENTS_KEPT], run_rows, run_similarities)))
            by_foreground = sorted(moments, key=lambda m: m.foreground, reverse=True)[:MOMENTS_KEPT]
            by_foreground = library.results(by_foreground, run_rows, run_similarities)
            lists[f"{name}, foreground score"].append(as_moments(by_foreground))
        if clip_max:
            _, clip_rows = library.clip_max_stage_one(np.asarray(text).mean(axis=0), 50)
            clip_max_vids.append([vids[row] for row in clip_rows])
    stage_one_recall = video_recalls(ranked_vids, truth)
    table = {}
    for name, ranked in lists.items():
        if ranked:
            with_recall = name.startswith(("stage", "two"))  # the rows that pass through stage 1
            table[name] = {**moment_recalls(ranked, truth), **(stage_one_recall if with_recall else {})}
    if clip_max:
        table["stage 1 clip-max (video recall only)"] = video_recalls(clip_max_vids, truth)
    return table


def format_table(table: dict[str, dict], candidates: int) -> str:
    columns = list(dict.fromkeys(key for row in table.values() for key in row))
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        label = name.replace("two stages", f"two stages ({candidates} candidates)")
        lines.append(f"| {label} | " + " | ".join(f"{row[c]:.2f}" if c in row else "" for c in columns) + " |")
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-eval-library", description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, help="library folder (lddetr-index); with --demo, where to index it")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--dataset", help="a built dataset: its --split's queries (token features) and windows")
    queries.add_argument("--ground-truth", type=Path, help="QVHighlights-style jsonl: query, vid, relevant_windows")
    queries.add_argument("--demo", action="store_true", help="the demo corpus: the demo dataset's validation split")
    parser.add_argument("--split", default="validation", help="split of --dataset (default: %(default)s)")
    parser.add_argument("--model", help="LD-DETR model (default: the library's; with --demo, lddetr-output)")
    parser.add_argument("--candidates", type=int, default=50, help="stage-1 candidates (default: %(default)s)")
    parser.add_argument("--no-every-video", action="store_true", help="skip the LD-DETR-on-every-video row")
    parser.add_argument("--compare-clip-max", action="store_true", help="add the clip-max stage 1's video recall")
    parser.add_argument("--output", type=Path, help="also write the table as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.demo and args.library is None:
        parser.error("--library is required (except with --demo)")
    if args.candidates < 1:
        parser.error(f"--candidates must be >= 1, got {args.candidates}")
    return args


def index_demo_corpus(args: argparse.Namespace, scratch: str) -> None:
    from hub_datasets.demo import demo_dataset_path

    from .indexing import index_dataset

    args.dataset = str(demo_dataset_path())
    args.model = args.model or "lddetr-output"
    if not Path(args.model).is_dir():
        raise LibraryError(f"no model folder {args.model}: run lddetr-train first, or pass --model")
    args.library = args.library or Path(scratch) / "demo-library"
    queries, _, _ = load_lddetr_dataset(args.dataset)
    corpus = set(queries[args.split]["vid"])
    index_dataset(args.dataset, args.model, args.library, progress=not args.no_progress, only=corpus)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_arguments(argv)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="lddetr-eval-library-") as scratch:
        try:
            if args.demo:
                index_demo_corpus(args, scratch)
            library = VideoLibrary(args.library, model=args.model)
            texts, truth = read_queries(args, library)
            table = evaluate(library, texts, truth, args.candidates, not args.no_every_video, args.compare_clip_max,
                             not args.no_progress)
        except (LibraryError, FileNotFoundError, ValueError) as error:
            raise SystemExit(f"lddetr-eval-library: error: {error}") from None
    absent = sum(row["vid"] not in library.shards.row_of for row in truth)
    print(f"{len(truth)} queries over {len(library)} videos" + (f" ({absent} queries' videos are not in the library)"
                                                                if absent else ""))
    print(format_table(table, args.candidates))
    if args.output is not None:
        args.output.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
