"""The official training loop on the trajectory fixture, with this package's model beside it at every step.

    python benchmarks/trajectory_lockstep.py --official-src LD_DETR_CHECKOUT [--threads 2]

Runs the official loop (../shared/fixtures/official_train_trajectory: its checkpoint, batches, AdamW, per-epoch
cosine, distillation warm-up, clipping at 0.1, every dropout 0) and prints, per step:
- same params: this package's weighted loss and gradient at the official model's state of that step (weights,
  momentum encoders, queues), as relative differences from the official ones;
- carried: this package's loss when it carries its own state with the same optimizer, from the same start;
- carried, shared step 0: the same, but taking the official's step-0 gradient, so that batch_0's ReLU tie (one
  BatchNorm output within float noise of zero, README of the fixture) falls the same way in both.
The first says whether the losses and gradients are the official ones; the other two how far the trajectories
drift from float noise alone.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
from official_code import (
    OfficialModel,
    load_official_code,
    official_cuda_calls_stay_on,
    official_dropout_off,
    official_options,
)
from safetensors.torch import load_file
from train_parity import DROPOUT_FIELDS

from modeling_lddetr import LDDetrModel
from modeling_lddetr.convert_official_checkpoint import (
    config_from_official_checkpoint,
    convert_official_state_dict,
    load_official_checkpoint,
)

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official_train_trajectory"


def official_model(module, checkpoint: dict):
    """The official model and criterion of the fixture's checkpoint, every dropout at 0."""
    raw = checkpoint["opt"]
    options = official_options(raw["v_feat_dim"], raw["t_feat_dim"], raw["queue_length"])
    for name, value in raw.items():
        setattr(options, name, value)
    # build_model does not pass the sequence lengths on; the fixture's model was made with its own
    module.LD_DETR = functools.partial(module.LD_DETR, max_v_l=raw["max_v_l"], max_q_l=raw["max_q_l"])
    model, criterion = module.build_model(options)
    model.load_state_dict(checkpoint["model"])
    official_dropout_off(model)
    return model, criterion


def our_model(checkpoint: dict) -> LDDetrModel:
    config = config_from_official_checkpoint(checkpoint)
    config.update(dict.fromkeys(DROPOUT_FIELDS, 0.0))
    model = LDDetrModel(config)
    model.load_state_dict(convert_official_state_dict(checkpoint["model"]))
    return model


def batch(tensors: dict, index: int) -> tuple[dict, list[dict], dict, dict]:
    """One fixture batch as our inputs and labels, and as the official inputs and targets."""
    prefix = f"batch_{index}"
    video, text = tensors[f"{prefix}.src_vid"], tensors[f"{prefix}.src_txt"]
    inputs = dict(
        video_features=video,
        video_attention_mask=torch.ones(video.shape[:2]),
        text_features=text,
        text_attention_mask=torch.ones(text.shape[:2]),
    )
    labels = [
        {
            "spans": tensors[f"{prefix}.span_labels_{b}"],
            "saliency_scores": tensors[f"{prefix}.saliency_all_labels"][b],
            "saliency_pos_indices": tensors[f"{prefix}.saliency_pos_labels"][b],
            "saliency_neg_indices": tensors[f"{prefix}.saliency_neg_labels"][b],
        }
        for b in range(video.shape[0])
    ]
    targets = OfficialModel.targets(labels, video.shape[1], torch.device("cpu"))
    return inputs, labels, OfficialModel.inputs(inputs), targets


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def gradient_difference(ours: LDDetrModel, official_gradients: dict) -> float:
    """Norm of (ours - official) over the norm of the official gradient, every trainable parameter together."""
    mine = dict(ours.named_parameters())
    pairs = [(mine[k].grad, g) for k, g in official_gradients.items() if mine[k].grad is not None]
    return relative(torch.cat([a.flatten() for a, _ in pairs]), torch.cat([b.flatten() for _, b in pairs]))


class CarriedRun:
    """This package's model training on its own, with the official optimizer and schedule."""

    def __init__(self, checkpoint: dict, expected: dict, share_step0_gradient: bool):
        self.model = our_model(checkpoint).train()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=expected["lr"], weight_decay=expected["weight_decay"],
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=expected["epochs"])
        self.clip = expected["grad_clip"]
        self.share_step0_gradient = share_step0_gradient

    def step(self, step: int, progress: float, inputs: dict, labels: list[dict], official_gradients: dict) -> float:
        self.model.set_training_progress(progress)
        loss = self.model(**inputs, labels=labels).loss
        self.optimizer.zero_grad()
        loss.backward()
        if step == 0 and self.share_step0_gradient:
            parameters = dict(self.model.named_parameters())
            for key, gradient in official_gradients.items():
                parameters[key].grad = gradient.clone()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return loss.item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", required=True, help="root of a qingchen239/ld-detr checkout")
    parser.add_argument("--fixture", default=str(FIXTURE))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fixture = Path(args.fixture)
    expected = json.loads((fixture / "expected.json").read_text())
    checkpoint = load_official_checkpoint(fixture / "model_init.ckpt")
    tensors = load_file(fixture / "batches.safetensors")

    model, criterion = official_model(load_official_code(args.official_src), checkpoint)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=expected["lr"], weight_decay=expected["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=expected["epochs"])
    at_same_params = our_model(checkpoint).train()
    carried = CarriedRun(checkpoint, expected, share_step0_gradient=False)
    shared = CarriedRun(checkpoint, expected, share_step0_gradient=True)
    per_epoch = expected["batches_per_epoch"]

    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| step | fixture | official here | same params: loss rel | same params: grad rel "
          "| carried | carried, shared step 0 |")
    print("|---|---|---|---|---|---|---|")
    step = 0
    for epoch in range(expected["epochs"]):
        model.train()
        criterion.train()
        for index in range(per_epoch):
            inputs, labels, official_inputs, targets = batch(tensors, index)
            progress = epoch + index / per_epoch
            at_same_params.load_state_dict(convert_official_state_dict(
                {k: v.clone() for k, v in model.state_dict().items()}
            ))
            at_same_params.set_training_progress(progress)
            ours = at_same_params(**inputs, labels=labels).loss

            with official_cuda_calls_stay_on(torch.device("cpu")):
                outputs = model(
                    **official_inputs, epoch_i=epoch, batch_idx=index, train_loader_length=per_epoch,
                    targets=targets, is_training=True,
                )
            terms = criterion(outputs, targets)
            loss = sum(terms[k] * criterion.weight_dict[k] for k in terms if k in criterion.weight_dict)
            optimizer.zero_grad()
            loss.backward()
            official_gradients = convert_official_state_dict(
                {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
            )
            at_same_params.zero_grad()
            ours.backward()
            gradient_gap = gradient_difference(at_same_params, official_gradients)
            torch.nn.utils.clip_grad_norm_(model.parameters(), expected["grad_clip"])
            optimizer.step()

            carried_loss = carried.step(step, progress, inputs, labels, official_gradients)
            shared_loss = shared.step(step, progress, inputs, labels, official_gradients)
            print(
                f"| {step} | {expected['steps'][step]['loss_total_weighted']:.4f} | {loss.item():.4f} "
                f"| {abs(ours.item() - loss.item()) / loss.item():.1e} | {gradient_gap:.1e} "
                f"| {carried_loss:.4f} | {shared_loss:.4f} |"
            )
            step += 1
        scheduler.step()
        carried.scheduler.step()
        shared.scheduler.step()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
