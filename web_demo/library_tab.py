"""The demo's "Search the library" tab: one query over every video of a library (`lddetr-demo --library LIB`).

The ranked moments appear as a list, each with the frame of its video at the moment's start and a button; a click
loads that video into the tab's player, seeks it to the moment and plays it to the moment's end. The library's
video files are served as static files (they are not copied into Gradio's cache).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import av
import gradio as gr
import numpy as np
from PIL import Image

from video_search import LibraryError, SearchResult, VideoLibrary

MAX_TOP_K = 20
THUMBNAIL_SIZE = (160, 160)
PLAYER_ID = "library-player"
# wait for the player to hold the clicked video (the click's Python handler has just set it), then seek and play
SEEK_JS = """() => {{
    const deadline = Date.now() + 20000;
    const seek = () => {{
        const video = document.querySelector("#{player} video");
        const loaded = video && decodeURIComponent(video.currentSrc || video.src || "").endsWith({name});
        if (!loaded || video.readyState < 1) {{
            if (Date.now() < deadline) setTimeout(seek, 100);
            return;
        }}
        video.currentTime = {start};
        video.ontimeupdate = () => {{
            if (video.currentTime >= {end}) {{ video.pause(); video.ontimeupdate = null; }}
        }};
        video.play().catch(() => {{}});
    }};
    seek();
}}"""


def frame_at(path: str, seconds: float) -> np.ndarray | None:
    """The first frame at or after `seconds`, shrunk to fit THUMBNAIL_SIZE (None where the file cannot be read)."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
            last = None
            for frame in container.decode(stream):
                last = frame
                if frame.time is not None and frame.time >= seconds:
                    break
            if last is None:
                return None
            image = last.to_image()
    except (av.error.FFmpegError, IndexError):
        return None
    image.thumbnail(THUMBNAIL_SIZE)
    return np.asarray(image)


def result_label(rank: int, result: SearchResult) -> str:
    return f"{rank}. {result.vid}: {result.start:.1f}–{result.end:.1f} s ({result.score:.3f})"


class LibrarySearch:
    """What the tab does on "Search": run the library search and draw a thumbnail per moment."""

    def __init__(self, library: VideoLibrary):
        self.library = library

    def __call__(self, query: str, top_k) -> list[dict]:
        if not (query or "").strip():
            raise gr.Error("Type a query: what happens in the moment you are looking for?")
        try:
            results = self.library.search(query.strip(), top_k=int(top_k))
        except LibraryError as error:
            raise gr.Error(str(error)) from error
        shown = []
        for result in results:
            thumbnail = frame_at(result.path, result.start) if result.path else None
            shown.append({**result.as_dict(), "thumbnail": thumbnail})
        return shown


def video_folders(library: VideoLibrary) -> list[str]:
    return sorted({os.path.dirname(path) for path in library.shards.paths_of_videos if path})


def add_library_tab(library: VideoLibrary) -> None:
    """The tab's components, inside the caller's gr.Blocks."""
    gr.set_static_paths(video_folders(library))
    search = LibrarySearch(library)
    results = gr.State([])
    gr.Markdown(f"Search all {len(library)} videos of the library at once: the best moments, in whichever video.")
    with gr.Row():
        with gr.Column():
            query = gr.Textbox(label="query", placeholder="a dog jumps into a pool", elem_id="library-query")
            top_k = gr.Slider(1, MAX_TOP_K, value=10, step=1, label="moments")
            find = gr.Button("Search", variant="primary", elem_id="library-search")
            player = gr.Video(label="the moment's video", interactive=False, height=320, elem_id=PLAYER_ID)
        with gr.Column():

            @gr.render(inputs=results)
            def result_list(shown: Sequence[dict]):
                if not shown:
                    gr.Markdown("The moments will appear here.")
                for rank, result in enumerate(shown, 1):
                    with gr.Row(elem_classes="library-result"):
                        if result["thumbnail"] is not None:
                            gr.Image(Image.fromarray(result["thumbnail"]), show_label=False, height=90, width=120,
                                     container=False, interactive=False, elem_classes="library-thumbnail")
                        button = gr.Button(
                            result_label(rank, SearchResult(**{k: v for k, v in result.items() if k != "thumbnail"})),
                            size="sm", elem_classes="library-moment", elem_id=f"library-moment-{rank}",
                        )
                    name = os.path.basename(result["path"] or "")
                    seek = SEEK_JS.format(
                        player=PLAYER_ID, name=json.dumps(name), start=result["start"], end=result["end"]
                    )
                    button.click(lambda path=result["path"]: path, outputs=player).then(None, js=seek)

    find.click(search, inputs=[query, top_k], outputs=results)
    query.submit(search, inputs=[query, top_k], outputs=results)
