"""Video library search: lddetr-index, lddetr-search and lddetr-eval-library through their console scripts, the
library format, the Qdrant and faiss backends against the exact index, and the corpus metrics.

The library is four generated videos indexed with the tiny CLIP and a tiny random LD-DETR (tests/test_video_pipeline
.py's model); its search results mean nothing, but their shape, their consistency and the commands' behaviour do."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from datasets import load_dataset
from helpers import constant_rate, write_video

from tests.test_video_pipeline import model_dir  # noqa: F401
from video_search import LibraryError, VideoLibrary
from video_search.corpus_metrics import moment_recalls, temporal_iou, video_recalls

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (240, 240, 240)}


def run(command, *args):
    executable = shutil.which(command)
    assert executable is not None, f"pip install -e . puts {command} on the PATH"
    return subprocess.run([executable, *map(str, args)], capture_output=True, text=True, timeout=1800)


def assert_one_line_error(result, command, *words):
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"{command}: error: ") and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def write_clip_video(path, colour, seconds):
    """`seconds` long: the colour from second 4 on, grey before."""
    return write_video(path, constant_rate(seconds, 4), lambda i, t: COLOURS[colour] if t >= 4 else (128, 128, 128),
                       codec="libx264", fps=4)


@pytest.fixture(scope="module")
def videos_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library-videos")
    for seconds, colour in zip((10, 12, 8), ("red", "green", "blue")):
        write_clip_video(folder / f"{colour}.mp4", colour, seconds)
    (folder / "notes.txt").write_text("not a video\n")
    return folder


@pytest.fixture(scope="module")
def library_dir(videos_dir, model_dir, tmp_path_factory):  # noqa: F811
    """Indexed in two runs: three videos, then a fourth file added to the folder."""
    library = tmp_path_factory.mktemp("libraries") / "lib"
    first = run("lddetr-index", "--videos-dir", videos_dir, "--model", model_dir, "--output-dir", library,
                "--decode-workers", "0", "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "3 videos added" in first.stderr
    write_clip_video(videos_dir / "white.mp4", "white", 6)
    second = run("lddetr-index", "--videos-dir", videos_dir, "--model", model_dir, "--output-dir", library,
                 "--decode-workers", "0", "--no-progress", "--index-backend", "faiss")
    assert second.returncode == 0, second.stderr
    assert "1 videos added" in second.stderr  # only the new file
    return library


def test_a_library_is_a_parquet_dataset_with_one_part_per_run(library_dir, videos_dir):
    rows = load_dataset(str(library_dir), split="train")
    assert sorted(rows["vid"]) == ["blue", "green", "red", "white"]
    assert sorted(p.name for p in (library_dir / "data").iterdir()) == ["part-00000", "part-00001"]
    row = rows[rows["vid"].index("red")]
    assert row["path"] == str((videos_dir / "red.mp4").resolve())
    assert row["duration"] == pytest.approx(10.0, abs=0.3) and row["num_clips"] == 5
    assert np.asarray(row["video_features"]).shape == (5, 16)  # the tiny CLIP's projection dim
    assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
    info = json.loads((library_dir / "lddetr_library.json").read_text())
    assert [part["num_videos"] for part in info["parts"]] == [3, 1]
    assert (library_dir / "faiss.index").is_file()


def test_lddetr_search_ranks_moments_across_the_videos(library_dir, tmp_path):
    output = tmp_path / "results.json"
    result = run("lddetr-search", library_dir, "a red ball", "--top-k", "3", "--candidates", "2", "--output", output)
    assert result.returncode == 0, result.stderr
    document = json.loads(output.read_text())
    assert document["query"] == "a red ball" and len(document["results"]) == 3
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for rank, (line, moment) in enumerate(zip(lines, document["results"]), 1):
        assert line.split()[:2] == [f"{rank}.", moment["vid"]] and line.endswith(moment["path"])
        assert 0 <= moment["start"] < moment["end"] and moment["path"].endswith(f"{moment['vid']}.mp4")
    assert len({moment["vid"] for moment in document["results"]}) <= 2  # from the two candidates only
    scores = [moment["score"] for moment in document["results"]]
    assert scores == sorted(scores, reverse=True)
    assert "4 videos, 2 candidates" in result.stderr


def test_the_joint_score_weighs_the_foreground_by_the_videos_share(library_dir):
    library = VideoLibrary(library_dir)
    results = library.search("a red ball", top_k=100, candidates=4)  # every moment of every video
    temperature = library.embedder.temperature()
    best = max(result.similarity for result in results)
    for result in results:
        expected = result.foreground * np.exp((result.similarity - best) / temperature)
        assert result.score == pytest.approx(expected, rel=1e-4, abs=1e-6)
    foreground = library.search("a red ball", top_k=20, candidates=4, score="foreground")
    assert [r.score for r in foreground] == sorted((r.foreground for r in foreground), reverse=True)


def test_stage_two_runs_long_videos_in_windows(videos_dir, tmp_path_factory, tiny_clip_dir):
    from tests.test_video_pipeline import save_model_folder

    model = save_model_folder(tmp_path_factory.mktemp("lddetr-3-clips"), tiny_clip_dir, max_video_clips=3)
    folder = tmp_path_factory.mktemp("long") / "lib"
    indexed = run("lddetr-index", "--videos-dir", videos_dir, "--model", model, "--output-dir", folder,
                  "--decode-workers", "0", "--no-progress")
    assert indexed.returncode == 0, indexed.stderr
    library = VideoLibrary(folder)
    results = library.search("green", top_k=50, candidates=4)
    green = [r for r in results if r.vid == "green"]  # 12 s: 6 clips, windows of 3 clips
    assert green and max(r.end for r in green) > 6.0  # moments from the second window, in video time


@pytest.mark.parametrize("backend", ["qdrant", "faiss"])
def test_the_vector_index_backends_return_the_exact_candidates(library_dir, backend, tmp_path):
    exact = VideoLibrary(library_dir)
    other = VideoLibrary(library_dir, index_backend=backend, qdrant_location=str(tmp_path / "qdrant"))
    for query in ("a red ball", "green grass", "the sky", "white snow"):
        text = exact.text_features(query)
        exact_scores, exact_rows = exact.stage_one(text, 3)
        scores, rows = other.stage_one(text, 3)
        assert rows.tolist() == exact_rows.tolist()
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    # a Qdrant folder that already holds the library is reused as it is
    if backend == "qdrant":
        other.index.close()
        reopened = VideoLibrary(library_dir, index_backend="qdrant", qdrant_location=str(tmp_path / "qdrant"))
        assert len(reopened.index) == 4


def test_lddetr_eval_library_prints_the_three_rows(library_dir, tmp_path):
    ground_truth = tmp_path / "val.jsonl"
    rows = [{"qid": 0, "query": "a red ball", "vid": "red", "duration": 10, "relevant_windows": [[4, 10]]},
            {"qid": 1, "query": "green grass", "vid": "green", "duration": 12, "relevant_windows": [[4, 12]]}]
    ground_truth.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "metrics.json"
    result = run("lddetr-eval-library", "--library", library_dir, "--ground-truth", ground_truth, "--candidates", 2,
                 "--output", output, "--no-progress")
    assert result.returncode == 0, result.stderr
    table = json.loads(output.read_text())
    assert list(table) == ["stage 1 alone", "two stages", "two stages, foreground score", "every video",
                           "every video, foreground score"]
    for row in table.values():
        assert {"R@1 IoU=0.5", "R@10 IoU=0.7"} <= set(row) and all(0 <= v <= 100 for v in row.values())
    # with 4 videos, R@10 over every video's moments covers the right video; video R@50 is every video
    assert table["stage 1 alone"]["video R@50"] == 100.0
    assert "| stage 1 alone |" in result.stdout and "| two stages (2 candidates) |" in result.stdout


def test_bad_input_is_one_line_without_a_traceback(library_dir, videos_dir, model_dir, tmp_path):  # noqa: F811
    assert_one_line_error(run("lddetr-search", tmp_path / "missing", "a dog"), "lddetr-search", "missing")
    assert_one_line_error(run("lddetr-search", library_dir, "a dog", "--index-backend", "faiss", "--model",
                              tmp_path / "nothing"), "lddetr-search", "nothing")
    result = run("lddetr-index", "--videos-dir", tmp_path / "none", "--model", model_dir, "--output-dir",
                 tmp_path / "l")
    assert_one_line_error(result, "lddetr-index", "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run("lddetr-index", "--videos-dir", empty, "--model", model_dir, "--output-dir",
                              tmp_path / "l"), "lddetr-index", "no video file")
    not_a_library = tmp_path / "other"
    not_a_library.mkdir()
    (not_a_library / "keep.txt").write_text("mine\n")
    result = run("lddetr-index", "--videos-dir", videos_dir, "--model", model_dir, "--output-dir", not_a_library)
    assert_one_line_error(result, "lddetr-index", "not a library")
    assert (not_a_library / "keep.txt").read_text() == "mine\n"
    with pytest.raises(LibraryError, match="empty"):
        VideoLibrary(library_dir).search("   ")


# ------------------------------------------------------------------------------------------- the metrics


def test_a_corpus_hit_needs_the_right_video_and_the_iou():
    truth = [{"vid": "a", "relevant_windows": [[10, 20]]}, {"vid": "b", "relevant_windows": [[0, 4], [30, 40]]}]
    ranked = [
        [{"vid": "x", "start": 10, "end": 20}, {"vid": "a", "start": 12, "end": 20}],  # right video second, IoU 0.8
        [{"vid": "b", "start": 30, "end": 36}] + [{"vid": "y", "start": 0, "end": 4}] * 9,  # IoU 0.6 with [30, 40]
    ]
    recalls = moment_recalls(ranked, truth)
    assert recalls["R@1 IoU=0.5"] == 50.0 and recalls["R@5 IoU=0.5"] == 100.0
    assert recalls["R@1 IoU=0.7"] == 0.0 and recalls["R@5 IoU=0.7"] == 50.0 and recalls["R@10 IoU=0.7"] == 50.0
    assert temporal_iou((12, 20), [[10, 20]]) == pytest.approx(0.8)
    assert video_recalls([["x", "a"], ["b"]], truth) == {"video R@1": 50.0, "video R@5": 100.0,
                                                         "video R@10": 100.0, "video R@50": 100.0}
