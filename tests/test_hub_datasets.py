"""lddetr-build-dataset on real annotation rows with random features in the official layout, loading, publishing,
and the embedded demo dataset."""

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import load_dataset

import hub_datasets.hub
from hub_datasets import demo as demo_module
from hub_datasets import load_lddetr_dataset, push_dataset_to_hub
from hub_datasets.annotations import AnnotationError
from hub_datasets.build import build_dataset
from hub_datasets.card import card_context, render_card
from hub_datasets.cli import main
from hub_datasets.dataset_folder import OutputExistsError
from hub_datasets.demo import demo_dataset_path, demo_spec
from hub_datasets.feature_files import FeatureFileError
from hub_datasets.specs import SPECS

# The official layout, written out here rather than taken from hub_datasets.specs, so that a wrong spec fails.
# video: (folder, file-name parts, dim per part); text: (folder, file name, npz key)
LAYOUTS = {
    "qvhighlights": dict(
        video=[("slowfast_features", ("",), 2304), ("clip_features", ("",), 512)],
        text=("clip_text_features", "qid{qid}.npz", "last_hidden_state"),
    ),
    "charades-sta": dict(
        video=[("slowfast_features", ("",), 2304), ("clip_features", ("",), 512)],
        text=("clip_text_features", "qid{qid}.npz", "last_hidden_state"),
    ),
    "tacos": dict(
        video=[("slowfast_features", ("",), 2304), ("clip_features", ("",), 512)],
        text=("clip_text_features", "{qid}.npz", "last_hidden_state"),
    ),
    "tvsum": dict(video=[("video_features", ("_rgb", "_opt"), 1024)], text=("query_features", "{qid}.npz", "token")),
}


@dataclass
class Tree:
    annotations: Path
    features: Path
    rows: dict = field(default_factory=dict)  # annotation file name -> parsed rows
    video: dict = field(default_factory=dict)  # vid -> [array per feature type]
    audio: dict = field(default_factory=dict)  # vid -> array
    text: dict = field(default_factory=dict)  # qid -> array

    def all_rows(self):
        return [row for rows in self.rows.values() for row in rows]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _pick(shared_data_dir: Path, name: str) -> dict[str, list[str]]:
    """A handful of real annotation lines per file, including videos that several queries share."""
    if name == "qvhighlights":
        folder = shared_data_dir / "qvhighlights"
        val = _lines(folder / "highlight_val_release.jsonl")
        vids = [json.loads(line)["vid"] for line in val]
        shared_vid = next(v for v in vids if vids.count(v) > 1)
        pair = [line for line, v in zip(val, vids) if v == shared_vid]
        return {
            "highlight_train_release.jsonl": _lines(folder / "highlight_train_release.jsonl")[:3],
            "highlight_val_release.jsonl": val[:3] + pair,
            "highlight_test_release.jsonl": _lines(folder / "highlight_test_release.jsonl")[:2],
        }
    if name == "charades-sta":
        folder = shared_data_dir / "charades_sta"
        return {  # the first val rows are four queries on one video
            "charades_sta_train_tvr_format.jsonl": _lines(folder / "charades_sta_train_tvr_format.jsonl")[:3],
            "charades_sta_val_tvr_format.jsonl": _lines(folder / "charades_sta_val_tvr_format.jsonl")[:5],
        }
    if name == "tacos":
        folder = shared_data_dir / "tacos"
        return {f: _lines(folder / f)[:3] for f in ("train.jsonl", "evl.jsonl", "test.jsonl")}
    folder = shared_data_dir / "tvsum"
    return {
        "tvsum_train.jsonl": _lines(folder / "tvsum_train.jsonl")[:2],
        "tvsum_val.jsonl": _lines(folder / "tvsum_val.jsonl")[:1],
    }


def write_tree(root: Path, shared_data_dir: Path, name: str, with_audio: bool = False, seed: int = 0) -> Tree:
    """Real annotation rows and random features with the official dims and file names."""
    rng = np.random.default_rng(seed)
    tree = Tree(root / "annotations", root / "features")
    tree.annotations.mkdir(parents=True)
    for file_name, lines in _pick(shared_data_dir, name).items():
        (tree.annotations / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        tree.rows[file_name] = [json.loads(line) for line in lines]
    layout = LAYOUTS[name]
    for index, vid in enumerate(dict.fromkeys(row["vid"] for row in tree.all_rows())):
        length = int(rng.integers(20, 40))
        tree.video[vid] = []
        for type_index, (folder, parts, dim) in enumerate(layout["video"]):
            (tree.features / folder).mkdir(parents=True, exist_ok=True)
            rows = length - (type_index == 1 and index % 2)  # some clip files are one row short
            arrays = [(rng.standard_normal((rows, dim)) * 3).astype(np.float32) for _ in parts]
            for part, array in zip(parts, arrays):
                stem = tree.features / folder / f"{vid}{part}"
                if name == "tvsum" or (index == 0 and type_index == 0):  # the .npy fallback
                    np.save(f"{stem}.npy", array)
                else:
                    np.savez(f"{stem}.npz", features=array)
            tree.video[vid].append(np.concatenate(arrays, axis=1))
        if with_audio:
            (tree.features / "pann_features").mkdir(exist_ok=True)
            tree.audio[vid] = rng.standard_normal((length - 2, 2048)).astype(np.float32)
            np.save(tree.features / "pann_features" / f"{vid}.npy", tree.audio[vid])
    folder, file_name, key = layout["text"]
    (tree.features / folder).mkdir(parents=True)
    for row in tree.all_rows():
        tokens = rng.standard_normal((int(rng.integers(5, 20)), 512)).astype(np.float32)
        np.savez(tree.features / folder / file_name.format(qid=row["qid"]), **{key: tokens, "pooler_output": tokens[0]})
        tree.text[row["qid"]] = tokens
    return tree


def expected_video(tree: Tree, vid: str, max_clips: int | None = None) -> np.ndarray:
    arrays = tree.video[vid] + ([tree.audio[vid]] if vid in tree.audio else [])
    length = min(a.shape[0] for a in arrays)
    if max_clips:
        length = min(length, max_clips)
    return np.concatenate([a[:length] for a in tree.video[vid]], axis=1)


def build(tree: Tree, name: str, out: Path, **options):
    return build_dataset(name, tree.annotations, tree.features, out, progress=False, **options)


def output_dir(tmp_path: Path) -> Path:
    """A folder name used once per session: datasets caches a local folder loaded by path under its name."""
    return tmp_path / f"ds-{tmp_path.name}"


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def qvh(tmp_path, shared_data_dir) -> Tree:
    return write_tree(tmp_path / "qvh", shared_data_dir, "qvhighlights")


# ----------------------------------------------------------------------------------------------- round trips


def test_qvhighlights_rows_shapes_and_values_round_trip(qvh, tmp_path, shared_data_dir):
    shutil.copyfile(shared_data_dir / "qvhighlights" / "LICENSE", qvh.annotations / "LICENSE")
    out = output_dir(tmp_path)
    report = build(qvh, "qvhighlights", out)

    queries = load_dataset(str(out))
    assert sorted(queries) == ["test", "train", "validation"]
    for split, file_name in [
        ("train", "highlight_train_release.jsonl"),
        ("validation", "highlight_val_release.jsonl"),
        ("test", "highlight_test_release.jsonl"),
    ]:
        loaded = queries[split].with_format("numpy", columns=["text_features"], output_all_columns=True)
        assert len(loaded) == len(qvh.rows[file_name])
        for row, source in zip(loaded, qvh.rows[file_name]):
            assert (row["qid"], row["query"], row["vid"], row["duration"]) == (
                source["qid"],
                source["query"],
                source["vid"],
                source["duration"],
            )
            assert row["relevant_windows"] == source.get("relevant_windows")
            assert row["relevant_clip_ids"] == source.get("relevant_clip_ids")
            assert row["saliency_scores"] == source.get("saliency_scores")
            assert row["text_features"].dtype == np.float32
            np.testing.assert_array_equal(row["text_features"], qvh.text[source["qid"]])

    videos = load_dataset(str(out), "videos", split="train").with_format("numpy")
    assert sorted(videos["vid"]) == sorted(qvh.video)  # every video once, the shared one included
    for row in videos:
        np.testing.assert_array_equal(row["video_features"], expected_video(qvh, row["vid"]))
    assert any(len(v[0]) != len(v[1]) for v in qvh.video.values())  # truncation to the shortest was exercised

    info = json.loads((out / "lddetr_dataset.json").read_text())
    assert info == {
        "dataset_type": "qvhighlights",
        "video_feature_names": ["slowfast", "clip"],
        "video_feature_dims": [2304, 512],
        "text_feature_dim": 512,
        "audio_feature_dim": 0,
        "clip_length": 2.0,
        "max_video_clips": 75,
        "max_text_tokens": 32,
        "feature_dtype": "float32",
        "splits": {"train": 3, "validation": 5, "test": 2},
        "saliency_label_type": "qvhighlights",  # every labelled row has annotator scores
    }
    assert report.num_videos == len(qvh.video) and report.info == info
    assert (out / "LICENSE").read_bytes() == (qvh.annotations / "LICENSE").read_bytes()
    assert sorted(p.name for p in (out / "data" / "queries").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    assert leftovers(out) == []


def test_float16_values_are_the_float32_values_within_fp16_precision(qvh, tmp_path):
    out = output_dir(tmp_path)
    build(qvh, "qvhighlights", out, feature_dtype="float16")
    assert load_dataset(str(out), "videos", split="train").features["video_features"].dtype == "float16"

    queries, videos, info = load_lddetr_dataset(out)
    assert info["feature_dtype"] == "float16"
    for row in videos:
        source = expected_video(qvh, row["vid"])
        assert row["video_features"].dtype == np.float32  # the loader hands out float32 whatever is stored
        np.testing.assert_array_equal(row["video_features"], source.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(row["video_features"], source, rtol=1e-3, atol=1e-4)
    row = queries["validation"][0]
    np.testing.assert_allclose(row["text_features"], qvh.text[row["qid"]], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["charades-sta", "tacos"])
def test_charades_and_tacos_store_each_shared_video_once(name, tmp_path, shared_data_dir):
    tree = write_tree(tmp_path / "tree", shared_data_dir, name)
    out = output_dir(tmp_path)
    build(tree, name, out)
    queries, videos, info = load_lddetr_dataset(out)

    assert len(videos) == len(tree.video) < len(tree.all_rows())
    for row in videos:
        np.testing.assert_array_equal(row["video_features"], expected_video(tree, row["vid"]))
    rows = [row for split in queries.values() for row in split]
    assert [r["qid"] for r in rows] == [s["qid"] for s in tree.all_rows()]
    assert all(type(r["qid"]) is (int if name == "charades-sta" else str) for r in rows)
    for row in rows:
        np.testing.assert_array_equal(row["text_features"], tree.text[row["qid"]])
        assert row["relevant_clip_ids"] is None and row["saliency_scores"] is None and len(row["relevant_windows"]) == 1
    assert info["clip_length"] == (1.0 if name == "charades-sta" else 2.0)
    assert info["max_video_clips"] == max(len(row["video_features"]) for row in videos)  # no official limit: keep all
    assert list(info["splits"]) == (["train", "test"] if name == "charades-sta" else ["train", "validation", "test"])


def test_tvsum_concatenates_rgb_and_flow_and_keeps_scores_and_domain(tmp_path, shared_data_dir):
    tree = write_tree(tmp_path / "tree", shared_data_dir, "tvsum")
    out = output_dir(tmp_path)
    build(tree, "tvsum", out)
    queries, videos, info = load_lddetr_dataset(out)
    assert info["video_feature_dims"] == [2048] and info["dataset_type"] == "tvsum"
    for row in videos:
        np.testing.assert_array_equal(row["video_features"], expected_video(tree, row["vid"]))
    row, source = queries["train"][0], tree.rows["tvsum_train.jsonl"][0]
    assert row["saliency_scores"] == source["label"] and row["domain"] == source["domain"]
    assert row["relevant_windows"] is None
    np.testing.assert_array_equal(row["text_features"], tree.text[source["qid"]])


def test_audio_and_clip_limit_truncate_every_type_to_the_same_clips(tmp_path, shared_data_dir):
    tree = write_tree(tmp_path / "tree", shared_data_dir, "qvhighlights", with_audio=True)
    audio_lengths = sorted({len(tree.audio[row["vid"]]) for row in tree.rows["highlight_val_release.jsonl"]})
    limit = audio_lengths[-1] - 1  # the limit cuts the longest video; the (shorter) audio cuts the others
    assert len(audio_lengths) > 1
    out = output_dir(tmp_path)
    build(tree, "qvhighlights", out, with_audio=True, max_video_clips=limit, splits=["validation"])
    queries, videos, info = load_lddetr_dataset(out)
    assert list(queries) == ["validation"] and info["audio_feature_dim"] == 2048 and info["max_video_clips"] == limit
    for row in videos:
        video = expected_video(tree, row["vid"], max_clips=limit)
        np.testing.assert_array_equal(row["video_features"], video)
        np.testing.assert_array_equal(row["audio_features"], tree.audio[row["vid"]][: len(video)])


def test_large_splits_are_sharded_and_load_whole(qvh, tmp_path):
    out = output_dir(tmp_path)
    build(qvh, "qvhighlights", out, max_shard_bytes=100_000)
    names = sorted(p.name for p in (out / "data" / "videos").iterdir())
    assert len(names) == len(qvh.video) and names[0] == f"train-00000-of-{len(names):05d}.parquet"
    _, videos, _ = load_lddetr_dataset(out)
    assert sorted(videos["vid"]) == sorted(qvh.video)


# ----------------------------------------------------------------------------------------------- bad input


def _first_val_row(tree: Tree) -> dict:
    return tree.rows["highlight_val_release.jsonl"][0]


def test_missing_files_are_all_named_with_their_query_or_video(qvh, tmp_path):
    row = _first_val_row(qvh)
    (qvh.features / "clip_text_features" / f"qid{row['qid']}.npz").unlink()
    (qvh.features / "clip_features" / f"{row['vid']}.npz").unlink()
    out = output_dir(tmp_path)
    with pytest.raises(FeatureFileError) as error:
        build(qvh, "qvhighlights", out)
    message = str(error.value)
    assert "2 feature file(s) not found" in message
    assert f"qid{row['qid']}.npz (text features of qid {row['qid']}" in message
    assert "highlight_val_release.jsonl line 1" in message
    assert f"clip_features/{row['vid']}.npz" in message and f"vid {row['vid']!r}" in message
    assert not out.exists() and leftovers(out) == []


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("text_dim", "expected shape (rows, 512), got"),
        ("video_dim", "expected shape (rows, 512), got"),
        ("video_nan", "contains NaN or inf"),
        ("text_inf", "contains NaN or inf"),
        ("fp16_overflow", "values beyond the float16 range"),
        ("text_key", "no array 'last_hidden_state'"),
        ("video_corrupt", "cannot read"),
    ],
)
def test_bad_feature_values_name_the_file_and_the_row(damage, expected, qvh, tmp_path):
    row = _first_val_row(qvh)
    text_path = qvh.features / "clip_text_features" / f"qid{row['qid']}.npz"
    clip_path = qvh.features / "clip_features" / f"{row['vid']}.npz"
    tokens, clips = qvh.text[row["qid"]].copy(), np.load(clip_path)["features"]
    if damage == "text_dim":
        np.savez(text_path, last_hidden_state=tokens[:, :511])
    elif damage == "video_dim":
        np.savez(clip_path, features=clips[:, :500])
    elif damage == "video_nan":
        clips[3, 7] = np.nan
        np.savez(clip_path, features=clips)
    elif damage == "text_inf":
        tokens[0, 0] = np.inf
        np.savez(text_path, last_hidden_state=tokens)
    elif damage == "fp16_overflow":
        tokens[0, 0] = 1e6
        np.savez(text_path, last_hidden_state=tokens)
    elif damage == "text_key":
        np.savez(text_path, pooler_output=tokens[0])
    else:
        clip_path.write_bytes(clip_path.read_bytes()[:200])
    out = output_dir(tmp_path)
    with pytest.raises(FeatureFileError, match=re.escape(expected)) as error:
        build(qvh, "qvhighlights", out, feature_dtype="float16" if damage == "fp16_overflow" else "float32")
    path, owner = (clip_path, f"vid {row['vid']!r}") if damage.startswith("video") else (text_path, f"qid {row['qid']}")
    assert str(path) in str(error.value) and owner in str(error.value)
    assert not out.exists() and leftovers(out) == []


def test_bad_annotation_rows_name_the_file_and_line(qvh, tmp_path):
    path = qvh.annotations / "highlight_train_release.jsonl"
    lines = _lines(path)
    broken = json.loads(lines[1])
    del broken["vid"]
    path.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n")
    with pytest.raises(AnnotationError, match=r"highlight_train_release.jsonl line 2 \(qid \d+\): missing field 'vid'"):
        build(qvh, "qvhighlights", tmp_path / "out")

    path.write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(AnnotationError, match="line 2: qid .* already used at .*line 1"):
        build(qvh, "qvhighlights", tmp_path / "out")


def test_an_interrupted_build_leaves_nothing_that_loads(qvh, tmp_path, monkeypatch):
    import hub_datasets.build as build_module

    real_load, calls = build_module.load_text_features, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_load(*args, **kwargs)

    monkeypatch.setattr(build_module, "load_text_features", interrupted)
    out = output_dir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        build(qvh, "qvhighlights", out)
    assert len(calls) == 4 and not out.exists() and leftovers(out) == []
    with pytest.raises(Exception):
        load_dataset(str(out))

    # a build killed outright leaves its hidden staging folder: it is never the output, and the next build works
    (out.parent / f".{out.name}.partial-killed" / "data").mkdir(parents=True)
    monkeypatch.undo()
    build(qvh, "qvhighlights", out)
    assert len(load_dataset(str(out))["train"]) == 3


def test_a_folder_rebuilt_in_place_loads_its_new_content(qvh, tmp_path, shared_data_dir):
    out = output_dir(tmp_path)
    build(qvh, "qvhighlights", out, splits=["validation"])
    before = load_lddetr_dataset(out)[0]["validation"][0]["text_features"]
    other = write_tree(tmp_path / "other", shared_data_dir, "qvhighlights", seed=1)  # other values
    build(other, "qvhighlights", out, splits=["validation"], overwrite=True)
    after = load_lddetr_dataset(out)[0]["validation"][0]
    np.testing.assert_array_equal(after["text_features"], other.text[after["qid"]])
    assert not np.array_equal(before, after["text_features"])


def test_existing_output_is_kept_unless_overwrite(qvh, tmp_path):
    out = output_dir(tmp_path)
    out.mkdir()
    build(qvh, "qvhighlights", out, splits=["train"])  # an empty folder may be filled
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        build(qvh, "qvhighlights", out)
    assert list(load_dataset(str(out))) == ["train"]

    (out / "stale.txt").write_text("from an older build")
    build(qvh, "qvhighlights", out, overwrite=True)
    assert not (out / "stale.txt").exists() and sorted(load_dataset(str(out))) == ["test", "train", "validation"]
    assert leftovers(out) == []


# ----------------------------------------------------------------------------------------------- command, card, Hub


class FakeHfApi:
    calls = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_command_builds_renders_the_card_and_pushes(qvh, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_datasets.hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    out = output_dir(tmp_path)
    main(
        [
            "qvhighlights", "--annotations-dir", str(qvh.annotations), "--features-dir", str(qvh.features),
            "--output-dir", str(out), "--feature-dtype", "float16", "--no-progress", "--push-to-hub", "org/qvh",
        ]
    )
    assert "validation 5" in capsys.readouterr().err

    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-nc-sa-4.0"
    assert front["configs"][0]["config_name"] == "queries" and front["configs"][0]["default"] is True
    assert {c["config_name"] for c in front["dataset_info"]} == {"queries", "videos"}
    assert not re.search(r"\$[A-Za-z_{]", card)
    assert "--feature-dtype float16" in card and str(tmp_path) not in card
    assert "float16" in card and "2304" in card and "@inproceedings{lei2021qvhighlights" in card

    (create, repo_id, create_kwargs), (upload, upload_kwargs) = FakeHfApi.calls
    assert (create, repo_id, create_kwargs["repo_type"]) == ("create_repo", "org/qvh", "dataset")
    assert (
        upload == "upload_folder" and upload_kwargs["repo_type"] == "dataset" and upload_kwargs["repo_id"] == "org/qvh"
    )
    assert Path(upload_kwargs["folder_path"]) == out


def test_command_reports_bad_input_in_one_line(qvh, tmp_path):
    (qvh.features / "clip_text_features" / f"qid{_first_val_row(qvh)['qid']}.npz").unlink()
    args = [
        "qvhighlights", "--annotations-dir", str(qvh.annotations), "--features-dir", str(qvh.features), "--output-dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit, match="^lddetr-build-dataset: error: 1 feature file"):
        main(args + ["--no-progress"])
    with pytest.raises(SystemExit, match="charades-sta has no audio features"):
        main(["charades-sta"] + args[1:] + ["--with-audio"])


@pytest.mark.parametrize("folder", sorted({spec.card_folder for spec in SPECS.values()} | {"qvhighlights-demo"}))
def test_every_card_template_renders_completely(folder, tmp_path):
    spec = demo_spec() if folder == "qvhighlights-demo" else next(s for s in SPECS.values() if s.card_folder == folder)
    info = {
        "video_feature_names": [s.name for s in spec.video_sources],
        "video_feature_dims": [s.dim for s in spec.video_sources],
        "text_feature_dim": spec.text_source.dim,
        "audio_feature_dim": 0,
        "clip_length": spec.clip_length,
        "max_video_clips": 75,
        "feature_dtype": "float32",
        "splits": {"train": 10},
    }
    card = render_card(
        Path(hub_datasets.hub.__file__).parent / folder / "README.md",
        {"configs": []},
        card_context(spec, info, 7, "CMD"),
    )
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] and front["configs"] == [] and not re.search(r"\$[A-Za-z_{]", card)
    assert "| train | 10 |" in card


def test_push_refuses_a_folder_that_is_not_a_built_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="lddetr_dataset.json"):
        push_dataset_to_hub(tmp_path, "org/x")


def test_load_by_hub_id_fetches_the_info_file_from_the_dataset_repo(qvh, tmp_path, monkeypatch):
    out = output_dir(tmp_path)
    build(qvh, "qvhighlights", out, splits=["train"])
    calls = []

    def fake_download(repo_id, filename, repo_type, revision):
        calls.append((repo_id, filename, repo_type, revision))
        return str(out / filename)

    monkeypatch.setattr(hub_datasets.hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub_datasets.hub, "load_dataset", lambda path, name, **kw: load_dataset(str(out), name, **kw))
    queries, videos, info = load_lddetr_dataset("org/qvh", revision="v1")
    assert calls == [("org/qvh", "lddetr_dataset.json", "dataset", "v1")]
    assert len(queries["train"]) == 3 and info["dataset_type"] == "qvhighlights"
    with pytest.raises(FileNotFoundError, match="not a folder written by lddetr-build-dataset"):
        load_lddetr_dataset(tmp_path)


# ----------------------------------------------------------------------------------------------- demo dataset


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory) -> Path:
    return demo_dataset_path(tmp_path_factory.mktemp("cache"))


def test_demo_is_deterministic_and_reused(demo_path, tmp_path, monkeypatch):
    again = demo_dataset_path(tmp_path)
    files = sorted(p.relative_to(demo_path) for p in demo_path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (demo_path / name).read_bytes() == (again / name).read_bytes(), name

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a complete demo folder must be reused")

    monkeypatch.setattr(demo_module, "build_dataset", no_rebuild)
    assert demo_dataset_path(tmp_path) == again
    monkeypatch.setenv("LDDETR_CACHE", str(tmp_path))
    assert demo_dataset_path() == again


def test_demo_accepts_a_folder_another_process_finished_first(tmp_path, monkeypatch):
    def other_process_won(spec, annotations, features, path, **kwargs):
        path.mkdir(parents=True)
        (path / "lddetr_dataset.json").write_text("{}")
        raise OutputExistsError(f"{path} is not empty")

    monkeypatch.setattr(demo_module, "build_dataset", other_process_won)
    assert demo_dataset_path(tmp_path) == tmp_path / demo_module.DEMO_NAME


def test_demo_features_carry_the_query_signal(demo_path):
    queries, videos, info = load_lddetr_dataset(demo_path)
    assert set(queries) == {"train", "validation"} and len(queries["train"]) >= 200 and len(queries["validation"]) >= 64
    assert info["video_feature_dims"] == [128, 128] and info["text_feature_dim"] == 128
    assert "synthetic" in (demo_path / "README.md").read_text().lower().split("\n---\n", 1)[1][:400]
    row_of_video = {vid: i for i, vid in enumerate(videos["vid"])}
    assert len(row_of_video) == len(videos) < len(queries["train"]) + len(queries["validation"])  # shared videos

    inside, outside, by_saliency = [], [], []
    for row in queries["validation"]:
        text = row["text_features"].mean(0)
        clips = videos[row_of_video[row["vid"]]]["video_features"][:, 128:]  # the "clip" type shares the text space
        cosine = clips @ text / (np.linalg.norm(clips, axis=1) * np.linalg.norm(text))
        relevant = np.zeros(len(cosine), dtype=bool)
        ids = [i for i in row["relevant_clip_ids"] if i < len(cosine)]
        relevant[ids] = True
        inside.append(cosine[relevant].mean())
        if (~relevant).any():
            outside.append(cosine[~relevant].mean())
        saliency = [sum(s) for i, s in zip(row["relevant_clip_ids"], row["saliency_scores"]) if i < len(cosine)]
        if np.ptp(saliency) > 0:
            by_saliency.append(np.corrcoef(saliency, cosine[ids])[0, 1])
    assert np.mean(inside) > 0.4 and abs(np.mean(outside)) < 0.05
    assert np.mean(by_saliency) > 0.3  # more salient clips look more like the query


def _clips_and_saliency(queries, videos, row_of_video):
    for row in queries:
        types = np.split(videos[row_of_video[row["vid"]]]["video_features"], [128], axis=1)  # slowfast, clip
        # as the processor does
        clips = np.concatenate([t / np.linalg.norm(t, axis=1, keepdims=True) for t in types], axis=1)
        saliency = np.zeros(len(clips))
        for clip, scores in zip(row["relevant_clip_ids"], row["saliency_scores"]):
            if clip < len(clips):
                saliency[clip] = sum(scores)
        yield np.c_[clips, np.ones(len(clips))], saliency


@pytest.mark.slow
def test_demo_saliency_generalises_from_train_to_validation(demo_path):
    """A linear probe on the normalised clip features, fit on train, finds a relevant clip in new validation videos."""
    queries, videos, _ = load_lddetr_dataset(demo_path)
    row_of_video = {vid: i for i, vid in enumerate(videos["vid"])}
    train = list(_clips_and_saliency(queries["train"], videos, row_of_video))
    inputs, targets = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    weights = np.linalg.lstsq(inputs, targets, rcond=None)[0]
    hits = [y[np.argmax(x @ weights)] > 0 for x, y in _clips_and_saliency(queries["validation"], videos, row_of_video)]
    assert np.mean(hits) > 0.9


def test_demo_annotations_are_verbatim_qvhighlights_rows_with_its_license(shared_data_dir):
    source = shared_data_dir / "qvhighlights"
    assert (demo_module.ANNOTATIONS_DIR / "LICENSE").read_bytes() == (source / "LICENSE").read_bytes()
    assert (source / "LICENSE").read_text().startswith("Attribution-NonCommercial-ShareAlike 4.0 International")
    for name in ("highlight_train_release.jsonl", "highlight_val_release.jsonl"):
        official = set(_lines(source / name))
        demo_lines = _lines(demo_module.ANNOTATIONS_DIR / name)
        assert demo_lines and set(demo_lines) <= official


def test_clip_only_build_keeps_the_clip_features_and_says_so(qvh, tmp_path):
    out = output_dir(tmp_path)
    main(
        [
            "qvhighlights", "--annotations-dir", str(qvh.annotations), "--features-dir", str(qvh.features),
            "--output-dir", str(out), "--no-progress", "--video-features", "clip",
        ]
    )
    queries, videos, info = load_lddetr_dataset(out)
    assert info["video_feature_names"] == ["clip"] and info["video_feature_dims"] == [512]
    row = videos[0]
    clip_only = qvh.video[row["vid"]][1]  # the tree's clip features (type 1)
    np.testing.assert_allclose(row["video_features"], clip_only[: len(row["video_features"])], rtol=1e-6)
    assert "--video-features clip" in (out / "README.md").read_text()
    with pytest.raises(SystemExit, match=r"video feature types are \['slowfast', 'clip'\]"):
        main(
            [
                "qvhighlights", "--annotations-dir", str(qvh.annotations), "--features-dir", str(qvh.features),
                "--output-dir", str(tmp_path / "other"), "--no-progress", "--video-features", "resnet",
            ]
        )
