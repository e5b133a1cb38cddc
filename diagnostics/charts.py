"""Charts of the diagnostic nodes: one JSON-able payload drawn twice — server-side as an IMAGE (matplotlib,
so it works through the API, PreviewImage and SaveImage) and in the node by web/js/flowscope_charts.js. Pure Python + matplotlib (no ComfyUI imports).

Payload: ``{"title", "x_label", "y_label", "x_log", "y_log", "x_reversed", "parameterization",
"series": [{"name", "x", "y", "style": "line"|"points"|"bars"}], "notes": [str]}``; non-finite values are
sent as null and skipped by both renderers.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import pathlib
import sys

import numpy as np
import torch

MAX_FOOTER_LINES = 8  # parameterization + notes drawn under the image chart (two inputs of a two-part latent: 7)
NO_DATA_TEXT = "no finite data to plot"  # drawn instead of a legend when no series has a drawable point
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22"]


def finite_or_none(value):
    """``float(value)``, or None when it is not finite (JSON has no NaN or infinity)."""
    value = float(value)
    return value if math.isfinite(value) else None


def series(name: str, x, y, style: str = "line") -> dict:
    x = x.tolist() if hasattr(x, "tolist") else list(x)
    y = y.tolist() if hasattr(y, "tolist") else list(y)
    if len(x) != len(y):
        raise ValueError(f"series {name!r}: {len(x)} x values but {len(y)} y values")
    return {"name": name, "x": [finite_or_none(v) for v in x], "y": [finite_or_none(v) for v in y],
            "style": style}


def chart(title: str, x_label: str, y_label: str, series_list: list, x_log=False, y_log=False,
          x_reversed=False, parameterization="", notes=()) -> dict:
    return {"title": title, "x_label": x_label, "y_label": y_label, "x_log": bool(x_log), "y_log": bool(y_log),
            "x_reversed": bool(x_reversed), "parameterization": parameterization, "series": list(series_list),
            "notes": [str(note) for note in notes]}


def finite_points(payload: dict) -> int:
    return sum(1 for s in payload["series"] for x, y in zip(s["x"], s["y"]) if x is not None and y is not None)


REQUIREMENTS = pathlib.Path(__file__).resolve().parents[1] / "requirements.txt"


def install_command() -> str:
    """The command that installs the pack's requirements into the Python that is running now (ComfyUI's own:
    a venv's python, or ``python_embeded\\python.exe`` of the Windows portable build)."""
    return f'"{sys.executable}" -m pip install -r "{REQUIREMENTS}"'


def matplotlib_missing_message() -> str | None:
    """None when matplotlib can be found on this Python's path, else the start-up warning (with the command that
    fixes it). Uses ``importlib.util.find_spec``, so nothing is imported at ComfyUI's start-up."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return ("[FlowScope] matplotlib is not installed in the Python that runs ComfyUI; the diagnostic nodes' "
            "chart images (Velocity Norm Plot, Straightness Meter, Step Error Meter, Compare Samplers) will fail "
            f"until it is. Install the pack's requirements and restart ComfyUI: {install_command()}")


def warn_if_matplotlib_missing(logger: logging.Logger | None = None) -> bool:
    """Log :func:`matplotlib_missing_message` once as a warning; True when matplotlib is missing."""
    message = matplotlib_missing_message()
    if message is not None:
        (logger or logging.getLogger(__name__)).warning(message)
    return message is not None


def require_matplotlib(node: str = "FlowScope chart"):
    """Import matplotlib's Agg canvas and Figure, or raise ModuleNotFoundError naming ``node``, the Python that
    lacks it and the command that installs it (instead of a bare ``No module named 'matplotlib'``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ModuleNotFoundError(
            f"{node}: drawing the chart image needs matplotlib, which the Python running ComfyUI "
            f"({sys.executable}) cannot import ({error}). Install the pack's requirements with that Python, then "
            f"restart ComfyUI: {install_command()}", name="matplotlib") from error
    return FigureCanvasAgg, Figure


def figure(payload: dict, width: int = 800, height: int = 500, node: str = "FlowScope chart"):
    """The payload drawn as a matplotlib Figure (Agg canvas, not yet rasterized): one line/points/bars series per
    payload series (non-finite points and, on a log axis, non-positive ones skipped), the parameterization and
    notes as a footer; with no drawable point at all, :data:`NO_DATA_TEXT` in the middle of the axes instead of a
    legend. ``node`` names the caller in the error raised when matplotlib is missing (:func:`require_matplotlib`)."""
    FigureCanvasAgg, Figure = require_matplotlib(node)

    drawing = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(drawing)
    axes = drawing.add_subplot(1, 1, 1)
    drawn = 0
    for index, entry in enumerate(payload["series"]):
        pairs = [(x, y) for x, y in zip(entry["x"], entry["y"]) if x is not None and y is not None
                 and (not payload["y_log"] or y > 0) and (not payload["x_log"] or x > 0)]
        if not pairs:
            continue
        xs, ys = zip(*pairs)
        color = COLORS[index % len(COLORS)]
        if entry.get("style") == "points":
            axes.plot(xs, ys, "o", markersize=3, color=color, label=entry["name"])
        elif entry.get("style") == "bars":
            widths = np.abs(np.diff(xs)).min() * 0.8 if len(xs) > 1 else 0.01
            axes.bar(xs, ys, width=widths, color=color, alpha=0.6, label=entry["name"])
        else:
            axes.plot(xs, ys, "-", linewidth=1.6, color=color, label=entry["name"])
        drawn += len(pairs)
    if payload["x_log"]:
        axes.set_xscale("log")
    if payload["y_log"]:
        axes.set_yscale("log")
    if payload["x_reversed"]:
        axes.invert_xaxis()
    axes.set_title(payload["title"])
    axes.set_xlabel(payload["x_label"])
    axes.set_ylabel(payload["y_label"])
    axes.grid(True, alpha=0.3)
    if drawn:
        axes.legend(fontsize=8, loc="best")
    else:
        axes.text(0.5, 0.5, NO_DATA_TEXT, ha="center", va="center", transform=axes.transAxes)
    footer = [payload["parameterization"]] + payload["notes"] if payload["parameterization"] else payload["notes"]
    if footer:
        drawing.text(0.01, 0.01, "\n".join(footer[:MAX_FOOTER_LINES]), fontsize=7, va="bottom", family="monospace")
        drawing.subplots_adjust(bottom=0.12 + 0.025 * min(len(footer), MAX_FOOTER_LINES))
    return drawing


def render(payload: dict, width: int = 800, height: int = 500, node: str = "FlowScope chart") -> torch.Tensor:
    """Draw a payload with matplotlib (Agg, :func:`figure`) → ComfyUI IMAGE [1, H, W, 3] in [0, 1]. ``node``
    names the caller in the error raised when matplotlib is missing (:func:`require_matplotlib`)."""
    drawing = figure(payload, width, height, node)
    drawing.canvas.draw()
    pixels = np.asarray(drawing.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]
