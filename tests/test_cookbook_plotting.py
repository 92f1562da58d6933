"""curves.png (cookbook/plotting.py): decodes, one panel per metric at a known size, curves drawn in
each panel, and readable axes for constant and nearly constant series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tinker_std.cookbook import plotting

BLUE = np.array([31, 119, 180])  # matplotlib's tab:blue, the curves' colour


def blue_mask(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    return np.abs(rgb - BLUE).sum(axis=2) < 30


def test_one_panel_per_metric_with_its_curve(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 5.0 / (s + 1), **({"eval_nll": 4.0 - s / 10} if s % 3 == 0 else {})} for s in range(10)]
    assert set(plotting.series(rows)) == {"loss", "eval_nll"}
    assert len(plotting.series(rows)["eval_nll"]) == 4
    path = plotting.write_curves(rows, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (2 * plotting.PANEL_PIXELS[0], plotting.PANEL_PIXELS[1])
    blue = blue_mask(path)
    half = blue.shape[1] // 2
    assert blue[:, :half].sum() > 200 and blue[:, half:].sum() > 200  # a curve in each panel


def test_panels_wrap_at_three_per_row(tmp_path: Path) -> None:
    rows = [{"step": s, **{f"m{k}": float(k * s) for k in range(4)}} for s in range(5)]
    path = plotting.write_curves(rows, tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.size == (3 * plotting.PANEL_PIXELS[0], 2 * plotting.PANEL_PIXELS[1])


def test_constant_series_is_drawn_around_its_value_and_named(tmp_path: Path) -> None:
    rows = [{"step": s, "lr": 2e-4, "loss": 3.0 - 0.1 * s} for s in range(8)]
    fig = plotting.curves_figure(plotting.series(rows))
    lr_ax = next(ax for ax in fig.axes if ax.get_title().startswith("lr"))
    low, high = lr_ax.get_ylim()
    assert low < 2e-4 < high
    assert high - low >= 1e-4  # a real span around the value, not matplotlib's degenerate +-0.1 %
    assert abs((low + high) / 2 - 2e-4) < 1e-12  # the line sits mid-panel
    assert "0.0002" in lr_ax.get_title()
    fig.canvas.draw()
    labels = [t.get_text() for t in lr_ax.get_yticklabels() if t.get_text()]
    assert len(set(labels)) == len(labels) >= 3  # distinct tick labels, so the value can be read off
    # and the written PNG has the lr line in the middle rows of its panel
    path = plotting.write_curves(rows, tmp_path / "curves.png")
    blue = blue_mask(path)[:, plotting.PANEL_PIXELS[0] :]  # panels sorted by name: loss, then lr
    rows_with_line = np.nonzero(blue.sum(axis=1) > 100)[0]
    assert len(rows_with_line) > 0
    middle = plotting.PANEL_PIXELS[1] / 2
    assert abs(rows_with_line.mean() - middle) < 0.2 * plotting.PANEL_PIXELS[1]


def test_constant_zero_and_single_point_have_non_zero_spans() -> None:
    assert plotting.constant_limits(0.0) == (-1.0, 1.0)
    assert plotting.constant_limits(-4.0) == (-6.0, -2.0)
    fig = plotting.curves_figure(plotting.series([{"step": 3, "loss": 1.5}]))
    (ax,) = [a for a in fig.axes if a.get_title()]
    low, high = ax.get_ylim()
    assert low < 1.5 < high
    xlow, xhigh = ax.get_xlim()
    assert xlow < 3 < xhigh


def test_nearly_constant_series_has_no_additive_offset() -> None:
    rows = [{"step": s, "loss": 2.3 + 1e-5 * s} for s in range(6)]
    fig = plotting.curves_figure(plotting.series(rows))
    (ax,) = [a for a in fig.axes if a.get_title()]
    fig.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert len(set(labels)) == len(labels) >= 3
    values = [float(label.replace("\u2212", "-")) for label in labels]
    assert all(2.2999 < v < 2.3001 for v in values), labels  # the values themselves, not offsets from 2.3


def test_no_numeric_metrics_still_writes_a_png(tmp_path: Path) -> None:
    path = plotting.write_curves([{"step": 0, "note": "text"}], tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.size == plotting.PANEL_PIXELS
