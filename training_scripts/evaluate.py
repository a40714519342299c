"""lddetr-eval: score a submission (official jsonl format) against ground-truth annotations.

    lddetr-eval --predictions preds.jsonl --ground-truth highlight_val_release.jsonl --output metrics.json

Prints the brief metrics as a table and, with --output, writes the full report as JSON (the official layout for
QVHighlights).
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_lddetr.dataset_types import DATASET_TYPES
from processing.evaluation.metrics import compute_metrics

from .metrics_table import format_table


def load_jsonl(path: str | Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from None
    return records


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-eval", description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True, help="submission jsonl: one record per query")
    parser.add_argument("--ground-truth", required=True, help="annotation jsonl of the split")
    parser.add_argument("--output", help="where to write the full metrics as JSON")
    parser.add_argument(
        "--dataset", choices=sorted(DATASET_TYPES), default="qvhighlights", help="which metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--clip-length",
        type=float,
        default=2.0,
        help="seconds per clip of the highlight ground truth (default: %(default)s)",
    )
    parser.add_argument(
        "--shared-qids-only",
        action="store_true",
        help="evaluate the qids present in both files instead of requiring the same qids (official match_number=False)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        metrics = compute_metrics(
            load_jsonl(args.predictions),
            load_jsonl(args.ground_truth),
            dataset_type=args.dataset,
            clip_length=args.clip_length,
            match_number=not args.shared_qids_only,
        )
    except (OSError, ValueError) as error:
        print(f"lddetr-eval: error: {error}", file=sys.stderr)
        return 1
    print(format_table(metrics["brief"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(metrics, indent=4) + "\n", encoding="utf-8")
        print(f"full metrics written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
