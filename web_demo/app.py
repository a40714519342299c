"""The web demo: a Gradio app that finds the moments of your own video matching text queries.

    lddetr-demo --model lddetr-clip-qvhighlights [--server-port 7860] [--share] [--example x.mp4 ...]
    lddetr-demo --library LIB [--model MODEL]    # adds the "Search the library" tab (web_demo/library_tab.py)

Upload a video (or pick an example), type one query per line, choose how many moments to show and press "Find
moments". Per query, the moments appear as buttons that seek the player to the moment and play it; below them the
saliency of every clip over time with the moments shaded, the most salient frames, and the results as a JSON file.

A video's features are extracted once: the pipeline's feature cache (`processing.video.feature_cache`, on disk under
`features/` of `--cache-dir`, keyed on the file's content and the CLIP models) serves every later query on the same
video, in this session and the next. The thumbnails of the gallery are decoded once per video and session (kept in
the session's state). Only CLIP-feature checkpoints run here: the app has no SlowFast encoder, and refuses others at
start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from processing.hub_ids import require_folder_or_hub_id
from processing.inference.pipeline import TASK, VideoMomentRetrievalPipeline
from processing.inference.plotting import plot_results
from processing.video.clip_encoders import resolve_device
from processing.video.decoding import VideoClipReader
from processing.video.precision import DTYPE_CHOICES
from video_search import LibraryError, VideoLibrary

try:
    import gradio as gr
except ImportError:  # without the [demo] extra: main() names it in one line instead of a traceback at import
    gr = None

MAX_TOP_K = 20
FRAMES_PER_QUERY = 4
THUMBNAIL_SIZE = (320, 320)  # bounding box: the gallery needs no more, and the session state stays small
PLAYER_ID = "player"
# seek the player to a moment and play it up to the moment's end; the click is the user gesture play() needs
SEEK_JS = """() => {{
    const video = document.querySelector("#{player} video");
    if (!video) return;
    video.currentTime = {start};
    video.ontimeupdate = () => {{ if (video.currentTime >= {end}) {{ video.pause(); video.ontimeupdate = null; }} }};
    video.play().catch(() => {{}});
}}"""
# no web fonts: the app works offline and behind firewalls
THEME = None if gr is None else gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def load_pipeline(
    model: str, device: str = "auto", cache_dir: str | os.PathLike | None = None, dtype: str = "auto", **kwargs
):
    """The `video-moment-retrieval` pipeline of a model folder or Hub id, with its video feature cache on; `dtype` is
    what CLIP and LD-DETR compute in (auto: bf16 where the CPU or GPU has bf16 units)."""
    # loading one CLIP tower from a full CLIP checkpoint reports the other tower's weights as unused: expected noise
    transformers_logging.set_verbosity_error()
    require_folder_or_hub_id(model, "model")
    return pipeline(
        TASK,
        model=model,
        device=resolve_device(device),
        cache_dir=cache_dir,
        use_cache=True,
        torch_dtype=dtype,
        **kwargs,
    )


def parse_queries(text: str | None) -> list[str]:
    """One query per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def clip_thumbnails(video: str, clip_length: float) -> list[np.ndarray]:
    """One frame per clip (its centre), shrunk to fit THUMBNAIL_SIZE."""
    thumbnails = []
    for clip in VideoClipReader(video, clip_length, frames_per_clip=1):
        image = Image.fromarray(clip.frames[1][0])
        image.thumbnail(THUMBNAIL_SIZE)
        thumbnails.append(np.asarray(image))
    return thumbnails


def salient_frames(results: Sequence[Mapping], thumbnails: Sequence[np.ndarray], per_query: int) -> list[tuple]:
    """Per query its `per_query` most salient clips as (thumbnail, caption), best first."""
    gallery = []
    for result in results:
        saliency = np.asarray(result["saliency"][: len(thumbnails)])
        for clip in np.argsort(-saliency, kind="stable")[:per_query]:
            start = clip * result["clip_length"]
            caption = f"{result['query']}: {start:.1f} s (saliency {saliency[clip]:.2f})"
            gallery.append((thumbnails[clip], caption))
    return gallery


def moment_label(rank: int, moment: Mapping) -> str:
    return f"{rank}. {moment['start']:.1f}–{moment['end']:.1f} s ({moment['score']:.2f})"


class MomentSearch:
    """What the app does on "Find moments", apart from the page: validate, run the pipeline, draw the outputs."""

    def __init__(self, pipe: VideoMomentRetrievalPipeline, output_dir: str | os.PathLike | None = None):
        self.pipe = pipe
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="lddetr-demo-"))

    def __call__(self, video, queries_text, top_k, thumbnails_of,
                 progress=None if gr is None else gr.Progress(track_tqdm=True)):
        if not video:
            raise gr.Error("Upload a video (or pick an example) first.")
        queries = parse_queries(queries_text)
        if not queries:
            raise gr.Error("Type a query: what happens in the moment you are looking for?")
        progress(0, desc="extracting the video's features")
        try:
            results = self.pipe(video=video, query=queries, top_k=int(top_k), progress=True)
            if video not in thumbnails_of:  # a new video replaces the last one's thumbnails
                thumbnails_of = {video: clip_thumbnails(video, results[0]["clip_length"])}
        except (FileNotFoundError, ValueError) as error:
            raise gr.Error(f"Cannot read this video: {error}") from error
        folder = Path(tempfile.mkdtemp(dir=self.output_dir))
        plot = folder / "saliency.png"
        plot_results(results, plot, top_k=int(top_k), title=os.path.basename(video))
        document = folder / "moments.json"
        document.write_text(json.dumps({"video": os.path.basename(video), "results": results}, indent=2) + "\n")
        gallery = salient_frames(results, thumbnails_of[video], FRAMES_PER_QUERY)
        return results, str(plot), gallery, str(document), thumbnails_of


def build_demo(
    pipe: VideoMomentRetrievalPipeline,
    examples: Sequence[str] = (),
    title: str = "LD-DETR moment retrieval",
    library: VideoLibrary | None = None,
) -> gr.Blocks:
    """The app; with a `library`, a second tab searches every video of it."""
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nUpload a video, describe what you are looking for (one query per line), and LD-DETR finds "
            "the moments. Click a moment to play it."
        )
        if library is None:
            add_video_tab(pipe, examples)
        else:
            from .library_tab import add_library_tab  # it imports gradio at the top, which this module may lack

            with gr.Tabs():
                with gr.Tab("Your video", id="video-tab"):
                    add_video_tab(pipe, examples)
                with gr.Tab("Search the library", id="library-tab", elem_id="library-tab"):
                    add_library_tab(library)
    return demo


def add_video_tab(pipe: VideoMomentRetrievalPipeline, examples: Sequence[str]) -> None:
    """The moments of one uploaded video, inside the caller's gr.Blocks."""
    search = MomentSearch(pipe)
    results = gr.State([])
    thumbnails_of = gr.State({})  # video path -> one thumbnail per clip, for this session
    with gr.Row():
        with gr.Column():
            video = gr.Video(label="video", sources=["upload"], height=360, elem_id=PLAYER_ID)
            queries = gr.Textbox(
                label="queries (one per line)", lines=2, placeholder="a man throws a ball", elem_id="queries"
            )
            top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="moments per query")
            find = gr.Button("Find moments", variant="primary", elem_id="find")
            if examples:
                gr.Examples([[path] for path in examples], inputs=[video], label="example videos")
        with gr.Column():

            @gr.render(inputs=results)
            def moment_buttons(shown):
                if not shown:
                    gr.Markdown("The moments will appear here.")
                for number, result in enumerate(shown):
                    gr.Markdown(f"**“{result['query']}”**")
                    with gr.Row(elem_classes="moments"):
                        for rank, moment in enumerate(result["moments"], 1):
                            button = gr.Button(
                                moment_label(rank, moment), size="sm", elem_classes="moment",
                                elem_id=f"moment-{number}-{rank}",
                            )
                            seek = SEEK_JS.format(player=PLAYER_ID, start=moment["start"], end=moment["end"])
                            button.click(None, js=seek)

            plot = gr.Image(label="saliency over time, moments shaded", type="filepath", elem_id="saliency-plot")
    gallery = gr.Gallery(label="most salient frames", columns=FRAMES_PER_QUERY, elem_id="frames")
    download = gr.File(label="results (JSON)", elem_id="download")
    find.click(
        search,
        inputs=[video, queries, top_k, thumbnails_of],
        outputs=[results, plot, gallery, download, thumbnails_of],
    )


def launch(demo: gr.Blocks, **kwargs):
    """Serve the demo with system fonts and without server-side rendering (which needs Node.js)."""
    return demo.launch(theme=THEME, ssr_mode=False, **kwargs)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lddetr-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="LD-DETR model folder or Hub id (model + processor); default: the library's")
    parser.add_argument("--library", help="a library (lddetr-index): adds the tab that searches all its videos")
    parser.add_argument("--example", action="append", default=[], help="an example video; repeat for several")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto",
        help="what CLIP and LD-DETR compute in (default: auto, bf16 where the CPU or GPU has bf16 units, else float32)",
    )
    parser.add_argument(
        "--cache-dir",
        help="lddetr cache folder; video features go under its features/ (default $LDDETR_CACHE or ~/.cache/lddetr)",
    )
    parser.add_argument(
        "--server-name",
        help="address to serve on (default 127.0.0.1, or $GRADIO_SERVER_NAME; 0.0.0.0: every interface)",
    )
    parser.add_argument("--server-port", type=int, help="port (default: 7860, or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    args = parser.parse_args(argv)
    if args.model is None and args.library is None:
        parser.error("give --model, or --library (whose model it then uses)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    if gr is None:
        raise SystemExit(
            "lddetr-demo: error: the web demo needs gradio, which is not installed: pip install 'lddetr[demo]' "
            "(in a checkout: pip install -e '.[demo]')"
        )
    args = parse_arguments(argv)
    if args.model is None and args.library is None:
        raise SystemExit("lddetr-demo: error: give --model MODEL, or --library LIB (whose model it then uses)")
    for example in args.example:
        if not os.path.isfile(example):
            raise SystemExit(f"lddetr-demo: error: example video not found: {example}")
    try:
        library = None
        if args.library is not None:
            library = VideoLibrary(args.library, model=args.model, device=str(resolve_device(args.device)))
        pipe = load_pipeline(args.model or library.info.model, args.device, args.cache_dir, args.dtype)
    except (OSError, ValueError, LibraryError) as error:
        raise SystemExit(f"lddetr-demo: error: {error}") from None
    demo = build_demo(pipe, examples=args.example, library=library)
    try:
        launch(demo, server_name=args.server_name, server_port=args.server_port, share=args.share)
    except OSError as error:  # e.g. the port is taken
        raise SystemExit(f"lddetr-demo: error: {error}") from None


if __name__ == "__main__":
    main()
