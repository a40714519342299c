"""lddetr-build-dataset from raw videos, the way users run it: generated videos (frame rates, sizes, lengths; one
corrupt, one missing) and annotations -> the console script in a subprocess -> load_lddetr_dataset -> lddetr-train
-> lddetr-predict; torchrun with 2 processes; a killed build resumed; all with a tiny random CLIP on the CPU."""

import json
import os
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_CLIP_PROJECTION_DIM, TINY_CLIP_TEXT_DIM, constant_rate, write_video

from hub_datasets import load_lddetr_dataset
from hub_datasets.cli import main as build_main
from hub_datasets.work_folder import SETTINGS_FILE
from processing.inference.pipeline import CLIP_FEATURE_MODELS_FILE, ClipFeatureModels
from processing.video.clip_encoders import ClipTextEncoder
from processing.video.featurizer import VideoFeaturizer

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is not installed in {BIN}: pip install -e ."
    return str(path)


def moving_square(index, time):
    """A colour that changes with time, so that clips differ."""
    return (int(40 * time) % 256, (index * 7) % 256, 255 - int(30 * time) % 256)


# vid: (file name, seconds, frame rate, (width, height))
VIDEOS = {
    "walk_25fps": ("walk_25fps.mp4", 9.0, Fraction(25), (64, 48)),
    "talk_2997fps": ("talk_2997fps.mkv", 7.1, Fraction(30000, 1001), (48, 64)),
    "cook_30fps": ("nested/any_name.mp4", 5.0, Fraction(30), (80, 60)),  # found through its video_path field
}
CORRUPT, MISSING = "broken", "nowhere"


def annotation(qid, vid, duration, query, window, **extra):
    start, end = window
    clip_ids = list(range(int(start // 2), int(-(-end // 2))))
    return dict(qid=qid, query=query, vid=vid, duration=duration, relevant_windows=[list(window)],
                relevant_clip_ids=clip_ids, saliency_scores=[[2, 3, 1]] * len(clip_ids), **extra)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw-videos")
    videos = root / "videos"
    (videos / "nested").mkdir(parents=True)
    for vid, (name, seconds, rate, size) in VIDEOS.items():
        write_video(videos / name, constant_rate(seconds, float(rate)), moving_square, size=size, fps=rate)
    (videos / f"{CORRUPT}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    train = [
        annotation(1, "walk_25fps", 9.0, "a man walks", (2, 6)),
        annotation(2, "walk_25fps", 9.0, "the man stops", (6, 8)),
        annotation(3, "cook_30fps", 5.0, "someone cooks", (0, 4), video_path="nested/any_name.mp4"),
        annotation(4, CORRUPT, 10.0, "nothing to see", (0, 2)),
        annotation(5, "talk_2997fps", 7.1, "a woman talks", (2, 4)),
    ]
    validation = [
        annotation(6, "talk_2997fps", 7.1, "she smiles", (4, 6)),
        annotation(7, MISSING, 8.0, "a missing video", (0, 2)),
        annotation(8, "walk_25fps", 9.0, "walking", (0, 4)),
    ]
    files = {}
    for split, rows in (("train", train), ("validation", validation)):
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root, videos, files


def build_command(sources, tiny_clip_dir, output, *extra):
    _, videos, files = sources
    return [
        console_script("lddetr-build-dataset"), "custom", "--annotations", str(files["train"]),
        "--validation-annotations", str(files["validation"]), "--videos-dir", str(videos), "--output-dir", str(output),
        "--clip-model", tiny_clip_dir, "--device", "cpu", "--videos-per-shard", "1", "--no-progress", *extra,
    ]


def run(command, timeout=300, **env):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture(scope="module")
def built(sources, tiny_clip_dir, tmp_path_factory):
    """The dataset of one process (2 decoding workers), and the command's result."""
    output = tmp_path_factory.mktemp("built") / "my-dataset"
    result = run(build_command(sources, tiny_clip_dir, output, "--decode-workers", "2"))
    assert result.returncode == 0, result.stderr[-4000:]
    return output, result


def dataset_contents(folder):
    """Everything a user loads: query rows per split and video rows, in order, features as arrays."""
    queries, videos, info = load_lddetr_dataset(folder)
    return (
        {split: [dict(row) for row in rows] for split, rows in queries.items()},
        [dict(row) for row in videos],
        info,
    )


def assert_same_dataset(left, right):
    (queries_a, videos_a, info_a), (queries_b, videos_b, info_b) = dataset_contents(left), dataset_contents(right)
    assert info_a == info_b
    assert [v["vid"] for v in videos_a] == [v["vid"] for v in videos_b]
    for a, b in zip(videos_a, videos_b):
        np.testing.assert_array_equal(a["video_features"], b["video_features"])
    assert list(queries_a) == list(queries_b)
    for split in queries_a:
        for a, b in zip(queries_a[split], queries_b[split], strict=True):
            np.testing.assert_array_equal(a.pop("text_features"), b.pop("text_features"))
            assert a == b
    assert (left / CLIP_FEATURE_MODELS_FILE).read_text() == (right / CLIP_FEATURE_MODELS_FILE).read_text()


@pytest.mark.slow
def test_build_skips_the_corrupt_and_missing_videos_and_reports_them(built, sources):
    output, result = built
    root, videos, _ = sources
    assert "skipped video 'broken'" in result.stderr and "skipped video 'nowhere'" in result.stderr
    assert "2 of 5 videos failed" in result.stderr and "wrote" in result.stderr

    report = [json.loads(line) for line in (output.parent / "my-dataset.failures.jsonl").read_text().splitlines()]
    assert [(r["vid"], r["queries"]) for r in report] == [(CORRUPT, [4]), (MISSING, [7])]
    assert report[0]["path"] == str(videos / f"{CORRUPT}.mp4") and "broken.mp4" in report[0]["reason"]
    assert report[1]["path"] is None and "no video file" in report[1]["reason"]

    queries, video_rows, info = dataset_contents(output)
    assert [row["qid"] for row in queries["train"]] == [1, 2, 3, 5]  # the corrupt video's query is left out
    assert [row["qid"] for row in queries["validation"]] == [6, 8]
    assert [row["vid"] for row in video_rows] == ["walk_25fps", "cook_30fps", "talk_2997fps"]  # annotation order
    assert info["video_feature_dims"] == [TINY_CLIP_PROJECTION_DIM] and info["text_feature_dim"] == TINY_CLIP_TEXT_DIM
    assert info["splits"] == {"train": 4, "validation": 2} and info["max_video_clips"] == 5  # longest: 9 s -> 5 clips
    assert ClipFeatureModels.beside_model(str(output)).image_model.endswith("model")
    assert not any(path.name.startswith(".my-dataset") for path in output.parent.iterdir())  # work folder removed
    card = (output / "README.md").read_text()
    assert "fps=1/2" in card and "2 video(s) could not be used" in card and str(root) not in card


@pytest.mark.slow
def test_dataset_features_are_the_pipeline_features(built, sources, tiny_clip_dir):
    output, _ = built
    _, videos, _ = sources
    queries, video_rows, _ = dataset_contents(output)
    featurizer = VideoFeaturizer.from_clip(tiny_clip_dir, clip_length=2.0, device="cpu", use_cache=False)
    for row in video_rows:
        expected = featurizer(videos / VIDEOS[row["vid"]][0]).concatenated()  # what the pipeline computes
        assert row["video_features"].shape == expected.shape
        np.testing.assert_allclose(row["video_features"], expected, rtol=0, atol=1e-6)
    text_encoder = ClipTextEncoder(tiny_clip_dir, device="cpu")
    for row in queries["validation"]:
        np.testing.assert_allclose(row["text_features"], text_encoder(row["query"])[0], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_train_on_the_built_dataset_then_predict_on_a_video(built, sources, tmp_path):
    output, _ = built
    _, videos, _ = sources
    model = tmp_path / "model"
    result = run(
        [
            console_script("lddetr-train"),
            "--dataset", str(output), "--preset", "demo", "--output_dir", str(model), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--disable_tqdm", "true",
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # the dataset's CLIP models travel with the model: lddetr-predict needs no --clip-model
    assert (model / CLIP_FEATURE_MODELS_FILE).read_text() == (output / CLIP_FEATURE_MODELS_FILE).read_text()

    prediction = tmp_path / "moments.json"
    result = run(
        [
            console_script("lddetr-predict"),
            "--model", str(model), "--video", str(videos / "walk_25fps.mp4"), "--query", "a man walks", "--output",
            str(prediction), "--device", "cpu", "--no-cache",
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (answer,) = json.loads(prediction.read_text())["results"]
    assert len(answer["saliency"]) == 5 and answer["duration"] == pytest.approx(9.0, abs=0.05)
    assert answer["moments"] and all(0 <= m["start"] <= m["end"] <= answer["duration"] for m in answer["moments"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_build_the_same_dataset_as_one(built, sources, tiny_clip_dir, tmp_path):
    output = tmp_path / "two-processes"
    command = build_command(sources, tiny_clip_dir, output, "--decode-workers", "0")
    result = run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "--no-python", *command,
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_dataset(output, built[0])
    assert (tmp_path / "two-processes.failures.jsonl").read_text() == (
        built[0].parent / "my-dataset.failures.jsonl"
    ).read_text()


# lddetr-build-dataset as the console script runs it, but SIGKILLed right after its second work shard is written,
# as a crash or a pre-empted job would be
KILLED_AFTER_TWO_SHARDS = """
import os, signal, sys
from hub_datasets import work_folder
from hub_datasets.cli import main

write_shard, written = work_folder.WorkFolder.write_shard, []

def write_then_die(self, *args, **kwargs):
    path = write_shard(self, *args, **kwargs)
    written.append(path)
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

work_folder.WorkFolder.write_shard = write_then_die
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_killed_build_resumes_without_recomputing_finished_videos(built, sources, tiny_clip_dir, tmp_path):
    output = tmp_path / "resumed"
    # encoding steps of 2 frames: every video is encoded, and lands in its shard, as soon as it is decoded
    command = build_command(sources, tiny_clip_dir, output, "--decode-workers", "0", "--batch-size", "2")
    killing_build = tmp_path / "killed_after_two_shards.py"
    killing_build.write_text(KILLED_AFTER_TWO_SHARDS)
    killed = run([sys.executable, str(killing_build), *command[1:]])
    assert killed.returncode == -9, killed.stderr[-4000:]  # SIGKILL after two work shards: nothing could clean up
    work = tmp_path / ".resumed.work"
    shards = sorted((work / "videos").glob("*.npz"))
    assert len(shards) == 2 and not output.exists()
    # mark a finished video's features: a resumed build that recomputed it would lose the mark
    with np.load(shards[0]) as shard:
        arrays = dict(shard)
    (marked,) = arrays["vids"]
    arrays["video_0"] = arrays["video_0"] + 1
    np.savez(shards[0], **arrays)

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming: 2 of 5 videos already" in resumed.stderr
    assert not work.exists()
    (_, videos, _), (_, expected, _) = dataset_contents(output), dataset_contents(built[0])
    assert [v["vid"] for v in videos] == [v["vid"] for v in expected]
    for row, reference in zip(videos, expected):
        offset = 1 if row["vid"] == marked else 0
        np.testing.assert_allclose(row["video_features"], reference["video_features"] + offset, rtol=0, atol=1e-6)


def test_a_work_folder_of_other_settings_is_refused(sources, tiny_clip_dir, tmp_path, capsys):
    output = tmp_path / "dataset"
    work = tmp_path / ".dataset.work"
    work.mkdir()
    (work / SETTINGS_FILE).write_text(json.dumps({"feature_dtype": "float16"}))
    with pytest.raises(SystemExit, match="other settings .*feature_dtype.*delete it"):
        build_main(build_command(sources, tiny_clip_dir, output)[1:])
    assert not output.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["custom", "--annotations", "a.jsonl", "--output-dir", "x"], "--videos-dir"),
        (
            ["qvhighlights", "--annotations-dir", "a", "--features-dir", "f", "--videos-dir", "v", "--output-dir", "x"],
            "either",
        ),
    ],
)
def test_bad_command_lines_name_the_problem(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main(arguments)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
