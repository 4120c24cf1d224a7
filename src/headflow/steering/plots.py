"""Figures of a steering sweep: accuracy and mean answer logit vs factor, per condition and ranking."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..figures import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import SteeringResult

FIGURES = ("steering_accuracy", "steering_logit")


def plot_steering(result: "SteeringResult", figures_dir: Path) -> list[Path]:
    """``steering_accuracy`` and ``steering_logit``: one panel per condition (clean, each corruption), x the
    factor, one line per ranking (attribution, attention, random)."""
    data = result.data
    factors = np.asarray(data["factors"])
    paths: list[Path] = []
    for name, key, label in (("steering_accuracy", "accuracy", "accuracy"),
                             ("steering_logit", "mean_logit", "mean answer logit")):
        conditions = data["conditions"]
        fig = new_figure(0.6 + 3.0 * len(conditions), 3.2, layout="constrained")
        for ax, condition in zip(np.atleast_1d(fig.subplots(1, len(conditions), sharey=True)), conditions):
            for ranking in data["rankings"]:
                values = data["curves"][condition][ranking][key]
                if values:
                    ax.plot(factors, values, marker="o", ms=3, label=f"{ranking} (k={data['k']})")
            ax.axvline(1.0, color="grey", lw=0.6, ls=":")
            ax.set_title(condition, fontsize=9)
            ax.set_xlabel("steering factor")
        fig.axes[0].set_ylabel(label)
        fig.axes[0].legend(fontsize=7)
        paths += save_figure(fig, figures_dir, name)
    return paths
