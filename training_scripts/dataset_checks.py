"""What `lddetr-train` checks of a dataset before it builds a model: every data problem that training would otherwise
meet as a traceback, minutes in, as one `DatasetProblem` whose message names the dataset and what to do.

- splits: the train and evaluation splits exist;
- columns: the columns training reads exist with the types `lddetr-build-dataset` writes, the feature matrices with
  the widths of `lddetr_dataset.json`;
- labels: every row of both splits is labelled (`relevant_windows`; TVSum: clip scores) in a form the processor's
  saliency-label scheme takes, checked by the code that makes the training labels (`LabelMaker.check_annotation`);
- the preset: TVSum's (clip scores only) for TVSum labels, another for moment labels;
- `--init_from`: the model takes features of the dataset's widths.
"""

from datasets import Array2D, Dataset, DatasetDict, LargeList, List, Value

from modeling_lddetr import LDDetrConfig, LDDetrProcessor
from modeling_lddetr.labels_lddetr import LabelMaker, label_form

REBUILD = "rebuild it with lddetr-build-dataset"
LABEL_COLUMNS = ("duration", "relevant_windows", "relevant_clip_ids", "saliency_scores", "label")
CLIP_SCORE_TYPES = ("qvhighlights", "mixed")


class DatasetProblem(ValueError):
    """A dataset that training cannot use; the message names the dataset and what to do."""


def column_kind(feature) -> str:
    """A column's type in words: "string", "integer", "number", "list of ...", "matrix of width D"."""
    if isinstance(feature, Value):
        if feature.dtype in ("string", "large_string"):
            return "string"
        if feature.dtype.startswith(("int", "uint")):
            return "integer"
        if feature.dtype.startswith("float"):
            return "number"
        return feature.dtype
    if isinstance(feature, (List, LargeList)):
        return f"list of {column_kind(feature.feature)}"
    if isinstance(feature, Array2D):
        return f"matrix of width {feature.shape[1]}"
    return type(feature).__name__


def _accepts(kind: str, expected: str) -> bool:
    """Integers are numbers too (a duration of 10, a window [2, 6])."""
    return kind == expected or kind.replace("integer", "number") == expected


def check_splits(name: str, queries: DatasetDict, splits: dict[str, str]) -> None:
    """`splits`: the command-line option -> the split it names."""
    for option, split in splits.items():
        if split not in queries:
            raise DatasetProblem(f"{name} has no split {split!r} (it has {sorted(queries)}): pass {option} one of them")


def _check_column(name: str, where: str, dataset: Dataset, column: str, expected: tuple[str, ...]) -> None:
    if column not in dataset.features:
        raise DatasetProblem(f"{name}: {where} has no column {column!r} (expected {' or '.join(expected)}): {REBUILD}")
    kind = column_kind(dataset.features[column])
    if not any(_accepts(kind, option) for option in expected):
        raise DatasetProblem(
            f"{name}: column {column!r} of {where} is {kind}, expected {' or '.join(expected)}: {REBUILD}"
        )


def check_columns(name: str, split_name: str, queries: Dataset, videos: Dataset, info: dict, scheme: str) -> None:
    """The columns that the collator and the labels read, with the types and widths the builder writes."""
    where = f"split {split_name!r}"
    text_width = f"matrix of width {int(info['text_feature_dim'])}"
    expected = {
        "qid": ("integer", "string"), "vid": ("string",), "duration": ("number",), "text_features": (text_width,)
    }
    if scheme == "tvsum":
        expected["saliency_scores"] = ("list of list of number",)
    else:
        expected["relevant_windows"] = ("list of list of number",)
    if scheme in CLIP_SCORE_TYPES or "relevant_clip_ids" in queries.features:
        expected["relevant_clip_ids"] = ("list of integer",)
        expected["saliency_scores"] = ("list of list of number",)
    for column, kinds in expected.items():
        _check_column(name, where, queries, column, kinds)
    _check_column(name, "the videos config", videos, "vid", ("string",))
    video_width = sum(int(d) for d in info["video_feature_dims"])
    _check_column(name, "the videos config", videos, "video_features", (f"matrix of width {video_width}",))
    audio_width = int(info.get("audio_feature_dim") or 0)
    if audio_width:
        _check_column(name, "the videos config", videos, "audio_features", (f"matrix of width {audio_width}",))


def check_labels(name: str, split_name: str, split: Dataset, processor: LDDetrProcessor) -> None:
    """Every row labelled, in a form the processor's saliency-label scheme takes (training batches are all labelled)."""
    fe = processor.feature_extractor
    scheme = fe.saliency_label_type
    check = LabelMaker(scheme, fe.saliency_pairs, fe.clip_length, fe.max_windows).check_annotation
    columns = [column for column in ("qid", *LABEL_COLUMNS) if column in split.column_names]
    for index, row in enumerate(split.select_columns(columns).with_format(None)):
        where = f"split {split_name!r}, qid {row.get('qid')!r}"
        if scheme == "qvhighlights" and label_form(row) == "binary":
            raise DatasetProblem(
                f"{name}: {where} has relevant_windows without relevant_clip_ids and saliency_scores, but the "
                "dataset's saliency labels are 'qvhighlights': rebuild it with lddetr-build-dataset (which records "
                "'binary' or 'mixed' labels for such rows), or set \"saliency_label_type\": \"mixed\" in its "
                "lddetr_dataset.json"
            )
        try:
            labelled = check(row, index)
        except ValueError as error:
            detail = str(error).removeprefix(f"sample {index}: ")
            raise DatasetProblem(f"{name}: {where}: {detail}: fix the row in the annotations and {REBUILD}") from None
        if not labelled:
            fields = "clip scores (saliency_scores)" if scheme == "tvsum" else "relevant_windows"
            raise DatasetProblem(
                f"{name}: {where} has no labels ({fields}): training and evaluation need labelled rows; predict "
                "such a split with lddetr-predict-split and train on labelled ones (--train_split, --eval_split)"
            )


def check_preset(name: str, scheme: str, preset: str, default_preset: str) -> None:
    """TVSum's preset trains clip scores only (no moment loss) and keeps the best TVSum mAP: it fits TVSum labels
    alone, and they fit no other preset."""
    if (scheme == "tvsum") != (preset == "tvsum"):
        labels = "TVSum clip scores (no windows)" if scheme == "tvsum" else f"moment windows ({scheme} saliency labels)"
        raise DatasetProblem(
            f"{name} has {labels}, which preset {preset!r} cannot train: leave --preset out (it is {default_preset!r} "
            "for this dataset)"
        )


def check_model_inputs(name: str, config: LDDetrConfig, processor: LDDetrProcessor, model: str) -> None:
    """A model to start from (`--init_from`) takes inputs of the processor's widths."""
    fe = processor.feature_extractor
    widths = {
        "video_feature_dim": fe.model_video_feature_dim,
        "text_feature_dim": fe.text_feature_dim,
        "audio_feature_dim": fe.model_audio_feature_dim,
    }
    wrong = {key: value for key, value in widths.items() if getattr(config, key) != value}
    if wrong:
        theirs = ", ".join(f"{key} {getattr(config, key)}" for key in wrong)
        ours = ", ".join(f"{key} {value}" for key, value in wrong.items())
        raise DatasetProblem(
            f"{name} gives the model {ours}, but --init_from {model} takes {theirs}: start from a model trained on "
            "features like these, or leave --init_from out"
        )
