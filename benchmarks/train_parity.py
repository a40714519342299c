"""Training outcome of `lddetr-train` and of the official training loop on the same demo data, seed by seed.

    python benchmarks/train_parity.py --official-src ../ld-detr --seeds 42 43 44 45 46 --dropout on off

For every code, dropout setting and seed it trains once and prints, per epoch, MR R1@0.5, MR mAP and HL mAP
(HL-min-VeryGood) on the demo validation split, then the mean, min and max across seeds of the last epoch and of
the best epoch (by MR mAP, the model `lddetr-train` saves).

- lddetr: the installed `lddetr-train` console script, run as a user runs it (`--seed S`, and with `--dropout off`
  `--config_overrides` setting every dropout to 0), its per-epoch evaluations read from its output.
- official: the official LD_DETR, SetCriterion (matcher and losses), AdamW and CosineAnnealingLR of a checkout you
  fetched (`--official-src`, the root of a qingchen239/ld-detr checkout; nothing of it is in this repository), run by
  the official loop's steps (forward with epoch_i / batch_idx / train_loader_length, the weighted loss, clipping,
  AdamW, the cosine stepped per epoch) over the same batches: this package's collator on the demo dataset, the same
  preset's architecture, batch size, lr, weight decay, clipping and epochs. The official code hard-codes the FFN
  width and a sine embedding of 256 channels: both are set to the preset's sizes at run time (the checkout is not
  changed). Its outputs are post-processed and scored by this package's (official-equivalent) evaluation.
The official decoder makes one pass whatever its loop count (reference §0.1); lddetr trains the paper's default.
`--official-fixes` gives the official runs, at run time, the fixes of its T2V mask and of its unmasked global
features (official_code.official_fixes), to tell which bug a difference in outcome comes from.
Each run is a subprocess, so runs do not share a torch generator or threads.
"""

import argparse
import ast
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from official_code import OFFICIAL_FIXES

DROPOUT_FIELDS = (
    "unimodal_dropout",
    "context_query_dropout",
    "attention_dropout",
    "activation_dropout",
    "hidden_dropout",
)
METRICS = {"R1@0.5": "MR-full-R1@0.5", "mAP": "MR-full-mAP", "HL mAP": "HL-min-VeryGood-mAP"}


def lddetr_run(seed: int, dropout: bool, preset: str, extra: list[str]) -> list[dict]:
    """lddetr-train through its entry point; the per-epoch evaluations from its log lines."""
    with tempfile.TemporaryDirectory(prefix="lddetr-parity-") as output_dir:
        # the command a user runs (checkpoints and the best model's export included), so that its time is theirs
        command = ["lddetr-train", "--preset", preset, "--seed", str(seed), "--output_dir", output_dir]
        if not dropout:
            command += ["--config_overrides", ",".join(f"{name}=0" for name in DROPOUT_FIELDS)]
        result = subprocess.run(command + extra, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    epochs, seen = [], []
    for line in result.stdout.splitlines():
        if line.startswith("{'eval_"):
            logged = ast.literal_eval(line)
            if "eval_MR-full-mAP" in logged and logged["epoch"] not in seen:  # not the saved model's evaluation
                seen.append(logged["epoch"])
                epochs.append({name: float(logged[f"eval_{key}"]) for name, key in METRICS.items()})
    return epochs


def official_run(
    official_src: str,
    seed: int,
    dropout: bool,
    preset: str,
    epochs: int | None,
    fixes: tuple[str, ...] = (),
    our_model: bool = False,
) -> list[dict]:
    """The official training loop in this process, with the run-time `fixes` of official_code.official_fixes; the
    per-epoch evaluations. our_model: the loop trains this package's model instead (the official model's initial
    weights converted, one decoder pass as the official one), so that a difference between the codes' outcomes can
    be put on the model or on the loop."""
    import functools

    import torch
    from official_code import (
        OfficialModel,
        lddetr_model_of,
        load_official_code,
        official_cuda_calls_stay_on,
        official_dropout_off,
        official_fixes,
        official_options,
    )
    from transformers import set_seed

    from hub_datasets import load_lddetr_dataset
    from hub_datasets.demo import demo_dataset_path
    from modeling_lddetr import LDDetrDataCollator, LDDetrProcessor
    from modeling_lddetr.position_encoding import anchor_sine_embedding
    from training_scripts.presets import COMMON_TRAINING, PRESETS

    recipe = dict(COMMON_TRAINING, **PRESETS[preset]["training"])
    sizes = PRESETS[preset]["model"]
    hidden, ffn = sizes.get("hidden_size", 256), sizes.get("ffn_dim", 1024)
    set_seed(seed)
    queries, videos, info = load_lddetr_dataset(str(demo_dataset_path()))
    processor = LDDetrProcessor.from_dataset_info(info)
    collator = LDDetrDataCollator(processor, videos, seed=seed)

    model_module = load_official_code(official_src)
    methods, transformer = sys.modules["ld_detr.methods"], sys.modules["ld_detr.transformer"]
    model_module.ConvolutionalFuser = functools.partial(methods.ConvolutionalFuser, dim_feedforward=ffn)
    model_module.LoopDecoder = functools.partial(methods.LoopDecoder, dim_feedforward=ffn)
    transformer.gen_sineembed_for_position = lambda anchors: anchor_sine_embedding(anchors, hidden)
    fe = processor.feature_extractor
    options = official_options(fe.model_video_feature_dim, fe.text_feature_dim, sizes.get("queue_length", 65536))
    options.hidden_dim = hidden
    options.num_convolutional_blocks = sizes.get("num_convolutional_blocks", 5)
    options.num_queries = sizes.get("num_queries", 10)
    options.grad_clip = recipe["max_grad_norm"]
    model, criterion = model_module.build_model(options)
    if not dropout:
        official_dropout_off(model)
    official_fixes(model, fixes)
    if our_model:
        model = lddetr_model_of(model, options, **({} if dropout else dict.fromkeys(DROPOUT_FIELDS, 0.0)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
    epochs = epochs or int(recipe["num_train_epochs"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    train_rows, eval_rows = queries["train"], queries["validation"]
    batch_size, eval_batch = recipe["per_device_train_batch_size"], recipe["per_device_eval_batch_size"]
    generator = torch.Generator().manual_seed(seed)
    history = []
    with official_cuda_calls_stay_on(torch.device("cpu")):
        for epoch in range(epochs):
            model.train()
            criterion.train()
            order = torch.randperm(len(train_rows), generator=generator).tolist()
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            for batch_index, indices in enumerate(batches):
                batch = collator([train_rows[i] for i in indices])
                if our_model:
                    model.set_training_progress(epoch + batch_index / len(batches))
                    batch.pop("meta")
                    loss = model(**batch).loss
                else:
                    labels, clips = batch["labels"], batch["video_features"].shape[1]
                    targets = OfficialModel.targets(labels, clips, torch.device("cpu"))
                    outputs = model(
                        **OfficialModel.inputs(batch),
                        epoch_i=epoch,
                        batch_idx=batch_index,
                        train_loader_length=len(batches),
                        targets=targets,
                        is_training=True,
                    )
                    loss_dict = criterion(outputs, targets)
                    weights = criterion.weight_dict
                    loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
                optimizer.zero_grad()
                loss.backward()
                if options.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
                optimizer.step()
            scheduler.step()
            history.append(official_evaluation(model, processor, collator, eval_rows, eval_batch, info))
            print(json.dumps({"epoch": epoch + 1, **history[-1]}), file=sys.stderr, flush=True)
    return history


def official_evaluation(model, processor, collator, rows, batch_size: int, info: dict) -> dict:
    """The official model's predictions on `rows`, post-processed and scored as lddetr-train scores its own."""
    from types import SimpleNamespace

    import torch

    from modeling_lddetr import LDDetrModel
    from processing.evaluation.metrics import evaluate_submission
    from training_scripts.prediction import ground_truth_records

    model.eval()
    records = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        meta = batch.pop("meta")
        batch.pop("labels", None)
        with torch.no_grad():
            if isinstance(model, LDDetrModel):
                outputs = model(**batch)
            else:
                out = model(
                    src_txt=batch["text_features"],
                    src_txt_mask=batch["text_attention_mask"],
                    src_vid=batch["video_features"],
                    src_vid_mask=batch["video_attention_mask"],
                    is_training=False,
                )
                outputs = SimpleNamespace(
                    logits=out["pred_logits"], pred_spans=out["pred_spans"], saliency_scores=out["saliency_scores"]
                )
        records += processor.post_process(
            outputs,
            batch["video_attention_mask"],
            meta["duration"],
            qids=meta["qid"],
            queries=meta["query"],
            vids=meta["vid"],
        )
    metrics = evaluate_submission(
        records, ground_truth_records(rows), info["dataset_type"], clip_length=float(info["clip_length"])
    )
    return {name: float(metrics[key]) for name, key in METRICS.items()}


def summary(values: list[float]) -> str:
    return f"{min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"


def print_table(code: str, dropout: bool, runs: dict[int, list[dict]], seconds: dict[int, float]) -> None:
    print(f"\n## {code}, dropout {'on' if dropout else 'off'}")
    for name in METRICS:
        print(f"\n{name} per epoch")
        for seed, epochs in runs.items():
            print(f"  seed {seed}: " + " ".join(f"{e[name]:5.1f}" for e in epochs) + f"   ({seconds[seed]:.0f} s)")
    print(f"\nacross seeds {' '.join(str(seed) for seed in runs)}: min median max")
    for name in METRICS:
        print(f"  last {name:8s}   {summary([epochs[-1][name] for epochs in runs.values()])}")
    for name in METRICS:
        best = [max(epochs, key=lambda e: e["mAP"])[name] for epochs in runs.values()]
        print(f"  best {name:8s}   {summary(best)}   (the epoch with the best MR mAP)")
    firsts = []
    for epochs in runs.values():
        firsts.append(next((i + 1 for i, e in enumerate(epochs) if e["R1@0.5"] >= 40), math.inf))
    print(f"  first epoch with R1@0.5 >= 40: {' '.join(str(f) for f in firsts)}")


def read_tables(paths: list[str]) -> dict[tuple[str, bool], tuple[dict, dict]]:
    """The per-epoch rows that earlier runs of this script printed (e.g. one seed each, run side by side), by
    (code, dropout)."""
    tables: dict[tuple[str, bool], tuple[dict, dict]] = {}
    for path in paths:
        key, metric = None, None
        for line in open(path, encoding="utf-8"):
            line = line.rstrip()
            if line.startswith("## "):
                code, dropout = line[3:].split(", dropout ")
                key = (code, dropout == "on")
                tables.setdefault(key, ({}, {}))
            elif line.endswith(" per epoch"):
                metric = line.removesuffix(" per epoch")
            elif key and metric and line.startswith("  seed "):
                seed_part, values = line[len("  seed ") :].split(":", 1)
                values, seconds = values.rsplit("(", 1)
                runs, times = tables[key]
                epochs = runs.setdefault(int(seed_part), [{} for _ in values.split()])
                for epoch, value in zip(epochs, values.split()):
                    epoch[metric] = float(value)
                times[int(seed_part)] = float(seconds.removesuffix(" s)"))
            elif not line.startswith("  "):
                metric = None if line.startswith("across") else metric
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", help="root of a qingchen239/ld-detr checkout (omit to train lddetr only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--dropout", choices=["on", "off"], nargs="+", default=["on", "off"])
    parser.add_argument(
        "--codes",
        choices=["lddetr", "official", "lddetr-in-official-loop"],
        nargs="+",
        default=["lddetr", "official"],
        help="lddetr-in-official-loop: this package's model trained by the official loop (needs --official-src)",
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument(
        "--official-fixes",
        nargs="+",
        default=[],
        choices=OFFICIAL_FIXES,
        help="fix these official bugs at run time in the official runs (official_code.official_fixes)",
    )
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the preset's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument(
        "--summarize", nargs="+", metavar="LOG", help="print the tables of earlier runs' outputs, merged"
    )
    parser.add_argument("--_official-run", dest="official_run", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.epochs:
        extra += ["--num_train_epochs", str(args.epochs)]
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.summarize:
        for (code, dropout), (runs, seconds) in sorted(
            read_tables(args.summarize).items(), key=lambda item: (not item[0][1], item[0][0])
        ):
            print_table(code, dropout, dict(sorted(runs.items())), seconds)
        return
    if args.official_run:  # the child process of one official run: its history as JSON on stdout
        seed, dropout, our_model = json.loads(args.official_run)
        fixes = tuple(args.official_fixes)
        history = official_run(args.official_src, seed, dropout, args.preset, args.epochs, fixes, our_model)
        print(json.dumps(history))
        return
    codes = [c for c in args.codes if c == "lddetr" or args.official_src]
    if codes != args.codes:
        print("no --official-src: training lddetr only", file=sys.stderr)
    for dropout in (d == "on" for d in args.dropout):
        for code in codes:
            runs, seconds = {}, {}
            for seed in args.seeds:
                start = time.perf_counter()
                if code == "lddetr":
                    runs[seed] = lddetr_run(seed, dropout, args.preset, extra)
                else:
                    command = [
                        sys.executable,
                        __file__,
                        "--official-src",
                        args.official_src,
                        "--preset",
                        args.preset,
                        "--_official-run",
                        json.dumps([seed, dropout, code == "lddetr-in-official-loop"]),
                    ]
                    command += ["--epochs", str(args.epochs)] if args.epochs else []
                    command += ["--official-fixes", *args.official_fixes] if args.official_fixes else []
                    result = subprocess.run(command, capture_output=True, text=True)
                    if result.returncode != 0:
                        raise SystemExit(f"the official run (seed {seed}) failed:\n{result.stderr[-3000:]}")
                    runs[seed] = json.loads(result.stdout.splitlines()[-1])
                seconds[seed] = time.perf_counter() - start
                print(
                    f"{code} dropout {'on' if dropout else 'off'} seed {seed}: last "
                    + " ".join(f"{k} {v:.2f}" for k, v in runs[seed][-1].items()),
                    file=sys.stderr,
                    flush=True,
                )
            print_table(label(code, args.official_fixes), dropout, runs, seconds)


def label(code: str, fixes: list[str]) -> str:
    """The code's name in the tables: the official runs name their run-time fixes."""
    return "+".join([code, *fixes]) if code == "official" else code


if __name__ == "__main__":
    main()
