"""The web demo, in a real browser: headless Chromium driven by Selenium against the app served on 127.0.0.1, with a
tiny random CLIP and a tiny random LD-DETR; and its checks, without a browser."""

import importlib.metadata
import os
import runpy
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
import yaml
from helpers import constant_rate, write_video
from packaging.requirements import Requirement

from tests.test_video_pipeline import model_dir, red_from_8_to_12_s  # noqa: F401
from video_search import VideoLibrary
from web_demo.app import MomentSearch, build_demo, launch, load_pipeline, moment_label, parse_queries
from web_demo.library_tab import result_label

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1200",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def h264_video(tmp_path_factory):
    """10 s, H.264 (which Chromium plays), blue except red in [8, 10) s: five 2-s clips."""
    path = tmp_path_factory.mktemp("demo-video") / "red_ball.mp4"
    return write_video(path, constant_rate(10, 10), red_from_8_to_12_s, codec="libx264", fps=10)


@pytest.fixture(scope="module")
def demo_pipe(model_dir, tmp_path_factory):  # noqa: F811
    return load_pipeline(model_dir, device="cpu", cache_dir=tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="module")
def served_demo(demo_pipe):
    demo = build_demo(demo_pipe)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "chromium and chromedriver are needed for the browser test (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield session
    session.quit()


def test_a_moment_button_seeks_the_player_to_the_moment(served_demo, browser, demo_pipe, h264_video, decodes, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(served_demo)
    upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#player input[type=file]")))
    upload.send_keys(str(h264_video))
    player = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#player video")))
    wait.until(lambda _: browser.execute_script("return arguments[0].readyState >= 1", player))
    assert browser.execute_script("return arguments[0].duration", player) == pytest.approx(10.0, abs=0.2)

    browser.find_element(By.CSS_SELECTOR, "#queries textarea").send_keys("a red ball")
    browser.find_element(By.CSS_SELECTOR, "#find").click()
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "#saliency-plot img")))
    buttons = wait.until(ready.visibility_of_all_elements_located((By.CSS_SELECTOR, "button.moment")))

    expected = demo_pipe(video=h264_video, query="a red ball", top_k=5)["moments"]
    assert [button.text for button in buttons] == [moment_label(rank, m) for rank, m in enumerate(expected, 1)]
    assert len(decodes) == 1
    # the latest-starting moment, so that the seek moves the player away from 0
    index = max(range(len(expected)), key=lambda i: expected[i]["start"])
    moment = expected[index]
    assert moment["start"] > 0
    buttons[index].click()
    wait.until(lambda _: browser.execute_script("return arguments[0].currentTime", player) >= moment["start"] - 0.05)
    position = browser.execute_script("return arguments[0].currentTime", player)
    assert moment["start"] - 0.05 <= position <= moment["end"] + 0.5  # it plays from the start, and stops at the end
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second query on the same video: new buttons, and the features come from the cache
    browser.find_element(By.CSS_SELECTOR, "#queries textarea").send_keys("\nblue sky")
    browser.find_element(By.CSS_SELECTOR, "#find").click()
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#moment-1-1"))
    assert len(decodes) == 1


@pytest.fixture(scope="module")
def demo_library(model_dir, tmp_path_factory):  # noqa: F811
    """Three H.264 videos, grey and then one colour from second 4 on, indexed with the tiny model."""
    from video_search.indexing import index_videos

    videos = tmp_path_factory.mktemp("library-videos")
    for name, seconds, colour in (("red", 10, (220, 30, 30)), ("green", 12, (30, 200, 40)), ("blue", 8, (30, 40, 220))):
        frames = constant_rate(seconds, 10)
        write_video(
            videos / f"{name}.mp4",
            frames,
            lambda i, t, c=colour: c if t >= 4 else (128, 128, 128),
            codec="libx264",
            fps=10,
        )
    folder = tmp_path_factory.mktemp("library") / "lib"
    index_videos(videos, model_dir, folder, decode_workers=0, progress=False)
    return VideoLibrary(folder)


@pytest.fixture(scope="module")
def served_library_demo(demo_pipe, demo_library):
    demo = build_demo(demo_pipe, library=demo_library)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_the_library_tab_plays_a_moment_in_its_video(served_library_demo, browser, demo_library):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(served_library_demo)
    tab_button = (By.XPATH, "//button[@role='tab'][contains(., 'Search the library')]")
    tab = wait.until(ready.element_to_be_clickable(tab_button))
    tab.click()
    query = wait.until(
        ready.visibility_of_element_located((By.CSS_SELECTOR, "#library-query textarea, #library-query input"))
    )
    query.send_keys("a red ball")
    browser.find_element(By.CSS_SELECTOR, "#library-search").click()
    buttons = wait.until(ready.visibility_of_all_elements_located((By.CSS_SELECTOR, "button.library-moment")))

    expected = demo_library.search("a red ball", top_k=10)
    assert [button.text for button in buttons] == [result_label(rank, r) for rank, r in enumerate(expected, 1)]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".library-thumbnail img")) == len(expected)
    # the latest-starting moment, so that the seek moves the player away from 0
    index = max(range(len(expected)), key=lambda i: expected[i].start)
    moment = expected[index]
    assert moment.start > 0
    buttons[index].click()

    def playing_the_moment(_):
        return (
            browser.execute_script(
                "const v = document.querySelector('#library-player video');"
                "return v && decodeURIComponent(v.currentSrc).endsWith(arguments[0]) ? v.currentTime : -1;",
                f"{moment.vid}.mp4",
            )
            >= moment.start - 0.05
        )

    wait.until(playing_the_moment)


# ------------------------------------------------------------------------------------------ without a browser


def test_queries_are_the_non_empty_lines():
    assert parse_queries("a red ball\n\n  blue sky  \n") == ["a red ball", "blue sky"]
    assert parse_queries("  \n") == [] and parse_queries(None) == []


def test_bad_input_is_a_gradio_error(demo_pipe, h264_video, tmp_path):
    search = MomentSearch(demo_pipe, tmp_path)
    with pytest.raises(gr.Error, match="Upload a video"):
        search(None, "a red ball", 5, {})
    with pytest.raises(gr.Error, match="Type a query"):
        search(str(h264_video), " \n ", 5, {})
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(gr.Error, match="Cannot read this video: .*notes.mp4"):
        search(str(text), "a red ball", 5, {})


def test_a_search_returns_the_pipeline_results_a_plot_the_frames_and_the_json(demo_pipe, h264_video, tmp_path):
    results, plot, gallery, document, thumbnails_of = MomentSearch(demo_pipe, tmp_path)(
        str(h264_video), "a red ball\nblue sky", 3, {}
    )
    assert [result["query"] for result in results] == ["a red ball", "blue sky"]
    assert results == demo_pipe(video=h264_video, query=["a red ball", "blue sky"], top_k=3)
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(thumbnails_of[str(h264_video)]) == 5  # one per clip
    assert len(gallery) == 2 * 4 and gallery[0][1].startswith("a red ball: ")
    assert '"query": "blue sky"' in open(document).read()


def test_lddetr_demo_serves_the_app_and_refuses_a_bad_model(model_dir, tmp_path):  # noqa: F811
    executable = shutil.which("lddetr-demo")
    assert executable is not None, "pip install -e . puts lddetr-demo on the PATH"
    failed = subprocess.run([executable, "--model", str(tmp_path / "missing")], capture_output=True, text=True)
    assert failed.returncode != 0
    assert failed.stderr.startswith("lddetr-demo: error: ") and "Traceback" not in failed.stderr

    port = free_port()
    command = [executable, "--model", model_dir, "--device", "cpu", "--server-port", str(port)]
    command += ["--cache-dir", str(tmp_path / "cache")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "lddetr-demo did not serve within 60 s"
                time.sleep(0.5)
        assert "LD-DETR moment retrieval" in page
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_lddetr_demo_refuses_a_missing_library_and_needs_a_model_or_a_library(tmp_path):
    executable = shutil.which("lddetr-demo")
    failed = subprocess.run([executable, "--library", str(tmp_path / "none")], capture_output=True, text=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("lddetr-demo: error: ") and "none" in failed.stderr
    neither = subprocess.run([executable], capture_output=True, text=True)
    assert neither.returncode == 2 and "--model" in neither.stderr and "--library" in neither.stderr


# ------------------------------------------------------------------------------------------- the Space layout

SPACE = Path(__file__).resolve().parents[1] / "spaces" / "lddetr-demo"


def test_the_space_app_builds_the_demo_for_the_model_it_is_given(model_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LDDETR_MODEL", model_dir)
    namespace = runpy.run_path(str(SPACE / "app.py"))
    assert isinstance(namespace["demo"], gr.Blocks)
    monkeypatch.delenv("LDDETR_MODEL")
    with pytest.raises(SystemExit, match="LDDETR_MODEL"):
        runpy.run_path(str(SPACE / "app.py"))


def test_the_space_header_and_requirements_match_the_package():
    header = yaml.safe_load((SPACE / "README.md").read_text(encoding="utf-8").split("---")[1])
    assert header["sdk"] == "gradio" and (SPACE / header["app_file"]).is_file()
    assert header["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    lines = (SPACE / "requirements.txt").read_text().splitlines()
    listed = {str(Requirement(line)) for line in lines if line and not line.startswith("#")}
    # the package's own requirements, and gradio from its demo extra
    requirements = importlib.metadata.requires("lddetr")
    wanted = {str(Requirement(text)) for text in requirements if "extra ==" not in text}
    wanted |= {str(Requirement(text.split(";")[0])) for text in requirements if "gradio" in text}
    assert listed == wanted
