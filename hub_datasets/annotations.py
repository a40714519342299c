"""Read the official annotation jsonl files into uniform, checked query rows.

Every row gets the same columns whatever the dataset (`qid`, `query`, `vid`, `duration`, `relevant_windows`,
`relevant_clip_ids`, `saliency_scores`, and `domain` for TVSum); a field the source does not have is None.
TVSum's per-clip annotator scores (`label`) become `saliency_scores`.
A malformed row raises `AnnotationError` naming the file, the line and the qid.

Label forms. A row is labelled by `relevant_windows`, with or without `relevant_clip_ids` + `saliency_scores`
(QVHighlights' per-clip annotator scores); a row without windows is unlabelled (a test split: it is built and
predicted, and `lddetr-train` refuses it). `saliency_label_type` gives the dataset's saliency-label scheme, which
the builder records in `lddetr_dataset.json` and the processor reads back: "qvhighlights" when every labelled row
has clip scores, "binary" when none has (clips inside a window positive, the others negative: the official
Charades-STA / TACoS scheme), and "mixed" when a file, or the splits together, hold both forms. The mixed rule is
per row: a row with clip scores gets QVHighlights labels, a windows-only row binary ones (`labels_lddetr.py`); the
highlight metrics score the queries that have clip scores.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from modeling_lddetr.dataset_types import DATASET_TYPES
from modeling_lddetr.labels_lddetr import dataset_saliency_label_type, label_form

from .specs import DatasetSpec

# what each scheme means, for the builder's summary line
SALIENCY_LABEL_SUMMARIES = {
    "qvhighlights": "qvhighlights (annotator scores per clip)",
    "binary": "binary (from relevant_windows: clips inside a window positive)",
    "mixed": "mixed (per row: annotator scores where given, else binary from relevant_windows)",
    "tvsum": "tvsum (annotator scores per clip)",
}


class AnnotationError(ValueError):
    pass


@dataclass
class QueryRow:
    qid: int | str
    query: str
    vid: str
    duration: float
    relevant_windows: list[list[float]] | None
    relevant_clip_ids: list[int] | None
    saliency_scores: list[list[float]] | None
    domain: str | None
    source: str  # "file line N", for error messages

    def describe(self) -> str:
        return f"qid {self.qid!r} ({self.source})"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _windows(value, fail):
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(w, list) and len(w) == 2 and all(map(_is_number, w)) for w in value
    ):
        fail(f"relevant_windows must be a list of [start, end] pairs of numbers, got {value!r}")
    for start, end in value:
        if start > end:
            fail(f"relevant window [{start}, {end}] ends before it starts")
    return [[float(start), float(end)] for start, end in value]


def _scores(value, fail, field):
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, list) and s and all(map(_is_number, s)) for s in value):
        fail(f"{field} must be a list of non-empty lists of numbers (one list of annotator scores per clip)")
    return [[float(x) for x in s] for s in value]


def _row(spec: DatasetSpec, record, source: str) -> QueryRow:
    qid = record.get("qid") if isinstance(record, dict) else None

    def fail(message):
        raise AnnotationError(f"{source} (qid {qid!r}): {message}")

    if not isinstance(record, dict):
        fail(f"expected a JSON object, got {type(record).__name__}")
    for key in ("qid", "query", "vid", "duration"):
        if key not in record:
            fail(f"missing field {key!r}")
    if not (_is_int(qid) if spec.qid_type is int else isinstance(qid, str) and qid):
        fail(f"qid must be {'an integer' if spec.qid_type is int else 'a non-empty string'} for {spec.dataset_type}")
    vid = record["vid"]
    # the vid names feature files, so it must not reach outside the feature folders
    if not isinstance(vid, str) or not vid or "/" in vid or "\\" in vid or vid in (".", ".."):
        fail(f"vid must be a non-empty file-name-safe string, got {vid!r}")
    if not isinstance(record["query"], str):
        fail("query must be a string")
    if not _is_number(record["duration"]) or record["duration"] <= 0:
        fail(f"duration must be a positive number, got {record['duration']!r}")

    clip_ids = record.get("relevant_clip_ids")
    if clip_ids is not None and not (isinstance(clip_ids, list) and all(_is_int(i) and i >= 0 for i in clip_ids)):
        fail("relevant_clip_ids must be a list of non-negative integers")
    if spec.has_domain:
        saliency = _scores(record.get("label"), fail, "label")
    else:
        saliency = _scores(record.get("saliency_scores"), fail, "saliency_scores")
        if (saliency is None) != (clip_ids is None) or (saliency is not None and len(saliency) != len(clip_ids)):
            fail("saliency_scores must have one entry per relevant_clip_ids entry")
    domain = record.get("domain")
    if spec.has_domain and not isinstance(domain, str):
        fail("domain must be a string")

    return QueryRow(
        qid=qid,
        query=record["query"],
        vid=vid,
        duration=float(record["duration"]),
        relevant_windows=_windows(record.get("relevant_windows"), fail),
        relevant_clip_ids=clip_ids,
        saliency_scores=saliency,
        domain=domain if spec.has_domain else None,
        source=source,
    )


def read_split(spec: DatasetSpec, path: Path) -> list[QueryRow]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{source}: not valid JSON ({e})") from None
            rows.append(_row(spec, record, source))
    if not rows:
        raise AnnotationError(f"{path}: no annotation rows")
    return rows


def read_annotations(spec: DatasetSpec, annotations_dir: Path, splits: list[str] | None) -> dict[str, list[QueryRow]]:
    """Rows per split. Without `splits`, every split whose file exists; a qid may appear only once overall."""
    if splits is None:
        splits = [s for s, name in spec.split_files.items() if (annotations_dir / name).is_file()]
        if not splits:
            expected = ", ".join(spec.split_files.values())
            raise AnnotationError(f"{annotations_dir}: none of the {spec.dataset_type} annotation files ({expected})")
    by_split, seen = {}, {}
    for split in dict.fromkeys(splits):
        if split not in spec.split_files:
            raise AnnotationError(f"{spec.dataset_type} has no split {split!r}; it has {list(spec.split_files)}")
        path = annotations_dir / spec.split_files[split]
        if not path.is_file():
            raise AnnotationError(f"annotation file for split {split!r} not found: {path}")
        by_split[split] = read_split(spec, path)
        for row in by_split[split]:
            if row.qid in seen:
                raise AnnotationError(f"{row.source}: qid {row.qid!r} already used at {seen[row.qid]}")
            seen[row.qid] = row.source
    return by_split


def saliency_label_type(dataset_type: str, by_split: dict[str, list[QueryRow]]) -> str:
    """The saliency-label scheme of a dataset's rows ("qvhighlights", "binary", "mixed", or the type's own)."""
    forms = (label_form(vars(row)) for rows in by_split.values() for row in rows)
    return dataset_saliency_label_type(DATASET_TYPES[dataset_type].saliency_label_type, forms)
