"""lddetr-predict-split: write the official submission jsonl of a trained model on a dataset split.

    lddetr-predict-split --model lddetr-output --dataset DIR --split test --output hl_test_submission.jsonl
    lddetr-predict-split --model lddetr-output --split validation --output val.jsonl --metrics val_metrics.json

Works on splits without labels (the QVHighlights test split, which the official code cannot predict) and scores the
split with the official metrics when it has ground truth and `--metrics` is given. `--dataset` is a folder written
by `lddetr-build-dataset` or a Hub dataset id (default: the embedded demo data).
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hub_datasets import load_lddetr_dataset
from hub_datasets.demo import demo_dataset_path
from modeling_lddetr import LDDetrDataCollator, LDDetrModel, LDDetrProcessor, write_submission
from modeling_lddetr.dataset_types import dataset_type as registered_dataset_type
from processing.evaluation.metrics import compute_metrics
from processing.hub_ids import require_folder_or_hub_id
from processing.video.precision import DTYPE_CHOICES, resolve_dtype

from .metrics_table import format_table
from .prediction import ground_truth_records, predict_records

# the label columns of a `queries` split, which prediction does not read
LABEL_COLUMNS = ("relevant_windows", "relevant_clip_ids", "saliency_scores", "label")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-predict-split", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained LD-DETR folder or Hub id (model and processor)")
    parser.add_argument("--dataset", help="dataset folder or Hub id (default: the embedded demo data)")
    parser.add_argument("--split", default="validation", help="split to predict (default: %(default)s)")
    parser.add_argument("--output", required=True, help="submission jsonl to write")
    parser.add_argument(
        "--metrics", help="also score the split (it must have ground truth) and write the full report here"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=10, help="windows kept per query (default: %(default)s)")
    parser.add_argument(
        "--nms-threshold", type=float, help="temporal NMS IoU threshold (default: no NMS, as the paper)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="what the model computes in, by autocast (default: auto: bf16 where the CPU or GPU has "
        "bf16 units, else float32)",
    )
    return parser.parse_args(argv)


def check_feature_widths(processor: LDDetrProcessor, info: dict) -> None:
    """The model's processor takes the dataset's features (a ValueError naming both widths otherwise)."""
    fe = processor.feature_extractor
    model_widths = (sum(fe.video_feature_dims), fe.text_feature_dim)
    dataset_widths = (sum(int(d) for d in info["video_feature_dims"]), int(info["text_feature_dim"]))
    if model_widths != dataset_widths:
        raise ValueError(
            f"the model takes video and text features of widths {model_widths}, the dataset has {dataset_widths}: "
            "predict with a model trained on features like the dataset's"
        )


def has_ground_truth(records: list[dict], dataset_type: str) -> bool:
    key = registered_dataset_type(dataset_type).ground_truth_key
    return bool(records) and all(record.get(key) is not None for record in records)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        require_folder_or_hub_id(args.model, "model")  # before the dataset is loaded, which takes a while
        dtype = resolve_dtype(args.dtype, args.device)
        queries, videos, info = load_lddetr_dataset(args.dataset or demo_dataset_path())
        if args.split not in queries:
            raise ValueError(f"the dataset has no split {args.split!r}; it has {sorted(queries)}")
        model = LDDetrModel.from_pretrained(args.model).to(args.device)
        processor = LDDetrProcessor.from_pretrained(args.model)
        check_feature_widths(processor, info)
    except (OSError, ValueError) as error:
        print(f"lddetr-predict-split: error: {error}", file=sys.stderr)
        return 1

    split = queries[args.split]
    # prediction reads no labels: so a split without them (a test split) and a model trained with another
    # saliency-label scheme than the dataset's predict alike
    unlabelled = split.remove_columns([column for column in LABEL_COLUMNS if column in split.column_names])
    collator = LDDetrDataCollator(processor, videos, seed=0)
    loader = DataLoader(unlabelled, batch_size=args.batch_size, collate_fn=collator)
    batches = tqdm(loader, desc=f"predicting {args.split}", unit="batch")
    # fp32 weights under autocast: the model's anchors and sine encodings stay fp32
    precision = contextlib.nullcontext()
    if dtype != torch.float32:
        precision = torch.autocast(torch.device(args.device).type, dtype=dtype)
    with precision, torch.no_grad():
        records, _ = predict_records(
            model, processor, batches, args.device, top_k=args.top_k, nms_threshold=args.nms_threshold
        )
    write_submission(records, args.output)
    print(f"{len(records)} predictions written to {args.output}")

    if args.metrics:
        ground_truth = ground_truth_records(split)
        if not has_ground_truth(ground_truth, info["dataset_type"]):
            print(f"lddetr-predict-split: error: split {args.split!r} has no ground truth to score", file=sys.stderr)
            return 1
        metrics = compute_metrics(
            records, ground_truth, dataset_type=info["dataset_type"], clip_length=float(info["clip_length"])
        )
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(metrics, indent=4) + "\n", encoding="utf-8")
        print(format_table(metrics["brief"]))
        print(f"full metrics written to {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
