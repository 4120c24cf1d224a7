"""Figures of attribution and validation runs (PNG + SVG), drawn only from saved results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from .core import AttributionResult


def save_figure(fig, figures_dir: Path, name: str) -> list[Path]:
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = figures_dir / f"{name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def plot_attribution(result: "AttributionResult", figures_dir: Path) -> list[Path]:
    """Mean-attribution heatmap (layer × head) and the LDS distribution."""
    mean = result.mean_attribution
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * mean.shape[1], 1.0 + 0.4 * mean.shape[0]))
    bound = float(np.abs(mean).max()) or 1.0
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(mean.shape[1]))
    ax.set_yticks(range(mean.shape[0]))
    ax.set_title(f"Mean attribution ({result.summary['target']} lost when ablated)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    paths = save_figure(fig, figures_dir, "attribution_heatmap")

    import pandas as pd

    lds = pd.read_parquet(result.run_dir / "lds.parquet")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist([lds["lds_pearson"].dropna(), lds["lds_spearman"].dropna()], bins=20, range=(-1, 1),
            label=["Pearson", "Spearman"])
    ax.set_xlabel("held-out correlation (predicted vs actual target)")
    ax.set_ylabel("images")
    ax.set_title("Linear datamodeling score (held-out masks)")
    ax.legend()
    return paths + save_figure(fig, figures_dir, "lds_hist")
