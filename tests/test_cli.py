"""The command line: check, inspect, attribute + validate, and errors."""

import json

from typer.testing import CliRunner

from headflow.cli import app

runner = CliRunner()


def test_check_json_passes_on_tiny_llava():
    result = runner.invoke(app, ["check", "--model", "tiny:llava", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True and len(report["checks"]) == 4
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["checks"])


def test_inspect_lists_groups():
    result = runner.invoke(app, ["inspect", "--model", "tiny:qwen2_vl"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    assert groups["final"] == [max(max(v) for v in groups.values() if v)]
    assert len(groups["image"]) > 0 and len(groups["question"]) > 0


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
