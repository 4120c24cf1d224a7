"""Core dataset types: one labelled image (:class:`Example`) and a sequence of them (:class:`Dataset`).

A dataset is an immutable, indexable sequence. Subclasses may generate examples lazily in
``__getitem__``; nothing is cached at module level.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "Example",
    "Dataset",
    "ListDataset",
    "PROBLEM_REASONS",
    "ProblemLog",
    "decode_image",
    "to_rgb",
    "one_word_label",
    "walk_order",
]


@dataclass(frozen=True)
class Example:
    """One labelled image.

    Parameters
    ----------
    id : str
        Stable identifier, e.g. ``"default-s0-000123"``.
    image : PIL.Image.Image
        The image, RGB.
    label : str
        One-word class name, e.g. ``"star"``.
    factors : dict of str to str
        Appearance factors, e.g. ``{"style": "outline", "palette": "warm"}``. May be empty.
    mask : numpy.ndarray or None
        Boolean pixel mask of shape ``(H, W)`` (same size as ``image``); ``True`` marks the
        object's own pixels. ``None`` when the dataset has no masks.
    """

    id: str
    image: Image.Image
    label: str
    factors: dict[str, str] = field(default_factory=dict)
    mask: np.ndarray | None = None


class Dataset(Sequence[Example]):
    """Abstract sequence of :class:`Example` with dataset-level metadata.

    Attributes
    ----------
    name : str
        Dataset name, e.g. ``"default"`` or ``"folder:/data/shapes"``.
    classes : list of str
        Sorted or canonical list of class names (labels) that may occur.
    factor_names : list of str
        Names of the appearance factors every example carries (possibly empty).
    """

    name: str
    classes: list[str]
    factor_names: list[str]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, index: int) -> Example:  # pragma: no cover - abstract
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Example: ...

    @overload
    def __getitem__(self, index: slice) -> list[Example]: ...

    def __getitem__(self, index: int | slice) -> Example | list[Example]:
        """Return one example (``int``) or a list of examples (``slice``)."""
        if isinstance(index, slice):
            return [self._get(i) for i in range(*index.indices(len(self)))]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"Dataset indices must be int or slice. Got {type(index).__name__} instead.")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"Dataset index {index} is out of range for a dataset of {n} examples.")
        return self._get(i)

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self._get(i)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, classes={len(self.classes)})"

    @property
    def problems(self) -> dict[str, int]:
        """Bad items skipped while building the dataset: reason -> count (see :data:`PROBLEM_REASONS`).

        Empty for datasets that skip nothing (e.g. the embedded default set).
        """
        log = getattr(self, "_problem_log", None)
        return dict(sorted(log.counts.items())) if log is not None else {}

    @property
    def problem_items(self) -> list[tuple[str, str]]:
        """The skipped items as ``(item id, reason)`` pairs, in the order they were examined."""
        log = getattr(self, "_problem_log", None)
        return list(log.items) if log is not None else []


class ListDataset(Dataset):
    """A dataset backed by a list of already built examples.

    Parameters
    ----------
    name : str
        Dataset name.
    examples : sequence of Example
        The examples, in order.
    classes : list of str, optional
        Class names; default: the sorted distinct labels of ``examples``.
    factor_names : list of str, optional
        Factor names; default: the sorted union of the examples' factor keys.
    """

    def __init__(
        self,
        name: str,
        examples: Sequence[Example],
        classes: list[str] | None = None,
        factor_names: list[str] | None = None,
    ) -> None:
        self.name = name
        self._examples = list(examples)
        self.classes = list(classes) if classes is not None else sorted({e.label for e in self._examples})
        if factor_names is None:
            factor_names = sorted({k for e in self._examples for k in e.factors})
        self.factor_names = list(factor_names)

    def __len__(self) -> int:
        return len(self._examples)

    def _get(self, index: int) -> Example:
        return self._examples[index]


# ----------------------------------------------------------------------------------------------
# Bad data: skip and count, never abort (used by the folder, COCO and Hugging Face loaders)
# ----------------------------------------------------------------------------------------------

PROBLEM_REASONS: dict[str, str] = {
    "missing_image": "the image file does not exist",
    "unreadable_image": "the image cannot be decoded",
    "missing_mask": "the mask file does not exist",
    "unreadable_mask": "the mask cannot be decoded",
    "empty_mask": "the object mask has no pixel set",
    "mask_size_mismatch": "the mask's (H, W) differs from the image's",
    "missing_label": "the label is missing or empty",
    "label_not_one_word": "the label is not a single word and has no one-word mapping",
    "bad_annotation": "the item's annotation is malformed (e.g. an unknown category or a broken segmentation)",
    "bad_manifest_row": "the manifest row is malformed (not an object, no 'image', or more fields than the header)",
}
"""Reasons a loader may skip an item for, with what each means. Loaders count them in ``problems``."""


@dataclass
class ProblemLog:
    """Items a loader skipped, with a reason each (one of :data:`PROBLEM_REASONS`)."""

    counts: dict[str, int] = field(default_factory=dict)
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item_id: str, reason: str) -> None:
        """Record that item ``item_id`` was skipped for ``reason``."""
        if reason not in PROBLEM_REASONS:  # a programming error, not a user error
            raise KeyError(f"Unknown problem reason {reason!r}; valid reasons: {', '.join(PROBLEM_REASONS)}.")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.items.append((item_id, reason))


_ONE_WORD = re.compile(r"^[^\W_]+(?:['-][^\W_]+)*$")


def one_word_label(raw: object) -> str | None:
    """Normalise ``raw`` to a one-word label (stripped, lower case), or ``None`` if it is not one word.

    A word is letters or digits, optionally joined by ``-`` or ``'`` (``"t-shirt"`` is one word);
    spaces and underscores separate words (``"traffic light"``, ``"golden_retriever"`` are not).

    >>> one_word_label(" Dog "), one_word_label("t-shirt"), one_word_label("traffic light")
    ('dog', 't-shirt', None)
    """
    if raw is None:
        return None
    text = str(raw).strip().lower()
    return text if _ONE_WORD.match(text) else None


def mask_problem(mask: np.ndarray, image: Image.Image) -> str | None:
    """Why an object mask cannot be used with its image (``None`` if it can)."""
    if mask.shape != (image.height, image.width):
        return "mask_size_mismatch"
    if not mask.any():
        return "empty_mask"
    return None


ALPHA_BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels (RGBA, LA, palette or grey images with transparency) are composited on."""

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any PIL mode to 8-bit RGB, as it is meant to be seen.

    * EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored sideways is upright.
    * 16-bit grey (``I;16*``, and ``I``, which PNG and most TIFFs use for 16-bit data) is scaled to
      8 bits (``round(v / 257)``, so 65535 -> 255; values outside ``[0, 65535]`` saturate) instead of
      being clipped to white. Float images (``F``) in ``[0, 1]`` are scaled by 255, others clipped to
      ``[0, 255]``.
    * Transparency (``RGBA``, ``LA``, ``PA``, palette or grey images with a transparent colour) is
      composited on :data:`ALPHA_BACKGROUND` rather than dropped, which would show whatever colour the
      transparent pixels happen to hold.
    * ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr`` and ``RGB`` use PIL's own conversion.

    Raises
    ------
    OSError
        If the mode cannot be converted (e.g. ``LAB``).
    """
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the stored orientation
        pass
    mode = image.mode
    try:
        if mode in _SIXTEEN_BIT:
            values = np.asarray(image).astype(np.float64)
            grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
            return Image.fromarray(grey, "L").convert("RGB")
        if mode == "F":
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
            scale = 255.0 if values.size and values.max() <= 1.0 and values.min() >= 0.0 else 1.0
            return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
        if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, TypeError) as err:
        raise OSError(f"cannot convert an image of mode {mode!r} to RGB: {err}") from err


def decode_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image from a path or encoded bytes, converted to ``mode``.

    ``mode="RGB"`` goes through :func:`to_rgb` (EXIF orientation, 16-bit scaling, transparency); other
    modes (``"L"`` for masks) apply the EXIF orientation and PIL's conversion.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    OSError
        If the data cannot be decoded (PIL's ``UnidentifiedImageError`` and truncated files included).
    """
    fh = BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        with Image.open(fh) as im:
            im.load()
            if mode == "RGB":
                return to_rgb(im)
            try:
                im = ImageOps.exif_transpose(im) or im
            except Exception:  # noqa: BLE001 - a broken EXIF block: keep the stored orientation
                pass
            return im.convert(mode)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's decode failures
        raise OSError(f"cannot decode image: {err}") from err


def walk_order(count: int, n: int | None, seed: int | None) -> Iterator[int]:
    """Order in which a loader examines its ``count`` candidate items.

    Original order when ``n`` or ``seed`` is ``None``; otherwise a permutation drawn with
    ``numpy.random.default_rng(seed)``, so that the first ``n`` good items form a seeded random
    subsample. Loaders keep the kept items in original order whichever way they were found.
    """
    if n is None or seed is None:
        yield from range(count)
    else:
        yield from (int(i) for i in np.random.default_rng(seed).permutation(count))
