"""Datasets for headflow: the embedded synthetic default set and image folders.

>>> from headflow.data import load_dataset
>>> ds = load_dataset("default", n=48)
>>> len(ds), ds.classes[:3]
(48, ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

from headflow.data.base import Dataset, Example, ListDataset
from headflow.data.default import CLASSES, FACTORS, DefaultDataset
from headflow.data.folder import FolderDataset, export_folder

__all__ = [
    "CLASSES",
    "FACTORS",
    "Dataset",
    "DefaultDataset",
    "Example",
    "FolderDataset",
    "ListDataset",
    "export_folder",
    "load_dataset",
]

_VALID_SPECS = "'default' or 'folder:PATH'"


def load_dataset(spec: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by spec.

    Parameters
    ----------
    spec : str
        ``"default"`` (the embedded generator) or ``"folder:PATH"`` (an image folder with
        ``manifest.csv`` or ``manifest.jsonl``).
    n : int, optional
        Number of examples. For ``"default"`` it defaults to 256 (a multiple of 48 keeps the
        (class, style) design balanced); for a folder, the first ``n`` rows (default: all).
    seed : int, default 0
        Generator seed for ``"default"``; ignored for folders.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        If ``spec`` is not one of the valid forms.
    """
    if not isinstance(spec, str):
        raise TypeError(f"Dataset spec must be a str ({_VALID_SPECS}). Got {type(spec).__name__} instead.")
    if spec == "default":
        return DefaultDataset(n=256 if n is None else n, seed=seed)
    if spec.startswith("folder:") and len(spec) > len("folder:"):
        return FolderDataset(spec[len("folder:"):], n=n)
    raise ValueError(f"Unknown dataset spec {spec!r}; valid forms: {_VALID_SPECS}.")
