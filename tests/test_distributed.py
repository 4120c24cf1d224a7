"""Per-image work on Ray workers (attribution pass 2, validation, token flow): same results as one
process, dead workers retried."""

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_close_across_processes
from headflow import HeadflowError, load_model
from headflow.attribution import HeadAttribution, Validation
from headflow.data import load_dataset
from headflow.distributed import RayRunner, _probe
from headflow.flow import TokenFlow

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed; pip install 'headflow[ray]' to run the distributed tests")
PARAMS = dict(n_masks=32, n_val=16, keep_wrong=True, batch_size=16)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("plain") / "run"
    data = load_dataset("default", n=4)
    return data, HeadAttribution(tiny_models("llava"), **PARAMS).run(data, out=out)


def _same_results(result, reference) -> None:
    """Identical up to floating-point summation order: Ray workers run torch with their own thread count, so
    the targets (and what is fitted to them) may differ from the single-process run in the last bits."""
    assert_close_across_processes(np.load(result.run_dir / "targets.npy"), np.load(reference.run_dir / "targets.npy"))
    assert_close_across_processes(result.attributions, reference.attributions)
    summary = {k: v for k, v in result.summary.items() if k != "top_heads"}
    assert_close_across_processes(summary, {k: v for k, v in reference.summary.items() if k != "top_heads"})
    # the top heads' order may swap where two means tie to float precision; their values may not move
    assert_close_across_processes(sorted(v for *_, v in result.summary["top_heads"]),
                                  sorted(v for *_, v in reference.summary["top_heads"]))


@needs_ray
@pytest.mark.slow
def test_ray_run_matches_the_single_process_run(ray_cluster, plain_run, tmp_path):
    data, reference = plain_run
    result = HeadAttribution("tiny:llava", **PARAMS).run(data, out=tmp_path / "run",
                                                         runner=RayRunner(num_workers=2))
    _same_results(result, reference)
    assert np.load(tmp_path / "run" / "targets.done.npy").all()


def _crash_once(fn, marker_dir: str, state, job):
    """Kill this worker process at its second call, once per test; count calls per image."""
    marker = Path(marker_dir)
    pid = os.getpid()
    if any(marker.glob(f"calls/*.{pid}.*")):
        try:
            os.close(os.open(marker / "crashed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os._exit(1)
        except FileExistsError:
            pass
    image = hashlib.sha1(job.image.tobytes()).hexdigest()[:12]
    (marker / "calls" / f"{image}.{pid}.{uuid.uuid4().hex}").touch()
    return fn(state, job)


class CrashOnceRunner(RayRunner):
    def __init__(self, marker_dir: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        (marker_dir / "calls").mkdir(parents=True)
        self.marker_dir = marker_dir

    def map(self, setup, fn, items, **kwargs):
        return super().map(setup, functools.partial(_crash_once, fn, str(self.marker_dir)), items, **kwargs)


@needs_ray
@pytest.mark.slow
def test_a_dead_worker_is_retried_and_finished_rows_are_not_recomputed(ray_cluster, plain_run, tiny_models, tmp_path):
    data, reference = plain_run
    runner = CrashOnceRunner(tmp_path / "markers", num_workers=2, max_retries=2)
    result = HeadAttribution(tiny_models("llava"), **PARAMS).run(data, out=tmp_path / "run",
                                                                 runner=runner)
    assert (tmp_path / "markers" / "crashed").exists()
    calls = [p.name.split(".")[0] for p in (tmp_path / "markers" / "calls").iterdir()]
    assert len(set(calls)) == 4 and len(calls) == 4  # every image computed exactly once
    _same_results(result, reference)


@needs_ray
@pytest.mark.slow
def test_a_worker_error_reaches_the_driver(ray_cluster, plain_run, tmp_path):
    data, reference = plain_run
    out = tmp_path / "run"
    with pytest.raises(HeadflowError, match="it is not the run.s model \\(a worker or --model loaded another one\\)"):
        # weights of another seed: the workers' clean logits disagree with the driver's
        HeadAttribution(load_model("tiny:llava", seed=1), **PARAMS).run(data, out=out,
                                                                         runner=RayRunner(num_workers=1))
    assert not (out / "summary.json").exists()


@needs_ray
@pytest.mark.slow
def test_ray_workers_load_the_drivers_adapter_files(ray_cluster, plain_run, user_adapter_file, monkeypatch, tmp_path):
    """A family from an adapter file (--adapter): the workers, started by a cluster that never saw the file, get
    HEADFLOW_ADAPTERS in their runtime environment and load ``tiny:my_family`` (LLaVA's weights under another
    name, so the result is the plain LLaVA run's)."""
    from headflow.models.adapter import ADAPTERS_ENV, load_adapter_file

    data, reference = plain_run
    load_adapter_file(user_adapter_file)
    monkeypatch.setenv(ADAPTERS_ENV, str(user_adapter_file))
    result = HeadAttribution("tiny:my_family", **PARAMS).run(data, out=tmp_path / "run",
                                                             runner=RayRunner(num_workers=1))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["spec"]["model"] == "tiny:my_family"
    assert_close_across_processes(np.load(result.run_dir / "targets.npy"), np.load(reference.run_dir / "targets.npy"))
    assert_close_across_processes(result.attributions, reference.attributions)


def test_a_model_built_in_python_cannot_be_shipped(tiny_models, tmp_path):
    lm = tiny_models("llava")
    data = load_dataset("default", n=1)
    for model in ((lm.model, lm.processor), load_model((lm.model, lm.processor))):
        with pytest.raises(HeadflowError, match="cannot be shipped to workers. Pass a spec instead"):
            HeadAttribution(model, **PARAMS).run(data, out=tmp_path / "run", runner=RayRunner())
    assert not (tmp_path / "run").exists()  # refused before any work


def test_ray_runner_parameters_and_missing_ray(monkeypatch):
    with pytest.raises(HeadflowError, match="The 'num_workers' parameter of RayRunner must be an int in"):
        RayRunner(num_workers=0)
    with pytest.raises(HeadflowError, match="The 'max_retries' parameter of RayRunner"):
        RayRunner(max_retries=-1)
    with pytest.raises(OSError):  # an unreachable head fails in seconds, not after Ray's minutes of retries
        _probe("127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(HeadflowError, match=r"needs Ray, which is not installed. Install it with: pip install"):
        RayRunner("local").map(None, None, [(0, 0)], n_items=1, on_result=print)


def test_cli_attribute_with_ray_local(monkeypatch, tmp_path):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from headflow.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(app, ["attribute", "--model", "tiny:llava", "--out", str(tmp_path / "run"), "--images",
                                   "1", "--masks", "8", "--val-masks", "8", "--keep-wrong", "--ray", "local"])
    assert res.exit_code == 2 and "needs Ray" in res.output
    assert not (tmp_path / "run").exists()  # refused before any work


@needs_ray
@pytest.mark.slow
def test_ray_validation_matches_the_single_process_validation(ray_cluster, plain_run, tiny_models, tmp_path):
    data, reference = plain_run
    plain, sharded = tmp_path / "plain", tmp_path / "ray"
    for copy in (plain, sharded):
        shutil.copytree(reference.run_dir, copy)
    want = Validation(tiny_models("llava"), max_images=3).run(plain, dataset=data)
    got = Validation(max_images=3).run(sharded, dataset=data, runner=RayRunner(num_workers=2))  # the run's spec
    assert_close_across_processes(json.loads((sharded / "validation.json").read_text()), want.data)
    assert_close_across_processes(np.load(sharded / "single_head.npy"), np.load(plain / "single_head.npy"))
    assert np.load(sharded / "validation" / "curves.done.npy").all() and got.data["n_images"] == 3


@needs_ray
@pytest.mark.slow
def test_ray_flow_matches_the_single_process_flow(ray_cluster, tiny_models, tmp_path):
    data = load_dataset("default", n=3)
    flow = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=50, n_random=2, n_maps=1, progress=False)
    want = flow.run(data)
    got = flow.run(data, out=tmp_path / "flow", runner=RayRunner(num_workers=2))
    assert_close_across_processes(json.loads((tmp_path / "flow" / "flow.json").read_text()),
                                  json.loads(json.dumps(want.summary)))
    for table in ("windows", "objects"):
        g, w = getattr(got, table), getattr(want, table)
        numeric = list(w.select_dtypes("float").columns)
        pd.testing.assert_frame_equal(g.drop(columns=numeric), w.drop(columns=numeric))
        for column in numeric:
            assert_close_across_processes(g[column].to_numpy(), w[column].to_numpy(), f"{table}.{column}")
    assert list(got.token_maps) == list(want.token_maps) == [data[0].id]  # the driver did the map image


def test_a_flow_model_built_in_python_cannot_be_shipped(tiny_models):
    lm = tiny_models("llava")
    with pytest.raises(HeadflowError, match="cannot be shipped to workers. Pass a spec instead"):
        TokenFlow(load_model((lm.model, lm.processor)), n_maps=0, progress=False).run(
            load_dataset("default", n=1), runner=RayRunner())


@pytest.mark.parametrize("command", ["validate", "flow"])
def test_cli_validate_and_flow_take_ray(monkeypatch, tmp_path, command):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from headflow.cli import app

    args = [str(tmp_path / "run")] if command == "validate" else ["--model", "tiny:llava", "--out",
                                                                 str(tmp_path / "run"), "--images", "1"]
    res = CliRunner().invoke(app, [command, *args, "--workers", "2"])
    assert res.exit_code == 2 and "--workers needs --ray" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(app, [command, *args, "--ray", "local"])
    assert res.exit_code == 2 and "needs Ray" in res.output
    assert not (tmp_path / "run").exists()  # refused before any work
