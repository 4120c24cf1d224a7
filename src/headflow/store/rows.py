"""Preallocated per-row arrays with completion flags and per-row checksums (part of :mod:`headflow.store`)."""

from __future__ import annotations

import errno as errno_
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from ..errors import HeadflowError, RunIntegrityError
from .atomic import atomic_write, write_error
from .lock import check_unlocked
from .records import npy_header

__all__ = ["RowStore"]


def _row_digest(values: np.ndarray) -> np.uint64:
    d = int.from_bytes(hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=8).digest(), "little")
    return np.uint64(d or 1)  # 0 means "no checksum"


class RowStore:
    """A preallocated float32 array ``[row, column]`` on disk with a completion flag per row.

    Files: ``NAME.npy`` (the data), ``NAME.done.npy`` (``bool [n_rows]``) and ``NAME.rows.npy``
    (``uint64 [n_rows]``, a checksum of each completed row). Readers see how many rows are complete;
    resuming skips them.

    Rows are written with ordinary file I/O (``os.pwrite`` + ``fsync``), never through a writable
    memory map: a write to a memory-mapped file on a full disk kills the process with ``SIGBUS``, while
    ``pwrite`` raises ``ENOSPC``, which becomes a :class:`~headflow.errors.WriteError`. The data file
    is preallocated (``posix_fallocate``, after a free-space check) when it is created, so a run that
    starts does not run out of space for its rows. ``data`` is a read-only memory map of the file.

    Each row is written data → fsync → checksum → done flag, so a row is marked complete only after
    its data and checksum are on disk. Reopening checks the data file's shape, dtype and size and
    every completed row's checksum; a mismatch raises :class:`~headflow.errors.RunIntegrityError`
    (with ``rebuild_hint`` appended) instead of resuming from wrong data.

    Attributes
    ----------
    data : Float[ndarray, "row column"]
        Read-only view of the rows (rows not yet complete are zeros).
    done : Bool[ndarray, "row"]
        Completion flags.
    """

    def __init__(self, directory: Path, name: str, n_rows: int, n_cols: int, *,
                 rebuild_hint: str | None = None) -> None:
        directory = Path(directory)
        self.data_path = directory / f"{name}.npy"
        self.done_path = directory / f"{name}.done.npy"
        self.rows_path = directory / f"{name}.rows.npy"
        self.shape = (int(n_rows), int(n_cols))
        self.rebuild_hint = rebuild_hint
        check_unlocked(directory)
        self.done = self._load_flags(self.done_path, bool)
        self._sums = self._load_flags(self.rows_path, np.uint64)
        if self.data_path.exists():
            self._offset = self._check_data_file()
        elif self.done.any():
            raise RunIntegrityError(self.data_path, f"is missing, but {self.done_path.name} marks "
                                    f"{int(self.done.sum())} of {n_rows} rows complete", rebuild_hint)
        else:
            self._offset = self._create()
        self._verify_rows()
        self.data = self._map()

    # -- opening ------------------------------------------------------------------------------
    def _load_flags(self, path: Path, dtype) -> np.ndarray:
        if not path.exists():
            return np.zeros(self.shape[0], dtype=dtype)
        try:
            flags = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise RunIntegrityError(path, f"cannot be read as .npy ({exc})", self.rebuild_hint) from None
        if flags.shape != (self.shape[0],):
            raise HeadflowError(f"{path} has shape {flags.shape}, expected {(self.shape[0],)}; the run directory "
                                "belongs to a different configuration.")
        if flags.dtype != np.dtype(dtype):
            raise RunIntegrityError(path, f"has dtype {flags.dtype}, expected {np.dtype(dtype)}", self.rebuild_hint)
        return flags.copy()

    def _check_data_file(self) -> int:
        path = self.data_path
        try:
            shape, dtype, offset = npy_header(path)
        except (ValueError, OSError, EOFError) as exc:
            raise RunIntegrityError(path, f"has a corrupt .npy header ({exc})", self.rebuild_hint) from None
        if shape != self.shape:
            raise HeadflowError(f"{path} has shape {shape}, expected {self.shape}; the run directory "
                                "belongs to a different configuration.")
        if dtype != np.dtype("<f4"):
            raise RunIntegrityError(path, f"has dtype {dtype}, expected float32", self.rebuild_hint)
        want = offset + self.shape[0] * self.shape[1] * 4
        size = path.stat().st_size
        if size != want:
            raise RunIntegrityError(path, f"is truncated ({size} bytes, {want} expected)" if size < want
                                    else f"has {size} bytes, {want} expected", self.rebuild_hint)
        return offset

    def _create(self) -> int:
        header = np.lib.format.header_data_from_array_1_0(np.zeros((0, 0), np.float32))
        header["shape"] = self.shape
        head = _header_bytes(header)
        total = len(head) + self.shape[0] * self.shape[1] * 4

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(head)
                f.flush()
                try:
                    os.posix_fallocate(f.fileno(), 0, total)  # reserve the blocks now, not row by row
                except (AttributeError, OSError) as exc:
                    if getattr(exc, "errno", None) == errno_.ENOSPC:
                        raise
                    f.truncate(total)  # file system without fallocate: sparse file, pwrite reports ENOSPC

        atomic_write(self.data_path, write, size_hint=total)
        return len(head)

    def _verify_rows(self) -> None:
        rows = np.flatnonzero(self.done)
        if not len(rows):
            return
        if not self.rows_path.exists():
            raise RunIntegrityError(self.data_path, f"has {len(rows)} rows marked complete but no per-row checksums "
                                    f"({self.rows_path.name} is missing)", self.rebuild_hint)
        data = self._map()
        bad = [int(r) for r in rows if self._sums[r] != _row_digest(data[r])]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            raise RunIntegrityError(self.data_path, f"has changed since it was written: {len(bad)} of {len(rows)} "
                                    f"complete rows fail their checksum (rows {shown})", self.rebuild_hint)

    def _map(self) -> np.ndarray:
        if self.shape[0] * self.shape[1] == 0:
            return np.zeros(self.shape, np.float32)
        return np.memmap(self.data_path, dtype="<f4", mode="r", offset=self._offset, shape=self.shape)

    # -- writing ------------------------------------------------------------------------------
    def write(self, row: int, values: np.ndarray) -> None:
        """Write ``values`` (``n_cols`` floats) as row ``row`` and mark it complete.

        Raises
        ------
        WriteError
            If the operating system refuses the write; the row then stays incomplete (resumable).
        """
        row = int(row)
        if not 0 <= row < self.shape[0]:
            raise IndexError(f"Row {row} is out of range for a store of {self.shape[0]} rows.")
        values = np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype="<f4"), (self.shape[1],)))
        payload = values.tobytes()
        offset = self._offset + row * self.shape[1] * 4
        try:
            fd = os.open(self.data_path, os.O_WRONLY)
            try:
                written = 0
                while written < len(payload):
                    written += os.pwrite(fd, payload[written:], offset + written)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(self.data_path, exc, len(payload)) from exc
        sums = self._sums.copy()
        sums[row] = _row_digest(values)
        _save_plain(self.rows_path, sums)  # checksum before flag: a flag never lacks its checksum
        done = self.done.copy()
        done[row] = True
        _save_plain(self.done_path, done)
        self._sums, self.done[row] = sums, True

    @property
    def n_complete(self) -> int:
        return int(self.done.sum())


def _header_bytes(header: dict) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _save_plain(path: Path, array: np.ndarray) -> None:
    """Atomic ``.npy`` write without an integrity record (RowStore's flags carry their own checks)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write, size_hint=array.nbytes + 128)
