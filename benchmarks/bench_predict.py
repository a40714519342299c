"""User-level throughput: `lddetr-predict-split` over the QVHighlights validation shape (1550 queries of
150-s videos), on synthetic features, with an untrained model of the default architecture.

    python benchmarks/bench_predict.py [--queries 1550] [--batch-size 32] [--workdir DIR]

The annotations are the embedded demo's validation rows, repeated under new qids up to `--queries` (each video keeps
its real duration and windows); the features are the demo's synthetic ones (SlowFast and CLIP of 128 dims, text
of 128), built with the real dataset builder. The command is run as a user runs it, through its console script, and
timed from start to exit (model loading and the submission file included). Prints seconds and queries/s.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hub_datasets import load_lddetr_dataset
from hub_datasets.build import build_dataset
from hub_datasets.demo import ANNOTATIONS_DIR, demo_spec
from hub_datasets.synthetic_features import write_synthetic_features
from modeling_lddetr import LDDetrConfig, LDDetrModel, LDDetrProcessor


def write_annotations(folder: Path, queries: int) -> None:
    """The demo's train rows, and its validation rows repeated under new qids up to `queries` rows."""
    folder.mkdir(parents=True)
    spec = demo_spec()
    shutil.copy(ANNOTATIONS_DIR / spec.split_files["train"], folder / spec.split_files["train"])
    rows = [
        json.loads(line) for line in (ANNOTATIONS_DIR / spec.split_files["validation"]).read_text().splitlines() if line
    ]
    first_new_qid = 1 + max(row["qid"] for row in rows)
    repeated = [
        {**rows[i % len(rows)], "qid": first_new_qid + i} if i >= len(rows) else rows[i] for i in range(queries)
    ]
    (folder / spec.split_files["validation"]).write_text("".join(json.dumps(row) + "\n" for row in repeated))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1550)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", help="keep the dataset and model here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lddetr-bench-predict-") as scratch:
        work = Path(args.workdir or scratch)
        spec = demo_spec()
        dataset = work / "dataset"
        if not dataset.exists():
            write_annotations(work / "annotations", args.queries)
            write_synthetic_features(spec, work / "annotations", work / "features")
            build_dataset(spec, work / "annotations", work / "features", dataset, progress=False)
        _, _, info = load_lddetr_dataset(dataset)
        processor = LDDetrProcessor.from_dataset_info(info)
        video_dim = processor.feature_extractor.model_video_feature_dim
        model = LDDetrModel(LDDetrConfig(video_feature_dim=video_dim, text_feature_dim=info["text_feature_dim"]))
        model.save_pretrained(work / "model")
        processor.save_pretrained(work / "model")

        command = [
            "lddetr-predict-split", "--model", str(work / "model"), "--dataset", str(dataset), "--split", "validation",
            "--output", str(work / "submission.jsonl"), "--batch-size", str(args.batch_size),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        written = sum(1 for _ in (work / "submission.jsonl").open())
    print(
        f"lddetr-predict-split, {written} queries (QVHighlights validation shape, batch {args.batch_size}), "
        f"default model, video dim {video_dim}:"
    )
    print(
        f"{seconds:.1f} s, {written / seconds:.1f} queries/s "
        "(process start to exit: imports, model loading and the submission included)"
    )
    if written != args.queries:
        sys.exit(f"expected {args.queries} predictions, got {written}")


if __name__ == "__main__":
    main()
