"""Render a dataset card: the template's YAML front matter plus the generated `configs` and `dataset_info`,
and the template's text with `$placeholders` filled in from the build.

The sections every card shares (columns, usage, expected feature layout, ...) are generated here, so the
per-dataset templates only hold what differs: source, license, citation, feature provenance.
"""

import string
from pathlib import Path

import yaml
from datasets import Features

from modeling_lddetr.dataset_types import DATASET_TYPES

from .specs import DatasetSpec


class CardTemplateError(ValueError):
    pass


def split_front_matter(text: str, path: Path) -> tuple[dict, str]:
    if not text.startswith("---\n"):
        raise CardTemplateError(f"{path}: a dataset card starts with YAML front matter between '---' lines")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise CardTemplateError(f"{path}: the YAML front matter has no closing '---' line")
    return yaml.safe_load(text[4:end]) or {}, text[end + 5 :]


def size_category(num_rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if num_rows < limit:
            return name
    return "n>1M"


def hub_metadata(query_features: Features, video_features: Features, splits: list[str], num_queries: int) -> dict:
    """The YAML that makes `load_dataset(folder)` give the queries and `load_dataset(folder, "videos")` the videos."""
    return {
        "size_categories": [size_category(num_queries)],
        "configs": [
            {
                "config_name": "queries",
                "default": True,
                "data_files": [{"split": s, "path": f"data/queries/{s}-*.parquet"} for s in splits],
            },
            {"config_name": "videos", "data_files": [{"split": "train", "path": "data/videos/train-*.parquet"}]},
        ],
        "dataset_info": [
            {"config_name": "queries", "features": query_features._to_yaml_list()},
            {"config_name": "videos", "features": video_features._to_yaml_list()},
        ],
    }


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _feature_layout(spec: DatasetSpec, with_audio: bool) -> str:
    """The official file layout the builder reads."""
    lines = []
    for source in spec.video_sources + ((spec.audio_source,) if with_audio else ()):
        shape = f"(clips, {source.dim})"
        if len(source.parts) > 1:
            shape = f"(clips, {source.dim // len(source.parts)}) each, concatenated to {source.dim}"
        for part in source.parts:
            lines.append(f"{source.directory}/{{vid}}{part}.npz   # key 'features' (or {{vid}}{part}.npy): {shape}")
    text = spec.text_source
    lines.append(f"{text.directory}/{text.file_name}   # key '{text.key}': (tokens, {text.dim})")
    return "```text\nFEATURES/\n" + "\n".join("  " + line for line in lines) + "\n```"


SALIENCY_LABEL_TEXTS = {
    "qvhighlights": "the annotators' scores of the relevant clips, summed (the QVHighlights scheme)",
    "binary": (
        "derived from `relevant_windows`: the clips inside a window are positive (1), the others negative (0), and"
        " the saliency loss compares random clips inside with random clips outside, as the official LD-DETR code"
        " labels Charades-STA and TACoS"
    ),
    "mixed": (
        "per row: a query with `relevant_clip_ids` and `saliency_scores` gets its annotators' scores, summed (the"
        " QVHighlights scheme); a query with `relevant_windows` only gets binary labels (the clips inside a window"
        " positive, the others negative); the highlight metrics score the queries with annotator scores"
    ),
    "tvsum": "the annotators' scores of every clip, rescaled (the TVSum scheme)",
}


def _saliency_labels(dataset_type: str, info: dict) -> str:
    """Which saliency-label scheme training uses: the recorded one, else (older folders) the dataset type's."""
    scheme = info.get("saliency_label_type") or DATASET_TYPES[dataset_type].saliency_label_type
    return (
        f"Saliency labels for training (`saliency_label_type` \"{scheme}\" in `lddetr_dataset.json`): "
        f"{SALIENCY_LABEL_TEXTS[scheme]}."
    )


def _columns(spec: DatasetSpec, info: dict) -> str:
    video_dim = sum(info["video_feature_dims"])
    qid = "int" if spec.qid_type is int else "string"
    queries = [
        ["`qid`", qid, "query id"],
        ["`query`", "string", "the natural-language query"],
        ["`vid`", "string", "video id: the row of the `videos` config that holds this query's video"],
        ["`duration`", "float64", "video duration in seconds"],
        ["`relevant_windows`", "list of [start, end] (s)", "ground-truth moments; null where the split has no labels"],
        ["`relevant_clip_ids`", "list of int",
         f"indices of the {info['clip_length']:g}-s clips inside the moments; null where the source has none"],
        ["`saliency_scores`", "list of lists of float32",
         "annotator scores per relevant clip (TVSum: per clip); null where the source has none"],
    ]
    if spec.has_domain:
        queries.append(["`domain`", "string", "TVSum video category; the official recipe trains one model per domain"])
    text_type = f"Array2D (tokens, {info['text_feature_dim']}) {info['feature_dtype']}"
    queries.append(["`text_features`", text_type, "raw token features"])
    names = " + ".join(f"{n} ({d})" for n, d in zip(info["video_feature_names"], info["video_feature_dims"]))
    videos = [
        ["`vid`", "string", "video id"],
        ["`video_features`", f"Array2D (clips, {video_dim}) {info['feature_dtype']}",
         f"raw features, {names} concatenated in this order, one row per {info['clip_length']:g}-s clip"],
    ]
    if info["audio_feature_dim"]:
        videos.append(["`audio_features`", f"Array2D (clips, {info['audio_feature_dim']}) {info['feature_dtype']}",
                       "raw PANN audio features, same clips as `video_features`"])
    header = ["column", "type", "meaning"]
    return (
        "Config `queries` (default), one row per query:\n\n" + _table(header, queries)
        + "\n\n" + _saliency_labels(spec.dataset_type, info)
        + "\n\nConfig `videos`, one row per video (each video once, however many queries use it), split `train`"
        " holding the videos of every query split:\n\n" + _table(header, videos)
    )


def _usage(info: dict) -> str:
    return (
        "```python\n"
        "from hub_datasets import load_lddetr_dataset\n\n"
        "queries, videos, info = load_lddetr_dataset(\"PATH_OR_HUB_ID\")  # DatasetDict, Dataset, lddetr_dataset.json\n"
        f"row = queries[\"{next(iter(info['splits']))}\"][0]\n"
        "row_of_video = {vid: i for i, vid in enumerate(videos[\"vid\"])}\n"
        "video = videos[row_of_video[row[\"vid\"]]][\"video_features\"]  # (clips, dim) numpy array\n"
        "```\n\n"
        "or with `datasets` alone: `load_dataset(\"PATH_OR_HUB_ID\")` (queries) and"
        " `load_dataset(\"PATH_OR_HUB_ID\", \"videos\")`."
        " Use `.with_format(\"numpy\")` or `\"torch\"`: the default Python format turns the matrices into nested"
        " lists, about 10 times slower. `datasets` caches a local folder under its name, whatever its content: after"
        " rebuilding a folder in place, pass `download_mode=\"force_redownload\"` to `load_dataset`"
        " (`load_lddetr_dataset` does not need it)."
    )


def card_context(spec: DatasetSpec, info: dict, num_videos: int, build_command: str) -> dict:
    splits = info["splits"]
    sources = [[s.name, f"`{s.directory}/`", s.dim] for s in spec.video_sources]
    with_audio = bool(info["audio_feature_dim"])
    if with_audio:
        audio = spec.audio_source
        sources.append([f"{audio.name} (audio)", f"`{audio.directory}/`", info["audio_feature_dim"]])
    return {
        "splits_table": _table(["split", "queries"], [[s, n] for s, n in splits.items()] + [["(videos)", num_videos]]),
        "num_videos": num_videos,
        "num_queries": sum(splits.values()),
        "video_features_table": _table(["type", "source folder", "dim"], sources),
        "video_feature_dim": sum(info["video_feature_dims"]),
        "text_feature_dim": info["text_feature_dim"],
        "feature_dtype": info["feature_dtype"],
        "clip_length": f"{info['clip_length']:g}",
        "max_video_clips": info["max_video_clips"],
        "audio": "with PANN audio features (`audio_features`)" if with_audio else "without audio features",
        "columns": _columns(spec, info),
        "usage": _usage(info),
        "feature_layout": _feature_layout(spec, with_audio),
        "build_command": f"```bash\n{build_command}\n```",
    }


def build_command(name: str, sources: list[str], *, feature_dtype: str, options: list[str] = (),
                  splits: list[str] | None = None, max_video_clips: int | None = None) -> str:
    """The `lddetr-build-dataset` command line that rebuilds a folder, for its card: `sources` and `options` are
    flags with placeholder paths (a card must not carry local paths)."""
    parts = ["lddetr-build-dataset", name, *sources, "--output-dir OUTPUT", f"--feature-dtype {feature_dtype}"]
    parts += options
    if splits:
        parts.append("--splits " + " ".join(splits))
    if max_video_clips:
        parts.append(f"--max-video-clips {max_video_clips}")
    return " ".join(parts)


def render_card(template_path: Path, metadata: dict, context: dict) -> str:
    front, body = split_front_matter(template_path.read_text(encoding="utf-8"), template_path)
    try:
        text = string.Template(body).substitute(context)
    except (KeyError, ValueError) as e:
        raise CardTemplateError(f"{template_path}: unknown or malformed placeholder {e}") from None
    return "---\n" + yaml.safe_dump({**front, **metadata}, sort_keys=False, allow_unicode=True) + "---\n" + text
