"""`headflow demo --quick` end to end on the embedded default model (the newcomer's first command)."""

import json

import pytest
from typer.testing import CliRunner

from headflow.cli import app


@pytest.mark.slow
def test_quick_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] > 30 and summary["clean_accuracy"] > 0.8  # the trained model, not random weights
    for name in ("validation.json", "semantics.json", "flow/flow.json", "report.html"):
        assert (out / name).exists(), name
    html = (out / "report.html").read_text()
    assert 'id="claims-table"' in html and all(f'data-claim="C{i}"' in html for i in range(1, 5))
    # question routing on the QUICK sizes: the default data's answerable types, a verdict, accuracies in [0, 1]
    routing = json.loads((out / "routing" / "routing.json").read_text())
    assert routing["verdict"] in ("question", "image", "neither") and len(routing["question_types"]) >= 2
    for row in routing["per_type"].values():
        assert isinstance(row["clean_accuracy"], float) and 0.0 <= row["clean_accuracy"] <= 1.0
    assert "[5/6] routing" in result.output and "routing skipped" not in result.output
    assert '<section id="routing" class="section" data-status="present"><h2>Question routing</h2>' in html
    assert f'data-routing-verdict="{routing["verdict"]}"' in html
