"""Hybrid attribution (patching screens the heads, the regression fits the screened ones) on the tiny model."""

import json

import numpy as np
import pytest

from headflow.attribution import HeadAttribution, HeadAttributionHybrid, HeadAttributionPatching
from headflow.attribution.hybrid import screen_heads
from headflow.data import load_dataset

SMALL = dict(n_masks=32, n_val=16, keep_wrong=True)


@pytest.fixture(scope="module")
def data():
    return load_dataset("default", n=3)


def test_screen_rule():
    est = np.array([0.0, 5.0, 1.0, 3.0, 1.0])
    assert screen_heads(est, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert screen_heads(est, 0.5).tolist() == [1]  # 5 of 10
    assert screen_heads(est, 0.51).tolist() == [1, 3]
    assert screen_heads(est, 0.85).tolist() == [1, 2, 3]  # ties: the lower index first
    assert screen_heads(est, 0.5, n_heads=3).tolist() == [1, 2, 3]
    assert screen_heads(np.zeros(4), 0.5).tolist() == [0, 1, 2, 3]


def test_full_coverage_equals_the_regression_with_the_same_masks(data, tmp_path):
    reg = HeadAttribution("tiny:llava", **SMALL).run(data, out=tmp_path / "reg")
    hyb = HeadAttributionHybrid("tiny:llava", screen_coverage=1.0, **SMALL).run(data, out=tmp_path / "hyb")
    assert hyb.summary["screen"]["n_screened"] == hyb.summary["n_heads_total"] == 8
    assert np.array_equal(np.load(tmp_path / "reg" / "masks.npy"), np.load(tmp_path / "hyb" / "masks.npy"))
    assert np.array_equal(np.load(tmp_path / "reg" / "val_masks.npy"), np.load(tmp_path / "hyb" / "val_masks.npy"))
    assert np.allclose(hyb.attributions, reg.attributions, atol=1e-5)
    assert float(np.abs(reg.attributions).max()) > 1e-3
    for key in ("lds_pearson_median", "lds_spearman_median"):
        assert hyb.summary[key] == pytest.approx(reg.summary[key], abs=1e-6)
    assert hyb.summary["method"] == "hybrid" and hyb.summary["n_masks"] == 32


def test_the_screen_keeps_the_heads_patching_ranks_highest(data, tmp_path):
    atp = HeadAttributionPatching("tiny:llava", keep_wrong=True, n_check=0).run(data, out=tmp_path / "atp")
    hyb = HeadAttributionHybrid("tiny:llava", screen_heads=3, n_val=16, keep_wrong=True).run(data, out=tmp_path / "h")
    estimate = np.abs(atp.attributions).mean(0).ravel()
    top = set(np.argsort(-estimate)[:3].tolist())
    screen = hyb.summary["screen"]
    kept = {layer * 4 + head for layer, head in screen["heads"]}
    assert kept == top and screen["n_screened"] == 3
    assert hyb.summary["n_masks"] == 64  # max(64, 4M)
    saved = json.loads((tmp_path / "h" / "screen.json").read_text())
    assert np.allclose(np.asarray(saved["estimate"]).ravel(), estimate, atol=1e-6)
    assert screen["coverage"] == pytest.approx(estimate[sorted(top)].sum() / estimate.sum(), abs=1e-6)
    # unscreened heads are never ablated and get attribution 0
    masks = np.load(tmp_path / "h" / "masks.npy")
    others = sorted(set(range(8)) - top)
    assert not masks[:, others].any() and masks[:, sorted(top)].any()
    flat = hyb.attributions.reshape(len(hyb.attributions), -1)
    assert not flat[:, others].any() and np.abs(flat[:, sorted(top)]).max() > 1e-4


def test_cli_hybrid_run_reads_as_a_regression_run(tmp_path):
    from typer.testing import CliRunner

    from headflow.cli import app
    from headflow.report import write_report

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["attribute", "--model", "tiny:llava", "--images", "2", "--keep-wrong", "--method",
                                   "hybrid", "--screen-heads", "2", "--val-masks", "16", "--out", str(run)])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert "2 of 8 heads screened by patching, 64 masks" in res.output
    assert summary["screen"]["n_screened"] == 2 and len(summary["screen"]["heads"]) == 2
    html = write_report(run).read_text()
    start = html.index('<section id="lds"')
    assert 'data-status="present"' in html[start:start + 200]  # a hybrid run has a held-out LDS
