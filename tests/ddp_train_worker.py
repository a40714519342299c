"""torchrun worker for tests/test_training.py: two epochs of DDP steps of LDDetrTrainer on CPU, then each rank's state
and rank 0's learning rates."""

import sys

import torch
import torch.distributed as dist
from transformers import set_seed

from hub_datasets import load_lddetr_dataset
from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from training_scripts.train import model_config_for
from training_scripts.trainer import LDDetrTrainer, LDDetrTrainingArguments


def main(dataset_path: str, out_dir: str) -> None:
    queries, videos, info = load_lddetr_dataset(dataset_path)
    set_seed(0)
    processor = LDDetrProcessor.from_dataset_info(info)
    model = LDDetrModel(
        model_config_for(
            processor, hidden_size=32, num_attention_heads=4, ffn_dim=64, queue_length=64, sync_batchnorm=True
        )
    )
    args = LDDetrTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-3,
        remove_unused_columns=False,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1,
        lr_scheduler_type="cosine",
        lr_scheduler_per_epoch=True,
    )
    trainer = LDDetrTrainer(
        model=model,
        args=args,
        train_dataset=queries["train"].select(range(16)),
        data_collator=LDDetrDataCollator(processor, videos),
        processing_class=processor,
        dataset_type=info["dataset_type"],
        clip_length=float(info["clip_length"]),
    )
    trainer.train()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{dist.get_rank()}.pt")
    if dist.get_rank() == 0:
        torch.save(
            [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry],
            f"{out_dir}/learning_rates.pt",
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
