"""headflow plan: the cost of an attribution before it runs (memory, disk, time)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from headflow.attribution import HeadAttribution
from headflow.cli import app
from headflow.data import load_dataset
from headflow.intervene import InterventionEngine
from headflow.intervene.check import CHECK_QUESTION, check_image
from headflow.plan import format_plan, plan_attribution
from headflow.per_image import engine_memory


def test_disk_estimate_is_what_a_run_writes(tiny_models, tmp_path):
    lm = tiny_models("llava")
    plan = plan_attribution(lm, n_images=3, n_masks=16, n_val=8, batch_size=8, probe=False)
    HeadAttribution(lm, n_masks=16, n_val=8, keep_wrong=True).run(load_dataset("default", n=3), out=tmp_path)
    sizes = {"targets.npy": (tmp_path / "targets.npy").stat().st_size,
             "masks.npy + val_masks.npy": sum((tmp_path / f).stat().st_size for f in ("masks.npy", "val_masks.npy")),
             "attributions.npy": (tmp_path / "attributions.npy").stat().st_size,
             "baseline.safetensors": (tmp_path / "baseline.safetensors").stat().st_size}
    for name, size in sizes.items():  # the files' payloads: within their headers (npy: 128 B, safetensors: JSON)
        assert plan["disk"][name] <= size <= plan["disk"][name] + 1024, (name, size, plan["disk"][name])


def test_memory_plan_and_the_batch_size_that_fits(tiny_models):
    lm = tiny_models("llava")
    plan = plan_attribution(lm, n_images=10, n_masks=64, n_val=16, batch_size=32, memory=2**30, probe=False)
    mem, tokens, rows = plan["memory"], plan["prompt_tokens"], 80
    assert plan["path"] == "prefix" and plan["path_reason"] is None
    suffix = tokens - InterventionEngine(lm).prepare(check_image(), CHECK_QUESTION).prefix_length
    assert mem["engine_per_image"] == engine_memory(lm, tokens, 32, rows, suffix)
    assert mem["per_batch_row"] == engine_memory(lm, tokens, 1, 1, suffix) - engine_memory(lm, tokens, 1, 0, suffix) > 0
    assert mem["per_batch_row"] < engine_memory(lm, tokens, 1, 1) - engine_memory(lm, tokens, 1, 0)  # full path: more
    fits = mem["largest_batch_size_that_fits"]
    base = engine_memory(lm, tokens, 1, 0, suffix) + 2 * rows * lm.text_config.vocab_size * 4
    assert fits == (2**30 - base) // mem["per_batch_row"]
    small = plan_attribution(lm, n_images=10, n_masks=64, n_val=16, batch_size=32,
                             memory=base + 3 * mem["per_batch_row"], probe=False)
    assert small["memory"]["largest_batch_size_that_fits"] == 3
    assert "use a smaller --batch-size" in format_plan(small)


def test_probe_times_masked_rows(tiny_models):
    plan = plan_attribution(tiny_models("llava"), n_images=4, n_masks=16, n_val=8, batch_size=8)
    t = plan["time"]
    assert 0 < t["seconds_per_row"] < 1 and t["seconds_per_image"] > 24 * t["seconds_per_row"]
    assert t["seconds_total"] == pytest.approx(4 * t["seconds_per_image"])
    measured = plan["memory"]["measured_per_batch_row"]
    assert measured is None or measured >= 0  # None where /proc is not readable


def test_a_full_path_model_is_planned_on_the_full_path(tiny_models):
    plan = plan_attribution(tiny_models("paligemma"), n_images=2, n_masks=16, n_val=8, batch_size=8, probe=False)
    assert plan["path"] == "full" and "attend" in plan["path_reason"]
    lm, tokens = tiny_models("paligemma"), plan["prompt_tokens"]
    assert plan["memory"]["per_batch_row"] == engine_memory(lm, tokens, 1, 1) - engine_memory(lm, tokens, 1, 0)
    assert "full path:" in format_plan(plan)


def test_plan_cli():
    cli = CliRunner()
    res = cli.invoke(app, ["plan", "--model", "tiny:qwen2_vl", "--images", "5", "--masks", "32", "--no-probe",
                           "--memory", "1GiB", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["n_masks"] == 32 and plan["memory"]["budget"] == 2**30 and "time" not in plan
    text = cli.invoke(app, ["plan", "--model", "tiny:llava", "--images", "2", "--masks", "16", "--val-masks", "8"])
    assert text.exit_code == 0 and "ms per masked row" in text.output and "disk:" in text.output
