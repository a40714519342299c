"""`evaluate` wrapper around `processing.evaluation.metrics.compute_metrics` (moment retrieval and highlight detection).

Load it offline from its folder: `evaluate.load("<path>/processing/evaluation/mr_hd_metric")`; the `processing`
package must be importable (installed, or on PYTHONPATH).

    metric.compute(predictions=submission_records, references=ground_truth_records,
                   dataset_type="qvhighlights", clip_length=2.0, match_number=True)

returns the same nested report as `compute_metrics`. The records travel through `evaluate`'s Arrow cache as JSON
strings: their fields differ per dataset (TVSum has `label`, Charades-STA no saliency) and qids are ints or strs, which
one fixed Arrow schema cannot hold without adding, dropping or retyping fields.
"""

import json

import datasets
import evaluate

from modeling_lddetr.dataset_types import DATASET_TYPES
from processing.evaluation.metrics import compute_metrics

_DESCRIPTION = """The official QVHighlights, Charades-STA, TACoS and TVSum metrics of LD-DETR (moment retrieval R1, mAP,
mIoU by window-length bucket; highlight detection mAP and HIT@1), reproduced exactly and vectorised."""

_CITATION = """@article{zhao2025lddetr,
  title={LD-DETR: Loop Decoder DEtection Transformer for Video Moment Retrieval and Highlight Detection},
  author={Zhao and others},
  journal={arXiv preprint arXiv:2501.10787},
  year={2025}
}"""

_INPUTS_DESCRIPTION = f"""
Args:
    predictions: submission records, {{"qid", "pred_relevant_windows": [[start, end, score], ...],
        "pred_saliency_scores": [float per clip]}}.
    references: ground-truth records of the dataset (qid, relevant_windows, duration, relevant_clip_ids,
        saliency_scores; TVSum: label).
    dataset_type: one of {sorted(DATASET_TYPES)} (default "qvhighlights").
    clip_length: seconds per clip of the highlight ground truth (default 2.0).
    match_number: True requires the same qids on both sides, False evaluates the shared ones (default True).
Returns:
    the nested report; its "brief" entry is a flat {{metric name: percentage}}.
"""


def _to_json(record) -> str:
    # numpy and torch values (scores, arrays) become plain lists and numbers
    return json.dumps(record, default=lambda value: value.tolist())


class MrHdMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    # evaluate appends the inputs description to these docstrings, so they must exist
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of submission and ground-truth records."""
        if predictions is not None:
            predictions = [_to_json(record) for record in predictions]
        if references is not None:
            references = [_to_json(record) for record in references]
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one submission record and one ground-truth record."""
        super().add(
            prediction=None if prediction is None else _to_json(prediction),
            reference=None if reference is None else _to_json(reference),
            **kwargs,
        )

    def _compute(self, predictions, references, dataset_type="qvhighlights", clip_length=2.0, match_number=True):
        return compute_metrics(
            [json.loads(record) for record in predictions],
            [json.loads(record) for record in references],
            dataset_type=dataset_type,
            clip_length=clip_length,
            match_number=match_number,
        )
