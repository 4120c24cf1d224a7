"""Every method checks its configuration against its run directory: a finished run with the same
configuration is loaded (not recomputed), another configuration is refused with the list of what differs
and leaves the earlier result byte-identical. The study resumes by configuration, not by file existence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from headflow import HeadflowError
from headflow.attribution import HeadAttribution, Validation
from headflow.cli import app
from headflow.data import load_dataset
from headflow.flow import TokenFlow
from headflow.semantics import SemanticAnalysis


@pytest.fixture(scope="module")
def attribution_run(tmp_path_factory, tiny_models):
    out = tmp_path_factory.mktemp("methods") / "run"
    data = load_dataset("default", n=4)
    HeadAttribution(tiny_models("llava"), n_masks=16, n_val=8, keep_wrong=True).run(data, out=out)
    return out, data


def _no_model_runs(monkeypatch):
    """Make any forward pass of the engine fail: a loaded result must not compute."""
    from headflow.intervene import InterventionEngine

    def refuse(*args, **kwargs):
        raise AssertionError("the engine ran, but a finished run should have been loaded")

    monkeypatch.setattr(InterventionEngine, "run", refuse)
    monkeypatch.setattr(InterventionEngine, "prepare", refuse)


def test_validation_loads_a_finished_run_and_refuses_another_seed(attribution_run, tiny_models, monkeypatch):
    out, data = attribution_run
    first = Validation(tiny_models("llava"), max_images=2).run(out, dataset=data)
    before = (out / "validation.json").read_bytes()
    assert first.data["provenance"]["params"]["seed"] == 0  # the seed is recorded
    with monkeypatch.context() as patch:
        _no_model_runs(patch)
        again = Validation(tiny_models("llava"), max_images=2).run(out, dataset=data)
    assert again.data == first.data
    with pytest.raises(HeadflowError, match=r"different configuration \(differs in: seed\)"):
        Validation(tiny_models("llava"), max_images=2, seed=1).run(out, dataset=data)
    assert (out / "validation.json").read_bytes() == before


def test_a_finished_flow_run_refuses_another_window(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "flow"
    data = load_dataset("default", n=2)
    flow = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=10, n_maps=0, progress=False)
    first = flow.run(data, out=out)
    before = (out / "flow.json").read_bytes()
    with monkeypatch.context() as patch:
        _no_model_runs(patch)
        assert flow.run(data, out=out).summary == json.loads(before)
    with pytest.raises(HeadflowError, match=r"different configuration \(differs in: window\)"):
        TokenFlow(tiny_models("llava"), window=2, keep_wrong=True, n_bootstrap=10, n_maps=0,
                  progress=False).run(data, out=out)
    assert (out / "flow.json").read_bytes() == before and first.summary["resolved"]["window_"] == 1


def test_semantics_refuses_other_parameters(tmp_path):
    from test_semantics import _write_run_dir

    _write_run_dir(tmp_path, n_used=24)
    SemanticAnalysis(n_permutations=20, cv_folds=2).run(tmp_path)
    before = (tmp_path / "semantics.json").read_bytes()
    with pytest.raises(HeadflowError, match=r"different configuration \(differs in: n_permutations\)"):
        SemanticAnalysis(n_permutations=30, cv_folds=2).run(tmp_path)
    assert (tmp_path / "semantics.json").read_bytes() == before


def test_study_resumes_by_configuration(tmp_path, monkeypatch):
    from headflow.study import StudyPlan, run_study

    plan = StudyPlan(images=4, masks=16, val_masks=8, validate_images=2, flow_images=2, flow_maps=0, permutations=10,
                     bootstrap=10, routing_images=4, routing_masks=16, routing_val_masks=8)
    out = tmp_path / "study"
    import sklearn  # noqa: F401  provenance lists the libraries this process has loaded, and the routing step (the
    # study's last) loads scikit-learn: load it before the first study too, as a fresh process resuming would see
    run_study("tiny:llava", "default", out, plan=plan, keep_wrong=True, log=lambda m: None)
    summary = (out / "summary.json").read_bytes()
    with monkeypatch.context() as patch:
        _no_model_runs(patch)  # every step finished with this configuration: loaded, not recomputed
        run_study("tiny:llava", "default", out, plan=plan, keep_wrong=True, log=lambda m: None)
    assert (out / "summary.json").read_bytes() == summary
    (out / "validation.json").unlink()  # a step whose result is gone is recomputed (its rows are reused)
    run_study("tiny:llava", "default", out, plan=plan, keep_wrong=True, log=lambda m: None)
    assert (out / "validation.json").exists()
    with pytest.raises(HeadflowError, match=r"different configuration \(differs in: seed\)"):
        run_study("tiny:llava", "default", out, plan=plan, seed=1, keep_wrong=True, log=lambda m: None)


def test_a_study_on_data_with_fewer_than_two_question_types_skips_routing(tmp_path):
    """A folder dataset without factors answers only "class": the routing step is skipped with one log line, the
    reason is in study.json and the report's question-routing section says it."""
    import json

    from headflow.data import ListDataset, load_dataset
    from headflow.data.base import Example
    from headflow.data.folder import export_folder
    from headflow.study import StudyPlan, run_study

    plain = ListDataset("plain", [Example(ex.id, ex.image, ex.label) for ex in load_dataset("default", n=4)])
    root = export_folder(plain, tmp_path / "data")
    plan = StudyPlan(images=4, masks=16, val_masks=8, validate_images=2, flow_images=2, flow_maps=0, permutations=10,
                     bootstrap=10, routing_images=4, routing_masks=16, routing_val_masks=8)
    out, lines = tmp_path / "study", []
    run_study("tiny:llava", f"folder:{root}", out, plan=plan, keep_wrong=True, log=lines.append)
    why = ("the data answers fewer than 2 question types with one question for every image (answerable: class); "
           "question routing needs the labels plus at least one factor")
    skips = [line for line in lines if line.startswith("routing skipped:")]
    assert len(skips) == 1 and skips[0].startswith(f"routing skipped: {why}") and "\n" not in skips[0]
    assert json.loads((out / "study.json").read_text())["skipped"]["routing"].startswith(why)
    assert not (out / "routing").exists()
    html = (out / "report.html").read_text()
    part = html[html.index('<section id="routing"'):]
    part = part[:part.index("</section>")]
    assert 'data-status="missing"' in part and "The study skipped this step: " + why in part


def test_validate_reloads_hf_data_with_its_column_options(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = []
    for k in range(4):
        im = Image.new("RGB", (32, 24), (240, 240, 240))
        draw = ImageDraw.Draw(im)
        (draw.ellipse if k % 2 == 0 else draw.rectangle)((6, 4, 24, 20), fill=(200, 30, 30))
        images.append(im)
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"picture": images, "kind": ["circle", "square"] * 2}, features=features)
    saved = tmp_path / "saved"
    ds.save_to_disk(str(saved))
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["attribute", "--model", "tiny:llava", "--data", f"hf:{saved}", "--image-column",
                              "picture", "--label-column", "kind", "--out", str(out), "--masks", "16", "--val-masks",
                              "8", "--keep-wrong"])
    assert res.exit_code == 0, res.output
    recorded = json.loads((out / "config.json").read_text())["spec"]["data"]
    assert recorded["image_column"] == "picture" and recorded["label_column"] == "kind"
    res = runner.invoke(app, ["validate", str(out), "--max-images", "2"])  # reloads the data by itself
    assert res.exit_code == 0, res.output
    assert json.loads((out / "validation.json").read_text())["n_images"] == 2
    assert np.isfinite(np.load(out / "single_head.npy")).all()


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["attribute", "--model", "tiny:llava", "--out", str(tmp_path / "r"), "--masks", "3"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: The 'n_masks' parameter of HeadAttribution must be an int in [8, inf) or None. Got 3 instead."]
    res = runner.invoke(app, ["--debug", "attribute", "--model", "tiny:llava", "--out", str(tmp_path / "r"),
                              "--masks", "3"])
    assert res.exit_code == 1 and isinstance(res.exception, HeadflowError)
    res = runner.invoke(app, ["flow", "--out", str(tmp_path / "f"), "--object-layers", "a,b"])
    assert res.exit_code == 2 and "'--object-layers' option of flow must be a comma-separated list of ints" in res.output
    assert not Path(tmp_path / "f").exists()


def test_an_interrupted_validation_resumes_to_the_uninterrupted_result(attribution_run, tiny_models, tmp_path,
                                                                     monkeypatch):
    import shutil

    from headflow.store import RowStore

    out, data = attribution_run
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    for copy in (plain, killed):
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("validation*", "single_head.npy", ".headflow.lock"))
    want = Validation(tiny_models("llava"), max_images=3, k_grid=[0, 2, 8]).run(plain, dataset=data)
    original, calls = RowStore.write, {"n": 0}

    def killed_after_three_rows(self, row, values):
        if calls["n"] == 3:  # pass A finished, one row of pass B written
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return original(self, row, values)

    with monkeypatch.context() as patch:
        patch.setattr(RowStore, "write", killed_after_three_rows)
        with pytest.raises(KeyboardInterrupt):
            Validation(tiny_models("llava"), max_images=3, k_grid=[0, 2, 8]).run(killed, dataset=data)
    assert not (killed / "validation.json").exists()
    got = Validation(tiny_models("llava"), max_images=3, k_grid=[0, 2, 8]).run(killed, dataset=data)
    strip = lambda d: {k: v for k, v in d.items() if k != "provenance"}  # noqa: E731
    assert strip(got.data) == strip(want.data)  # same process, same threads: bit for bit
    assert (killed / "single_head.npy").read_bytes() == (plain / "single_head.npy").read_bytes()


def test_an_interrupted_study_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    import headflow.flow.knockout as knockout
    from headflow.study import StudyPlan, run_study

    plan = StudyPlan(images=4, masks=16, val_masks=8, validate_images=2, flow_images=3, flow_maps=0, permutations=10,
                     bootstrap=10, routing_images=4, routing_masks=16, routing_val_masks=8)
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    run_study("tiny:llava", "default", plain, plan=plan, keep_wrong=True, log=lambda m: None)
    original, calls = knockout._flow_image, {"n": 0}

    def killed_in_flow(*args, **kwargs):
        if calls["n"] == 1:  # attribution and validation finished, one flow image done
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(knockout, "_flow_image", killed_in_flow)
        with pytest.raises(KeyboardInterrupt):
            run_study("tiny:llava", "default", killed, plan=plan, keep_wrong=True, log=lambda m: None)
    assert (killed / "validation.json").exists() and not (killed / "flow" / "flow.json").exists()
    run_study("tiny:llava", "default", killed, plan=plan, keep_wrong=True, log=lambda m: None)
    for name in ("summary.json", "validation.json", "flow/flow.json", "routing/routing.json"):
        a, b = json.loads((plain / name).read_text()), json.loads((killed / name).read_text())
        assert {k: v for k, v in a.items() if k != "provenance"} == {k: v for k, v in b.items() if k != "provenance"}
    assert (plain / "report.html").exists() and (killed / "report.html").exists()


def test_semantics_refuses_a_similarity_that_cannot_fit_in_memory(tmp_path, monkeypatch):
    import os

    from test_semantics import _write_run_dir

    _write_run_dir(tmp_path, n_used=24)
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    with pytest.raises(HeadflowError, match=r"The similarity of 24 x 24 images needs about 18\.0 KiB but [\d.]+ KiB is "
                                            r"free; analyse fewer images\."):
        SemanticAnalysis(n_permutations=20, cv_folds=2).run(tmp_path)
    assert not (tmp_path / "semantics.json").exists()


# -- memory guards: flow and validation refuse, through the CLI, what cannot fit (one line, exit 2, nothing written) --

def _little_memory(monkeypatch, free: int = 4096) -> None:
    import headflow.method

    monkeypatch.setattr(headflow.method, "available_memory", lambda: free)


def _refused_one_line(argv: list[str]) -> str:
    res = CliRunner().invoke(app, argv)
    lines = [line for line in res.output.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert res.exit_code == 2, (argv, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_flow_refuses_a_run_that_cannot_fit_in_memory(tmp_path, monkeypatch):
    _little_memory(monkeypatch)
    out = tmp_path / "f"
    line = _refused_one_line(["flow", "--model", "tiny:llava", "--images", "2", "--keep-wrong", "--maps", "1",
                              "--bootstrap", "10", "--out", str(out)])
    # tiny:llava: 2 layers (window 1: 2 starts) x 6 pairs + 2 + 2 x 8 random sets + 16 image tokens for the map
    rows = 6 * 2 + 2 + 2 * 8 + 16
    assert re.fullmatch(rf"error: The flow of 2 images \({rows} rows of 38 tokens per image, batch size 64, 10 "
                        r"bootstrap resamples\) needs about [\d.]+ MiB but 4\.0 KiB is free; use a smaller "
                        r"--batch-size or --bootstrap, or fewer --images or --maps\.", line), line
    assert not out.exists()  # refused before the run directory is made
    _little_memory(monkeypatch, 2**40)  # with the memory, the same command runs
    assert CliRunner().invoke(app, ["flow", "--model", "tiny:llava", "--images", "2", "--keep-wrong", "--maps", "1",
                                    "--bootstrap", "10", "--out", str(out)]).exit_code == 0


def test_validation_refuses_a_run_that_cannot_fit_in_memory(attribution_run, tmp_path, monkeypatch):
    import shutil

    out, _ = attribution_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("validation*", "single_head.npy", ".headflow.lock"))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _little_memory(monkeypatch)
    line = _refused_one_line(["validate", str(run), "--max-images", "3", "--k-grid", "0,2,8"])
    # 8 heads: pass A 9 rows, pass B 5 rankings x 2 curves x 3 k = 30 rows
    assert re.fullmatch(r"error: The validation of 3 images \(30 rows of 38 tokens per image, batch size 64\) needs "
                        r"about [\d.]+ MiB but 4\.0 KiB is free; use a smaller --batch-size or fewer --max-images\.",
                        line), line
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing written: no validation/, no validation.json, no lock left


def test_the_memory_estimate_grows_with_the_prompt_the_batch_and_the_rows(tiny_models):
    from headflow.per_image import engine_memory

    lm = tiny_models("llava")
    base = engine_memory(lm, 38, 64, 100)
    assert engine_memory(lm, 76, 64, 100) > 2 * base  # more than double: attention scores grow with its square
    assert engine_memory(lm, 38, 1, 100) < base < engine_memory(lm, 38, "auto", 200)
    vocab = lm.text_config.vocab_size
    assert engine_memory(lm, 38, 64, 1000) - engine_memory(lm, 38, 64, 100) == 2 * 900 * vocab * 4  # the logits


def test_runs_record_the_weights_and_refuse_other_weights_under_the_same_name(attribution_run, tiny_models, tmp_path):
    """A retrained checkpoint keeps its name: resuming or extending a run with it must be refused, not mixed."""
    import copy as copy_module

    import torch

    from headflow import load_model
    from headflow.models.loading import weights_fingerprint

    out, data = attribution_run
    lm = tiny_models("llava")
    other = load_model("tiny:llava", seed=1)  # same name, other weights
    assert other.name == lm.name and other.weights_id != lm.weights_id
    assert load_model("tiny:llava").weights_id == lm.weights_id  # the same weights, loaded again
    copy = copy_module.deepcopy(lm.model)
    assert weights_fingerprint(copy) == lm.weights_id  # the same values
    with torch.no_grad():
        next(copy.parameters()).add_(1e-3)
    assert weights_fingerprint(copy) != lm.weights_id  # one tensor changed
    spec = json.loads((out / "config.json").read_text())["spec"]
    assert spec["weights"] == lm.weights_id
    before = (out / "summary.json").read_bytes()
    with pytest.raises(HeadflowError, match=r"different configuration \(differs in: weights\)"):
        HeadAttribution(other, n_masks=16, n_val=8, keep_wrong=True).run(data, out=out)
    assert (out / "summary.json").read_bytes() == before
    flow_out = tmp_path / "flow"
    TokenFlow(lm, keep_wrong=True, n_bootstrap=10, n_maps=0, progress=False).run(load_dataset("default", n=1), out=flow_out)
    with pytest.raises(HeadflowError, match=r"differs in: weights"):
        TokenFlow(other, keep_wrong=True, n_bootstrap=10, n_maps=0, progress=False).run(load_dataset("default", n=1), out=flow_out)
