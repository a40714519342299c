"""LDDetrTrainer on the embedded demo data: the loss goes down, resuming is exact, DDP ranks agree."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_SIZES
from transformers import TrainingArguments, set_seed

from hub_datasets import load_lddetr_dataset
from hub_datasets.demo import demo_dataset_path
from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from training_scripts.train import main as train_main
from training_scripts.train import train as train_main_metrics
from training_scripts.train import model_config_for
from training_scripts.trainer import LDDetrTrainer, epoch_cosine_schedule

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(TINY_SIZES, queue_length=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    os.environ["LDDETR_CACHE"] = str(tmp_path_factory.mktemp("lddetr-cache"))
    path = demo_dataset_path()
    queries, videos, info = load_lddetr_dataset(str(path))
    return path, queries, videos, info


def _trainer(demo, output_dir, **training):
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
    args = TrainingArguments(**{**settings, **training})
    return LDDetrTrainer(
        model=model,
        args=args,
        train_dataset=queries["train"].select(range(64)),
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


def test_a_few_steps_reduce_the_loss_and_log_every_term(demo, tmp_path):
    trainer = _trainer(demo, tmp_path, max_steps=16)
    before = _fixed_batch_loss(trainer)
    trainer.train()
    after = _fixed_batch_loss(trainer)
    assert after < before * 0.9, (before, after)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and {"loss_span", "loss_giou", "loss_label", "loss_align", "loss_sim", "loss_saliency"} <= set(logged[-1])
    metrics = trainer.evaluate()
    assert {"eval_MR-full-mAP", "eval_MR-full-R1@0.5", "eval_HL-min-VeryGood-mAP", "eval_loss"} <= set(metrics)


def test_resume_from_a_mid_run_checkpoint_is_exact(demo, tmp_path):
    full = _trainer(demo, tmp_path / "full", max_steps=6, save_strategy="steps", save_steps=3)
    full.train()
    resumed = _trainer(demo, tmp_path / "resumed", max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full.model.distill_align.queue_ptr.item() == 48 % 64
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-6, rtol=0, msg=key)


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


def test_train_command_saves_a_loadable_inference_model(demo, tmp_path):
    path = demo[0]
    out = tmp_path / "run"
    train_main(
        [
            "--dataset", str(path), "--preset", "demo", "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--use_cpu", "true", "--bf16", "true",
        ]
    )
    model = LDDetrModel.from_pretrained(out)
    processor = LDDetrProcessor.from_pretrained(out)
    assert model.config.hidden_size == 128 and processor.feature_extractor.clip_length == demo[3]["clip_length"]
    assert not any("queue" in name for name in model.state_dict().keys() - {"distill_align.queue_ptr", "distill_align.video_queue", "distill_align.text_queue"})


def test_ddp_training_on_cpu_keeps_ranks_identical(demo, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(REPO / "tests" / "ddp_train_worker.py"), str(demo[0]), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], atol=1e-6, rtol=0, msg=key)
    assert rank0["distill_align.queue_ptr"].item() == (4 * 2 * 4) % 64  # 4 steps x 2 ranks x batch 4


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
    out = tmp_path / "run"
    train_main(
        [
            "--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(out), "--max_steps", "1",
            "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1", "--load_best_model_at_end", "false",
            "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", "org/lddetr-demo", "--hub_private_repo", "true",
        ]
    )
    assert pushed == [("LDDetrModel", "org/lddetr-demo", True), ("LDDetrProcessor", "org/lddetr-demo", True)]
    assert (out / "checkpoint-1").is_dir()  # checkpoints are written locally, never pushed


@pytest.mark.parametrize("name, metric", [("charades-sta", "eval_MR-full-R1@0.5"), ("tacos", "eval_MR-full-mIoU"), ("tvsum", "eval_mAP")])
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


def test_torchrun_on_cpu_trains_one_ddp_job(demo, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
         str(REPO / "training_scripts" / "train.py"), "--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(tmp_path / "run"),
         "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
         "--load_best_model_at_end", "false", "--disable_tqdm", "true", "--log_level", "info"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # one job over 2 processes: a global batch of 2 x 4 (two separate runs would each report 4)
    totals = re.findall(r"Total train batch size .* = (\d+)", result.stdout + result.stderr)
    assert totals == ["8"], totals
    assert LDDetrModel.from_pretrained(tmp_path / "run").config.hidden_size == 128


def test_evaluating_before_training_does_not_change_the_training(demo, tmp_path):
    def trained_state(*extra):
        out = tmp_path / f"run{len(extra)}"
        train_main(["--dataset", str(demo[0]), "--preset", "demo", "--output_dir", str(out), "--max_steps", "3",
                    "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
                    "--load_best_model_at_end", "false", "--disable_tqdm", "true", *extra])
        return LDDetrModel.from_pretrained(out).state_dict()

    plain, evaluated_first = trained_state(), trained_state("--evaluate_before_training", "true")
    for key, value in plain.items():
        torch.testing.assert_close(evaluated_first[key], value, atol=0, rtol=0, msg=key)
