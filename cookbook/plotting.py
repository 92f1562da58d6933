"""Training curves as one PNG per run, drawn with matplotlib (Agg, no display needed).

``write_curves(rows, path)`` takes the rows of ``metrics.jsonl`` (dicts with a ``step``) and plots
every finite numeric key except ``step``/``epoch`` against ``step``, one panel per metric; a key absent
from a row (an eval metric measured every few steps) is simply not plotted there.

Axes are readable for any series: tick labels never use an additive offset (``1e-3+2.30`` style), and a
constant series (a constant learning rate) is drawn on a y-range centred on its value, with the value
written in the panel's title, instead of matplotlib's degenerate range around the line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

__all__ = ["write_curves", "series", "curves_figure", "PANEL_PIXELS", "DPI"]

_SKIP = {"step", "epoch"}
DPI = 100
PANEL_PIXELS = (400, 300)  # (width, height) of one metric's panel in the PNG
_COLUMNS = 3


def series(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """``key -> [(step, value), ...]`` for every finite numeric metric in ``rows``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        x = float(row.get("step", i))
        for key, value in row.items():
            if key in _SKIP or (keys is not None and key not in keys) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.setdefault(key, []).append((x, float(value)))
    return out


def constant_limits(value: float) -> tuple[float, float]:
    """A y-range for a series that is ``value`` everywhere: ``value`` in the middle, half its size each
    side (1 each side around zero), so the line sits mid-panel and the ticks name the value."""
    half = abs(value) / 2 if value != 0 else 1.0
    return value - half, value + half


def _is_constant(values: Sequence[float]) -> bool:
    low, high = min(values), max(values)
    return high - low <= 1e-12 * max(abs(low), abs(high), 1e-300)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def curves_figure(data: Mapping[str, list[tuple[float, float]]]) -> Figure:
    """The figure ``write_curves`` saves: one panel per key of ``data`` (sorted), up to 3 per row, each
    ``PANEL_PIXELS`` at ``DPI``. Made with the object API (no pyplot state), so it is thread safe."""
    n = max(1, len(data))
    cols = min(_COLUMNS, n)
    rows = math.ceil(n / cols)
    width, height = PANEL_PIXELS
    fig = Figure(figsize=(width * cols / DPI, height * rows / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (key, points) in zip(axes.flat, sorted(data.items()), strict=False):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="." if len(points) < 30 else None, color="tab:blue")
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_powerlimits((-3, 4))
        ax.yaxis.set_major_formatter(formatter)
        if _is_constant(ys):
            ax.set_ylim(*constant_limits(ys[0]))
            ax.set_title(f"{key} (constant {_fmt(ys[0])})", fontsize=10)
        else:
            ax.set_title(f"{key} (last {_fmt(ys[-1])})", fontsize=10)
        if len(set(xs)) == 1:
            ax.set_xlim(xs[0] - 1, xs[0] + 1)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(data) :]:
        ax.axis("off")
    if not data:
        axes.flat[0].text(0.5, 0.5, "no numeric metrics", ha="center", va="center")
    return fig


def write_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """Plot ``rows`` (optionally only ``keys``) to the PNG ``path``; returns ``path``."""
    path = Path(path)
    curves_figure(series(rows, keys)).savefig(path, dpi=DPI, format="png")
    return path
