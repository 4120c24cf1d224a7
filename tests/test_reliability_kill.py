"""SIGKILL, in a real ``headflow`` process, at several points of every stage; and two writers on one run.

Each command runs as its own process (``OMP_NUM_THREADS=1``, so every run computes in the same order; forked from
one Python that imported headflow once, see :data:`ZYGOTE`, so that starting one costs no imports). The test polls
the run directory until a chosen point is reached (the clean pass written, rows done, a flow image done, a study
step finished), sends ``SIGKILL`` (no ``finally``, no lock release, no ``atexit``), checks that the run is really
unfinished there, then runs the same command again to completion and compares its results, byte for byte, with an
uninterrupted run of the same configuration.

The uninterrupted run is one ``headflow study`` (started in the background when the module starts): its attribution,
validation and flow steps have the configuration of the ``attribute``, ``validate`` and ``flow`` commands below
(asserted through the recorded configuration hash), so one reference serves every stage. ``--batch-size 1`` makes
each image take tens of forward passes: every kill point is a few hundred milliseconds or more before the next
result file, and the poll runs every 2 ms (a run that finished before its kill point fails the test, it is not
skipped). Floats are compared bit for bit: the same command line, thread count and inputs (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from headflow.store import LOCK_NAME

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")]

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}

MODEL = ["--model", "tiny:llava", "--data", "default", "--images", "4", "--keep-wrong", "--batch-size", "1"]
# the study below runs these three with the same parameters (its QUICK plan: 48 held-out masks, validation of up to
# 12 images, flow with 200 bootstrap resamples and 2 token maps)
ATTRIBUTE = ["attribute", *MODEL, "--masks", "32", "--val-masks", "48"]
VALIDATE = ["validate", "--max-images", "12", "--batch-size", "1"]
FLOW = ["flow", *MODEL, "--bootstrap", "200", "--maps", "2"]
STUDY = ["study", *MODEL, "--quick", "--masks", "32"]
TIMEOUT = 300

#: Starts each ``headflow`` command as a child process of one Python that imported headflow, torch and
#: transformers once (``fork``: the child runs ``headflow.cli.main()`` with the command's arguments, its output
#: in the log file, and exits with the command's code), so a command starts in milliseconds instead of seconds of
#: imports. Requests on stdin (``[args, log]``), the child's PID on stdout, its exit code in ``RC_DIR/PID``.
ZYGOTE = r"""
import json, os, sys, threading, traceback
import torch, transformers, matplotlib.pyplot  # noqa: F401
import headflow.attribution, headflow.cli, headflow.data, headflow.flow, headflow.report, headflow.semantics
import headflow.study  # noqa: F401
from transformers import LlavaForConditionalGeneration  # noqa: F401
rc_dir = sys.argv[1]


def reap(pid):
    _, status = os.waitpid(pid, 0)
    with open(os.path.join(rc_dir, f"{pid}.part"), "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
    os.replace(os.path.join(rc_dir, f"{pid}.part"), os.path.join(rc_dir, str(pid)))


for line in sys.stdin:
    args, log = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            sys.argv = ["headflow", *args]
            headflow.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    threading.Thread(target=reap, args=(pid,), daemon=True).start()
    print(pid, flush=True)
"""


class Process:
    """A started ``headflow`` command (a child of the zygote): its PID, exit code (negative: killed by that signal)."""

    def __init__(self, pid: int, rc: Path, log: Path) -> None:
        self.pid, self.rc, self.log = pid, rc, log

    def poll(self) -> int | None:
        return int(self.rc.read_text()) if self.rc.exists() else None

    def wait(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            assert time.monotonic() < deadline, f"headflow (PID {self.pid}) still runs after {timeout} s"
            time.sleep(0.01)
        return self.poll()

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


class Zygote:
    def __init__(self, directory: Path) -> None:
        self.rc_dir = directory / "rc"
        self.rc_dir.mkdir()
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(self.rc_dir)], env=ENV, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(directory / "zygote.log", "wb"))
        self.started: list[Process] = []

    def start(self, args: list, log: Path) -> Process:
        self.proc.stdin.write(json.dumps([[str(a) for a in args], str(log)]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.strip(), "the zygote ended: " + (self.rc_dir.parent / "zygote.log").read_text()[-3000:]
        pid = int(line)
        self.started.append(Process(pid, self.rc_dir / str(pid), log))
        return self.started[-1]

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.stdin.close()
        self.proc.wait(60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def finish(zygote: Zygote, args: list, log: Path) -> None:
    proc = zygote.start(args, log)
    assert proc.wait() == 0, log.read_text()[-3000:]


def kill_when(zygote: Zygote, args: list, reached: Callable[[], bool], log: Path) -> int:
    """Start ``headflow ARGS``, poll every 2 ms until ``reached()``, SIGKILL it; returns its PID."""
    proc = zygote.start(args, log)
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            hit = reached()
        except (OSError, ValueError, EOFError):  # a file being replaced: look again
            hit = False
        if hit:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(60) == -signal.SIGKILL
            return proc.pid
        time.sleep(0.002)
    raise AssertionError(f"headflow {args[0]} ended (exit {proc.poll()}) before the kill point: "
                         + log.read_text()[-3000:])


def n_done(path: Path) -> int:
    return int(np.load(path).sum()) if path.exists() else 0


def stale_lock_of(run: Path, pid: int) -> None:
    """The killed process left its lock (SIGKILL runs no cleanup): the next run must take it over."""
    info = json.loads((run / LOCK_NAME).read_text())
    assert info["pid"] == pid and info["host"] == socket.gethostname()


def without_provenance(path: Path) -> str:
    data = json.loads(path.read_text())
    data.pop("provenance", None)
    return json.dumps(data, sort_keys=True)  # NaN stays "NaN": equal text is equal bits


def same_bytes(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def same_json(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert without_provenance(a / name) == without_provenance(b / name), name


def same_table(a: Path, b: Path, name: str) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def reference(work, zygote):
    """The uninterrupted study, started now and run alongside the first tests; ``reference()`` waits for it."""
    out, log = work / "reference", work / "reference.log"
    proc = zygote.start([*STUDY, "--out", out], log)

    def done() -> Path:
        assert proc.wait() == 0, log.read_text()[-3000:]
        return out

    return done


@pytest.fixture(scope="module")
def attributed(work, reference, zygote) -> dict:
    """``headflow attribute`` killed twice, then resumed by two processes started together (one takes the run, the
    other is refused); what each step observed."""
    run, log = work / "run", work / "attribute.log"
    args = [*ATTRIBUTE, "--out", run]
    seen: dict = {}
    # 1. the clean pass is written (images.parquet marks it complete): killed in the masked rows
    pid = kill_when(zygote, args, lambda: (run / "images.parquet").exists(), log)
    seen["first"] = (pid, (run / "images.parquet").exists(), n_done(run / "targets.done.npy"),
                     (run / "summary.json").exists())
    stale_lock_of(run, pid)
    # 2. at least one more row of targets.npy done: killed between rows
    before = seen["first"][2]
    pid = kill_when(zygote, args, lambda: n_done(run / "targets.done.npy") > before, log)
    seen["second"] = (pid, n_done(run / "targets.done.npy"), (run / "summary.json").exists())
    stale_lock_of(run, pid)
    # 3. two processes on the same --out, started together: the one that takes the lock is stopped (SIGSTOP) while
    # the other reaches the lock, so the other is refused whatever their timing; then the first finishes
    logs = {"a": work / "a.log", "b": work / "b.log"}
    a, b = zygote.start(args, logs["a"]), zygote.start(args, logs["b"])
    holder = None
    deadline = time.monotonic() + TIMEOUT
    while holder is None and time.monotonic() < deadline:
        try:
            holder = json.loads((run / LOCK_NAME).read_text()).get("pid")
        except (OSError, ValueError):
            pass
        if holder not in (a.pid, b.pid):
            holder = None
            assert a.poll() is None and b.poll() is None, "a process ended before either took the run"
            time.sleep(0.002)
    first, second = (a, b) if holder == a.pid else (b, a)
    first.send_signal(signal.SIGSTOP)
    try:
        code = second.wait()
    finally:
        first.send_signal(signal.SIGCONT)
    seen["refused"] = (first.pid, code, second.log.read_text())
    assert first.wait() == 0, logs["a" if first is a else "b"].read_text()[-3000:]
    seen["lock_left"] = (run / LOCK_NAME).exists()
    return {"run": run, "seen": seen}


def test_attribute_killed_after_the_clean_pass_and_between_rows_resumes_to_the_uninterrupted_result(
        attributed, reference):
    run, seen = attributed["run"], attributed["seen"]
    _, parquet, rows, summary = seen["first"]
    assert parquet and rows < 4 and not summary  # killed after the clean pass, before the last row
    _, rows_after, summary = seen["second"]
    assert rows < rows_after < 4 and not summary  # killed between rows, with more rows done
    assert not seen["lock_left"]  # the stale locks were taken over, and the finished run released its own
    ref = reference()
    assert json.loads((run / "config.json").read_text())["spec_hash"] == \
        json.loads((ref / "config.json").read_text())["spec_hash"]  # the study's attribution step: same configuration
    same_bytes(run, ref, ["attributions.npy", "targets.npy", "targets.done.npy", "targets.rows.npy", "masks.npy",
                          "val_masks.npy", "attention.npy", "final_hidden.npy", "fit_bias.npy", "pixels.npy"])
    same_json(run, ref, ["summary.json"])
    same_table(run, ref, "images.parquet")
    same_table(run, ref, "lds.parquet")
    assert not list(run.glob(".*.tmp"))  # no temporary file of a killed write is left


def test_a_second_attribute_process_on_the_same_out_is_refused_naming_the_first(attributed):
    holder, code, output = attributed["seen"]["refused"]
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"is in use by process {holder} on host {socket.gethostname()}" in lines[0], lines[0]


def test_validate_killed_in_its_rows_resumes_to_the_uninterrupted_result(attributed, reference, work, zygote):
    run, log = attributed["run"], work / "validate.log"
    args = [VALIDATE[0], run, *VALIDATE[1:]]
    single = run / "validation" / "single.done.npy"
    pid = kill_when(zygote, args, lambda: n_done(single) >= 1, log)  # pass A under way: killed in pass A or B
    assert not (run / "validation.json").exists() and n_done(single) >= 1
    stale_lock_of(run, pid)
    finish(zygote, args, log)
    ref = reference()
    same_json(run, ref, ["validation.json"])
    same_bytes(run, ref, ["single_head.npy", "validation/single.npy", "validation/curves.npy"])
    assert json.loads((run / "validation/config.json").read_text())["spec_hash"] == \
        json.loads((ref / "validation/config.json").read_text())["spec_hash"]


def test_flow_killed_after_its_first_image_resumes_to_the_uninterrupted_result(reference, work, zygote):
    out, log = work / "flow", work / "flow.log"
    args = [*FLOW, "--out", out]
    progress = out / ".flow_progress"
    pid = kill_when(zygote, args, lambda: progress.is_dir() and any(progress.glob("*.pkl")), log)
    assert not (out / "flow.json").exists() and 1 <= len(list(progress.glob("*.pkl"))) < 4
    stale_lock_of(out, pid)
    finish(zygote, args, log)
    ref = reference() / "flow"
    assert not progress.exists()  # removed once the result is written
    same_json(out, ref, ["flow.json"])  # (provenance differs only in how the data is recorded: a list in the study)
    same_table(out, ref, "flow_windows.parquet")
    same_table(out, ref, "flow_objects.parquet")
    with np.load(out / "token_maps.npz") as got, np.load(ref / "token_maps.npz") as want:
        assert got.files == want.files
        for key in want.files:
            assert got[key].tobytes() == want[key].tobytes(), key


def test_study_killed_between_steps_resumes_to_the_uninterrupted_result(reference, work, zygote):
    out, log = work / "study", work / "study.log"
    args = [*STUDY, "--out", out]
    pid = kill_when(zygote, args, lambda: (out / "validation.json").exists(), log)  # after validation, before flow's end
    assert (out / "summary.json").exists() and not (out / "flow" / "flow.json").exists()
    stale_lock_of(out, pid)
    finish(zygote, args, log)
    ref = reference()
    same_json(out, ref, ["summary.json", "validation.json", "flow/flow.json", "routing/routing.json"])
    same_bytes(out, ref, ["attributions.npy", "targets.npy", "single_head.npy"])
    assert (out / "report.html").exists() and not (out / LOCK_NAME).exists()
