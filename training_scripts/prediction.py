"""Run a model over a dataloader of collated rows and produce official submission records."""

from collections import defaultdict

import torch

GROUND_TRUTH_COLUMNS = (
    "qid", "query", "vid", "duration", "relevant_windows", "relevant_clip_ids", "saliency_scores", "domain", "label",
)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


@torch.no_grad()
def predict_records(
    model, processor, dataloader, device, top_k: int | None = 10, nms_threshold: float | None = None
) -> tuple[list[dict], dict[str, float]]:
    """Eval-mode predictions in the official submission format, and the mean loss terms when labels are given."""
    model.eval()
    records = []
    loss_sums, batches = defaultdict(float), 0
    for batch in dataloader:
        meta = batch["meta"]
        inputs = _to_device({k: v for k, v in batch.items() if k != "meta"}, device)
        outputs = model(**inputs)
        if outputs.loss_dict is not None:
            batches += 1
            loss_sums["loss"] += outputs.loss.item()
            for name, value in outputs.loss_dict.items():
                loss_sums[name] += value.item()
        records.extend(
            processor.post_process(
                outputs,
                inputs["video_attention_mask"],
                meta["duration"],
                qids=meta["qid"],
                queries=meta["query"],
                vids=meta["vid"],
                top_k=top_k,
                nms_threshold=nms_threshold,
            )
        )
    return records, {name: total / batches for name, total in loss_sums.items()} if batches else {}


def ground_truth_records(dataset) -> list[dict]:
    """The annotation columns of a `queries` split, as official ground-truth records (features left out)."""
    columns = [c for c in GROUND_TRUTH_COLUMNS if c in dataset.column_names]
    return dataset.select_columns(columns).with_format(None).to_list()
