"""Plot the pipeline's results: per query, the saliency of each clip over time with the predicted moments shaded.

One panel per query, titled with the query: the saliency as a step curve over the clips (seconds on the x axis),
each predicted moment shaded with an opacity growing with its score, the best moment outlined and labelled.
Drawn on a bare matplotlib Figure (Agg canvas), so it needs no display and leaves pyplot's global state alone.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

MOMENT_COLOUR = "tab:orange"
TOP_MOMENT_COLOUR = "tab:red"
SALIENCY_COLOUR = "tab:blue"


def plot_results(
    results: Sequence[Mapping], path: str | os.PathLike, top_k: int = 5, title: str | None = None, dpi: int = 120
) -> None:
    """Write a PNG (or any format matplotlib knows from the suffix) of the pipeline's results, one panel per query.

    Args:
        results: the pipeline's per-query dicts (`query`, `moments`, `saliency`, `clip_length`, `duration`).
        top_k: moments shaded per panel.
        title: a title above all panels (e.g. the video's name).
    """
    if not results:
        raise ValueError("no results to plot")
    figure = Figure(figsize=(10, 1.0 + 2.4 * len(results)), layout="constrained")
    axes = figure.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, result in zip(axes, results):
        _plot_query(ax, result, top_k)
    axes[-1].set_xlabel("time (s)")
    if title:
        figure.suptitle(title, fontsize="large")
    # one legend for all panels, below them, so that it hides no data
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    figure.legend(
        handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), fontsize="small", frameon=False
    )
    figure.savefig(path, dpi=dpi)


def _plot_query(ax, result: Mapping, top_k: int) -> None:
    saliency = np.asarray(result["saliency"], dtype=float)
    duration, clip_length = float(result["duration"]), float(result["clip_length"])
    edges = np.arange(len(saliency) + 1) * clip_length
    edges[-1] = min(edges[-1], duration)  # a last partial clip ends with the video
    ax.stairs(saliency, edges, baseline=None, color=SALIENCY_COLOUR, linewidth=1.8, zorder=3, label="saliency per clip")

    moments = list(result["moments"])[:top_k]
    best_score = max((moment["score"] for moment in moments), default=0.0)
    for rank, moment in enumerate(moments):
        opacity = 0.08 + 0.4 * (moment["score"] / best_score if best_score > 0 else 0.0)
        label = "predicted moments (opacity ~ score)" if rank == 0 else None
        ax.axvspan(moment["start"], moment["end"], color=MOMENT_COLOUR, alpha=opacity, linewidth=0, label=label)
    if moments:
        top = moments[0]
        ax.axvspan(
            top["start"], top["end"], fill=False, edgecolor=TOP_MOMENT_COLOUR, linewidth=2.2, label="best moment"
        )
        ax.annotate(
            f"best: {top['start']:.1f}–{top['end']:.1f} s, score {top['score']:.2f}",
            xy=((top["start"] + top["end"]) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color=TOP_MOMENT_COLOUR,
            fontsize="small",
            annotation_clip=False,
        )

    ax.set_xlim(0, duration)
    ax.set_ylabel("saliency")
    ax.set_title(textwrap.shorten(f"“{result['query']}”", width=110, placeholder="…”"), loc="left", pad=16)
    ax.grid(axis="x", alpha=0.3)
