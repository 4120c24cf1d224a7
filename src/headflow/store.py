"""Self-describing, resumable run directories (COAR-style, with a config check).

A run directory holds ``config.json`` (everything needed to reproduce the run, with a hash of the
parts that define the results), preallocated arrays with a per-row completion column, and result
files. Every write is atomic (temporary file + ``os.replace``); rows are written data → flush →
mark complete, so a run killed at any moment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import HeadflowError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any, *, allow_nan: bool = True) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default, allow_nan=allow_nan)
            f.write("\n")

    atomic_write(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write ``arrays`` as one compressed ``.npz`` file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def save_parquet(path: str | Path, frame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def save_pickle(path: str | Path, obj: Any) -> None:
    """Atomically pickle ``obj`` (for a run's private per-item progress, never for results)."""
    import pickle

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, write)


def load_pickle(path: str | Path) -> Any:
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def ensure_config(run_dir: Path, spec: dict, extra: dict) -> dict:
    """Write ``config.json`` for a new run, or check that an existing run has the same ``spec``.

    ``spec`` defines the results (model, data, parameters); ``extra`` is provenance (versions, time).
    Resuming with a different spec is refused rather than mixing two runs.
    """
    path = run_dir / "config.json"
    digest = spec_hash(spec)
    if path.exists():
        old = read_json(path)
        if old.get("spec_hash") != digest:
            changed = sorted(k for k in set(spec) | set(old.get("spec", {})) if spec.get(k) != old["spec"].get(k))
            raise HeadflowError(
                f"{run_dir} holds a run with a different configuration (differs in: {', '.join(changed)}). "
                "Use a new --out directory, or delete this one to start over."
            )
        return old
    config = {"spec": spec, "spec_hash": digest, **extra}
    write_json(path, config)
    return config


class RowStore:
    """A preallocated float32 array ``[row, column]`` on disk with a completion flag per row.

    Readers see how many rows are complete; resuming skips them.
    """

    def __init__(self, directory: Path, name: str, n_rows: int, n_cols: int) -> None:
        self.data_path = directory / f"{name}.npy"
        self.done_path = directory / f"{name}.done.npy"
        shape = (n_rows, n_cols)
        if self.data_path.exists():
            self.data = np.load(self.data_path, mmap_mode="r+")
            if self.data.shape != shape:
                raise HeadflowError(f"{self.data_path} has shape {self.data.shape}, expected {shape}; the run directory "
                                    "belongs to a different configuration.")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.data = np.lib.format.open_memmap(self.data_path, mode="w+", dtype=np.float32, shape=shape)
        self.done = np.load(self.done_path) if self.done_path.exists() else np.zeros(n_rows, dtype=bool)

    def write(self, row: int, values: np.ndarray) -> None:
        self.data[row] = values
        self.data.flush()
        self.done[row] = True
        save_npy(self.done_path, self.done)

    @property
    def n_complete(self) -> int:
        return int(self.done.sum())
