"""Training curves as a PNG: matplotlib when installed (``pip install tinker-std[plots]``), else a
tiny built-in rasteriser (one panel per metric, a 3x5 pixel font, zlib-compressed PNG).

``write_curves(rows, path)`` takes the rows of ``metrics.jsonl`` (dicts with a ``step``) and plots
every numeric key except ``step`` against ``step``; a key absent from a row (an eval metric measured
every few steps) is simply not plotted there.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_curves", "series", "write_png"]

_SKIP = {"step", "epoch"}


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


def write_curves(
    rows: Sequence[Mapping[str, Any]], path: str | Path, keys: Sequence[str] | None = None, engine: str = "auto"
) -> Path:
    """Plot ``rows`` to ``path``; ``engine`` is ``"auto"``, ``"matplotlib"`` or ``"builtin"``."""
    path = Path(path)
    data = series(rows, keys)
    if engine in ("auto", "matplotlib"):
        try:
            _matplotlib(data, path)
            return path
        except ImportError:
            if engine == "matplotlib":
                raise
    _builtin(data, path)
    return path


def _matplotlib(data: Mapping[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(data))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (key, points) in zip(axes.flat, sorted(data.items()), strict=False):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- built-in rasteriser -----------------------------------------------------------------------

_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001010010",
    "8": "111101111101111",
    "9": "111101111001111",
    "a": "010101111101101",
    "b": "110101110101110",
    "c": "011100100100011",
    "d": "110101101101110",
    "e": "111100110100111",
    "f": "111100110100100",
    "g": "011100101101011",
    "h": "101101111101101",
    "i": "111010010010111",
    "j": "001001001101010",
    "k": "101101110101101",
    "l": "100100100100111",
    "m": "101111111101101",
    "n": "110101101101101",
    "o": "010101101101010",
    "p": "110101110100100",
    "q": "010101101110011",
    "r": "110101110101101",
    "s": "011100010001110",
    "t": "111010010010010",
    "u": "101101101101111",
    "v": "101101101101010",
    "w": "101101111111101",
    "x": "101101010101101",
    "y": "101101010010010",
    "z": "111001010100111",
    ".": "000000000000010",
    "-": "000000111000000",
    "_": "000000000000111",
    ":": "000010000010000",
    "/": "001001010100100",
    "+": "000010111010000",
    "(": "010100100100010",
    ")": "010001001001010",
    "=": "000111000111000",
    " ": "000000000000000",
}
_PANEL_W, _PANEL_H, _SCALE = 360, 220, 2
_BG, _FG, _AXIS, _LINE, _GRID = (255, 255, 255), (30, 30, 30), (120, 120, 120), (31, 119, 180), (225, 225, 225)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(_BG) * (width * height))

    def set(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int], thick: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for t in range(thick):
                self.set(x0, y0 + t, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int] = _FG) -> None:
        for ch in text.lower():
            glyph = _GLYPHS.get(ch, _GLYPHS[" "])
            for k, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = x + (k % 3) * _SCALE, y + (k // 3) * _SCALE
                    for ox in range(_SCALE):
                        for oy in range(_SCALE):
                            self.set(gx + ox, gy + oy, color)
            x += 4 * _SCALE


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _panel(canvas: _Canvas, left: int, top: int, key: str, points: list[tuple[float, float]]) -> None:
    x0, y0, x1, y1 = left + 60, top + 24, left + _PANEL_W - 12, top + _PANEL_H - 28
    canvas.text(left + 60, top + 6, key[:40])
    for gy in range(5):
        y = y0 + gy * (y1 - y0) // 4
        canvas.line(x0, y, x1, y, _GRID)
    canvas.line(x0, y0, x0, y1, _AXIS)
    canvas.line(x0, y1, x1, y1, _AXIS)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    if hi_y == lo_y:
        lo_y, hi_y = lo_y - 0.5, hi_y + 0.5
    if hi_x == lo_x:
        hi_x = lo_x + 1
    canvas.text(left + 4, y0, _fmt(hi_y))
    canvas.text(left + 4, y1 - 10, _fmt(lo_y))
    canvas.text(x0, y1 + 6, _fmt(lo_x))
    canvas.text(x1 - 4 * _SCALE * len(_fmt(hi_x)), y1 + 6, _fmt(hi_x))

    def px(point: tuple[float, float]) -> tuple[int, int]:
        fx = (point[0] - lo_x) / (hi_x - lo_x)
        fy = (point[1] - lo_y) / (hi_y - lo_y)
        return round(x0 + fx * (x1 - x0)), round(y1 - fy * (y1 - y0))

    pts = [px(p) for p in points]
    for a, b in itertools.pairwise(pts):
        canvas.line(a[0], a[1], b[0], b[1], _LINE, thick=2)
    for x, y in pts if len(pts) < 40 else ():
        for ox in (-1, 0, 1):
            for oy in (-1, 0, 1):
                canvas.set(x + ox, y + oy, _LINE)


def _builtin(data: Mapping[str, list[tuple[float, float]]], path: Path) -> None:
    items = sorted(data.items())
    cols = max(1, min(3, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    canvas = _Canvas(cols * _PANEL_W, rows * _PANEL_H)
    for n, (key, points) in enumerate(items):
        _panel(canvas, (n % cols) * _PANEL_W, (n // cols) * _PANEL_H, key, points)
    if not items:
        canvas.text(10, 10, "no metrics")
    write_png(path, canvas.width, canvas.height, bytes(canvas.pixels))


def write_png(path: str | Path, width: int, height: int, rgb: bytes) -> None:
    """Write 8-bit RGB ``rgb`` (row-major, ``3 * width * height`` bytes) as a PNG file."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    stride = 3 * width
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)
