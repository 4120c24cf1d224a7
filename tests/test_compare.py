"""headflow compare: head maps across runs and models (issue: beyond the paper, item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from headflow import HeadflowError
from headflow.attribution import HeadAttribution
from headflow.cli import app
from headflow.compare import CompareRuns, ComparisonResult
from headflow.compare.analysis import depth_profile, top_share
from headflow.data import load_dataset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of the default model's mask design, and a tiny LLaVA (another model, another head count)."""
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("default", n=4)
    out = {}
    for name, model, seed in (("seed0", "default", 0), ("seed1", "default", 1), ("tiny", "tiny:llava", 0)):
        HeadAttribution(model, n_masks=32, n_val=8, seed=seed, keep_wrong=True).run(data, out=root / name)
        out[name] = root / name
    return out


def test_profiles_and_concentration_by_hand():
    a = np.array([[1.0, 0.0], [2.0, -5.0], [1.0, 0.0]])  # layer masses 1, 2, 1 (negative parts dropped)
    assert depth_profile(a, 3).tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert depth_profile(a, 6).tolist() == pytest.approx([0.125, 0.125, 0.25, 0.25, 0.125, 0.125])
    assert top_share(a, 1 / 6) == pytest.approx(0.5) and top_share(a, 0.5) == pytest.approx(1.0)
    assert np.isnan(depth_profile(-np.ones((2, 2)), 4)).all()


def test_compare_same_model_head_by_head_other_models_by_depth(runs, tmp_path):
    result = CompareRuns(top_k=4, depth_bins=8).run([runs["seed0"], runs["seed1"], runs["tiny"]], out=tmp_path)
    s = result.summary
    assert [r["name"] for r in s["runs"]] == ["seed0", "seed1", "tiny"]
    assert np.allclose(result.profiles.sum(1), 1.0)
    same, *others = s["pairs"]
    assert same["runs"] == ["seed0", "seed1"] and same["head_level"]["top_k"] == 4
    want = spearmanr(result.maps[0].ravel(), result.maps[1].ravel()).statistic
    assert same["head_level"]["spearman"] == pytest.approx(want)
    tops = [set(map(tuple, s["runs"][i]["top_heads"])) for i in (0, 1)]
    assert same["head_level"]["top_k_overlap"] == pytest.approx(len(tops[0] & tops[1]) / 4)
    for pair in others:  # the tiny model: another model and another head layout
        assert pair["head_level"] is None and "compared by depth only" in pair["reason"]
        assert np.isfinite(pair["profile_distance"])
    # saved, reloaded, and the page
    again = ComparisonResult.load(tmp_path)
    assert again.summary == json.loads((tmp_path / "compare.json").read_text())
    assert all(np.array_equal(a, b) for a, b in zip(again.maps, result.maps))
    page = (tmp_path / "compare.html").read_text()
    assert 'id="runs-table"' in page and 'id="pairs-table"' in page and page.count('<img class="figure"') == 3


def test_compare_refuses_what_it_cannot_align(runs, tmp_path):
    with pytest.raises(HeadflowError, match="needs at least two run directories; got 1"):
        CompareRuns().run([runs["seed0"]])
    with pytest.raises(HeadflowError, match="is given twice"):
        CompareRuns().run([runs["seed0"], runs["seed0"]])
    with pytest.raises(HeadflowError, match="is not a finished attribution run"):
        CompareRuns().run([runs["seed0"], tmp_path])
    with pytest.raises(HeadflowError, match=r"The 'top_fractions' parameter of CompareRuns must be"):
        CompareRuns(top_fractions=[0.0]).run([runs["seed0"], runs["seed1"]])


def test_compare_cli(runs, tmp_path):
    cli = CliRunner()
    res = cli.invoke(app, ["compare", str(runs["seed0"]), str(runs["tiny"]), "--out", str(tmp_path / "c"),
                           "--top-fractions", "0.1,0.5"])
    assert res.exit_code == 0, res.output
    assert "seed0 vs tiny: profile correlation" in res.output and "compared by depth only" in res.output
    assert (tmp_path / "c" / "compare.html").exists()
    bad = cli.invoke(app, ["compare", str(runs["seed0"]), "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "needs at least two run directories" in bad.output
