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
