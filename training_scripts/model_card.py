"""The model card (`README.md` with Hub metadata) that `lddetr-train` writes into the saved model folder."""

import shlex
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from processing.inference.pipeline import TASK


def model_card(
    *,
    model_id: str,
    dataset: str | None,
    info: dict,
    preset: str,
    arguments: list[str],
    training_args,
    metrics: dict[str, float],
    which_model: str,
    eval_split: str,
) -> ModelCard:
    """dataset: the --dataset given (a folder or Hub id), None for the embedded demo data; info: its
    lddetr_dataset.json; arguments: the command line of lddetr-train; metrics: the official
    metrics of the saved model (names without prefix); which_model: which epoch's model it is."""
    is_hub_id = dataset is not None and not Path(dataset).exists()
    dataset_name = dataset if dataset is not None else "qvhighlights-demo"
    features = " + ".join(
        f"{name} ({dim})" for name, dim in zip(info["video_feature_names"], info["video_feature_dims"])
    )
    data = ModelCardData(
        library_name="transformers",
        tags=["ld-detr", TASK, "highlight-detection", "video-text", info["dataset_type"]],
        datasets=[dataset] if is_hub_id else None,
        metrics=sorted(metrics),
        model_name=model_id,
        eval_results=[
            EvalResult(
                task_type=TASK,
                task_name="Video moment retrieval and highlight detection",
                dataset_type=dataset_name,
                dataset_name=dataset_name,
                dataset_split=eval_split,
                metric_type=name,
                metric_name=name,
                metric_value=value,
            )
            for name, value in sorted(metrics.items())
        ],
    )
    demo_warning = (
        "\n> Trained on the embedded demo data of the `lddetr` package: real QVHighlights annotations with "
        "**synthetic**\n"
        "> features. The model knows nothing about real videos; its metrics only show that the pipeline learns.\n"
        if dataset is None
        else ""
    )
    metric_rows = "\n".join(f"| {name} | {value:.2f} |" for name, value in sorted(metrics.items()))
    command = shlex.join(["lddetr-train", *arguments])
    args = training_args
    schedule = (
        "cosine annealed once per epoch (the official CosineAnnealingLR(T_max=epochs))"
        if args.anneals_per_epoch
        else f"transformers' `{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}` schedule per "
        f"optimizer step, {args.warmup_steps:g} warm-up"
    )
    decay = (
        "every trainable parameter (one group)"
        if args.weight_decay_all_parameters
        else "transformers' grouping (no decay of biases and norm weights)"
    )
    text = f"""---
{data.to_yaml()}
---

# {model_id}: LD-DETR for video moment retrieval and highlight detection

LD-DETR (*Loop Decoder DEtection TRansformer*, Zhao et al., [arXiv 2501.10787](https://arxiv.org/abs/2501.10787))
takes the clip features of a video and the token features of a natural-language query, and returns the moments
that match the query (start, end, score) and a saliency score for every clip. Its parts: unimodal encoders,
Distill Align (contrastive alignment with momentum distillation over feature queues), a convolutional fuser and a
loop decoder whose output is fed back as its next queries.
{demo_warning}
## Data

- dataset: `{dataset_name}` ({info["dataset_type"]}), trained on `train`, evaluated on `{eval_split}`
- video features per {info["clip_length"]:g}-s clip: {features}, plus 2 temporal-endpoint columns; \
text: token features ({info["text_feature_dim"]})
- at most {info["max_video_clips"]} clips per video and {info["max_text_tokens"]} tokens per query

## Training recipe

`{command}`: preset `{preset}` and the options given, that is AdamW, lr {args.learning_rate:g}, \
weight decay {args.weight_decay:g} on {decay}; {schedule};
{args.num_train_epochs:g} epochs of batch {args.per_device_train_batch_size} per device; \
gradient clipping {args.max_grad_norm:g};
the distillation coefficient warmed up over the first epoch; seed {args.seed}.

## Results

The model in this folder is {which_model}. Metrics on `{eval_split}` with the official evaluator's names:

| metric | value |
|---|---|
{metric_rows}

## How to use

With the `lddetr` package installed (`pip install -e .` in a checkout of its repository):

```python
from modeling_lddetr import LDDetrModel, LDDetrProcessor

model = LDDetrModel.from_pretrained("{model_id}")          # the Distill Align queues are not saved: inference only
processor = LDDetrProcessor.from_pretrained("{model_id}")
# without the package: transformers.AutoModel.from_pretrained("{model_id}", trust_remote_code=True)
```

On a video (the pipeline extracts CLIP features itself, so it runs models trained on CLIP-only video features;
models that also need SlowFast features take a SlowFast encoder as `slowfast=`):

```python
import processing.inference.pipeline  # registers the task with transformers
from transformers import pipeline

pipe = pipeline("{TASK}", model="{model_id}")
pipe(video="my_video.mp4", query="a man throws a ball", top_k=5)  \
# {{"moments": [{{"start", "end", "score"}}, ...], "saliency": [...]}}
```

or `lddetr-predict --model {model_id} --video my_video.mp4 --query "a man throws a ball"`.
"""
    return ModelCard(text)
