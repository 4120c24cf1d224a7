"""Self-describing, resumable run directories (COAR-style, with a config check and integrity records).

A run directory holds ``config.json`` (everything needed to reproduce the run, with a hash of the
parts that define the results), preallocated arrays with a per-row completion flag, and result files.

Guarantees
----------
* **Atomic writes.** Every file is written to a temporary file next to it, flushed and fsynced, then
  ``os.replace``-d into place (:func:`atomic_write`): a reader sees the old content or the new one, never
  a mix, whatever kills the writer. A writer killed mid-write (``SIGKILL``) leaves its temporary file, which the
  next :func:`run_lock` of the run removes (:func:`remove_temporaries`).
* **Integrity records.** Array, table and pickle files written by :func:`save_npy`,
  :func:`save_parquet` and :func:`save_pickle` get a record (size, sha256, and shape and dtype for
  ``.npy``) in ``integrity.json`` next to them; :func:`load_npy`, :func:`read_parquet`,
  :func:`load_pickle` and :func:`verify_file` check it on every read. A :class:`RowStore` keeps one
  checksum per completed row (``NAME.rows.npy``) and checks every completed row when it is reopened.
  A missing, truncated, re-shaped or changed file next to a record that says it was complete raises a
  :class:`~headflow.errors.RunIntegrityError`; nothing is silently recomputed as zeros.
* **Config check.** :func:`ensure_config` refuses to resume with other parameters, and refuses a
  directory that holds run data but lost its ``config.json``.
* **One writer.** :func:`run_lock` makes a second process that opens the same run refuse, naming the
  first one's PID and host; a lock left by a dead process on this host is taken over.
* **Write errors are one line.** Any ``OSError`` while writing (no space, read-only file system, no
  permission, a parent that is a file) becomes a :class:`~headflow.errors.WriteError` naming the file;
  the previous content of the file stays intact and the run stays resumable.

Where state lives: only on disk, in the run directory (plus the set of locks this process holds, in
``_HELD``, released when their ``with`` block ends).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import HeadflowError, RunIntegrityError
from .atomic import atomic_write, json_default, read_json, write_error, write_json
from .lock import LOCK_NAME, check_unlocked, remove_temporaries, run_lock
from .records import (FULL_HASH_LIMIT, INTEGRITY_NAME, file_record, load_npy, load_pickle, read_parquet, save_npy,
                      save_npz, save_parquet, save_pickle, save_recorded, verify_file)
from .rows import RowStore

__all__ = [
    "FULL_HASH_LIMIT",
    "INTEGRITY_NAME",
    "LOCK_NAME",
    "RowStore",
    "atomic_write",
    "check_unlocked",
    "ensure_config",
    "file_record",
    "load_npy",
    "load_pickle",
    "read_json",
    "read_parquet",
    "remove_temporaries",
    "run_data_files",
    "run_lock",
    "save_npy",
    "save_npz",
    "save_parquet",
    "save_pickle",
    "save_recorded",
    "spec_hash",
    "verify_file",
    "write_error",
    "write_json",
]

_RUN_DATA_SUFFIXES = (".npy", ".npz", ".parquet", ".pkl", ".safetensors")


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=json_default).encode()).hexdigest()[:16]


def run_data_files(run_dir: str | Path) -> list[str]:
    """Names of the files in ``run_dir`` (not below it) that hold run data: arrays, tables, records."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.is_file() and (p.suffix in _RUN_DATA_SUFFIXES or p.name in (INTEGRITY_NAME, "summary.json")))


def ensure_config(run_dir: Path, spec: dict, extra: dict, *, rebuild_hint: str | None = None) -> dict:
    """Write ``config.json`` for a new run, or check that an existing run has the same ``spec``.

    ``spec`` defines the results (model, data, parameters); ``extra`` is provenance (versions, time).
    Resuming with a different spec is refused rather than mixing two runs, and so is a directory
    that holds run data (arrays, tables, ``integrity.json``) but no ``config.json``: there is no way to
    tell which parameters that data was computed with.

    Raises
    ------
    HeadflowError
        On a different spec, a missing config next to run data, a corrupt ``config.json``, or a run
        directory locked by another live process.
    """
    run_dir = Path(run_dir)
    check_unlocked(run_dir)
    path = run_dir / "config.json"
    digest = spec_hash(spec)
    if path.exists():
        old = read_json(path, rebuild_hint=rebuild_hint)
        if not isinstance(old, dict) or not isinstance(old.get("spec"), dict) or "spec_hash" not in old:
            raise RunIntegrityError(path, "is not a headflow run config (needs 'spec' and 'spec_hash')", rebuild_hint)
        if old.get("spec_hash") != digest:
            changed = sorted(k for k in set(spec) | set(old["spec"]) if spec.get(k) != old["spec"].get(k))
            raise HeadflowError(
                f"{run_dir} holds a run with a different configuration (differs in: {', '.join(changed)}). "
                "Write the run elsewhere (a new --out, or another run directory), or delete this one to start over."
            )
        return old
    existing = run_data_files(run_dir)
    if existing:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise RunIntegrityError(path, f"is missing, but the directory holds run data ({shown}), so it cannot be "
                                "checked that it was computed with these parameters", rebuild_hint)
    config = {"spec": spec, "spec_hash": digest, **extra}
    write_json(path, config)
    return config
