"""Figures for a :class:`~headflow.semantics.SemanticResult` (PNG and SVG each, written atomically).

Uses matplotlib's object API with the Agg canvas directly, so no pyplot state and no global backend
switch: plotting from a notebook or a server leaves the user's matplotlib configuration alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..figures import new_figure, save_figure
from .similarity import standardise

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .result import SemanticResult

__all__ = ["plot_result", "FIGURE_NAMES"]

#: Figure stems written by :func:`plot_result` (each as ``.png`` and ``.svg``).
FIGURE_NAMES = ("similarity_matrix", "embedding", "class_heatmaps")
TSNE_MIN_IMAGES = 30


def _new_figure(width: float, height: float) -> "Figure":
    return new_figure(width, height, layout="constrained")


def _save(fig: "Figure", directory: Path, stem: str) -> list[Path]:
    return save_figure(fig, directory, stem)


def _colours(n: int) -> NDArray[np.float64]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return np.asarray(cmap(np.linspace(0, 1, n) if n > 20 else np.arange(n)))


def _ordered_matrix(ax: "Axes", sim: NDArray[np.float64], primary: list[str], secondary: list[str],
                    title: str) -> object:
    order = np.lexsort((np.array(secondary), np.array(primary)))
    im = ax.imshow(sim[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    groups = np.array(primary)[order]
    bounds = [0] + [i for i in range(1, len(groups)) if groups[i] != groups[i - 1]] + [len(groups)]
    for b in bounds[1:-1]:
        ax.axhline(b - 0.5, color="white", lw=0.6)
        ax.axvline(b - 0.5, color="white", lw=0.6)
    centres = [(lo + hi - 1) / 2 for lo, hi in zip(bounds[:-1], bounds[1:])]
    names = [groups[lo] for lo in bounds[:-1]]
    show = len(names) <= 40
    ax.set_xticks(centres if show else [])
    ax.set_yticks(centres if show else [])
    if show:
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticklabels(names, fontsize=6)
    ax.set_title(title, fontsize=9)
    return im


def _similarity_figure(result: "SemanticResult", directory: Path) -> list[Path]:
    labels = list(result.labels)
    style = list(result.factor_values[result.overall_factor])
    fig = _new_figure(11, 5.2)
    ax1, ax2 = fig.subplots(1, 2)
    im = _ordered_matrix(ax1, result.similarity, labels, style, "ordered by class")
    _ordered_matrix(ax2, result.similarity, style, labels, f"ordered by {result.overall_factor}")
    fig.colorbar(im, ax=[ax1, ax2], shrink=0.8, label=f"similarity ({result.resolved['similarity_']})")
    fig.suptitle(f"Head-attribution similarity, {result.n_images} images — verdict: {result.verdict} "
                 f"(p = {result.p_class_vs_appearance:.3g})", fontsize=10)
    return _save(fig, directory, "similarity_matrix")


def _embeddings(result: "SemanticResult") -> dict[str, NDArray[np.float64]]:
    from sklearn.decomposition import PCA

    z = standardise(result.vectors)
    out = {"PCA": PCA(n_components=2, random_state=0).fit_transform(z) if z.shape[1] >= 2 else
           np.column_stack([z[:, 0], np.zeros(len(z))])}
    if result.n_images >= TSNE_MIN_IMAGES:
        from sklearn.manifold import TSNE

        sim = result.similarity
        dist = np.clip(1.0 - sim, 0.0, None)
        np.fill_diagonal(dist, 0.0)
        seed = int(result.parameters.get("seed", 0))
        from threadpoolctl import threadpool_limits

        tsne = TSNE(n_components=2, metric="precomputed", init="random", random_state=seed,
                    perplexity=min(30.0, (result.n_images - 1) / 3.0))
        with threadpool_limits(limits=1):  # small problem; avoid oversubscribing busy cores (scoped)
            out["t-SNE"] = tsne.fit_transform(dist)
    return out


def _embedding_figure(result: "SemanticResult", directory: Path) -> list[Path]:
    embeds = _embeddings(result)
    colourings = {"class": list(result.labels), result.overall_factor: list(result.factor_values[result.overall_factor])}
    fig = _new_figure(5.2 * len(colourings), 4.4 * len(embeds))
    axes = np.atleast_2d(fig.subplots(len(embeds), len(colourings), squeeze=False))
    for r, (method, xy) in enumerate(embeds.items()):
        for c, (what, values) in enumerate(colourings.items()):
            ax = axes[r, c]
            levels = sorted(set(values))
            colours = _colours(len(levels))
            for li, level in enumerate(levels):
                idx = [i for i, v in enumerate(values) if v == level]
                ax.scatter(xy[idx, 0], xy[idx, 1], s=14, color=colours[li], label=level, alpha=0.85, linewidths=0)
            ax.set_title(f"{method}, coloured by {what}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if len(levels) <= 20:
                ax.legend(fontsize=6, markerscale=0.8, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1 + len(levels) // 10, frameon=False)
    return _save(fig, directory, "embedding")


def _heatmap_figure(result: "SemanticResult", directory: Path) -> list[Path]:
    n_cls = len(result.classes)
    ncols = math.ceil(math.sqrt(n_cls))
    nrows = math.ceil(n_cls / ncols)
    aspect = result.n_heads / max(result.n_layers, 1)
    fig = _new_figure(min(2.0 + 1.8 * ncols * max(aspect, 0.6), 20), min(1.0 + 1.8 * nrows, 20))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmax = float(np.abs(result.class_maps).max()) or 1.0
    lo = -vmax if result.class_maps.min() < 0 else 0.0
    im = None
    for i, ax in enumerate(axes.ravel()):
        if i >= n_cls:
            ax.axis("off")
            continue
        im = ax.imshow(result.class_maps[i], cmap="RdBu_r" if lo < 0 else "magma", vmin=lo, vmax=vmax,
                       aspect="auto", interpolation="nearest")
        ax.set_title(result.classes[i], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, 0]:
        ax.set_ylabel("layer", fontsize=6)
    for ax in axes[-1, :]:
        ax.set_xlabel("head", fontsize=6)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="mean attribution")
    fig.suptitle(f"Per-class mean attribution (layer x head); {len(result.shared_heads)} heads shared by "
                 f"all classes' top-{result.resolved['top_k_']}", fontsize=9)
    return _save(fig, directory, "class_heatmaps")


def plot_result(result: "SemanticResult", directory: Path) -> list[Path]:
    """Write ``similarity_matrix``, ``embedding`` and ``class_heatmaps`` as PNG and SVG.

    * ``similarity_matrix``: the image x image similarity ordered by class (then appearance) and
      by the overall appearance factor (then class), with group boundaries.
    * ``embedding``: 2-D PCA of the head-standardised vectors (plus t-SNE on ``1 - similarity``
      when there are at least 30 images), coloured by class and by the overall factor.
    * ``class_heatmaps``: a grid of per-class mean ``layer x head`` attribution maps on one scale.

    Parameters
    ----------
    result : SemanticResult
    directory : Path
        Created if missing.

    Returns
    -------
    list of Path
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    return (_similarity_figure(result, directory) + _embedding_figure(result, directory)
            + _heatmap_figure(result, directory))
