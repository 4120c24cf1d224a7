"""Strict read access to one result JSON file: a missing key is an error that names the file and the key.

The report reads numbers from JSON files written by other steps (``summary.json``, ``validation.json``,
``flow/flow.json``, ``semantics.json`` …). A key renamed there must not turn into a silent ``n/a`` on the
page, so builders read every value through :class:`Doc`::

    doc = Doc(json.loads(text), "validation.json")
    doc["rankings"]["random"]["k80_completeness"]   # -> 7
    doc["rankings"]["randon"]                         # -> MissingKeyError:
    # validation.json has no key 'rankings.randon' ...

A value that the writer legitimately leaves out (e.g. ``flow.json`` ``objects_skipped_reason`` exists only
when the object analysis was skipped) is read with :meth:`Doc.optional`, so every such place is explicit
and greppable. JSON ``null`` values are returned as ``None`` (the report prints them as ``n/a``): the key
exists, the analysis had no number.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..errors import HeadflowError

__all__ = ["Doc", "MissingKeyError"]


class MissingKeyError(HeadflowError, KeyError):
    """A result file lacks a key the report reads (``HeadflowError`` for the CLI, ``KeyError`` for callers).

    Attributes
    ----------
    file : str
        The file, relative to the run directory (``validation.json``).
    key : str
        The dotted path of the missing key (``rankings.random.k80_completeness``).
    """

    def __init__(self, file: str, key: str) -> None:
        self.file, self.key = file, key
        super().__init__(f"{file} has no key {key!r}, which the report reads. The file was probably written by "
                         f"another version of headflow: re-run the step that writes {file}.")

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Doc:
    """A JSON object read strictly: ``doc[key]`` raises :class:`MissingKeyError` naming file and key path.

    Nested objects come back as :class:`Doc` (so their keys are checked too); lists and scalars as they are.
    """

    __slots__ = ("_data", "file", "path")

    def __init__(self, data: dict[str, Any], file: str, path: str = "") -> None:
        if not isinstance(data, dict):
            raise HeadflowError(f"{file}: expected a JSON object at {path or 'the top level'!r}, "
                                f"got {type(data).__name__}.")
        self._data, self.file, self.path = data, file, path

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _wrap(self, key: str, value: Any) -> Any:
        return Doc(value, self.file, self._key(key)) if isinstance(value, dict) else value

    def __getitem__(self, key: str) -> Any:
        if key not in self._data:
            raise MissingKeyError(self.file, self._key(key))
        return self._wrap(key, self._data[key])

    def optional(self, key: str) -> Any:
        """The value, or ``None`` where the writer legitimately leaves the key out (say so at the call site)."""
        return self._wrap(key, self._data[key]) if key in self._data else None

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        return list(self._data)

    def values(self) -> list[Any]:
        return [self._wrap(k, v) for k, v in self._data.items()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self._wrap(k, v)) for k, v in self._data.items()]

    def __repr__(self) -> str:
        return f"Doc({self.file!r}, {self.path or '.'!r}, keys={list(self._data)!r})"
