"""Atomic writes, and write errors as one line (part of :mod:`headflow.store`)."""

from __future__ import annotations

import errno as errno_
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import HeadflowError, MissingFileError, RunIntegrityError, WriteError

__all__ = ["TEMP_SUFFIX", "atomic_write", "read_json", "write_error", "write_json"]

TEMP_SUFFIX = ".tmp"
"""Suffix of :func:`atomic_write`'s temporary files (``.NAME.XXXXXXXX.tmp`` next to ``NAME``)."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None  # pragma: no cover


def write_error(path: str | Path, exc: OSError, needed: int | None = None) -> WriteError:
    """The one-line :class:`~headflow.errors.WriteError` for an ``OSError`` raised while writing ``path``.

    Names the file and the error; for ``ENOSPC`` also the free space and, where known, the bytes needed.
    """
    path = Path(path)
    code = exc.errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    if code == errno_.ENOSPC:
        free = _free_bytes(path.parent)
        space = f"{_size(free)} free" if free is not None else "free space unknown"
        space += f", {_size(needed)} needed" if needed is not None else ""
        fix = f"no space left on device ({space}). Free some space or write the run to another disk (--out)."
    elif code == errno_.EROFS:
        fix = "the file system is read-only. Write the run to a writable directory (--out)."
    elif code in (errno_.EACCES, errno_.EPERM):
        fix = f"permission denied ({reason}). Make the directory writable or use another --out."
    elif code in (errno_.ENOTDIR, errno_.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        fix = (f"{blocker} is a file, not a directory. Use another path." if blocker is not None
               else f"{reason}. Use another path.")
    else:
        fix = f"{reason} (errno {code}). Check the disk and the path, then re-run to resume."
    return WriteError(f"Cannot write {path}: {fix}", path, code)


def atomic_write(path: str | Path, write: Callable[[Path], None], *, size_hint: int | None = None) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it into place.

    Parameters
    ----------
    path : str or Path
        The file to (re)write.
    write : callable
        Writes the whole content to the path it is given.
    size_hint : int, optional
        Bytes the file will take; checked against the free space first and named in a "no space" error.

    Raises
    ------
    WriteError
        On any ``OSError`` (no space, read-only, permission, a parent that is a file). The previous
        content of ``path`` is then unchanged and no temporary file is left.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size_hint is not None:
            free = _free_bytes(path.parent)
            if free is not None and free < size_hint:
                raise OSError(errno_.ENOSPC, os.strerror(errno_.ENOSPC))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        write(Path(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc, size_hint) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_json(path: str | Path, obj: Any, *, allow_nan: bool = True) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=json_default, allow_nan=allow_nan)
            f.write("\n")

    atomic_write(path, write)


def json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, *, rebuild_hint: str | None = None) -> Any:
    """Read a JSON file; a missing, unreadable or corrupt file is one :class:`HeadflowError` line naming it.

    Raises
    ------
    MissingFileError
        If ``path`` does not exist (also a ``FileNotFoundError``).
    RunIntegrityError
        If it is not valid UTF-8 JSON (names the line and column).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path} does not exist. Check the path (is it a finished run directory?).") from None
    except json.JSONDecodeError as exc:
        raise RunIntegrityError(path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                                rebuild_hint) from None
    except UnicodeDecodeError as exc:
        raise RunIntegrityError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})", rebuild_hint) from None
    except OSError as exc:
        raise HeadflowError(f"Cannot read {path}: {exc.strerror or exc}. Check the path and its permissions.") from None
