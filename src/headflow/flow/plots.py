"""Figures of a :class:`~headflow.flow.knockout.FlowResult` (matplotlib, no pyplot state).

Plotting consumes only the result: effect-vs-layer curves per pair, object/background bars, and
per-token effect maps drawn over example images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ..figures import new_figure, save_figure

if TYPE_CHECKING:
    from .knockout import FlowResult


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_curves(result: "FlowResult") -> Figure:
    """One panel per pair: mean relative change of the answer probability per window start, 95 % band,
    peak (dot) and effect-weighted mean layer (dashed)."""
    pairs = result.summary["pairs"]
    n = len(pairs)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = new_figure(4 * cols, 3 * rows, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    window = result.summary.get("resolved", {}).get("window_", "?")
    for ax, (name, p) in zip(axes, pairs.items()):
        x = np.asarray(p["window_starts"])
        y, lo, hi = _nan(p["curve"]), _nan(p["curve_lo"]), _nan(p["curve_hi"])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.fill_between(x, lo, hi, alpha=0.25)
        ax.plot(x, y, marker="o", ms=3)
        peak = p["peak_layer"]["value"]
        ax.plot([peak], [y[list(x).index(peak)]], "o", color="C3", ms=6, label=f"peak {peak}")
        mean_layer = p["mean_layer"]["value"]
        if mean_layer is not None:
            ax.axvline(mean_layer, color="C2", ls="--", lw=1, label=f"mean layer {mean_layer:.1f}")
        ax.set_title(name.replace("->", " → "))
        ax.set_xlabel(f"window start (w = {window})")
        ax.set_ylabel("Δp / p")
        ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    c3 = result.summary.get("c3", {})
    if "mean" in c3:
        fig.suptitle(f"C3 ({c3['verdict']}): image − question mean layer = {c3['mean']:.2f} "
                     f"[{c3['lo']:.2f}, {c3['hi']:.2f}]" if c3.get("lo") is not None else f"C3: {c3['verdict']}")
    return fig


def plot_objects(result: "FlowResult") -> Figure | None:
    """Bars: mean effect of knocking out object, background and same-size random image tokens → text."""
    objects = result.summary.get("objects")
    if not objects:
        return None
    names = ["object", "random_object", "background", "random_background"]
    mean = _nan([objects[k]["prob"]["mean"] for k in names])
    lo, hi = _nan([objects[k]["prob"]["lo"] for k in names]), _nan([objects[k]["prob"]["hi"] for k in names])
    fig = new_figure(5, 3.2, layout="constrained")
    ax = fig.subplots()
    err = np.stack([mean - lo, hi - mean])
    ax.bar(range(4), mean, yerr=np.nan_to_num(err), capsize=4, color=["C3", "0.7", "C0", "0.7"])
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(range(4), ["object", "random\n(object size)", "background", "random\n(bg size)"])
    ax.set_ylabel("Δp / p (image → text knocked out)")
    ax.set_title(f"C4: {result.summary.get('c4', {}).get('verdict', '?')}")
    return fig


def pixel_map(values: np.ndarray, rects: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mean of token ``values`` over the tokens covering each pixel (NaN where none does)."""
    height, width = shape
    total = np.zeros(shape)
    count = np.zeros(shape)
    for v, (y0, y1, x0, x1) in zip(values, rects):
        if not np.isfinite([v, y0, y1, x0, x1]).all():
            continue
        ys, ye = max(0, int(round(y0))), min(height, int(round(y1)))
        xs, xe = max(0, int(round(x0))), min(width, int(round(x1)))
        total[ys:ye, xs:xe] += v
        count[ys:ye, xs:xe] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_token_maps(result: "FlowResult") -> Figure | None:
    """Per example image: the image, the per-token effect map over it, and the object coverage."""
    maps = result.token_maps
    if not maps:
        return None
    fig = new_figure(9, 3 * len(maps), layout="constrained")
    axes = fig.subplots(len(maps), 3, squeeze=False)
    for row, (image_id, m) in zip(axes, maps.items()):
        image = m["image"]
        shape = image.shape[:2]
        effect = pixel_map(m["effect_prob"], m["rects"], shape)
        coverage = pixel_map(m["coverage"], m["rects"], shape)
        limit = np.nanmax(np.abs(effect)) if np.isfinite(effect).any() else 1.0
        row[0].imshow(image)
        row[0].set_title(image_id, fontsize=8)
        row[1].imshow(image)
        im = row[1].imshow(effect, cmap="RdBu", vmin=-limit, vmax=limit, alpha=0.6)
        fig.colorbar(im, ax=row[1], fraction=0.046, label="Δp / p")
        row[1].set_title("knock out one token → text", fontsize=8)
        row[2].imshow(image)
        im = row[2].imshow(coverage, cmap="viridis", vmin=0, vmax=1, alpha=0.6)
        fig.colorbar(im, ax=row[2], fraction=0.046, label="object coverage")
        row[2].set_title("token object coverage", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return fig


def save_figures(result: "FlowResult", directory: str | Path) -> list[Path]:
    """Write ``flow_curves``, ``flow_objects`` and ``flow_token_maps`` as PNG and SVG (atomically)."""
    written = []
    for name, make in (("flow_curves", plot_curves), ("flow_objects", plot_objects),
                       ("flow_token_maps", plot_token_maps)):
        fig = make(result)
        if fig is not None:
            written += save_figure(fig, directory, name)
    return written
