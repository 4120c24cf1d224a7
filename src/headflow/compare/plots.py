"""Figures of a comparison: depth profiles, concentration, and the mean maps side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..figures import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import ComparisonResult

FIGURES = ("compare_profiles", "compare_concentration", "compare_maps")


def plot_comparison(result: "ComparisonResult", figures_dir: Path) -> list[Path]:
    """``compare_profiles`` (mass per depth bin, one line per run), ``compare_concentration`` (share of the mass
    in the top fractions of heads) and ``compare_maps`` (each run's mean map on its own colour scale)."""
    names = result.names
    edges = np.asarray(result.summary["depth_bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig = new_figure(6.0, 3.4)
    ax = fig.subplots()
    for name, profile in zip(names, result.profiles):
        ax.plot(centres, profile, marker="o", ms=3, label=name)
    ax.set_xlabel("depth (layer / number of layers)")
    ax.set_ylabel("share of attribution mass")
    ax.set_title("Where the image-carrying heads sit, by depth")
    ax.legend(fontsize=7)
    paths = save_figure(fig, figures_dir, "compare_profiles")

    fractions = list(result.summary["runs"][0]["top_share"])
    fig = new_figure(1.5 + 1.2 * len(fractions), 3.2)
    ax = fig.subplots()
    width = 0.8 / len(names)
    for i, run in enumerate(result.summary["runs"]):
        ax.bar(np.arange(len(fractions)) + i * width, [run["top_share"][f] for f in fractions], width, label=run["name"])
    ax.set_xticks(np.arange(len(fractions)) + 0.4 - width / 2, [f"top {float(f):.0%}" for f in fractions])
    ax.set_ylabel("share of attribution mass")
    ax.set_ylim(0, 1)
    ax.set_title("Concentration of the attribution")
    ax.legend(fontsize=7)
    paths += save_figure(fig, figures_dir, "compare_concentration")

    fig = new_figure(0.5 + 3.0 * len(names), 3.2, layout="constrained")
    for ax, name, mean in zip(np.atleast_1d(fig.subplots(1, len(names))), names, result.maps):
        bound = float(np.abs(mean).max()) or 1.0
        im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return paths + save_figure(fig, figures_dir, "compare_maps")
