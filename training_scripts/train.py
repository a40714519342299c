"""Train LD-DETR (`lddetr-train`, `python -m training_scripts.train`, or `python training_scripts/train.py`).

    lddetr-train                                   # the embedded demo data, a few minutes on 2 CPU cores
    lddetr-train --dataset DIR --preset qvhighlights --output_dir runs/qvh --seed 1
    torchrun --nproc_per_node 4 training_scripts/train.py --dataset DIR --per_device_train_batch_size 8
    accelerate launch --config_file training_scripts/accelerate_configs/multi_gpu.yaml training_scripts/train.py ...

`--dataset` is a folder written by `lddetr-build-dataset` or a Hub dataset id. Any `TrainingArguments` field can be
overridden (`--num_train_epochs 5`, `--bf16 true`, `--resume_from_checkpoint DIR`, ...); the preset only sets their
defaults. The final model (without the Distill Align queues), processor and model card are saved to `--output_dir`.
Run as a file (torchrun, accelerate launch), it imports the installed package (`pip install -e .`); from the
repository root, launchers' `-m training_scripts.train` needs no install.
"""

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from huggingface_hub import HfApi
from transformers import HfArgumentParser, set_seed

from hub_datasets import load_lddetr_dataset
from hub_datasets.demo import demo_dataset_path
from hub_datasets.hub import dataset_file
from modeling_lddetr import LDDetrConfig, LDDetrModel, LDDetrProcessor
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from processing.inference.pipeline import CLIP_FEATURE_MODELS_FILE
from training_scripts.dataset_checks import (
    DatasetProblem,
    check_columns,
    check_labels,
    check_model_inputs,
    check_preset,
    check_splits,
)
from training_scripts.metrics_table import format_table
from training_scripts.model_card import model_card
from training_scripts.presets import COMMON_TRAINING, PRESETS, preset_for_dataset
from training_scripts.trainer import LDDetrTrainer, LDDetrTrainingArguments


@dataclass
class ScriptArguments:
    dataset: str | None = field(
        default=None, metadata={"help": "dataset folder or Hub id (default: the embedded demo data)"}
    )
    preset: str | None = field(default=None, metadata={"help": f"one of {sorted(PRESETS)}; default: from the dataset"})
    init_from: str | None = field(
        default=None, metadata={"help": "start from this pretrained LD-DETR folder or Hub id"}
    )
    num_decoder_loops: int | None = field(default=None, metadata={"help": "Loop Decoder passes (paper: 3)"})
    sync_batchnorm: bool = field(default=False, metadata={"help": "synchronise BatchNorm statistics across processes"})
    domain: str | None = field(
        default=None, metadata={"help": "TVSum: train and evaluate on this domain (video category) only"}
    )
    train_split: str = "train"
    eval_split: str | None = field(
        default=None, metadata={"help": "default: validation, or test where there is none (Charades-STA)"}
    )
    evaluate_before_training: bool = field(default=False, metadata={"help": "report the metrics of the initial model"})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "model config fields over the preset's, e.g. 'hidden_dropout=0,attention_dropout=0' "
            "(not with --init_from)"
        },
    )


def parse_config_overrides(text: str | None) -> dict:
    """'name=value,name=value' -> {name: value}, each value typed as the LDDetrConfig field it sets."""
    if not text:
        return {}
    defaults = LDDetrConfig()
    overrides = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not hasattr(defaults, name):
            raise SystemExit(
                f"lddetr-train: error: --config_overrides {item!r}: expected name=value with an LDDetrConfig field"
            )
        kind = type(getattr(defaults, name))
        try:
            overrides[name] = value.strip().lower() in ("1", "true", "yes") if kind is bool else kind(value.strip())
        except ValueError:
            raise SystemExit(
                f"lddetr-train: error: --config_overrides {item!r}: {value!r} is not a {kind.__name__}"
            ) from None
    return overrides


def model_config_for(processor: LDDetrProcessor, **overrides) -> LDDetrConfig:
    """The model's input dims follow the processor: video feature types (+ 2 tef columns), text, audio."""
    fe = processor.feature_extractor
    return LDDetrConfig(
        video_feature_dim=fe.model_video_feature_dim,
        text_feature_dim=fe.text_feature_dim,
        audio_feature_dim=fe.model_audio_feature_dim,
        clip_length=float(fe.clip_length),
        max_video_clips=fe.max_video_clips,
        max_text_tokens=fe.max_text_tokens,
        **overrides,
    )


def select_domain(queries, domain: str):
    """The rows of one TVSum domain in every split (the paper trains and reports each domain separately)."""
    if "domain" not in queries[next(iter(queries))].column_names:
        raise SystemExit("--domain needs a dataset with a domain column (TVSum)")
    selected = queries.filter(lambda value: value == domain, input_columns="domain")
    if any(len(split) == 0 for split in selected.values()):
        domains = sorted(set(queries[next(iter(queries))]["domain"]))
        raise SystemExit(f"no rows of domain {domain!r} in some split; the domains are {domains}")
    return selected


def parse_training_arguments(remaining: list[str], preset: str) -> LDDetrTrainingArguments:
    """LDDetrTrainingArguments from the command line, with the preset's values as defaults."""
    parser = HfArgumentParser(LDDetrTrainingArguments)
    parser.set_defaults(**dict(COMMON_TRAINING, output_dir="lddetr-output", seed=42, **PRESETS[preset]["training"]))
    # without a GPU: pinned memory only warns, and use_cpu is what makes torchrun's processes one gloo DDP job
    # (with a CUDA build of torch on a CPU machine, Trainer otherwise runs each process alone)
    has_gpu = torch.cuda.is_available()
    parser.set_defaults(dataloader_pin_memory=has_gpu, use_cpu=not has_gpu)
    (training_args,) = parser.parse_args_into_dataclasses(remaining)
    return training_args


def official_metrics(metrics: dict, prefix: str) -> dict:
    """The official metrics of an evaluation (not the loss terms), without the prefix."""
    return {
        k.removeprefix(f"{prefix}_"): v
        for k, v in metrics.items()
        if not k.startswith(f"{prefix}_loss") and k != "epoch"
    }


def print_metrics(trainer: LDDetrTrainer, title: str, metrics: dict, prefix: str) -> None:
    """The official metrics as a table, once."""
    if trainer.is_world_process_zero():
        print(f"\n{title}\n{format_table(official_metrics(metrics, prefix))}", flush=True)


def describe_saved_model(trainer: LDDetrTrainer) -> str:
    """Which epoch's model training ends with: the best by metric_for_best_model when it is loaded at the end."""
    state, args = trainer.state, trainer.args
    if args.load_best_model_at_end and state.best_model_checkpoint:
        key = (
            args.metric_for_best_model
            if args.metric_for_best_model.startswith("eval_")
            else f"eval_{args.metric_for_best_model}"
        )
        best_epoch = next(entry["epoch"] for entry in state.log_history if entry.get(key) == state.best_metric)
        return f"epoch {best_epoch:g} of {args.num_train_epochs:g}, the best by {args.metric_for_best_model}"
    return f"the last model, epoch {round(state.epoch or 0, 2):g}"


def main(argv: list[str] | None = None) -> None:
    try:
        train(argv)
    # a mistyped --dataset folder, or a dataset that training cannot use (dataset_checks.py): one line
    except (FileNotFoundError, NotADirectoryError, DatasetProblem) as error:
        raise SystemExit(f"lddetr-train: error: {error}") from None


def load_dataset_for_training(dataset_path: str, name: str):
    """(queries, videos, info, processor) of a dataset, a malformed folder or info as a DatasetProblem."""
    # the parquet shards load in seconds: without datasets' "Generating split" bars, a problem is the one line
    bars_were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        queries, videos, info = load_lddetr_dataset(dataset_path)
        processor = LDDetrProcessor.from_dataset_info(info)
    except (KeyError, ValueError) as error:
        raise DatasetProblem(f"{name}: {error}: rebuild it with lddetr-build-dataset") from None
    finally:
        if not bars_were_disabled:
            enable_progress_bars()
    return queries, videos, info, processor


def check_dataset(name: str, queries, videos, info: dict, processor: LDDetrProcessor, splits: dict[str, str]) -> None:
    """The columns and labels of both splits (dataset_checks.py), before any time is spent on a model."""
    scheme = processor.feature_extractor.saliency_label_type
    for split in dict.fromkeys(splits.values()):
        check_columns(name, split, queries[split], videos, info, scheme)
        check_labels(name, split, queries[split], processor)


def train(argv: list[str] | None = None) -> dict:
    """Run the training the command line describes; returns the final evaluation metrics."""
    argv = sys.argv[1:] if argv is None else argv
    script_args, remaining = HfArgumentParser(ScriptArguments).parse_known_args(argv)
    dataset_path = script_args.dataset or str(demo_dataset_path())
    name = f"dataset {script_args.dataset}" if script_args.dataset else "the demo dataset"
    queries, videos, info, processor = load_dataset_for_training(dataset_path, name)
    default_preset = "demo" if script_args.dataset is None else preset_for_dataset(info["dataset_type"])
    preset = script_args.preset or default_preset
    if preset not in PRESETS:
        raise SystemExit(f"unknown --preset {preset!r}; choose from {sorted(PRESETS)}")
    check_preset(name, processor.feature_extractor.saliency_label_type, preset, default_preset)
    training_args = parse_training_arguments(remaining, preset)
    set_seed(training_args.seed)
    eval_split = script_args.eval_split or ("validation" if "validation" in queries else "test")
    splits = {"--train_split": script_args.train_split, "--eval_split": eval_split}
    check_splits(name, queries, splits)
    if script_args.domain is not None:
        queries = select_domain(queries, script_args.domain)
    check_dataset(name, queries, videos, info, processor, splits)

    # the Trainer would push every checkpoint (queues included); the final export is pushed below instead
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False

    overrides = dict(PRESETS[preset]["model"], sync_batchnorm=script_args.sync_batchnorm)
    if script_args.num_decoder_loops is not None:
        overrides["num_decoder_loops"] = script_args.num_decoder_loops
    overrides.update(parse_config_overrides(script_args.config_overrides))
    if script_args.init_from:
        model = LDDetrModel.from_pretrained(script_args.init_from)
        check_model_inputs(name, model.config, processor, script_args.init_from)
    else:
        model = LDDetrModel(model_config_for(processor, **overrides))

    trainer = LDDetrTrainer(
        model=model,
        args=training_args,
        train_dataset=queries[script_args.train_split],
        eval_dataset=queries[eval_split],
        data_collator=LDDetrDataCollator(processor, videos),
        processing_class=processor,
        dataset_type=info["dataset_type"],
        clip_length=float(info["clip_length"]),
    )
    if script_args.evaluate_before_training:
        # evaluating draws from the global torch generator (a DataLoader's base seed): fork it, so that the flag
        # reports the initial model without changing the training that follows
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            initial = trainer.evaluate(metric_key_prefix="initial")
        print_metrics(trainer, f"{eval_split} metrics before training", initial, "initial")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    which_model = describe_saved_model(trainer)
    print_metrics(trainer, f"{eval_split} metrics of the saved model ({which_model})", metrics, "eval")

    if trainer.is_world_process_zero():
        model.save_pretrained(training_args.output_dir)  # inference export: no queues
        processor.save_pretrained(training_args.output_dir)
        # a dataset extracted from raw videos names its CLIP models: beside the model, the pipeline uses the same
        clip_models = dataset_file(dataset_path, CLIP_FEATURE_MODELS_FILE)
        if clip_models is not None:
            shutil.copyfile(clip_models, Path(training_args.output_dir) / CLIP_FEATURE_MODELS_FILE)
        repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
        card = model_card(
            model_id=repo_id if push_to_hub else training_args.output_dir,
            dataset=script_args.dataset,
            info=info,
            preset=preset,
            arguments=argv,
            training_args=training_args,
            metrics=official_metrics(metrics, "eval"),
            which_model=which_model,
            eval_split=eval_split,
        )
        card.save(Path(training_args.output_dir) / "README.md")
        if push_to_hub:
            model.push_to_hub(repo_id, private=training_args.hub_private_repo)
            processor.push_to_hub(repo_id, private=training_args.hub_private_repo)
            if clip_models is not None:
                HfApi().upload_file(path_or_fileobj=clip_models, path_in_repo=CLIP_FEATURE_MODELS_FILE, repo_id=repo_id)
            card.push_to_hub(repo_id)
        print(f"saved the trained model, processor and model card to {training_args.output_dir}")
    # every process leaves together and closes its process group: a rank that exited while rank 0 was still
    # saving aborted in the group's teardown ("terminate called without an active exception", seen in CI)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
