"""LDDetrTrainer: transformers.Trainer for LD-DETR.

What it adds to Trainer:
- the model's weighted loss (moment retrieval, saliency, Distill Align alignment and sim terms), with every term
  logged (averaged over the logging interval and over processes);
- the distillation-coefficient warm-up over the first epoch by batch index, as the official loop
  (coefficient · batch_index / batches_per_epoch; micro-batches of gradient accumulation count as batches);
- with `LDDetrTrainingArguments`, the official optimizer and schedule: AdamW over every trainable parameter in one
  group with one weight decay (`weight_decay_all_parameters`), and the cosine annealed once per epoch
  (`lr_scheduler_per_epoch`: CosineAnnealingLR(T_max=epochs) of the official code);
- evaluation with the official metrics (QVHighlights MR/HD, Charades-STA/TACoS R1/mIoU, TVSum mAP), so that
  `metric_for_best_model` can be `MR-full-mAP`;
- checkpoints that keep the Distill Align queues and pointer, so that a resumed run continues exactly.
"""

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from processing.evaluation.metrics import evaluate_submission

from .prediction import ground_truth_records, predict_records


def epoch_cosine_schedule(optimizer, steps_per_epoch: int, num_epochs: int) -> LambdaLR:
    """lr_e = lr·(1 + cos(π·e / num_epochs)) / 2 for every step of epoch e."""

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, num_epochs)))

    return LambdaLR(optimizer, factor)


@dataclass
class LDDetrTrainingArguments(TrainingArguments):
    """TrainingArguments plus the two switches of the official optimizer and schedule (off by default, as in
    transformers; the presets of train.py turn both on)."""

    lr_scheduler_per_epoch: bool = field(
        default=False,
        metadata={
            "help": "with lr_scheduler_type cosine and no warm-up: anneal once per epoch, the lr constant within an "
            "epoch (the official CosineAnnealingLR(T_max=epochs)); other schedules and warm-ups step as in transformers"
        },
    )
    weight_decay_all_parameters: bool = field(
        default=False,
        metadata={
            "help": "one parameter group: weight decay on every trainable parameter, biases and norms included (the "
            "official AdamW); false: transformers' grouping, which leaves biases and norm weights undecayed"
        },
    )

    @property
    def anneals_per_epoch(self) -> bool:
        """Whether the schedule is the official one: lr_scheduler_per_epoch, cosine, no warm-up."""
        return self.lr_scheduler_per_epoch and self.lr_scheduler_type == "cosine" and self.warmup_steps == 0


class LDDetrTrainer(Trainer):
    # the model's loss is a per-batch mean: let Trainer divide by the gradient-accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dataset_type: str = "qvhighlights", clip_length: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset_type = dataset_type
        self.clip_length = clip_length
        self._loss_terms = defaultdict(list)
        self._update_steps_per_epoch: int | None = None
        self._num_epochs: int | None = None
        self._micro_batches_of_step = (-1, 0)  # (global step, micro-batches already run in it)

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        # Trainer's own epoch arithmetic (per process, after gradient accumulation), for the per-epoch schedule
        self._num_epochs, self._update_steps_per_epoch = values[0], values[1]
        return values

    def create_optimizer(self, model=None):
        if self.optimizer is None and getattr(self.args, "weight_decay_all_parameters", False):
            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            group = {
                "params": [p for p in opt_model.parameters() if p.requires_grad],
                "weight_decay": self.args.weight_decay,
            }
            self.optimizer = optimizer_cls([group], **optimizer_kwargs)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and getattr(self.args, "anneals_per_epoch", False):
            self.lr_scheduler = epoch_cosine_schedule(
                optimizer or self.optimizer, self._update_steps_per_epoch, self._num_epochs
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # training progress by batch index, as the official warm-up: state.epoch counts the batches of the optimizer
        # steps done, plus the micro-batches already run in this step
        step, micro_batches = self._micro_batches_of_step
        if step != self.state.global_step:
            step, micro_batches = self.state.global_step, 0
        progress = (self.state.epoch or 0.0) + micro_batches / len(self.callback_handler.train_dataloader)
        self.accelerator.unwrap_model(model).set_training_progress(progress)
        self._micro_batches_of_step = (step, micro_batches + 1)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k != "meta"}
        outputs = model(**inputs)
        if model.training:
            for name, value in outputs.loss_dict.items():
                self._loss_terms[name].append(value.detach().float())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_terms:
            # every rank logs at the same steps, so the reduction is a safe collective
            for name, values in sorted(self._loss_terms.items()):
                mean = torch.stack(values).mean()
                logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
            self._loss_terms.clear()
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        dataloader = self.get_eval_dataloader(dataset)
        model = self.accelerator.unwrap_model(self.model)
        records, losses = predict_records(model, self.processing_class, dataloader, self.args.device)
        records = gather_object(records)
        # even batches across processes repeat a few samples: keep one record per query
        records = list({record["qid"]: record for record in records}.values())
        metrics = evaluate_submission(
            records, ground_truth_records(dataset), self.dataset_type, clip_length=self.clip_length
        )
        for name, value in losses.items():
            metrics[name] = self.accelerator.reduce(
                torch.tensor(value, device=self.args.device), reduction="mean"
            ).item()
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Training checkpoints keep the queues (the final export drops them: see train.py)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        model.save_pretrained(output_dir, state_dict=state_dict, save_queues=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
