"""The command line: check, inspect, attribute + validate, and errors."""

import json

import pytest
from typer.testing import CliRunner

from headflow.cli import app
from headflow.models.adapter import family_names

runner = CliRunner()


INVARIANTS = ["a_clean_vs_hf", "b_identity_ablation", "c_prefix_vs_full", "d_same_seed"]
CHECK_FIELDS = {"name", "description", "passed", "max_abs_diff", "tolerance", "error", "worst", "paths", "failure"}


#: families on which auto takes the full path, and what the reason says (PaliGemma: a prefix-LM)
FULL_PATH_FAMILIES = {"paligemma": "a bidirectional prefix"}


@pytest.mark.parametrize("family", family_names())
def test_check_json_passes_every_invariant_on_every_family(family):
    result = runner.invoke(app, ["check", "--model", f"tiny:{family}", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True and [c["name"] for c in report["checks"]] == INVARIANTS
    for c in report["checks"]:
        assert set(c) == CHECK_FIELDS, c
        assert c["passed"] and c["error"] is None and c["failure"] is None and c["max_abs_diff"] <= c["tolerance"]
    c = report["checks"][2]
    if family in FULL_PATH_FAMILIES:  # the model's own mask rules the prefix path out, and the report says why
        assert report["path"]["auto"] == "full" and FULL_PATH_FAMILIES[family] in report["path"]["auto_reason"]
        assert c["paths"]["compared"] == ["auto", "full"] and FULL_PATH_FAMILIES[family] in \
            c["paths"]["not_compared"]["prefix"]
        return
    assert report["path"]["auto"] == "prefix" and report["path"]["not_compared"] == {}
    assert c["paths"]["compared"] == ["auto", "full", "prefix"] and c["paths"]["auto"] == "prefix"


def test_check_reports_every_invariant_when_the_prefix_path_is_invalid(tmp_path):
    """A prefix-LM (PaliGemma, saved and loaded from a directory): auto takes the full path (and says why, from the
    model's own mask), the prefix path is not compared (and says why), and nothing crashes."""
    from headflow.models.adapter import adapter_class

    model, processor = adapter_class("paligemma").tiny()
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    result = runner.invoke(app, ["check", "--model", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr has transformers' loading progress bar
    assert [c["name"] for c in report["checks"]] == INVARIANTS and report["passed"] is True
    why = "lets the prefix query at position 0 attend position 16 after the prefix (a bidirectional prefix"
    assert report["path"]["auto"] == "full" and why in report["path"]["auto_reason"]
    for c in report["checks"][1:3]:
        assert c["paths"]["compared"] == ["auto", "full"] and why in c["paths"]["not_compared"]["prefix"]
    text = runner.invoke(app, ["check", "--model", str(tmp_path / "m")])
    assert text.exit_code == 0 and "auto takes the full path (the model's own mask in layer 0 lets the prefix query" \
        in text.output and text.output.count("PASS") == 4


def test_check_reports_an_invariant_that_raises_and_runs_the_others(monkeypatch):
    from headflow.intervene.engine import InterventionEngine

    original = InterventionEngine.run

    def zero_baseline_breaks(self, prompt, rows, *, baseline=None, **kwargs):
        if baseline is not None and baseline.kind == "zero":  # only invariant (c) uses a zero baseline
            raise RuntimeError("boom in the zero baseline\nsecond line never shown")
        return original(self, prompt, rows, baseline=baseline, **kwargs)

    monkeypatch.setattr(InterventionEngine, "run", zero_baseline_breaks)
    result = runner.invoke(app, ["check", "--model", "tiny:llava", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["passed"] is False and [c["name"] for c in report["checks"]] == INVARIANTS
    by_name = {c["name"]: c for c in report["checks"]}
    broken = by_name["c_prefix_vs_full"]
    assert broken["passed"] is False and broken["error"] == "RuntimeError: boom in the zero baseline"
    assert broken["failure"] == "c_prefix_vs_full raised RuntimeError: boom in the zero baseline"
    assert all(by_name[n]["passed"] for n in INVARIANTS if n != "c_prefix_vs_full")
    text = runner.invoke(app, ["check", "--model", "tiny:llava"])
    assert text.exit_code == 1 and "Traceback" not in text.output
    assert "ERROR c_prefix_vs_full" in text.output and text.output.count("PASS") == 3
    assert "why: c_prefix_vs_full raised RuntimeError: boom in the zero baseline" in text.output


def test_check_failure_says_by_how_much_and_where(monkeypatch):
    """A wrong result (not an exception) is a FAIL naming the invariant, the difference against the tolerance and
    the comparison that gave it."""
    from headflow.intervene.engine import InterventionEngine

    original = InterventionEngine.run

    def prefix_off_by_one(self, prompt, rows, *, path="auto", **kwargs):
        out = original(self, prompt, rows, path=path, **kwargs)
        if out.path == "prefix" and path == "prefix":
            out.logits = out.logits + 1e-2
        return out

    monkeypatch.setattr(InterventionEngine, "run", prefix_off_by_one)
    result = runner.invoke(app, ["check", "--model", "tiny:llava", "--json"])
    assert result.exit_code == 1, result.output
    by_name = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert by_name["a_clean_vs_hf"]["passed"] and by_name["d_same_seed"]["passed"]
    for name in ("b_identity_ablation", "c_prefix_vs_full"):
        c = by_name[name]
        assert not c["passed"] and c["error"] is None and abs(c["max_abs_diff"] - 1e-2) < 1e-3
        assert c["failure"].startswith(f"{name}: max |dlogit| 1.00e-02 > tolerance 1e-04 (") and "prefix vs" in c["worst"]


def test_inspect_lists_groups():
    result = runner.invoke(app, ["inspect", "--model", "tiny:qwen2_vl"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    assert groups["final"] == [max(max(v) for v in groups.values() if v)]
    assert len(groups["image"]) > 0 and len(groups["question"]) > 0


def test_inspect_and_check_with_a_users_adapter_file(user_adapter_file):
    import os

    env_before = os.environ.get("HEADFLOW_ADAPTERS")
    unknown = runner.invoke(app, ["inspect", "--model", "tiny:my_family"])
    assert unknown.exit_code == 2 and "Unknown family 'my_family'" in unknown.output
    result = runner.invoke(app, ["inspect", "--adapter", str(user_adapter_file), "--model", "tiny:my_family"])
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)["model"]
    assert model["name"] == "tiny:my_family" and model["family"] == "my_family"
    assert os.environ.get("HEADFLOW_ADAPTERS") == env_before  # named for the command's duration only
    again = runner.invoke(app, ["check", "--adapter", str(user_adapter_file), "--model", "tiny:my_family", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["model"]["family"] == "my_family"


def test_every_command_that_loads_a_model_takes_adapter():
    import typer.main

    commands = typer.main.get_command(app).commands
    takes = {name for name, cmd in commands.items() if any("--adapter" in getattr(p, "opts", []) for p in cmd.params)}
    assert takes == {"attribute", "validate", "flow", "study", "demo", "check", "inspect", "model-card", "plan", "steer",
                     "route"}


def test_unknown_model_is_a_one_line_error():
    result = runner.invoke(app, ["check", "--model", "tiny:gpt9"])
    assert result.exit_code == 2
    assert "Unknown family 'gpt9'" in result.output


def test_attribute_then_validate(tmp_path):
    out = tmp_path / "run"
    args = ["attribute", "--model", "tiny:llava", "--data", "default", "--out", str(out), "--images", "2",
            "--masks", "16", "--val-masks", "8", "--keep-wrong", "--batch-size", "auto"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["n_masks"] == 16
    assert (out / "figures" / "attribution_heatmap.png").exists()
    again = runner.invoke(app, args)  # resumes: nothing to recompute, same numbers
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text()) == summary
    result = runner.invoke(app, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    assert "k80 completeness" in result.output and (out / "validation.json").exists()
    bad = runner.invoke(app, ["attribute", "--model", "tiny:llava", "--out", str(tmp_path / "x"), "--images", "1",
                              "--baseline", "median", "--keep-wrong"])
    assert bad.exit_code == 2 and "The 'baseline' parameter of HeadAttribution must be one of mean" in bad.output


def test_ablation_prob_sweep_reports_lds_per_value(tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["attribute", "--model", "tiny:llava", "--out", str(out), "--images", "2",
                                 "--masks", "24", "--val-masks", "8", "--keep-wrong", "--ablation-prob", "0.1,0.3"])
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "ablation_prob_sweep.json").read_text())
    assert [r["ablation_prob"] for r in sweep["sweep"]] == [0.1, 0.3]
    assert sweep["best_ablation_prob"] in (0.1, 0.3)
    for r in sweep["sweep"]:
        summary = json.loads((out / f"ablation_prob-{r['ablation_prob']:g}" / "summary.json").read_text())
        assert summary["ablation_prob"] == r["ablation_prob"] and summary["lds_pearson_median"] == r["lds_pearson_median"]


def test_help_does_not_load_torch_or_scipy():
    """`headflow --help` and `headflow flow --help` stay fast: the heavy libraries load inside commands."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from headflow.cli import app; "
            "r = CliRunner().invoke(app, ['flow', '--help']); assert r.exit_code == 0 and '--from-run' in r.output; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'scipy', 'sklearn') if m in sys.modules); "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
