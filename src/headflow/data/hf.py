"""Hugging Face ``datasets`` as a headflow dataset, offline.

Spec: ``hf:NAME_OR_PATH[:split]``. ``NAME_OR_PATH`` is, in order of preference,

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``), or
* anything ``datasets.load_dataset(NAME_OR_PATH)`` reads: a local folder (an ``imagefolder``, with
  ``metadata.csv``/``metadata.jsonl`` for extra columns, or data files), or a hub name already in the
  local cache (headflow never asks for network access itself).

When the source has several splits, ``split`` picks one; with a single split it may be left out.
The ``datasets`` package is imported only when such a dataset is built (install ``datasets``).

Columns: ``image_column`` (an ``Image`` feature or a path string), ``label_column`` (a ``ClassLabel``,
mapped to its names, or strings), optional ``mask_column`` (an ``Image`` feature, nonzero = object, or
a 2-D array), optional ``id_column``, and factor columns (by default every other string or
``ClassLabel`` column). Images and masks are decoded by headflow, not by ``datasets``, so that a
broken one is skipped and counted (``problems``) instead of stopping the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headflow.data.base import Dataset, Example, ProblemLog, decode_image, mask_problem, one_word_label, walk_order
from headflow.errors import HeadflowError, MissingFileError, param_error

__all__ = ["HFDataset", "parse_hf_spec"]


def parse_hf_spec(rest: str) -> tuple[str, str | None]:
    """Split the part after ``hf:`` into ``(name_or_path, split)``.

    The split is the text after the last ``:`` when that text holds no path separator.

    >>> parse_hf_spec("/data/pets:test"), parse_hf_spec("/data/pets")
    (('/data/pets', 'test'), ('/data/pets', None))
    """
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return rest, None


def _import_datasets():  # noqa: ANN202 - datasets is optional
    try:
        import datasets
    except ImportError as err:
        raise HeadflowError(
            "Hugging Face datasets need the 'datasets' package, which is not installed. "
            "Install it with: pip install datasets"
        ) from err
    return datasets


def _load(source: str, split: str | None) -> Any:
    """The ``datasets.Dataset`` for ``source`` and ``split``."""
    hfd = _import_datasets()
    path = Path(source).expanduser()
    if not path.exists() and _looks_like_path(source):
        raise MissingFileError(
            f"Could not load Hugging Face dataset {source!r}: that folder does not exist. Check the path after "
            "'hf:' (a hub name has the form 'owner/name')."
        )
    if path.exists() and not path.is_dir():
        raise HeadflowError(f"Hugging Face dataset {source!r} is a file, not a folder. Use 'hf:' with the folder "
                            "written by save_to_disk or a folder datasets.load_dataset reads.")
    saved = path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    try:
        obj = hfd.load_from_disk(str(path)) if saved else hfd.load_dataset(source)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; report them in one form
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
        raise HeadflowError(
            f"Could not load Hugging Face dataset {source!r}: {type(err).__name__}: {reason}. "
            "Use a folder written by Dataset.save_to_disk, a local folder datasets.load_dataset reads "
            "(e.g. an imagefolder), or a hub name already in the local cache."
        ) from err
    if isinstance(obj, hfd.DatasetDict):
        splits = sorted(obj)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in obj:
            got = "no split" if split is None else repr(split)
            raise HeadflowError(
                f"Hugging Face dataset {source!r} has splits {splits}; got {got}. Use 'hf:{source}:{splits[0]}'."
            )
        return obj[split]
    if split is not None:
        info = getattr(obj, "split", None)
        if info is None:
            raise HeadflowError(f"Hugging Face dataset {source!r} has no splits, so split {split!r} does not exist. "
                                f"Use 'hf:{source}' without ':{split}'.")
        if str(info) != split:
            raise HeadflowError(f"Hugging Face dataset {source!r} holds the single split {str(info)!r}, not {split!r}. "
                                f"Use 'hf:{source}' or 'hf:{source}:{info}'.")
    return obj


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` is meant as a local path rather than a hub name (``owner/name`` or ``name``)."""
    return (source.startswith(("/", "./", "../", "~", "\\")) or source in (".", "..")
            or source.count("/") > 1 or "\\" in source or (len(source) > 1 and source[1] == ":"))


def _feature_kind(feature: Any) -> str:
    """``"image"``, ``"classlabel"``, ``"string"``, ``"int"``, ``"array"`` or ``"other"``."""
    hfd = _import_datasets()
    if isinstance(feature, hfd.Image):
        return "image"
    if isinstance(feature, hfd.ClassLabel):
        return "classlabel"
    if isinstance(feature, hfd.Value):
        if feature.dtype in ("string", "large_string"):
            return "string"
        if "int" in feature.dtype:
            return "int"
        return "other"
    array_types = tuple(t for t in (getattr(hfd, "Array2D", None), getattr(hfd, "List", None), getattr(hfd, "LargeList", None)) if isinstance(t, type))
    if isinstance(feature, list) or (array_types and isinstance(feature, array_types)):
        return "array"
    return "other"


class HFDataset(Dataset):
    """A Hugging Face dataset, read offline, as headflow examples.

    Parameters
    ----------
    source : str or pathlib.Path
        A ``save_to_disk`` folder, a local folder ``datasets.load_dataset`` reads, or a cached hub name.
    split : str, optional
        Split to use; needed only when the source has several.
    n : int, optional
        Keep at most ``n`` examples (default: all good ones). With ``seed`` set, a seeded random
        subsample (in original order); otherwise the first ``n``.
    seed : int or None, default 0
        Subsampling seed; ignored when ``n`` is ``None``.
    image_column : str, default "image"
        Column holding the images (``Image`` feature, or path strings).
    label_column : str, default "label"
        Column holding the answers: ``ClassLabel`` (ints mapped to names) or strings. Labels are
        stripped and lower-cased; one that is not a single word (after ``label_map``) is skipped.
    mask_column : str, optional
        Column holding object masks (``Image`` feature, nonzero = object, or 2-D arrays). Rows whose
        mask is ``None`` get ``mask=None``.
    factor_columns : list of str, optional
        Columns to expose as factors (values as strings; ``ClassLabel`` as names). Default: every string
        or ``ClassLabel`` column other than the image, label, mask and id columns.
    id_column : str, optional
        Column with example ids; default ``"id"`` if there is one, else ``"<source name>-<row:06d>"``.
    label_map : dict of str to (str or None), optional
        Raw label name -> one-word label, or ``None`` to skip that label (counted in ``filtered``).

    Attributes
    ----------
    rows : list of int
        Row indices (in the split) of the kept examples.
    problems, problem_items
        Bad items skipped (see :class:`~headflow.data.base.Dataset`).
    filtered : dict of str to int
        Rows left out on purpose (``"label_skipped"``): reason -> count.

    Raises
    ------
    HeadflowError
        If the source cannot be loaded, a named column is missing or has an unusable type, a
        parameter is invalid, or ``datasets`` is not installed.

    Examples
    --------
    >>> ds = HFDataset("/data/pets_saved", split="test", n=64, mask_column="mask")  # doctest: +SKIP
    >>> ds[0].label, ds.problems  # doctest: +SKIP
    ('beagle', {'empty_mask': 2})
    """

    def __init__(
        self,
        source: str | Path,
        split: str | None = None,
        n: int | None = None,
        seed: int | None = 0,
        *,
        image_column: str = "image",
        label_column: str = "label",
        mask_column: str | None = None,
        factor_columns: list[str] | None = None,
        id_column: str | None = None,
        label_map: dict[str, str | None] | None = None,
    ) -> None:
        owner = "HFDataset"
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise param_error("n", owner, "an int in [1, inf) or None", n)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise param_error("seed", owner, "an int in [0, inf) or None", seed)
        if label_map is not None and (
            not isinstance(label_map, dict)
            or not all(isinstance(k, str) and (v is None or one_word_label(v) == v) for k, v in label_map.items())
        ):
            raise param_error("label_map", owner, "a dict from label name to a lower-case one-word label or None", label_map)
        if factor_columns is not None and (
            isinstance(factor_columns, str) or not all(isinstance(c, str) for c in factor_columns)
        ):
            raise param_error("factor_columns", owner, "a list of column names or None", factor_columns)

        self.source, self.split, self.n, self.seed = str(source), split, n, seed
        ds = _load(self.source, split)
        features = ds.features
        columns = list(features)

        def need(param: str, column: str) -> str:
            if column not in features:
                raise HeadflowError(
                    f"The {param!r} parameter of HFDataset names column {column!r}, which {self.source!r} lacks. "
                    f"Its columns: {columns}."
                )
            return _feature_kind(features[column])

        self._image_kind = need("image_column", image_column)
        if self._image_kind not in ("image", "string"):
            raise HeadflowError(f"Column {image_column!r} must be an Image feature or path strings; it is {features[image_column]}.")
        label_kind = need("label_column", label_column)
        if label_kind not in ("classlabel", "string"):
            raise HeadflowError(
                f"Column {label_column!r} must be a ClassLabel or strings; it is {features[label_column]}. "
                f"Cast it first, e.g. ds.cast_column({label_column!r}, datasets.ClassLabel(names=[...]))."
            )
        self._label_names = features[label_column].names if label_kind == "classlabel" else None
        self._mask_kind = need("mask_column", mask_column) if mask_column is not None else None
        if self._mask_kind not in (None, "image", "array", "string"):
            raise HeadflowError(f"Column {mask_column!r} must be an Image feature, 2-D arrays or path strings; it is {features[mask_column]}.")
        if id_column is None and "id" in features and "id" not in (image_column, label_column, mask_column):
            id_column = "id"
        elif id_column is not None:
            need("id_column", id_column)
        reserved = {image_column, label_column, mask_column, id_column}
        if factor_columns is None:
            factor_columns = [c for c in columns if c not in reserved and _feature_kind(features[c]) in ("string", "classlabel")]
        else:
            for c in factor_columns:
                need("factor_columns", c)
        self.image_column, self.label_column, self.mask_column = image_column, label_column, mask_column
        self.id_column = id_column
        self.factor_names = sorted(factor_columns)
        self.label_map_ = dict(label_map or {})
        self._factor_label_names = {
            c: features[c].names for c in self.factor_names if _feature_kind(features[c]) == "classlabel"
        }

        hfd = _import_datasets()
        for c, kind in ((image_column, self._image_kind), (mask_column, self._mask_kind)):
            if kind == "image":  # decode ourselves, item by item
                ds = ds.cast_column(c, hfd.Image(decode=False))
        keep = [c for c in columns if c in reserved or c in self.factor_names]
        self._ds = ds.select_columns(keep)
        self._root = Path(self.source) if Path(self.source).is_dir() else None
        stem = Path(self.source.rstrip("/\\")).name or "hf"
        self.name = f"hf:{self.source}" + (f":{split}" if split else "")
        self._stem = stem

        self._problem_log = ProblemLog()
        self.filtered: dict[str, int] = {}
        kept: list[tuple[int, str]] = []
        for row in walk_order(len(self._ds), n, seed):
            if n is not None and len(kept) >= n:
                break
            label = self._examine(row)
            if label is not None:
                kept.append((row, label))
        kept.sort()
        self.rows = [r for r, _ in kept]
        self._labels = [lab for _, lab in kept]
        self.classes = sorted(set(self._labels))

    # -- decoding ---------------------------------------------------------------------------------

    def _item_id(self, row: int, record: dict) -> str:
        if self.id_column is not None and record.get(self.id_column) not in (None, ""):
            return str(record[self.id_column])
        return f"{self._stem}-{row:06d}"

    def _path(self, value: str) -> Path:
        p = Path(value)
        return self._root / p if (not p.is_absolute() and self._root is not None) else p

    def _decode(self, value: Any, kind: str, mode: str) -> Image.Image:
        """Decode an image cell; raises FileNotFoundError (missing) or OSError (unreadable)."""
        if value is None:
            raise FileNotFoundError("no image")
        if kind == "string":
            return decode_image(self._path(value), mode)
        if isinstance(value, dict):
            if value.get("bytes"):
                return decode_image(value["bytes"], mode)
            if value.get("path"):
                return decode_image(self._path(value["path"]), mode)
            raise FileNotFoundError("no bytes and no path")
        if isinstance(value, Image.Image):
            return value.convert(mode)
        raise OSError(f"unexpected image value of type {type(value).__name__}")

    def _mask(self, value: Any) -> np.ndarray | None:
        if value is None:
            return None
        if self._mask_kind == "array":
            arr = np.asarray(value)
            if arr.ndim != 2:
                raise OSError(f"mask has shape {arr.shape}, not (H, W)")
            return arr != 0
        return np.asarray(self._decode(value, self._mask_kind, "L")) > 0

    def _label(self, value: Any) -> tuple[str | None, str | None]:
        """``(label, None)``, or ``(None, reason)`` with a problem reason or ``"label_skipped"``."""
        if self._label_names is not None:
            if value is None or not 0 <= int(value) < len(self._label_names):  # -1 = unlabelled
                return None, "missing_label"
            raw = self._label_names[int(value)]
        else:
            if value is None or not str(value).strip():
                return None, "missing_label"
            raw = str(value).strip()
        if raw in self.label_map_:
            mapped = self.label_map_[raw]
            return (None, "label_skipped") if mapped is None else (mapped, None)
        label = one_word_label(raw)
        return (label, None) if label is not None else (None, "label_not_one_word")

    def _examine(self, row: int) -> str | None:
        """Check one row; its label if it is kept, else ``None`` (and the reason is counted)."""
        record = self._ds[row]
        item_id = self._item_id(row, record)
        label, reason = self._label(record[self.label_column])
        if reason == "label_skipped":
            self.filtered[reason] = self.filtered.get(reason, 0) + 1
            return None
        if reason is not None:
            self._problem_log.add(item_id, reason)
            return None
        try:
            image = self._decode(record[self.image_column], self._image_kind, "RGB")
        except FileNotFoundError:
            self._problem_log.add(item_id, "missing_image")
            return None
        except OSError:
            self._problem_log.add(item_id, "unreadable_image")
            return None
        if self.mask_column is not None:
            try:
                mask = self._mask(record[self.mask_column])
            except FileNotFoundError:
                self._problem_log.add(item_id, "missing_mask")
                return None
            except (OSError, ValueError, TypeError):
                self._problem_log.add(item_id, "unreadable_mask")
                return None
            problem = mask_problem(mask, image) if mask is not None else None
            if problem is not None:
                self._problem_log.add(item_id, problem)
                return None
        return label

    def _factor(self, column: str, value: Any) -> str:
        if value is None:
            return ""
        names = self._factor_label_names.get(column)
        if names is not None and 0 <= int(value) < len(names):
            return str(names[int(value)])
        return str(value)

    def __len__(self) -> int:
        return len(self.rows)

    def _get(self, index: int) -> Example:
        row = self.rows[index]
        record = self._ds[row]
        image = self._decode(record[self.image_column], self._image_kind, "RGB")
        mask = self._mask(record[self.mask_column]) if self.mask_column is not None else None
        factors = {c: self._factor(c, record[c]) for c in self.factor_names}
        return Example(id=self._item_id(row, record), image=image, label=self._labels[index], factors=factors, mask=mask)
