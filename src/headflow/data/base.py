"""Core dataset types: one labelled image (:class:`Example`) and a sequence of them (:class:`Dataset`).

A dataset is an immutable, indexable sequence. Subclasses may generate examples lazily in
``__getitem__``; nothing is cached at module level.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
from PIL import Image

__all__ = ["Example", "Dataset", "ListDataset"]


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
