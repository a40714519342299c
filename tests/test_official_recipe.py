"""Training follows the official recipe: the official loop's trajectory (../shared/fixtures/official_train_trajectory)
replayed step by step through LDDetrTrainer, and the step-0 gradients of every parameter."""

import json

import pytest
import torch
from helpers import NO_DROPOUT
from safetensors.torch import load_file

from modeling_lddetr import LDDetrModel
from modeling_lddetr.convert_official_checkpoint import (
    config_from_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
)
from training_scripts.train import parse_training_arguments
from training_scripts.trainer import LDDetrTrainer

pytestmark = pytest.mark.slow  # the replay trains 9 steps of the official-size model

LOSS_TERMS = [
    "loss_span", "loss_giou", "loss_label", "loss_align", "loss_sim", "loss_saliency",
    "loss_span_0", "loss_giou_0", "loss_label_0",
]


def official_model(trajectory_dir) -> LDDetrModel:
    """model_init.ckpt with every dropout at 0, as the official run."""
    checkpoint = load_official_checkpoint(trajectory_dir / "model_init.ckpt")
    config = config_from_official_checkpoint(checkpoint)
    config.update(NO_DROPOUT)
    model = LDDetrModel(config)
    model.load_state_dict(convert_official_state_dict(checkpoint["model"]))
    return model


def model_inputs(tensors: dict, prefix: str) -> dict:
    """One official batch (no padding) as the model's inputs with labels."""
    video, text = tensors[f"{prefix}.src_vid"], tensors[f"{prefix}.src_txt"]
    labels = [
        {
            "spans": tensors[f"{prefix}.span_labels_{b}"],
            "saliency_scores": tensors[f"{prefix}.saliency_all_labels"][b],
            "saliency_pos_indices": tensors[f"{prefix}.saliency_pos_labels"][b],
            "saliency_neg_indices": tensors[f"{prefix}.saliency_neg_labels"][b],
        }
        for b in range(video.shape[0])
    ]
    return dict(
        video_features=video,
        video_attention_mask=torch.ones(video.shape[:2]),
        text_features=text,
        text_attention_mask=torch.ones(text.shape[:2]),
        labels=labels,
    )


class OfficialBatches:
    """Rows (batch index, sample index) collated into the fixture's batches; the sequential sampler keeps them in
    the official order."""

    def __init__(self, tensors: dict, batch_size: int):
        self.tensors = tensors
        self.batch_size = batch_size

    def rows(self, num_batches: int) -> list[dict]:
        return [{"batch": i, "sample": b} for i in range(num_batches) for b in range(self.batch_size)]

    def __call__(self, rows: list[dict]) -> dict:
        (batch,) = {row["batch"] for row in rows}
        assert [row["sample"] for row in rows] == list(range(self.batch_size)), rows
        return model_inputs(self.tensors, f"batch_{batch}")


@pytest.fixture(scope="module")
def expected(official_trajectory_dir):
    return json.loads((official_trajectory_dir / "expected.json").read_text())


@pytest.fixture(scope="module")
def replay(official_trajectory_dir, expected, tmp_path_factory):
    """The official run's 9 steps through LDDetrTrainer, with the run's settings given as command-line options."""
    options = [
        "--output_dir", str(tmp_path_factory.mktemp("replay")),
        "--learning_rate", str(expected["lr"]),
        "--weight_decay", str(expected["weight_decay"]),
        "--num_train_epochs", str(expected["epochs"]),
        "--per_device_train_batch_size", str(expected["batch_size"]),
        "--max_grad_norm", str(expected["grad_clip"]),
        "--train_sampling_strategy", "sequential",  # the official run feeds its batches in one order
        "--seed", str(expected["seed"]),
        "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", "--disable_tqdm", "true",
    ]
    args = parse_training_arguments(options, "qvhighlights")
    collator = OfficialBatches(load_file(official_trajectory_dir / "batches.safetensors"), expected["batch_size"])
    trainer = LDDetrTrainer(
        model=official_model(official_trajectory_dir),
        args=args,
        train_dataset=collator.rows(expected["batches_per_epoch"]),
        data_collator=collator,
    )
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    return trainer, steps


def test_replay_runs_every_official_step(replay, expected):
    _, steps = replay
    assert len(steps) == len(expected["steps"]) == expected["epochs"] * expected["batches_per_epoch"]


def test_replay_lr_of_every_step_is_the_official_epoch_cosine(replay, expected):
    _, steps = replay
    for index, (step, official) in enumerate(zip(steps, expected["steps"])):
        assert step["learning_rate"] == pytest.approx(official["lr"], rel=1e-6), (
            index, step["learning_rate"], official["lr"]
        )


def test_replay_first_steps_match_every_loss_term_and_the_grad_norm(replay, expected):
    _, steps = replay
    step, official = steps[0], expected["steps"][0]
    for name in LOSS_TERMS:
        assert step[name] == pytest.approx(official[name], rel=1e-4), name  # measured: 3e-7
    assert step["loss"] == pytest.approx(official["loss_total_weighted"], rel=1e-4)
    # batch_0 has convolutional-block BatchNorm outputs within float noise of zero in front of a ReLU, so the
    # sub-gradients there are a coin toss between implementations: measured 4.5e-4 on the grad norm of step 0,
    # and up to 3.4e-3 on the terms of step 1 (Adam's first update is ~lr·sign(grad), whatever the magnitude).
    # The per-parameter gradients on a batch without such points are exact to 1.3e-4: see the step-0 test below.
    assert step["grad_norm"] == pytest.approx(official["grad_norm"], rel=1e-3)
    step, official = steps[1], expected["steps"][1]
    for name in LOSS_TERMS:
        assert step[name] == pytest.approx(official[name], rel=1e-2), name
    assert step["loss"] == pytest.approx(official["loss_total_weighted"], rel=1e-2)
    assert step["grad_norm"] == pytest.approx(official["grad_norm"], rel=1e-2)


def test_replay_last_epoch_loss_is_near_the_official_one(replay, expected):
    # Later steps drift apart between any two correct implementations (README of the fixture), and one step's loss
    # swings most: the official code itself, rerun on an AVX2 EPYC at 1 or 2 threads, foreach or fused AdamW, ends
    # at 8.15-9.69 against the fixture's 8.81, and this replay at 7.3-7.4, because batch_0's ReLU tie sends step 0
    # down the other sub-gradient (given the official's step-0 gradient it ends at 8.30 beside the official's 8.38:
    # benchmarks/trajectory_lockstep.py). The mean over the last epoch is steadier: official reruns 8.08-8.41
    # against 8.35, this replay 7.72-7.99.
    _, steps = replay
    per_epoch = expected["batches_per_epoch"]
    ours = sum(step["loss"] for step in steps[-per_epoch:]) / per_epoch
    official = sum(step["loss_total_weighted"] for step in expected["steps"][-per_epoch:]) / per_epoch
    assert ours == pytest.approx(official, rel=0.1)


def test_replay_optimizer_is_one_adamw_group_decaying_every_parameter(replay, expected):
    trainer, _ = replay
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    groups = trainer.optimizer.param_groups
    assert len(groups) == 1, [(len(g["params"]), g["weight_decay"]) for g in groups]
    (group,) = groups
    assert {id(p) for p in group["params"]} == {id(p) for p in trainable}
    assert group["weight_decay"] == expected["weight_decay"]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    # accelerate wraps it
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), torch.optim.AdamW)


def test_step0_gradient_of_every_parameter_matches_official(official_trajectory_dir):
    """The backward of the weighted total on the gradient batch, at step 0 of epoch 0 (distillation coefficient 0)."""
    model = official_model(official_trajectory_dir).train()
    model.set_training_progress(0.0)
    inputs = model_inputs(load_file(official_trajectory_dir / "grad_batch.safetensors"), "grad_batch")
    output = model(**inputs)
    official_losses = json.loads((official_trajectory_dir / "grads_step0.json").read_text())
    for name in LOSS_TERMS:
        assert output.loss_dict[name].item() == pytest.approx(official_losses[name], rel=1e-4), name
    output.loss.backward()

    official = convert_official_state_dict(load_file(official_trajectory_dir / "grads_step0.safetensors"))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert set(official) == set(trainable)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in official.values()]))
    compared = 0
    for name, official_grad in official.items():
        norm = torch.linalg.vector_norm(official_grad)
        if norm <= 1e-6 * total:  # a true gradient of exactly zero carries float noise only
            continue
        error = torch.linalg.vector_norm(trainable[name].grad - official_grad) / norm
        assert error < 1e-3, (name, error.item())
        compared += 1
    assert compared > len(official) / 2
