"""Image-folder datasets: load a folder with a manifest, and export any dataset to one.

Layout::

    PATH/
      manifest.csv        (or manifest.jsonl)  columns: image, label, [mask], [id], [factor columns...]
      images/...          image files, paths relative to PATH
      masks/...           optional PNG masks, nonzero = object

Every column other than ``image``, ``label``, ``mask`` and ``id`` is an appearance factor.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from headflow.data.base import Dataset, Example

__all__ = ["FolderDataset", "export_folder"]

_RESERVED = ("image", "label", "mask", "id")


def _read_manifest(root: Path) -> list[dict[str, str]]:
    """Rows of ``manifest.csv`` or ``manifest.jsonl`` under ``root``, values as strings."""
    csv_path, jsonl_path = root / "manifest.csv", root / "manifest.jsonl"
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    elif jsonl_path.is_file():
        with jsonl_path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    else:
        raise FileNotFoundError(f"No manifest.csv or manifest.jsonl in folder {str(root)!r}.")
    out = []
    for k, row in enumerate(rows):
        if not row.get("image") or not row.get("label"):
            raise ValueError(f"Manifest row {k} in {str(root)!r} needs non-empty 'image' and 'label' columns. Got {row!r} instead.")
        out.append({str(key): "" if val is None else str(val) for key, val in row.items()})
    return out


class FolderDataset(Dataset):
    """A dataset read from an image folder with a manifest (images are opened on access).

    Parameters
    ----------
    path : str or pathlib.Path
        Folder holding ``manifest.csv`` or ``manifest.jsonl``.
    n : int, optional
        Keep only the first ``n`` rows.

    Raises
    ------
    FileNotFoundError
        If the folder or its manifest is missing.
    ValueError
        If a row lacks ``image`` or ``label``, or ``n`` is not positive.
    """

    def __init__(self, path: str | Path, n: int | None = None) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Dataset folder {str(self.root)!r} does not exist.")
        if n is not None and n < 1:
            raise ValueError(f"The 'n' parameter of FolderDataset must be an int in [1, inf) or None. Got {n!r} instead.")
        rows = _read_manifest(self.root)
        self._rows = rows[:n] if n is not None else rows
        self.name = f"folder:{self.root}"
        self.classes = sorted({r["label"] for r in self._rows})
        self.factor_names = sorted({k for r in self._rows for k in r if k not in _RESERVED})

    def __len__(self) -> int:
        return len(self._rows)

    def _get(self, index: int) -> Example:
        row = self._rows[index]
        with Image.open(self.root / row["image"]) as im:
            image = im.convert("RGB")
        mask = None
        if row.get("mask"):
            with Image.open(self.root / row["mask"]) as m:
                mask = np.asarray(m.convert("L")) > 0
            if mask.shape != (image.height, image.width):
                raise ValueError(f"Mask {row['mask']!r} has shape {mask.shape}, but its image is {image.height}x{image.width}.")
        factors = {k: row[k] for k in self.factor_names if k in row}
        return Example(id=row.get("id") or f"{self.root.name}-{index:06d}", image=image, label=row["label"], factors=factors, mask=mask)


def export_folder(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as an image folder that :class:`FolderDataset` reads back.

    Parameters
    ----------
    dataset : Dataset
        Any dataset.
    path : str or pathlib.Path
        Output folder (created; existing files with the same names are overwritten).

    Returns
    -------
    pathlib.Path
        The folder, holding ``images/*.png``, ``masks/*.png`` (where examples have masks) and ``manifest.csv``.
    """
    root = Path(path)
    (root / "images").mkdir(parents=True, exist_ok=True)
    factor_names = list(dataset.factor_names)
    rows = []
    for k, ex in enumerate(dataset):
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in ex.id) or f"{k:06d}"
        img_rel = f"images/{stem}.png"
        ex.image.convert("RGB").save(root / img_rel)
        mask_rel = ""
        if ex.mask is not None:
            (root / "masks").mkdir(exist_ok=True)
            mask_rel = f"masks/{stem}.png"
            Image.fromarray(ex.mask.astype(np.uint8) * 255, "L").save(root / mask_rel)
        rows.append({"id": ex.id, "image": img_rel, "label": ex.label, "mask": mask_rel, **{f: ex.factors.get(f, "") for f in factor_names}})
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "label", "mask", *factor_names])
        writer.writeheader()
        writer.writerows(rows)
    return root
