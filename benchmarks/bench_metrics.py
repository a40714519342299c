"""Time the official QVHighlights evaluation (every MR and HD metric) of a submission.

    python benchmarks/bench_metrics.py --predictions hl_val_submission.jsonl \
        --ground-truth data/highlight_val_release.jsonl [--repeats 5]

Prints the median and the fastest wall time of `eval_qvhighlights` over the repeats (the official evaluator's
sample submission of the 1550 validation queries takes a few seconds on one CPU core).
"""

import argparse
import json
import statistics
import time

from processing.evaluation.metrics import eval_qvhighlights


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="submission jsonl")
    parser.add_argument("--ground-truth", required=True, help="annotation jsonl of the same split")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    submission, ground_truth = read_jsonl(args.predictions), read_jsonl(args.ground_truth)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        eval_qvhighlights(submission, ground_truth)
        times.append(time.perf_counter() - start)
    print(
        f"eval_qvhighlights on {len(submission)} predictions: median {statistics.median(times):.2f} s, "
        f"fastest {min(times):.2f} s ({args.repeats} runs)"
    )


if __name__ == "__main__":
    main()
