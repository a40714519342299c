"""LDDetrTrainer: transformers.Trainer for LD-DETR.

What it adds to Trainer:
- the model's weighted loss (moment retrieval, saliency, Distill Align alignment and sim terms), with every term
  logged (averaged over the logging interval and over processes);
- the distillation-coefficient warm-up over the first epoch, driven by the training progress;
- the official cosine schedule, stepped once per epoch (CosineAnnealingLR(T_max=epochs) of the official code);
- evaluation with the official metrics (QVHighlights MR/HD, Charades-STA/TACoS R1/mIoU, TVSum mAP), so that
  `metric_for_best_model` can be `MR-full-mAP`;
- checkpoints that keep the Distill Align queues and pointer, so that a resumed run continues exactly.
"""

import math
import os
from collections import defaultdict

import torch
from accelerate.utils import gather_object
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from processing.evaluation.metrics import evaluate_submission

from .prediction import ground_truth_records, predict_records


def epoch_cosine_schedule(optimizer, steps_per_epoch: int, num_epochs: int) -> LambdaLR:
    """lr_e = lr·(1 + cos(π·e / num_epochs)) / 2 for every step of epoch e."""

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, num_epochs)))

    return LambdaLR(optimizer, factor)


class LDDetrTrainer(Trainer):
    # the model's loss is a per-batch mean: let Trainer divide by the gradient-accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dataset_type: str = "qvhighlights", clip_length: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dataset_type = dataset_type
        self.clip_length = clip_length
        self._loss_terms = defaultdict(list)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.args.lr_scheduler_type == "cosine" and self.args.max_steps <= 0:
            batches = math.ceil(len(self.train_dataset) / (self.args.train_batch_size * self.args.world_size))
            steps_per_epoch = max(1, batches // self.args.gradient_accumulation_steps)
            num_epochs = math.ceil(self.args.num_train_epochs)
            self.lr_scheduler = epoch_cosine_schedule(optimizer or self.optimizer, steps_per_epoch, num_epochs)
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {k: v for k, v in inputs.items() if k != "meta"}
        unwrapped = self.accelerator.unwrap_model(model)
        if model.training:
            unwrapped.set_training_progress(self.state.epoch or 0.0)
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
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 4)
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
        metrics = evaluate_submission(records, ground_truth_records(dataset), self.dataset_type, clip_length=self.clip_length)
        for name, value in losses.items():
            metrics[name] = self.accelerator.reduce(torch.tensor(value, device=self.args.device), reduction="mean").item()
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
