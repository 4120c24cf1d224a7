"""Integrity records of a run's files: written with the file, checked on every read (part of
:mod:`headflow.store`).

Each directory that holds recorded files has ``integrity.json``: file name -> ``{"size", "sha256"
(or "sha256_sampled" above FULL_HASH_LIMIT), "shape", "dtype"}`` (shape and dtype for ``.npy``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RunIntegrityError
from .atomic import atomic_write, read_json, write_json

__all__ = ["FULL_HASH_LIMIT", "INTEGRITY_NAME", "file_record", "load_npy", "load_pickle", "read_parquet", "save_npy",
           "save_parquet", "save_pickle", "save_recorded", "verify_file"]

INTEGRITY_NAME = "integrity.json"
"""Per-directory file of integrity records (file name -> record)."""
FULL_HASH_LIMIT = 256 * 2**20
"""Files up to this size get a full sha256; larger ones a sampled one (size + 64 blocks of 64 KiB)."""


def _file_digest(path: Path, size: int) -> tuple[str, str]:
    """``(kind, hexdigest)``: a full sha256 up to :data:`FULL_HASH_LIMIT`, else a sampled one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return "sha256", h.hexdigest()
        block, n = 1 << 16, 64
        for k in range(n):
            f.seek((size - block) * k // (n - 1))
            h.update(f.read(block))
    return "sha256_sampled", h.hexdigest()


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` file (reads the header only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = reader(f)
        return tuple(shape), dtype, f.tell()


def file_record(path: str | Path, *, npy: bool | None = None) -> dict[str, Any]:
    """The integrity record of a file as it is now: size, digest, and for ``.npy`` shape and dtype.

    ``npy`` says whether the file is an ``.npy`` array (default: judged by its suffix).
    """
    path = Path(path)
    size = path.stat().st_size
    kind, digest = _file_digest(path, size)
    record: dict[str, Any] = {"size": size, kind: digest}
    if path.suffix == ".npy" if npy is None else npy:
        shape, dtype, _ = npy_header(path)
        record.update(shape=list(shape), dtype=dtype.str)
    return record


def _records(directory: Path) -> dict[str, Any]:
    path = directory / INTEGRITY_NAME
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise RunIntegrityError(path, "is not an object of integrity records")
    return data


def _set_record(path: Path, record: dict[str, Any] | None, previous: dict[str, Any] | None = None) -> None:
    records = _records(path.parent)
    if record is None:
        records.pop(path.name, None)
    else:
        records[path.name] = {**record, "previous": previous} if previous else record
    write_json(path.parent / INTEGRITY_NAME, records)


def save_recorded(path: str | Path, write: Callable[[Path], None], size_hint: int | None = None) -> None:
    """``atomic_write`` plus the file's integrity record (for any file type, e.g. safetensors).

    ``write(tmp)`` writes the whole file; afterwards :func:`verify_file` checks it on read.

    The record of the new content is written (keeping the old one as ``previous``) before the file is
    replaced and the ``previous`` is dropped afterwards, so a crash between the two steps never leaves
    a correct file that fails verification.
    """
    path = Path(path)
    holder: dict[str, Any] = {}

    def write_and_record(tmp: Path) -> None:
        write(tmp)
        holder["record"] = file_record(tmp, npy=path.suffix == ".npy")
        old = _records(path.parent).get(path.name)
        if old is not None:
            old = {k: v for k, v in old.items() if k != "previous"}
        _set_record(path, holder["record"], previous=old)

    atomic_write(path, write_and_record, size_hint=size_hint)
    _set_record(path, holder["record"])


def _check_against(path: Path, record: dict[str, Any]) -> str | None:
    """Why ``path`` does not match ``record`` (``None`` if it does)."""
    size = path.stat().st_size
    if size != record.get("size"):
        return (f"is truncated ({size} bytes, {record.get('size')} recorded)" if size < record.get("size", 0)
                else f"has changed size ({size} bytes, {record.get('size')} recorded)")
    if "shape" in record:
        try:
            shape, dtype, _ = npy_header(path)
        except (ValueError, OSError) as exc:
            return f"has a corrupt .npy header ({exc})"
        if list(shape) != record["shape"]:
            return f"has shape {tuple(shape)}, {tuple(record['shape'])} recorded"
        if dtype.str != record["dtype"]:
            return f"has dtype {dtype}, {np.dtype(record['dtype'])} recorded"
    kind = "sha256" if "sha256" in record else "sha256_sampled"
    if record.get(kind) != _file_digest(path, size)[1]:
        return "has changed since it was written (checksum mismatch)"
    return None


def verify_file(path: str | Path, *, rebuild_hint: str | None = None) -> bool:
    """Check ``path`` against its integrity record in ``integrity.json`` next to it.

    Returns
    -------
    bool
        ``True`` if the file matches its record, ``False`` if it has no record (nothing to check: a
        file from an older headflow, or one written without a record).

    Raises
    ------
    RunIntegrityError
        If the file has a record but is missing, truncated, re-shaped or changed.
    """
    path = Path(path)
    record = _records(path.parent).get(path.name)
    if record is None:
        return False
    if not path.exists():
        raise RunIntegrityError(path, f"is missing, but {INTEGRITY_NAME} records it as written", rebuild_hint)
    problem = _check_against(path, record)
    previous = record.get("previous")
    if problem is not None and previous and _check_against(path, previous) is None:
        problem = None  # a crash between writing the record and replacing the file: the old content
    if problem is not None:
        raise RunIntegrityError(path, problem, rebuild_hint)
    return True


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically save ``array`` as ``.npy`` with an integrity record (shape, dtype, checksum)."""
    array = np.asanyarray(array)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    save_recorded(path, write, size_hint=array.nbytes + 128)


def load_npy(path: str | Path, *, mmap_mode: str | None = None, rebuild_hint: str | None = None) -> np.ndarray:
    """Load an ``.npy`` file after checking it against its integrity record (see :func:`verify_file`).

    Raises
    ------
    RunIntegrityError
        If the file is missing, truncated, re-shaped or changed, or cannot be read as ``.npy``.
    """
    path = Path(path)
    verify_file(path, rebuild_hint=rebuild_hint)
    if not path.exists():
        raise RunIntegrityError(path, "is missing", rebuild_hint)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RunIntegrityError(path, f"cannot be read as .npy ({exc})", rebuild_hint) from None


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write ``arrays`` as one compressed ``.npz`` file, with an integrity record."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    save_recorded(path, write, size_hint=sum(np.asanyarray(a).nbytes for a in arrays.values()) + 1024)


def save_parquet(path: str | Path, frame) -> None:
    """Atomically save a DataFrame as parquet, with an integrity record."""
    save_recorded(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_parquet(path: str | Path, *, rebuild_hint: str | None = None):
    """Read a parquet table after checking its integrity record; unreadable files are one error line."""
    import pandas as pd

    path = Path(path)
    verify_file(path, rebuild_hint=rebuild_hint)
    if not path.exists():
        raise RunIntegrityError(path, "is missing", rebuild_hint)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for corrupt files
        raise RunIntegrityError(path, f"cannot be read as parquet ({type(exc).__name__}: {exc})",
                                rebuild_hint) from None


def save_pickle(path: str | Path, obj: Any) -> None:
    """Atomically pickle ``obj`` (for a run's private per-item progress, never for results)."""
    import pickle

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)

    save_recorded(path, write)


def load_pickle(path: str | Path, *, rebuild_hint: str | None = None) -> Any:
    """Unpickle a file written by :func:`save_pickle`, after checking its integrity record."""
    import pickle

    path = Path(path)
    verify_file(path, rebuild_hint=rebuild_hint)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        raise RunIntegrityError(path, "is missing", rebuild_hint) from None
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, OSError) as exc:
        raise RunIntegrityError(path, f"cannot be unpickled ({type(exc).__name__}: {exc})", rebuild_hint) from None
