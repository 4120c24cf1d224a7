"""Figures of attribution and validation runs (PNG + SVG), drawn only from saved results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..figures import new_figure, save_figure
from ..store import read_parquet

if TYPE_CHECKING:  # pragma: no cover
    from .core import AttributionResult


def plot_attribution(result: "AttributionResult", figures_dir: Path) -> list[Path]:
    """Mean-attribution heatmap (layer × head) and the LDS distribution (regression runs)."""
    mean = result.mean_attribution
    fig = new_figure(1.2 + 0.45 * mean.shape[1], 1.0 + 0.4 * mean.shape[0])
    ax = fig.subplots()
    bound = float(np.abs(mean).max()) or 1.0
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(mean.shape[1]))
    ax.set_yticks(range(mean.shape[0]))
    ax.set_title(f"Mean attribution ({result.summary['target']} lost when ablated)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    paths = save_figure(fig, figures_dir, "attribution_heatmap")

    if not (result.run_dir / "lds.parquet").exists():  # attribution patching: no held-out masks
        return paths
    lds = read_parquet(result.run_dir / "lds.parquet")
    fig = new_figure(5, 3.2)
    ax = fig.subplots()
    ax.hist([lds["lds_pearson"].dropna(), lds["lds_spearman"].dropna()], bins=20, range=(-1, 1),
            label=["Pearson", "Spearman"])
    ax.set_xlabel("held-out correlation (predicted vs actual target)")
    ax.set_ylabel("images")
    ax.set_title("Linear datamodeling score (held-out masks)")
    ax.legend()
    return paths + save_figure(fig, figures_dir, "lds_hist")
