"""Load a dataset folder written by `lddetr-build-dataset` (local or on the Hub), and publish one to the Hub."""

import json
from pathlib import Path

import numpy as np
from datasets import Array2D, Dataset, DatasetDict, load_dataset
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from processing.hub_ids import require_folder_or_hub_id

from .card import split_front_matter

INFO_FILE = "lddetr_dataset.json"
INFO_KEYS = (
    "dataset_type",
    "video_feature_names",
    "video_feature_dims",
    "text_feature_dim",
    "audio_feature_dim",
    "clip_length",
    "max_video_clips",
    "max_text_tokens",
    "feature_dtype",
    "splits",
)


def read_info(path: Path) -> dict:
    info = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [key for key in INFO_KEYS if key not in info]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    return info


def with_matrix_format(dataset: Dataset | DatasetDict) -> Dataset | DatasetDict:
    """Feature matrices as float32 (L, D) numpy arrays (fast, whatever the stored dtype); other columns as Python."""
    some_split = dataset if isinstance(dataset, Dataset) else next(iter(dataset.values()))
    matrices = [name for name, feature in some_split.features.items() if isinstance(feature, Array2D)]
    return dataset.with_format("numpy", columns=matrices, output_all_columns=True, dtype=np.float32)


def local_data_files(folder: Path, config_name: str) -> dict[str, list[str]]:
    """Absolute shard paths per split of one config, from the card's `configs`.

    Loading a local folder by its path, datasets 5.2 names its cache after the folder name and the card, not the
    files: a folder rebuilt in place (or another folder of the same name) would load the stale cached data.
    Explicit files are cached by path and modification time.
    """
    card = folder / "README.md"
    front, _ = split_front_matter(card.read_text(encoding="utf-8"), card)
    config = next((c for c in front.get("configs", []) if c.get("config_name") == config_name), None)
    if config is None:
        raise ValueError(f"{card}: no config {config_name!r} in its `configs`")
    files = {}
    for entry in config["data_files"]:
        patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        files[entry["split"]] = sorted(str(path) for pattern in patterns for path in folder.glob(pattern))
        if not files[entry["split"]]:
            raise FileNotFoundError(f"{card}: no file matches {patterns} (split {entry['split']!r} of {config_name!r})")
    return files


def load_lddetr_dataset(path_or_hub_id: str | Path, revision: str | None = None) -> tuple[DatasetDict, Dataset, dict]:
    """(queries per split, videos, the contents of lddetr_dataset.json) of a local folder or a Hub dataset id.

    Rows give `text_features` / `video_features` / `audio_features` as float32 numpy arrays of shape (L, D).
    """
    location = str(path_or_hub_id)
    folder = Path(location)
    if folder.is_dir():
        if not (folder / INFO_FILE).is_file():
            raise FileNotFoundError(f"{location} has no {INFO_FILE}: not a folder written by lddetr-build-dataset")
        info = read_info(folder / INFO_FILE)
        queries = load_dataset("parquet", data_files=local_data_files(folder, "queries"))
        videos = load_dataset("parquet", data_files=local_data_files(folder, "videos"), split="train")
    elif folder.exists():
        raise NotADirectoryError(f"{location} is a file; expected a dataset folder or a Hub dataset id")
    else:
        require_folder_or_hub_id(location, "dataset")
        info = read_info(hf_hub_download(location, INFO_FILE, repo_type="dataset", revision=revision))
        queries = load_dataset(location, "queries", revision=revision)
        videos = load_dataset(location, "videos", split="train", revision=revision)
    return with_matrix_format(queries), with_matrix_format(videos), info


def dataset_file(path_or_hub_id: str | Path, name: str, revision: str | None = None) -> str | None:
    """The local path of one file of a dataset folder or Hub dataset (downloaded), or None where it has none."""
    folder = Path(path_or_hub_id)
    if folder.is_dir():
        return str(folder / name) if (folder / name).is_file() else None
    try:
        return hf_hub_download(str(path_or_hub_id), name, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return None


def push_dataset_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                        commit_message: str | None = None) -> str:
    """Upload a built dataset folder as a Hub dataset repository (created if needed); returns the repository URL."""
    folder = Path(folder)
    for name in (INFO_FILE, "README.md"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: build it with lddetr-build-dataset first")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=commit_message or "Upload dataset built by lddetr-build-dataset",
    )
    return str(url)
