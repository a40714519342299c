"""LDDetrTrainer on the embedded demo data: the loss goes down, resuming is exact, DDP ranks agree."""

import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_SIZES
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import set_seed

from hub_datasets import load_lddetr_dataset
from hub_datasets.demo import demo_dataset_path
from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from training_scripts.train import main as train_main
from training_scripts.train import model_config_for, parse_training_arguments
from training_scripts.train import train as train_main_metrics
from training_scripts.trainer import LDDetrTrainer, LDDetrTrainingArguments, epoch_cosine_schedule

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(TINY_SIZES, queue_length=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    os.environ["LDDETR_CACHE"] = str(tmp_path_factory.mktemp("lddetr-cache"))
    path = demo_dataset_path()
    queries, videos, info = load_lddetr_dataset(str(path))
    return path, queries, videos, info


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trainer(demo, output_dir, train_rows: int = 64, **training):
    _, queries, videos, info = demo
    set_seed(0)
    processor = LDDetrProcessor.from_dataset_info(info)
    model = LDDetrModel(model_config_for(processor, **TINY_MODEL))
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        max_grad_norm=0.1,
        remove_unused_columns=False,
        report_to="none",
        seed=0,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    args = LDDetrTrainingArguments(**{**settings, **training})
    return LDDetrTrainer(
        model=model,
        args=args,
        train_dataset=queries["train"].select(range(train_rows)),
        eval_dataset=queries["validation"].select(range(24)),
        data_collator=LDDetrDataCollator(processor, videos),
        processing_class=processor,
        dataset_type=info["dataset_type"],
        clip_length=float(info["clip_length"]),
    )


def _fixed_batch_loss(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(16)])
    batch.pop("meta")
    model = trainer.model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss_and_log_every_term(demo, tmp_path):
    trainer = _trainer(demo, tmp_path, max_steps=16)
    before = _fixed_batch_loss(trainer)
    trainer.train()
    after = _fixed_batch_loss(trainer)
    assert after < before * 0.9, (before, after)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"loss_span", "loss_giou", "loss_label", "loss_align", "loss_sim", "loss_saliency"} <= set(
        logged[-1]
    )
    metrics = trainer.evaluate()
    assert {"eval_MR-full-mAP", "eval_MR-full-R1@0.5", "eval_HL-min-VeryGood-mAP", "eval_loss"} <= set(metrics)


OFFICIAL = dict(lr_scheduler_type="cosine", lr_scheduler_per_epoch=True, weight_decay_all_parameters=True)


def _learning_rates(trainer) -> list[float]:
    return [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]


def _epoch_cosine(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_equals_an_uninterrupted_run(demo, tmp_path):
    # 32 rows, batch 8: 4 steps per epoch; the checkpoint at step 6 lies in epoch 1, after the cosine moved once
    settings = dict(OFFICIAL, train_rows=32, num_train_epochs=3, logging_steps=1, save_strategy="steps", save_steps=6)
    full = _trainer(demo, tmp_path / "full", **settings)
    full.train()
    resumed = _trainer(demo, tmp_path / "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    assert _learning_rates(full) == [_epoch_cosine(1e-3, e, 3) for e in range(3) for _ in range(4)]
    assert _learning_rates(resumed) == _learning_rates(full)  # the first 6 come from the checkpoint's log history
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full.model.distill_align.queue_ptr.item() == (12 * 8) % 64
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-6, rtol=0, msg=key)


def test_epoch_cosine_with_gradient_accumulation_steps_once_per_epoch(demo, tmp_path):
    # 40 rows, batch 8: 5 batches per epoch, 3 optimizer steps of 2 + 2 + 1 batches
    trainer = _trainer(
        demo, tmp_path, **OFFICIAL, train_rows=40, num_train_epochs=2, gradient_accumulation_steps=2, logging_steps=1
    )
    progress = []
    model = trainer.model
    original = model.set_training_progress
    model.set_training_progress = lambda epoch: (progress.append(epoch), original(epoch))
    trainer.train()
    assert _learning_rates(trainer) == [1e-3] * 3 + [_epoch_cosine(1e-3, 1, 2)] * 3
    # the distillation warm-up counts batches, micro-batches included: batch index / 5 in epoch 0
    assert progress[:5] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8]) and progress[5] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], "official"),
        (["--lr_scheduler_type", "linear"], "linear"),
        (["--warmup_steps", "2"], "warm-up"),
        (["--weight_decay_all_parameters", "false"], "grouped"),
    ],
)
def test_preset_recipe_and_the_options_that_replace_it(demo, tmp_path, options, expected):
    _, queries, videos, info = demo
    args = parse_training_arguments(
        [
            "--output_dir", str(tmp_path), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
            "--learning_rate", "1e-3", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end",
            "false", "--logging_steps", "1", "--disable_tqdm", "true", *options,
        ],
        "qvhighlights",
    )
    processor = LDDetrProcessor.from_dataset_info(info)
    trainer = LDDetrTrainer(
        model=LDDetrModel(model_config_for(processor, **TINY_MODEL)),
        args=args,
        train_dataset=queries["train"].select(range(16)),
        data_collator=LDDetrDataCollator(processor, videos),
        processing_class=processor,
    )
    trainer.train()
    rates = _learning_rates(trainer)  # 2 steps per epoch
    groups = [(len(group["params"]), group["weight_decay"]) for group in trainer.optimizer.param_groups]
    trainable = sum(p.requires_grad for p in trainer.model.parameters())
    if expected == "grouped":
        assert len(groups) == 2 and groups[1][1] == 0 and groups[0][0] + groups[1][0] == trainable
    else:
        assert groups == [(trainable, 1e-4)]
    if expected in ("official", "grouped"):
        assert rates == [1e-3, 1e-3, 5e-4, 5e-4]
    elif expected == "linear":
        assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    else:  # transformers' per-step cosine after 2 warm-up steps
        assert rates == pytest.approx([0, 5e-4, 1e-3, 5e-4])


def test_epoch_cosine_schedule_steps_once_per_epoch():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = epoch_cosine_schedule(optimizer, steps_per_epoch=3, num_epochs=4)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == [1.0] * 3
    assert rates[3:6] == [pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))] * 3
    assert rates[9] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(3 * torch.pi / 4)).item()))


def test_train_command_saves_a_loadable_inference_model_with_its_card(demo, tmp_path):
    path = demo[0]
    out = tmp_path / "run"
    options = [
        "--dataset", str(path), "--preset", "demo", "--output_dir", str(out), "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--use_cpu", "true", "--bf16", "true",
    ]
    metrics = train_main_metrics(options)
    model = LDDetrModel.from_pretrained(out)
    processor = LDDetrProcessor.from_pretrained(out)
    assert model.config.hidden_size == 128 and processor.feature_extractor.clip_length == demo[3]["clip_length"]
    with safe_open(out / "model.safetensors", "pt") as saved:
        saved_keys = set(saved.keys())
    queues = {key for key in model.state_dict() if "queue" in key}  # the loaded model starts fresh queues
    assert queues and saved_keys == model.state_dict().keys() - queues

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "video-moment-retrieval" in card.data.tags
    (mr_map,) = [result for result in card.data.eval_results if result.metric_type == "MR-full-mAP"]
    assert mr_map.metric_value == metrics["eval_MR-full-mAP"] and mr_map.dataset_split == "validation"
    assert f"| MR-full-R1@0.5 | {metrics['eval_MR-full-R1@0.5']:.2f} |" in card.text
    assert "the last model, epoch" in card.text and "preset `demo`" in card.text and "--bf16 true" in card.text
    assert "cosine annealed once per epoch" in card.text and "every trainable parameter (one group)" in card.text
    assert "slowfast (128) + clip (128)" in card.text  # the dataset's features
    assert f'LDDetrModel.from_pretrained("{out}")' in card.text and 'pipeline("video-moment-retrieval"' in card.text


def test_the_saved_model_is_described_as_the_best_epoch_when_it_is_loaded_at_the_end():
    from types import SimpleNamespace

    from training_scripts.train import describe_saved_model

    log = [
        {"loss": 3.0, "epoch": 1.0},
        {"eval_MR-full-mAP": 20.0, "epoch": 1.0},
        {"eval_MR-full-mAP": 31.5, "epoch": 2.0},
        {"eval_MR-full-mAP": 25.0, "epoch": 3.0},
    ]
    state = SimpleNamespace(log_history=log, best_metric=31.5, best_model_checkpoint="out/checkpoint-20", epoch=3.0)
    args = SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="MR-full-mAP", num_train_epochs=3)
    assert describe_saved_model(SimpleNamespace(state=state, args=args)) == "epoch 2 of 3, the best by MR-full-mAP"
    args.load_best_model_at_end = False
    assert describe_saved_model(SimpleNamespace(state=state, args=args)) == "the last model, epoch 3"


@pytest.mark.slow
def test_ddp_training_on_cpu_keeps_ranks_identical(demo, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(REPO / "tests" / "ddp_train_worker.py"), str(demo[0]), str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], atol=1e-6, rtol=0, msg=key)
    assert rank0["distill_align.queue_ptr"].item() == (4 * 2 * 4) % 64  # 4 steps x 2 ranks x batch 4
    # 16 rows over 2 ranks of batch 4: 2 steps per epoch, the cosine moves once, at the epoch boundary
    assert torch.load(tmp_path / "learning_rates.pt") == [
        1e-3,
        1e-3,
        _epoch_cosine(1e-3, 1, 2),
        _epoch_cosine(1e-3, 1, 2),
    ]


def test_tvsum_domain_selection_keeps_one_domain_and_names_the_others():
    from datasets import Dataset, DatasetDict

    from training_scripts.train import select_domain

    queries = DatasetDict(
        train=Dataset.from_dict({"qid": [1, 2, 3], "domain": ["BK", "VT", "BK"]}),
        validation=Dataset.from_dict({"qid": [4, 5], "domain": ["VT", "BK"]}),
    )
    selected = select_domain(queries, "BK")
    assert selected["train"]["qid"] == [1, 3] and selected["validation"]["qid"] == [5]
    with pytest.raises(SystemExit, match=r"domain 'GA'.*\['BK', 'VT'\]"):
        select_domain(queries, "GA")
    with pytest.raises(SystemExit, match="domain column"):
        select_domain(DatasetDict(train=Dataset.from_dict({"qid": [1]})), "BK")


def test_train_command_pushes_only_the_inference_export(demo, tmp_path, monkeypatch):
    pushed = []

    def fake_push(self, repo_id, **kwargs):
        pushed.append((type(self).__name__, repo_id, kwargs.get("private")))

    monkeypatch.setattr(LDDetrModel, "push_to_hub", fake_push)
    monkeypatch.setattr(LDDetrProcessor, "push_to_hub", fake_push)
    monkeypatch.setattr(ModelCard, "push_to_hub", fake_push)
    out = tmp_path / "run"
    train_main(
        [
            "--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(out), "--max_steps", "1",
            "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end",
            "false", "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", "org/lddetr-demo",
            "--hub_private_repo", "true",
        ]
    )
    assert pushed == [
        ("LDDetrModel", "org/lddetr-demo", True),
        ("LDDetrProcessor", "org/lddetr-demo", True),
        ("ModelCard", "org/lddetr-demo", None),
    ]
    assert 'from_pretrained("org/lddetr-demo")' in (out / "README.md").read_text()
    assert (out / "checkpoint-1").is_dir()  # checkpoints are written locally, never pushed


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, metric", [("charades-sta", "eval_MR-full-R1@0.5"), ("tacos", "eval_MR-full-mIoU"), ("tvsum", "eval_mAP")]
)
def test_train_command_runs_on_every_dataset_kind(name, metric, tmp_path, shared_data_dir):
    from test_hub_datasets import build, output_dir, write_tree

    tree = write_tree(tmp_path / name, shared_data_dir, name)
    dataset = output_dir(tmp_path)
    build(tree, name, dataset)
    metrics = train_main_metrics(
        [
            "--dataset", str(dataset), "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--save_strategy", "no", "--load_best_model_at_end", "false",
            "--disable_tqdm", "true", "--eval_strategy", "no",
        ]
    )
    assert metric in metrics and 0 <= metrics[metric] <= 100
    model = LDDetrModel.from_pretrained(tmp_path / "run")
    assert model.config.clip_length == (1.0 if name == "charades-sta" else 2.0)
    assert model.config.moment_retrieval_loss == (name != "tvsum")


@pytest.mark.slow
def test_torchrun_on_cpu_trains_one_ddp_job(demo, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(REPO / "training_scripts" / "train.py"), "--dataset", str(demo[0]), "--preset", "demo", "--output_dir",
            str(tmp_path / "run"), "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
            "--save_strategy", "no", "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--log_level",
            "info",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # one job over 2 processes: a global batch of 2 x 4 (two separate runs would each report 4)
    totals = re.findall(r"Total train batch size .* = (\d+)", result.stdout + result.stderr)
    assert totals == ["8"], totals
    assert LDDetrModel.from_pretrained(tmp_path / "run").config.hidden_size == 128


@pytest.mark.slow
def test_evaluating_before_training_does_not_change_the_training(demo, tmp_path):
    def trained_state(*extra):
        out = tmp_path / f"run{len(extra)}"
        train_main(
            [
                "--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(out), "--max_steps", "3",
                "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
                "--load_best_model_at_end", "false", "--disable_tqdm", "true", *extra,
            ]
        )
        return LDDetrModel.from_pretrained(out).state_dict()

    plain, evaluated_first = trained_state(), trained_state("--evaluate_before_training", "true")
    for key, value in plain.items():
        torch.testing.assert_close(evaluated_first[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.slow
def test_the_same_command_and_seed_give_identical_weights_and_metrics(demo, tmp_path):
    def run(name):
        out = tmp_path / name
        result = subprocess.run(
            [
                "lddetr-train", "--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(out), "--seed", "7",
                "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end",
                "false", "--disable_tqdm", "true",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-4000:]
        table = result.stdout[
            result.stdout.index("metrics of the saved model") : result.stdout.index("saved the trained model")
        ]
        return table, load_file(out / "model.safetensors")  # the saved weights (a loaded model draws fresh queues)

    (first_table, first), (second_table, second) = run("first"), run("second")
    assert "MR-full-mAP" in first_table and first_table == second_table
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(second[key], value), key
