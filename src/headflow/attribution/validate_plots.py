"""Figures of a validation run: curves per ranking, attribution vs attention weight."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..figures import new_figure, save_figure
from ..store import load_npy

if TYPE_CHECKING:  # pragma: no cover
    from .validate import ValidationResult


def plot_validation(result: "ValidationResult", figures_dir: Path) -> list[Path]:
    data = result.data
    grid = data["k_grid"]
    fig = new_figure(14, 3.8)
    axes = fig.subplots(1, 3)
    for name, r in data["rankings"].items():
        axes[0].plot(grid, r["completeness"], label=name)
        axes[1].plot(grid, r["faithfulness"], label=name)
        axes[2].plot(grid, r["accuracy_completeness"], label=name)
    for ax, title in zip(axes, ("completeness: ablate top-k", "faithfulness: keep only top-k",
                                "accuracy with top-k ablated")):
        ax.set_xlabel("k (heads)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.8, color="grey", ls=":")
    axes[1].axhline(0.8, color="grey", ls=":")
    axes[0].set_ylabel("normalised effect")
    axes[2].legend(fontsize=7)
    paths = save_figure(fig, figures_dir, "validation_curves")

    attributions = load_npy(result.run_dir / "attributions.npy").mean(0).ravel()
    attention = load_npy(result.run_dir / "attention.npy").mean(0).ravel()
    single = load_npy(result.run_dir / "single_head.npy").mean(0).ravel()
    fig = new_figure(9, 3.8)
    axes = fig.subplots(1, 2)
    axes[0].scatter(attention, attributions, s=14)
    axes[0].set_xlabel("attention mass of final token on image (clean)")
    axes[0].set_ylabel("mean attribution")
    axes[0].set_title("attribution vs attention weight")
    axes[1].scatter(single, attributions, s=14, color="C2")
    axes[1].set_xlabel("single-head ablation effect")
    axes[1].set_title("attribution vs single-head ablation")
    for ax in axes:
        ax.grid(alpha=0.3)
    return paths + save_figure(fig, figures_dir, "attribution_vs_attention")
