"""Run-directory integrity: records and checks, the config check, the lock, and write errors.

Every refusal is one ``HeadflowError`` line, and after a refused or failed write the earlier files are
byte-identical.
"""

import errno
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headflow.store import atomic as write_mod
from headflow.store import records as records_mod
from headflow.store import rows as rows_mod
from headflow.errors import HeadflowError, MissingFileError, RunIntegrityError, WriteError
from headflow.store import (LOCK_NAME, RowStore, atomic_write, check_unlocked, ensure_config, load_npy, load_pickle,
                            read_json, read_parquet, run_lock, save_npy, save_parquet, save_pickle, verify_file,
                            write_json)

FIX = "Delete the run directory or the file's stage to recompute"


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _filled(tmp_path: Path, n_rows: int = 3, n_cols: int = 4) -> tuple[Path, RowStore]:
    store = RowStore(tmp_path, "targets", n_rows, n_cols)
    store.write(0, np.arange(n_cols, dtype=np.float32))
    store.write(2, np.full(n_cols, 7.5, dtype=np.float32))
    return tmp_path, store


# -- RowStore ------------------------------------------------------------------------------------

def test_rowstore_round_trip_and_resume(tmp_path):
    _, store = _filled(tmp_path)
    assert store.n_complete == 2 and store.done.tolist() == [True, False, True]
    again = RowStore(tmp_path, "targets", 3, 4)
    assert again.done.tolist() == [True, False, True]
    assert np.array_equal(np.asarray(again.data), [[0, 1, 2, 3], [0, 0, 0, 0], [7.5] * 4])
    assert np.array_equal(np.load(tmp_path / "targets.npy"), np.asarray(again.data))  # still a plain .npy
    again.write(1, np.ones(4))
    assert RowStore(tmp_path, "targets", 3, 4).n_complete == 3
    with pytest.raises(ValueError, match="read-only"):  # rows are written with pwrite, never via the map
        again.data[0, 0] = 1.0


def test_rowstore_refuses_a_deleted_data_file(tmp_path):
    _filled(tmp_path)
    (tmp_path / "targets.npy").unlink()
    with pytest.raises(RunIntegrityError, match=f"targets.npy is missing, but targets.done.npy marks 2 of 3 rows "
                                                f"complete. {FIX}."):
        RowStore(tmp_path, "targets", 3, 4)
    assert not (tmp_path / "targets.npy").exists()  # not re-created as zeros


def test_rowstore_refuses_a_truncated_data_file(tmp_path):
    _filled(tmp_path)
    path = tmp_path / "targets.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RunIntegrityError, match=r"targets.npy is truncated \(166 bytes, 176 expected\)"):
        RowStore(tmp_path, "targets", 3, 4)
    path.write_bytes(path.read_bytes()[:20])  # the header itself is cut
    with pytest.raises(RunIntegrityError, match="targets.npy has a corrupt .npy header"):
        RowStore(tmp_path, "targets", 3, 4)


def test_rowstore_refuses_changed_rows_and_carries_the_rebuild_hint(tmp_path):
    _filled(tmp_path)
    path = tmp_path / "targets.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # last value of row 2 (complete)
    path.write_bytes(bytes(raw))
    hint = "rm -r run && headflow attribute --out run"
    with pytest.raises(RunIntegrityError, match=r"1 of 2 complete rows fail their checksum \(rows 2\)\. "
                                                f"{FIX}: rm -r run && headflow attribute --out run\\.") as info:
        RowStore(tmp_path, "targets", 3, 4, rebuild_hint=hint)
    assert info.value.rebuild_hint == hint and info.value.path == path
    np.save(path, np.zeros((3, 4), np.float32))  # all zeros next to done flags: the old silent failure
    with pytest.raises(RunIntegrityError, match="2 of 2 complete rows fail their checksum"):
        RowStore(tmp_path, "targets", 3, 4)


def test_rowstore_refuses_wrong_shape_dtype_and_missing_checksums(tmp_path):
    _filled(tmp_path)
    with pytest.raises(HeadflowError, match=r"has shape \(3, 4\), expected \(3, 5\); the run directory belongs to a "
                                            "different configuration"):
        RowStore(tmp_path, "targets", 3, 5)
    with pytest.raises(HeadflowError, match=r"targets.done.npy has shape \(3,\), expected \(4,\)"):
        RowStore(tmp_path, "targets", 4, 4)
    (tmp_path / "targets.rows.npy").unlink()
    with pytest.raises(RunIntegrityError, match=r"has 2 rows marked complete but no per-row checksums "
                                                r"\(targets.rows.npy is missing\)"):
        RowStore(tmp_path, "targets", 3, 4)
    np.save(tmp_path / "targets.npy", np.zeros((3, 4), np.float64))
    with pytest.raises(RunIntegrityError, match="has dtype float64, expected float32"):
        RowStore(tmp_path, "targets", 3, 4)
    (tmp_path / "targets.done.npy").write_bytes(b"garbage")
    with pytest.raises(RunIntegrityError, match="targets.done.npy cannot be read as .npy"):
        RowStore(tmp_path, "targets", 3, 4)


def test_rowstore_without_done_rows_starts_over(tmp_path):
    (tmp_path / "targets.npy").write_bytes(b"junk")  # nothing marked done: nothing to protect
    (tmp_path / "targets.npy").unlink()
    store = RowStore(tmp_path, "targets", 2, 3)
    assert store.n_complete == 0 and np.asarray(store.data).sum() == 0
    empty = RowStore(tmp_path / "e", "targets", 0, 3)
    assert empty.data.shape == (0, 3)


# -- recorded files ------------------------------------------------------------------------------

def test_save_npy_records_and_load_npy_verifies(tmp_path):
    path = tmp_path / "masks.npy"
    save_npy(path, np.arange(12, dtype=np.int64).reshape(3, 4))
    record = read_json(tmp_path / "integrity.json")["masks.npy"]
    assert record["shape"] == [3, 4] and record["dtype"] == "<i8" and len(record["sha256"]) == 64
    assert verify_file(path) and load_npy(path).sum() == 66
    good = path.read_bytes()
    path.write_bytes(good[:-8])
    with pytest.raises(RunIntegrityError, match=r"masks.npy is truncated \(216 bytes, 224 recorded\)"):
        load_npy(path)
    path.write_bytes(good[:-8] + b"\1" * 8)
    with pytest.raises(RunIntegrityError, match="masks.npy has changed since it was written"):
        load_npy(path, rebuild_hint="headflow attribute ...")
    np.save(path, np.zeros((4, 3), np.int64))
    with pytest.raises(RunIntegrityError, match=r"has shape \(4, 3\), \(3, 4\) recorded"):
        load_npy(path)
    path.unlink()
    with pytest.raises(RunIntegrityError, match=f"masks.npy is missing, but integrity.json records it as written. "
                                                f"{FIX}."):
        load_npy(path)
    np.save(tmp_path / "legacy.npy", np.ones(2))  # no record: loaded as is
    assert not verify_file(tmp_path / "legacy.npy") and load_npy(tmp_path / "legacy.npy").sum() == 2
    (tmp_path / "legacy.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RunIntegrityError, match="legacy.npy cannot be read as .npy"):
        load_npy(tmp_path / "legacy.npy")


def test_a_crash_between_record_and_replace_keeps_the_old_file_valid(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    save_npy(path, np.ones(3))
    real_replace = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt("killed between the record and the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_npy(path, np.zeros(5))
    monkeypatch.setattr(os, "replace", real_replace)
    assert np.array_equal(load_npy(path), np.ones(3))  # the old content still verifies
    save_npy(path, np.zeros(5))
    assert "previous" not in read_json(tmp_path / "integrity.json")["a.npy"]


def test_large_files_get_a_sampled_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(records_mod, "FULL_HASH_LIMIT", 1024)
    path = tmp_path / "big.npy"
    save_npy(path, np.arange(100_000, dtype=np.float32))
    assert "sha256_sampled" in read_json(tmp_path / "integrity.json")["big.npy"]
    raw = bytearray(path.read_bytes())
    raw[200:204] = b"\0\0\0\0"  # the first sampled block covers the start of the file
    path.write_bytes(bytes(raw))
    with pytest.raises(RunIntegrityError, match="has changed since it was written"):
        load_npy(path)


def test_parquet_and_pickle_are_recorded(tmp_path):
    import pandas as pd

    save_parquet(tmp_path / "t.parquet", pd.DataFrame({"a": [1, 2]}))
    assert read_parquet(tmp_path / "t.parquet")["a"].tolist() == [1, 2]
    (tmp_path / "t.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(RunIntegrityError, match="t.parquet is truncated"):
        read_parquet(tmp_path / "t.parquet")
    save_pickle(tmp_path / "p.pkl", {"x": 1})
    assert load_pickle(tmp_path / "p.pkl") == {"x": 1}
    (tmp_path / "p.pkl").write_bytes(b"\x80\x05")
    with pytest.raises(RunIntegrityError, match="p.pkl is truncated"):
        load_pickle(tmp_path / "p.pkl")


def test_any_file_type_can_be_recorded(tmp_path):
    from headflow.store import save_recorded

    path = tmp_path / "baseline.safetensors"
    save_recorded(path, lambda tmp: tmp.write_bytes(b"weights" * 10))
    assert verify_file(path)
    path.unlink()  # a deleted baseline must not silently read as "no baseline"
    with pytest.raises(RunIntegrityError, match="baseline.safetensors is missing, but integrity.json records it"):
        verify_file(path, rebuild_hint="rm -r run")


# -- config and JSON -----------------------------------------------------------------------------

def test_ensure_config_refuses_lost_config_next_to_run_data(tmp_path):
    run = tmp_path / "run"
    config = ensure_config(run, {"a": 1}, {"v": "x"})
    assert ensure_config(run, {"a": 1}, {}) == config
    save_npy(run / "masks.npy", np.ones(2))
    (run / "config.json").unlink()
    with pytest.raises(RunIntegrityError, match=r"config.json is missing, but the directory holds run data "
                                                r"\(integrity.json, masks.npy\), so it cannot be checked"):
        ensure_config(run, {"a": 2}, {})
    assert not (run / "config.json").exists()  # refused, not re-created
    with pytest.raises(HeadflowError, match="different configuration \\(differs in: a\\)"):
        ensure_config(tmp_path / "other", {"a": 1}, {}) and ensure_config(tmp_path / "other", {"a": 2}, {})


def test_corrupt_json_is_one_line_naming_the_file(tmp_path):
    run = tmp_path / "run"
    ensure_config(run, {"a": 1}, {})
    (run / "config.json").write_text('{"spec": {"a": 1},')
    with pytest.raises(RunIntegrityError, match=r"config.json is not valid JSON \(Expecting property name enclosed "
                                                r"in double quotes at line 1 column 19\)\. " + FIX):
        ensure_config(run, {"a": 1}, {})
    (run / "config.json").write_text('[1, 2]')
    with pytest.raises(RunIntegrityError, match="is not a headflow run config"):
        ensure_config(run, {"a": 1}, {})
    (run / "summary.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(RunIntegrityError, match=r"summary.json is not UTF-8 text"):
        read_json(run / "summary.json")
    with pytest.raises(MissingFileError, match="nothing.json does not exist") as info:
        read_json(run / "nothing.json")
    assert isinstance(info.value, FileNotFoundError) and "\n" not in str(info.value)


# -- lock ----------------------------------------------------------------------------------------

def _hold_lock(run_dir: str, ready, release) -> None:
    with run_lock(run_dir):
        ready.set()
        release.wait(30)


def test_a_second_process_is_refused_and_the_lock_is_released(tmp_path):
    run = tmp_path / "run"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(run), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        message = f"is in use by process {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(HeadflowError, match=message):
            with run_lock(run):
                pass
        with pytest.raises(HeadflowError, match=message):  # writers that took no lock are refused too
            ensure_config(run, {"a": 1}, {})
        with pytest.raises(HeadflowError, match=message):
            RowStore(run / "validation", "single", 2, 2)
    finally:
        release.set()
        holder.join(30)
    assert not (run / LOCK_NAME).exists()
    with run_lock(run):
        ensure_config(run, {"a": 1}, {})


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "start": None, "since": "yesterday"}
    (run / LOCK_NAME).write_text(json.dumps(stale))
    check_unlocked(run)  # a dead holder does not block
    with run_lock(run) as held:
        assert json.loads((held / LOCK_NAME).read_text())["pid"] == os.getpid()
    (run / LOCK_NAME).write_text(json.dumps({**stale, "host": "elsewhere"}))
    with pytest.raises(HeadflowError, match=f"in use by process {stale['pid']} on host elsewhere .since yesterday.; "
                                            f".*if that process is gone, delete {run / LOCK_NAME}"):
        with run_lock(run):
            pass


def test_the_lock_is_reentrant_and_released_on_an_exception(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_lock(run):
            with run_lock(run):
                ensure_config(run, {"a": 1}, {})  # our own lock does not block us
                assert (run / LOCK_NAME).exists()
            assert (run / LOCK_NAME).exists()
            raise RuntimeError("boom")
    assert not (run / LOCK_NAME).exists()


def test_taking_the_lock_removes_the_temporaries_of_a_killed_writer(tmp_path):
    """A writer killed mid-write (SIGKILL: no ``finally``) leaves its temporary; the next run_lock removes it, in the
    run and below, but not in a sub-directory that is another run (its own lock) nor files that only look alike."""
    import tempfile

    run = tmp_path / "run"
    (run / "validation").mkdir(parents=True)
    (run / "flow").mkdir()
    (run / ".flow_progress").mkdir()
    left = [Path(tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=write_mod.TEMP_SUFFIX)[1])
            for d, name in ((run, "integrity.json"), (run / "validation", "single.npy"))]
    other_run = Path(tempfile.mkstemp(dir=run / "flow", prefix=".flow.json.", suffix=".tmp")[1])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "flow" / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    (run / "notes.tmp").write_text("mine")
    (run / ".hidden.tmp").write_text("mine too")
    with run_lock(run):
        assert not any(p.exists() for p in left)
    assert other_run.exists() and (run / "notes.tmp").exists() and (run / ".hidden.tmp").exists()
    assert (run / ".flow_progress").is_dir()
    with run_lock(run / "flow"):  # that run removes its own
        assert not other_run.exists()


def test_a_refusal_names_the_live_holder_not_the_dead_process_it_took_over_from(monkeypatch):
    """Between taking a dead process's lock and writing its own PID, the new holder's file is empty or names the
    dead process: the refused process reads it again until it names a live one."""
    from headflow.store import lock as lock_mod

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = {"pid": os.getpid(), "host": socket.gethostname(), "start": None}
    reads = iter([{}, {"pid": int(dead.stdout), "host": socket.gethostname(), "start": None}, live])
    monkeypatch.setattr(lock_mod, "_read_lock", lambda fd: next(reads))
    assert lock_mod._holder(-1) == live


# -- write errors --------------------------------------------------------------------------------

def _failing(code: int):
    def write(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize("code, message", [
    (errno.ENOSPC, r"Cannot write .*a.npy: no space left on device \(.* free, 136 B needed\)\. Free some space"),
    (errno.EROFS, r"Cannot write .*a.npy: the file system is read-only\. Write the run to a writable directory"),
    (errno.EACCES, r"Cannot write .*a.npy: permission denied \(Permission denied\)\. Make the directory writable"),
    (errno.EIO, r"Cannot write .*a.npy: Input/output error \(errno 5\)\. Check the disk"),
])
def test_write_errors_are_one_line_and_keep_the_old_file(tmp_path, monkeypatch, code, message):
    save_npy(tmp_path / "a.npy", np.ones(1))
    before = _snapshot(tmp_path)

    def fail(f, array, **kw):
        f.write(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "save", fail)
    with pytest.raises(WriteError, match=message) as info:
        save_npy(tmp_path / "a.npy", np.zeros(1))
    assert info.value.errno == code and "\n" not in str(info.value)
    assert _snapshot(tmp_path) == before  # old content intact, no temporary left


def test_write_error_cases_without_a_callback(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"Cannot write .*file/run/config.json: .*file is a file, not a directory"):
        ensure_config(tmp_path / "file" / "run", {"a": 1}, {})
    with pytest.raises(WriteError, match="is a file, not a directory"):
        RowStore(tmp_path / "file" / "run", "t", 2, 2)
    with pytest.raises(WriteError, match="is a file, not a directory"):
        with run_lock(tmp_path / "file" / "run"):
            pass
    write_json(tmp_path / "s.json", {"a": 1})
    before = _snapshot(tmp_path)
    with pytest.raises(WriteError, match="no space left on device"):
        atomic_write(tmp_path / "s.json", _failing(errno.ENOSPC))
    monkeypatch.setattr(write_mod, "_free_bytes", lambda path: 1000)  # checked before writing
    with pytest.raises(WriteError, match=r"no space left on device \(1000 B free, 7.6 MiB needed\)"):
        save_npy(tmp_path / "s.npy", np.zeros(10**6))
    with pytest.raises(WriteError, match=r"no space left on device \(1000 B free, 39.2 KiB needed\)"):
        RowStore(tmp_path / "r", "t", 100, 100)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["pwrite", "checksums", "flags"])
def test_rowstore_write_errors_leave_the_row_incomplete_and_resumable(tmp_path, monkeypatch, target):
    _, store = _filled(tmp_path)
    before = _snapshot(tmp_path)
    if target == "pwrite":
        def fail(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "pwrite", fail)
    else:
        real = rows_mod._save_plain
        suffix = ".rows.npy" if target == "checksums" else ".done.npy"

        def fail(path, array):
            if path.name.endswith(suffix):
                atomic_write(path, _failing(errno.ENOSPC))
            real(path, array)

        monkeypatch.setattr(rows_mod, "_save_plain", fail)
    with pytest.raises(WriteError, match=r"Cannot write .*targets\..*npy: no space left on device"):
        store.write(1, np.full(4, 3.0))
    assert store.done.tolist() == [True, False, True]
    if target != "pwrite":  # the row's data may be on disk already, but it is not marked done
        before.pop("targets.npy")
        before.pop("targets.rows.npy")
    assert {k: v for k, v in _snapshot(tmp_path).items() if k in before} == before
    monkeypatch.undo()
    again = RowStore(tmp_path, "targets", 3, 4)  # reopens cleanly: every done row still verifies
    assert again.done.tolist() == [True, False, True]
    again.write(1, np.full(4, 3.0))
    assert RowStore(tmp_path, "targets", 3, 4).n_complete == 3


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, where the machine lets this user mount one (root); skipped elsewhere."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_one_line_and_the_run_resumes(small_disk):
    run = small_disk / "run"
    with pytest.raises(WriteError, match=r"targets.npy: no space left on device \(.* free, 3.8 MiB needed\)"):
        RowStore(run, "targets", 1000, 1000)  # refused before preallocating
    store = RowStore(run, "targets", 4, 1000)  # 16 KB, preallocated
    store.write(0, np.ones(1000))
    save_npy(run / "masks.npy", np.ones(10))
    before = _snapshot(run)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
        for size in (4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    with pytest.raises(WriteError, match="no space left on device"):
        save_npy(run / "masks.npy", np.zeros(50_000))
    with pytest.raises(WriteError, match="no space left on device"):
        for row in (1, 2, 3):  # data blocks are reserved; the flag files eventually find no room
            store.write(row, np.full(1000, row))
            for k in range(50):
                save_npy(run / f"x{k}.npy", np.ones(100))
    assert (run / "masks.npy").read_bytes() == before["masks.npy"]
    assert not list(run.glob(".*.tmp"))
    filler.unlink()
    again = RowStore(run, "targets", 4, 1000)
    assert again.done[0] and np.array_equal(np.asarray(again.data)[0], np.ones(1000))
    for row in np.flatnonzero(~again.done):
        again.write(row, np.full(1000, row))
    assert again.n_complete == 4 and np.array_equal(load_npy(run / "masks.npy"), np.ones(10))
