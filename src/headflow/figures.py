"""Figures: one way to make one and one way to save one, for every analysis.

Figures are drawn with matplotlib's object API on the Agg canvas (:func:`new_figure`), so plotting never
touches pyplot's state or switches the global backend: a notebook user's matplotlib stays as it was.
:func:`save_figure` writes each figure as PNG and SVG, each atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .store import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
DPI = 130


def new_figure(width: float, height: float, *, layout: str | None = None) -> "Figure":
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: "Figure", directory: str | Path, name: str) -> list[Path]:
    """Write ``directory/name.png`` and ``directory/name.svg`` (atomically); returns their paths.

    A figure without a layout engine is cropped to its contents (``bbox_inches="tight"``); one made with
    ``layout="constrained"`` is saved as laid out.
    """
    directory = Path(directory)
    bbox = None if fig.get_layout_engine() is not None else "tight"
    paths = []
    for ext in FORMATS:
        path = directory / f"{name}.{ext}"
        atomic_write(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches=bbox))
        paths.append(path)
        if fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")  # the layout is fixed by the first save; don't redo it for the SVG
    return paths
