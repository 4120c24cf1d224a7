"""One writer per run directory: :func:`run_lock` and :func:`check_unlocked` (part of :mod:`headflow.store`).

State: the lock file ``run_dir/.headflow.lock`` on disk (PID, host, process start time), and ``_HELD``,
the run directories this process holds (with an open, ``flock``-ed descriptor each and a re-entry depth),
kept only while their ``with run_lock(...)`` block runs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import HeadflowError
from .atomic import TEMP_SUFFIX, write_error

__all__ = ["LOCK_NAME", "check_unlocked", "remove_temporaries", "run_lock"]

LOCK_NAME = ".headflow.lock"
"""Lock file of a run directory (see :func:`run_lock`)."""

_HELD: dict[str, list] = {}  # resolved run dir -> [fd, depth]
_HELD_GUARD = threading.Lock()


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` (Linux ``/proc``), to tell a reused PID from the original process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy(run_dir: Path, info: dict[str, Any]) -> HeadflowError:
    who = f"process {info.get('pid', '?')} on host {info.get('host', '?')}"
    since = f" (since {info['since']})" if info.get("since") else ""
    return HeadflowError(
        f"{run_dir} is in use by {who}{since}; two processes writing one run would mix their rows. Wait for it "
        f"to finish, use another --out, or, if that process is gone, delete {run_dir / LOCK_NAME}."
    )


def _flock(fd: int) -> bool | None:
    """Try an exclusive non-blocking ``flock``: True if taken, False if held elsewhere, None if unsupported."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return None


def _claimable(info: dict[str, Any], locked: bool | None) -> bool:
    """Whether a lock file with ``info`` may be taken, given the ``flock`` outcome ``locked``."""
    if not info:
        return True
    if info.get("host") != socket.gethostname():
        return False  # cannot tell whether a process on another host is alive
    if locked:  # the kernel says nobody on this host holds it: its owner died (its PID may be reused)
        return True
    return not _alive(int(info.get("pid", -1)), info.get("start"))


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run directory ``run_dir`` for this process while the ``with`` block runs.

    A second process (or host) that tries to lock the same directory gets a :class:`HeadflowError`
    naming the holder's PID and host. A lock left by a process that died on this host is taken over.
    Re-entrant within a process; released on exit, also on an exception. Taking the lock removes the temporary
    files of writers that were killed mid-write (:func:`remove_temporaries`). The lock is a file,
    ``run_dir/.headflow.lock`` (PID, host, start time), guarded by ``flock`` where the file system
    supports it; it is removed on release.

    Examples
    --------
    >>> with run_lock(tmp / "run"):  # doctest: +SKIP
    ...     config = ensure_config(tmp / "run", spec, {})
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run_dir / LOCK_NAME, exc) from exc
    key = str(run_dir.resolve())
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            fd = None
        else:
            fd = _acquire(run_dir)
            _HELD[key] = [fd, 1]
            remove_temporaries(run_dir)
    try:
        yield run_dir
    finally:
        with _HELD_GUARD:
            _HELD[key][1] -= 1
            if _HELD[key][1] == 0:
                fd = _HELD.pop(key)[0]
                try:
                    os.unlink(run_dir / LOCK_NAME)
                except OSError:
                    pass
                os.close(fd)


def _acquire(run_dir: Path) -> int:
    lock = run_dir / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(lock, exc) from exc
        locked = _flock(fd)
        info = _read_lock(fd) if locked is not False else _holder(fd)
        if locked is False or not _claimable(info, locked):
            os.close(fd)
            raise _busy(run_dir, info)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a file its holder just removed
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = json.dumps(me).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise write_error(lock, exc) from exc
        return fd
    raise HeadflowError(f"Could not lock {run_dir}: its lock file {lock} keeps changing. Try again.")


_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def remove_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (``SIGKILL``, a power cut: no ``finally`` ran) left
    in ``run_dir`` and below; returns them. :func:`run_lock` calls it once it holds the run, when no other writer
    of the run is alive. Sub-directories holding their own lock file (another run's) are left to that run.
    """
    run_dir = Path(run_dir)
    removed = []
    for root, dirs, files in os.walk(run_dir):
        if Path(root) != run_dir and LOCK_NAME in files:
            dirs[:] = []
            continue
        for name in files:
            if _TEMPORARY.match(name):
                path = Path(root) / name
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def _holder(fd: int) -> dict[str, Any]:
    """The info of a lock another process holds (its ``flock``). One that has just taken over a dead process's lock
    writes its own PID a moment after taking it: until then the file is empty or names the dead process, so
    re-read it for up to a second (the refusal names the live holder)."""
    info = _read_lock(fd)
    for _ in range(100):
        if info and (info.get("host") != socket.gethostname() or _alive(int(info.get("pid", -1)), info.get("start"))):
            break
        time.sleep(0.01)
        info = _read_lock(fd)
    return info


def check_unlocked(run_dir: str | Path) -> None:
    """Refuse if ``run_dir`` (or the directory above it) is locked by another live process.

    Cheap (reads the lock file, takes no lock, so it never disturbs a process acquiring one); called by
    :func:`ensure_config` and :class:`RowStore` so that even a writer that did not take :func:`run_lock`
    does not write into a run another process holds.
    """
    run_dir = Path(run_dir)
    for directory in (run_dir, run_dir.parent):
        lock = directory / LOCK_NAME
        if not lock.exists():
            continue
        with _HELD_GUARD:
            if str(directory.resolve()) in _HELD:
                continue
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            info = _read_lock(fd)
        finally:
            os.close(fd)
        if info and not _claimable(info, None):
            raise _busy(directory, info)
