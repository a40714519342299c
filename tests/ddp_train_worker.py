"""torchrun worker for tests/test_training.py: a few DDP steps of LDDetrTrainer on CPU, then each rank's state."""

import sys

import torch
import torch.distributed as dist
from transformers import TrainingArguments, set_seed

from hub_datasets import load_lddetr_dataset
from modeling_lddetr import LDDetrModel, LDDetrProcessor
from modeling_lddetr.collator_lddetr import LDDetrDataCollator
from training_scripts.train import model_config_for
from training_scripts.trainer import LDDetrTrainer


def main(dataset_path: str, out_dir: str) -> None:
    queries, videos, info = load_lddetr_dataset(dataset_path)
    set_seed(0)
    processor = LDDetrProcessor.from_dataset_info(info)
    model = LDDetrModel(model_config_for(processor, hidden_size=32, num_attention_heads=4, ffn_dim=64, queue_length=64, sync_batchnorm=True))
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3, remove_unused_columns=False,
        report_to="none", eval_strategy="no", save_strategy="no", ddp_backend="gloo", ddp_find_unused_parameters=False,
        disable_tqdm=True, use_cpu=True,
    )
    trainer = LDDetrTrainer(
        model=model, args=args, train_dataset=queries["train"].select(range(64)),
        data_collator=LDDetrDataCollator(processor, videos), processing_class=processor,
        dataset_type=info["dataset_type"], clip_length=float(info["clip_length"]),
    )
    trainer.train()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{dist.get_rank()}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
