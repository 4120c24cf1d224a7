"""Image-folder datasets: load a folder with a manifest, and export any dataset to one.

Layout::

    PATH/
      manifest.csv        (or manifest.jsonl)  columns: image, label, [mask], [id], [factor columns...]
      images/...          image files, paths relative to PATH
      masks/...           optional PNG masks, nonzero = object

Every column other than ``image``, ``label``, ``mask`` and ``id`` is an appearance factor.

Bad rows are skipped and counted, not raised (``problems``/``problem_items``, see
:data:`headflow.data.base.PROBLEM_REASONS`): a missing or unreadable image or mask file, a mask whose
size differs from its image or that is empty, a label that is not one word. Each row is decoded
once while the dataset is built; examples are decoded again on access.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from headflow.data.base import Dataset, Example, ProblemLog, decode_image, mask_problem, one_word_label

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
        Keep only the first ``n`` usable rows (rows skipped as bad data do not count).

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
        self.name = f"folder:{self.root}"
        self._problem_log = ProblemLog()
        self._rows: list[tuple[int, dict[str, str]]] = []  # (manifest row index, row)
        for k, row in enumerate(rows):
            if n is not None and len(self._rows) >= n:
                break
            label = self._check(k, row)
            if label is not None:
                self._rows.append((k, {**row, "label": label}))
        self.classes = sorted({r["label"] for _, r in self._rows})
        self.factor_names = sorted({key for _, r in self._rows for key in r if key not in _RESERVED})

    def _item_id(self, k: int, row: dict[str, str]) -> str:
        return row.get("id") or f"{self.root.name}-{k:06d}"

    def _check(self, k: int, row: dict[str, str]) -> str | None:
        """The row's one-word label if the row is usable, else ``None`` (the reason is counted)."""
        item_id = self._item_id(k, row)
        label = row["label"].strip()  # kept as written (case included); only checked to be one word
        if one_word_label(label) is None:
            self._problem_log.add(item_id, "label_not_one_word")
            return None
        try:
            image = decode_image(self.root / row["image"])
        except FileNotFoundError:
            self._problem_log.add(item_id, "missing_image")
            return None
        except OSError:
            self._problem_log.add(item_id, "unreadable_image")
            return None
        if row.get("mask"):
            try:
                mask = np.asarray(decode_image(self.root / row["mask"], "L")) > 0
            except FileNotFoundError:
                self._problem_log.add(item_id, "missing_mask")
                return None
            except OSError:
                self._problem_log.add(item_id, "unreadable_mask")
                return None
            problem = mask_problem(mask, image)
            if problem is not None:
                self._problem_log.add(item_id, problem)
                return None
        return label

    def __len__(self) -> int:
        return len(self._rows)

    def _get(self, index: int) -> Example:
        k, row = self._rows[index]
        image = decode_image(self.root / row["image"])
        mask = None
        if row.get("mask"):
            mask = np.asarray(decode_image(self.root / row["mask"], "L")) > 0
            if mask.shape != (image.height, image.width):
                raise ValueError(f"Mask {row['mask']!r} has shape {mask.shape}, but its image is {image.height}x{image.width}.")
        factors = {key: row[key] for key in self.factor_names if key in row}
        return Example(id=self._item_id(k, row), image=image, label=row["label"], factors=factors, mask=mask)


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
