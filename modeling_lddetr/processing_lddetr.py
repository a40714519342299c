"""LDDetrProcessor: model inputs from pre-computed features, and predictions in the official submission format.

Post-processing follows the official code (`inference.py::compute_mr_results`, `PostProcessorDETR`,
`temporal_nms`): foreground score = softmax(logits)[..., 0]; (center, width) spans -> (start, end) x duration,
clamped to [0, duration]; sorted by score (stable: ties keep the query order); rounded to 4 decimals, then to the clip
grid (a multiple of `clip_length`, round half to even as numpy does); optionally temporal NMS.
Differences, all deliberate:
- after rounding to the clip grid a window is clamped to [0, duration] again (the official code clamps to
  [0, 150] only, so a duration that is not a multiple of the clip length could be overshot);
- NMS (`span_ops.temporal_nms`) uses the true IoU. The official `compute_temporal_iou` divides by max(end) -
  min(start), commented as "not the correct union"; for two windows that overlap it *is* the union and otherwise
  the intersection is 0, so the values agree, but it divides by zero for two equal zero-length windows (which
  clip-grid rounding produces). Here two zero-length windows have IoU 1 when they coincide and 0 otherwise;
- saliency scores are returned in float32 for the valid clips (the official code casts them to float16).
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers.processing_utils import ProcessorMixin

from .dataset_types import dataset_type
from .feature_extraction_lddetr import LDDetrFeatureExtractor
from .span_ops import span_cxw_to_xx, temporal_nms


class _NoSpecialTokens:
    """What `LDDetrProcessor.tokenizer` offers to `Trainer.train`, which (transformers 5.x) aligns the model config
    with the bos/eos/pad ids of the `tokenizer` of any ProcessorMixin and fails when the processor has none.
    LD-DETR takes text features, not tokens: there are no special tokens to align."""

    bos_token_id = eos_token_id = pad_token_id = None


class LDDetrProcessor(ProcessorMixin):
    """Wraps an `LDDetrFeatureExtractor` (default: the official QVHighlights settings) and adds post-processing."""

    tokenizer = _NoSpecialTokens()

    def __init__(self, feature_extractor: LDDetrFeatureExtractor | None = None, **kwargs):
        super().__init__(feature_extractor if feature_extractor is not None else LDDetrFeatureExtractor(), **kwargs)

    @classmethod
    def from_dataset_info(cls, info: Mapping, **overrides) -> "LDDetrProcessor":
        """The processor for a dataset built by `lddetr-build-dataset`, from its `lddetr_dataset.json` contents;
        `overrides` set other feature extractor arguments (e.g. `num_saliency_pairs`). The saliency labels are the
        scheme the builder recorded from the rows (`saliency_label_type`: "binary" for windows-only rows, "mixed"
        for both forms), else, in folders built before it was recorded, the dataset type's."""
        registered = dataset_type(info.get("dataset_type"))
        labels = info.get("saliency_label_type") or registered.saliency_label_type
        missing = [k for k in ("video_feature_dims", "text_feature_dim", "clip_length") if k not in info]
        if missing:
            raise ValueError(f"dataset info lacks {missing}")
        settings = dict(
            video_feature_dims=[int(d) for d in info["video_feature_dims"]],
            text_feature_dim=int(info["text_feature_dim"]),
            audio_feature_dim=int(info.get("audio_feature_dim") or 0),
            clip_length=float(info["clip_length"]),
            max_video_clips=_optional_int(info.get("max_video_clips")),
            max_text_tokens=_optional_int(info.get("max_text_tokens")),
            saliency_label_type=labels,
        )
        settings.update(overrides)
        return cls(LDDetrFeatureExtractor(**settings))

    def __call__(self, *args, **kwargs):
        """Model inputs (and `labels` when annotations carry them): the arguments and the batch of
        `LDDetrFeatureExtractor.__call__`."""
        return self.feature_extractor(*args, **kwargs)

    def post_process_moment_retrieval(
        self, outputs, durations, top_k: int | None = 10, nms_threshold: float | None = None, round_to_clip: bool = True
    ) -> list[list[list[float]]]:
        """Per query the predicted windows `[[start_s, end_s, score], ...]`, best first (at most `top_k`; None: all).

        `outputs`: the model output (or a dict) with `logits` (B, Q, 2) and `pred_spans` (B, Q, 2) normalised
        (center, width); `durations`: (B,) seconds. `nms_threshold`: drop windows whose IoU with a better one exceeds
        it (None: no NMS, as the official default).
        """
        logits, spans = _output(outputs, "logits"), _output(outputs, "pred_spans")
        durations = _durations(durations, len(spans))
        if nms_threshold is not None and not 0 <= nms_threshold <= 1:
            raise ValueError(f"nms_threshold must be in [0, 1] or None, got {nms_threshold}")
        # float32 on the model's device, as the official code computes them; then one copy to the host for the batch
        scores = logits.detach().float().softmax(-1)[..., 0].cpu()  # (B, Q)
        windows = span_cxw_to_xx(spans.detach().float()).cpu()  # (B, Q, 2) normalised (start, end)
        results = []
        for b, duration in enumerate(durations):
            seconds = torch.clamp(windows[b] * duration, 0, duration)
            rows = torch.cat([seconds, scores[b, :, None]], dim=1)
            rows = rows[torch.sort(rows[:, 2], descending=True, stable=True).indices].tolist()
            rows = np.array([[float(f"{value:.4f}") for value in row] for row in rows], dtype=np.float64).reshape(-1, 3)
            if round_to_clip:
                clip = self.feature_extractor.clip_length
                rows[:, :2] = np.clip(np.round(rows[:, :2] / clip) * clip, 0, duration)
            ranked = [[float(f"{value:.4f}") for value in row] for row in rows.tolist()]
            if nms_threshold is not None:
                ranked = temporal_nms(ranked, nms_threshold)
            results.append(ranked[:top_k])
        return results

    def post_process_highlight_detection(self, outputs, video_attention_mask) -> list[list[float]]:
        """Per query the saliency score of each valid clip (`video_attention_mask` (B, L), 1 = valid)."""
        saliency = _output(outputs, "saliency_scores").detach().float().cpu()  # (B, L)
        mask = torch.as_tensor(video_attention_mask).cpu().bool()
        if mask.shape != saliency.shape:
            raise ValueError(
                f"video_attention_mask has shape {tuple(mask.shape)}, saliency_scores {tuple(saliency.shape)}"
            )
        return [scores[valid].tolist() for scores, valid in zip(saliency, mask)]

    def post_process(
        self,
        outputs,
        video_attention_mask,
        durations,
        qids: Sequence | None = None,
        queries: Sequence[str] | None = None,
        vids: Sequence[str] | None = None,
        nms_threshold: float | None = None,
        top_k: int | None = 10,
    ) -> list[dict]:
        """Official submission records: per query `qid`, `query`, `vid` (those given), `pred_relevant_windows`
        `[[start_s, end_s, score], ...]` sorted by score, and `pred_saliency_scores` (one per valid clip)."""
        windows = self.post_process_moment_retrieval(outputs, durations, top_k=top_k, nms_threshold=nms_threshold)
        saliency = self.post_process_highlight_detection(outputs, video_attention_mask)
        columns = {"qid": qids, "query": queries, "vid": vids}
        for name, values in columns.items():
            if values is not None and len(values) != len(windows):
                raise ValueError(f"{len(values)} {name}s for a batch of {len(windows)}")
        records = []
        for b in range(len(windows)):
            record = {name: _plain(values[b]) for name, values in columns.items() if values is not None}
            record["pred_relevant_windows"] = windows[b]
            record["pred_saliency_scores"] = saliency[b]
            records.append(record)
        return records


def write_submission(records: Sequence[dict], path: str | Path) -> Path:
    """Write records as the official submission jsonl (one JSON object per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({key: _plain(value) for key, value in record.items()}) + "\n" for record in records]
    # written beside and renamed: a failure never leaves a half-written file in place of an earlier one
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(lines), encoding="utf-8")
    os.replace(partial, path)
    return path


def _output(outputs, name: str) -> torch.Tensor:
    value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if value is None:
        raise ValueError(f"the model outputs have no {name!r}")
    return torch.as_tensor(value)


def _durations(durations, batch_size: int) -> list[float]:
    values = [float(d) for d in (durations.tolist() if hasattr(durations, "tolist") else durations)]
    if len(values) != batch_size:
        raise ValueError(f"{len(values)} durations for a batch of {batch_size}")
    for index, duration in enumerate(values):
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"sample {index}: duration must be a positive number of seconds, got {duration}")
    return values


def _plain(value):
    """numpy / torch scalars as Python numbers, so that records serialise to JSON."""
    return value.item() if isinstance(value, (np.generic, torch.Tensor)) else value


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


__all__ = ["LDDetrProcessor", "temporal_nms", "write_submission"]
