"""Image-folder datasets: load a folder with a manifest, and export any dataset to one.

Layout::

    PATH/
      manifest.csv        (or manifest.jsonl)  columns: image, label, [mask], [id], [factor columns...]
      images/...          image files, paths relative to PATH
      masks/...           optional PNG masks, nonzero = object

Every column other than ``image``, ``label``, ``mask`` and ``id`` is an appearance factor.

Bad rows are skipped and counted, not raised (``problems``/``problem_items``, see
:data:`headflow.data.base.PROBLEM_REASONS`): a missing or unreadable image or mask file, a mask whose
size differs from its image or that is empty, an empty label or one that is not one word, a malformed
manifest row (a JSON line that is not an object, a row without ``image``, a CSV row with more fields
than the header). A manifest that cannot be read as a whole is one ``HeadflowError`` line. Each row is decoded
once while the dataset is built; examples are decoded again on access.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from headflow.data.base import Dataset, Example, ProblemLog, decode_image, mask_problem, one_word_label
from headflow.errors import HeadflowError, MissingFileError
from headflow.store import atomic_write, write_error

__all__ = ["FolderDataset", "export_folder"]

_RESERVED = ("image", "label", "mask", "id")


def _read_manifest(root: Path) -> tuple[Path, list[dict[str, str] | None]]:
    """The manifest under ``root`` and its rows, values as strings (``None`` for a malformed row).

    A row is malformed when it is not a JSON object or has more fields than the CSV header; such
    rows are skipped and counted by the caller. A file that cannot be read as a whole (not UTF-8, a
    line that is not JSON, no ``image`` column) is one :class:`~headflow.errors.HeadflowError`.
    """
    csv_path, jsonl_path = root / "manifest.csv", root / "manifest.jsonl"
    path = csv_path if csv_path.is_file() else jsonl_path if jsonl_path.is_file() else None
    if path is None:
        raise MissingFileError(f"No manifest.csv or manifest.jsonl in folder {str(root)!r}. Write one with columns "
                               "image,label (see headflow.data.folder), or export a dataset with export_folder.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            if path is csv_path:
                reader = csv.DictReader(fh)
                raw: list = list(reader)
                columns = reader.fieldnames or []
                if "image" not in columns:
                    raise HeadflowError(f"Manifest {str(path)!r} has no 'image' column (columns: {columns}). "
                                        "Its first line must name the columns, e.g. 'image,label'.")
            else:
                raw = []
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        raw.append(json.loads(line.rstrip("\r\n")))
                    except json.JSONDecodeError as err:
                        raise HeadflowError(
                            f"Manifest {str(path)!r} line {number} is not valid JSON ({err.msg} at column {err.colno}). "
                            'Each line must be one JSON object, e.g. {"image": "images/a.png", "label": "dog"}.'
                        ) from None
    except UnicodeDecodeError as err:
        raise HeadflowError(f"Manifest {str(path)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                            f"position {err.start}). Save it as UTF-8.") from None
    except csv.Error as err:
        raise HeadflowError(f"Manifest {str(path)!r} is not a readable CSV file ({err}). Fix or re-export it.") from None
    except OSError as err:
        raise HeadflowError(f"Cannot read manifest {str(path)!r}: {err.strerror or err}.") from None
    rows: list[dict[str, str] | None] = []
    for row in raw:
        if not isinstance(row, dict) or None in row:  # a JSON list/number, or a CSV row with extra fields
            rows.append(None)
            continue
        rows.append({str(key): "" if val is None else str(val) for key, val in row.items()})
    return path, rows


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
    MissingFileError
        If the folder or its manifest is missing (a ``HeadflowError`` and a ``FileNotFoundError``).
    HeadflowError
        If the manifest cannot be read as a whole (not UTF-8, a line that is not JSON, no ``image``
        column), or ``n`` is not positive. Single bad rows are skipped and counted in ``problems``.
    """

    def __init__(self, path: str | Path, n: int | None = None) -> None:
        self.root = Path(path)
        if not self.root.exists():
            raise MissingFileError(f"Dataset folder {str(self.root)!r} does not exist. Check the path after 'folder:'.")
        if not self.root.is_dir():
            raise HeadflowError(f"Dataset folder {str(self.root)!r} is a file, not a folder. Use 'folder:' with the "
                                "folder that holds manifest.csv or manifest.jsonl.")
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise HeadflowError(f"The 'n' parameter of FolderDataset must be an int in [1, inf) or None. Got {n!r} instead.")
        self.manifest, rows = _read_manifest(self.root)
        self.name = f"folder:{self.root}"
        self._problem_log = ProblemLog()
        self._rows: list[tuple[int, dict[str, str]]] = []  # (manifest row index, row)
        for k, row in enumerate(rows):
            if n is not None and len(self._rows) >= n:
                break
            if row is None or not row.get("image", "").strip():
                self._problem_log.add(self._item_id(k, row or {}), "bad_manifest_row")
                continue
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
        label = row.get("label", "").strip()  # kept as written (case included); only checked to be one word
        if not label:
            self._problem_log.add(item_id, "missing_label")
            return None
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

    Raises
    ------
    HeadflowError
        If ``path`` is a file, or a write fails (:class:`~headflow.errors.WriteError`: no space, read-only,
        ...). Every file is written atomically and ``manifest.csv`` last, so a failed export never
        leaves a manifest that names missing or half-written images.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise HeadflowError(f"Cannot export to {str(root)!r}: it is a file, not a folder. Use a new folder path.")
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(root / "images", err) from err
    factor_names = list(dataset.factor_names)
    rows = []
    for k, ex in enumerate(dataset):
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in ex.id) or f"{k:06d}"
        img_rel = f"images/{stem}.png"
        image = ex.image.convert("RGB")
        atomic_write(root / img_rel, lambda tmp, im=image: im.save(tmp, format="PNG"))
        mask_rel = ""
        if ex.mask is not None:
            mask_rel = f"masks/{stem}.png"
            mask = Image.fromarray(ex.mask.astype(np.uint8) * 255, "L")
            atomic_write(root / mask_rel, lambda tmp, im=mask: im.save(tmp, format="PNG"))
        rows.append({"id": ex.id, "image": img_rel, "label": ex.label, "mask": mask_rel, **{f: ex.factors.get(f, "") for f in factor_names}})

    def write_manifest(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "image", "label", "mask", *factor_names])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(root / "manifest.csv", write_manifest)
    return root
