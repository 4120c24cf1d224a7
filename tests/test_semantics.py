"""Tests for headflow.semantics (METHOD.md F8): class vs appearance of head attributions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from headflow.errors import HeadflowError
from headflow.semantics import SemanticAnalysis, SemanticResult, parse_similarity, similarity_matrix
from headflow.semantics.stats import _random_permutations, design_pair_means, encode, permutation_tests

N_CLASSES, N_STYLES, N_REPEATS = 8, 3, 4  # crossed design: 96 images
N_LAYERS, N_HEADS = 4, 8
N_PERM = 200


def crossed_design(driver: str, seed: int, noise: float = 1.0):
    """Attributions that depend only on class, only on style, or on nothing (``driver="noise"``).

    Returns attributions (96, 4, 8), class labels, and a factor table with ``style`` and a
    ``palette`` factor that nothing depends on.
    """
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(N_CLASSES), N_STYLES * N_REPEATS)
    sty = np.tile(np.repeat(np.arange(N_STYLES), N_REPEATS), N_CLASSES)
    x = noise * rng.normal(size=(len(cls), N_LAYERS, N_HEADS))
    if driver == "class":
        x += rng.normal(size=(N_CLASSES, N_LAYERS, N_HEADS))[cls]
    elif driver == "style":
        x += rng.normal(size=(N_STYLES, N_LAYERS, N_HEADS))[sty]
    labels = [f"class{c}" for c in cls]
    table = {"style": [f"style{s}" for s in sty], "palette": [f"pal{i % 2}" for i in range(len(cls))]}
    return x, labels, table


@pytest.fixture(scope="module")
def class_result() -> SemanticResult:
    x, labels, table = crossed_design("class", seed=0)
    return SemanticAnalysis(n_permutations=N_PERM, seed=0).fit(x, labels, table)


@pytest.fixture(scope="module")
def noise_results() -> list[SemanticResult]:
    out = []
    for seed in range(5):
        x, labels, table = crossed_design("noise", seed=seed)
        out.append(SemanticAnalysis(n_permutations=N_PERM, seed=seed, factors=["style"]).fit(x, labels, table))
    return out


# ------------------------------------------------------------------ exact small cases
def test_similarity_kinds_match_reference() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 10))
    z = (v - v.mean(0)) / v.std(0)
    ref_cos = np.array([[zi @ zj / np.linalg.norm(zi) / np.linalg.norm(zj) for zj in z] for zi in z])
    np.testing.assert_allclose(similarity_matrix(v, parse_similarity("cosine")), ref_cos, atol=1e-12)
    ref_sp = np.array([[spearmanr(vi, vj)[0] for vj in v] for vi in v])
    np.testing.assert_allclose(similarity_matrix(v, parse_similarity("spearman")), ref_sp, atol=1e-12)
    tops = [set(np.argsort(-vi)[:3]) for vi in v]
    ref_jac = np.array([[len(a & b) / len(a | b) for b in tops] for a in tops])
    np.testing.assert_allclose(similarity_matrix(v, parse_similarity("jaccard:3")), ref_jac, atol=1e-12)


def test_permutation_null_matches_slow_reference() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=(12, 5))
    sim = similarity_matrix(v, parse_similarity("cosine"))
    cls, _ = encode([f"c{i % 3}" for i in range(12)])
    sty, _ = encode([f"s{(i // 3) % 2}" for i in range(12)])
    n_perm = 30
    fast = permutation_tests(sim, cls, {"style": sty}, n_perm, seed=5)["style"]["class_vs_appearance"]
    obs = design_pair_means(sim, cls, sty).mean
    diff = obs["within_class"] - obs["within_appearance"]
    null = []
    for p in _random_permutations(12, n_perm, seed=5):
        m = design_pair_means(sim[np.ix_(p, p)], cls, sty).mean
        null.append(m["within_class"] - m["within_appearance"])
    p_ref = (1 + np.sum(np.abs(null) >= abs(diff) - 1e-12)) / (1 + n_perm)
    assert fast.difference == pytest.approx(diff, abs=1e-12)
    assert fast.p_value == pytest.approx(p_ref)
    assert fast.z == pytest.approx((diff - np.mean(null)) / np.std(null, ddof=1), rel=1e-9)


# ------------------------------------------------------------------ the claims
def test_class_driven_attributions_give_verdict_class(class_result: SemanticResult) -> None:
    r = class_result
    assert r.verdict == "class"
    assert r.p_class_vs_appearance < 0.01
    assert r.within_class_similarity > r.within_appearance_similarity + 0.2
    tests = r.per_factor["style"].tests
    assert tests["class_vs_between"].p_value < 0.01 and tests["class_vs_between"].difference > 0
    assert tests["appearance_vs_between"].p_value > 0.01  # style carries nothing
    assert r.topk_jaccard["within_class"] > r.topk_jaccard["across_class"]


def test_style_driven_attributions_give_verdict_appearance() -> None:
    x, labels, table = crossed_design("style", seed=0)
    r = SemanticAnalysis(n_permutations=N_PERM, seed=0, factors=["style"]).fit(x, labels, table)
    assert r.verdict == "appearance"
    assert r.p_class_vs_appearance < 0.01
    assert r.within_appearance_similarity > r.within_class_similarity + 0.2
    assert r.probe_accuracy["style"]["attribution"] > 0.9


def test_noise_gives_neither(noise_results: list[SemanticResult]) -> None:
    p_values = [r.p_class_vs_appearance for r in noise_results]
    assert sum(p > 0.05 for p in p_values) >= 4, p_values
    assert sum(r.verdict == "neither" for r in noise_results) >= 4


def test_probes_beat_chance_for_class_only_when_class_matters(
        class_result: SemanticResult, noise_results: list[SemanticResult]) -> None:
    row = class_result.probe_accuracy["class"]
    assert row["chance"] == pytest.approx(1 / N_CLASSES)
    assert row["attribution"] > 0.8
    assert class_result.probes["class"]["attribution"].p_value < 0.001
    for r in noise_results:
        noise_row = r.probe_accuracy["class"]
        assert noise_row["attribution"] < noise_row["chance"] + 0.12
    assert sum(r.probes["class"]["attribution"].p_value > 0.05 for r in noise_results) >= 4


def test_controls_are_probed_too() -> None:
    x, labels, table = crossed_design("noise", seed=0)
    rng = np.random.default_rng(0)
    cls = np.array([int(s[5:]) for s in labels])
    hidden = rng.normal(size=(N_CLASSES, 6))[cls] + 0.1 * rng.normal(size=(len(cls), 6))
    r = SemanticAnalysis(n_permutations=20, factors=["style"]).fit(x, labels, table, controls={"final_hidden": hidden})
    assert set(r.probe_accuracy["class"]) == {"attribution", "chance", "final_hidden"}
    assert r.probe_accuracy["class"]["final_hidden"] > 0.9


def test_shared_and_specific_heads() -> None:
    # Head (0, 0) is top for every class; head (1, c) only for class c.
    n_per = 4
    a = np.zeros((3 * n_per, 2, 3))
    a[:, 0, 0] = 5.0
    labels = []
    for c in range(3):
        a[c * n_per:(c + 1) * n_per, 1, c] = 3.0
        labels += [f"k{c}"] * n_per
    a += 0.01 * np.random.default_rng(0).normal(size=a.shape)
    styles = [f"s{i % 2}" for i in range(3 * n_per)]
    r = SemanticAnalysis(n_permutations=10, top_k=2, cv_folds=2).fit(a, labels, {"style": styles})
    assert r.shared_heads == ((0, 0),)
    assert r.class_specific_heads == {"k0": ((1, 0),), "k1": ((1, 1),), "k2": ((1, 2),)}
    assert r.class_maps.shape == (3, 2, 3)


# ------------------------------------------------------------------ persistence, run dir, CLI
def test_save_load_round_trip(class_result: SemanticResult, tmp_path: Path) -> None:
    class_result.save(tmp_path)
    back = SemanticResult.load(tmp_path)
    assert back.to_dict() == class_result.to_dict()
    np.testing.assert_array_equal(back.similarity, class_result.similarity)
    np.testing.assert_array_equal(back.vectors, class_result.vectors)
    assert back.labels == class_result.labels and back.factor_values == class_result.factor_values
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_load_missing_result_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HeadflowError, match=r"No semantics result in .*semantics.json is missing"):
        SemanticResult.load(tmp_path)


def _write_run_dir(path: Path, n_used: int = 36) -> None:
    x, labels, table = crossed_design("class", seed=3)
    idx = np.linspace(0, len(labels) - 1, n_used).astype(int)
    frame = pd.DataFrame({
        "label": [labels[i] for i in idx] + ["class0"],
        "factor_style": [table["style"][i] for i in idx] + ["style0"],
        "factor_palette": [table["palette"][i] for i in idx] + ["pal0"],
        "used": [True] * n_used + [False],  # one unused row that must be skipped
    })
    frame.to_parquet(path / "images.parquet", index=False)
    np.save(path / "attributions.npy", x[idx].astype(np.float32))
    np.save(path / "pixels.npy", np.random.default_rng(0).normal(size=(n_used, 12)).astype(np.float32))


def test_run_directory_writes_json_and_figures(tmp_path: Path) -> None:
    _write_run_dir(tmp_path)
    result = SemanticAnalysis(n_permutations=50, cv_folds=3).run(tmp_path)
    doc = json.loads((tmp_path / "semantics.json").read_text())
    for key in ("within_class_similarity", "within_appearance_similarity", "between_similarity",
                "p_class_vs_appearance", "probe_accuracy", "per_factor", "topk_jaccard", "shared_heads",
                "class_specific_heads", "verdict", "n_images", "parameters"):
        assert key in doc, key
    assert doc["n_images"] == 36 == result.n_images
    assert set(doc["per_factor"]) == {"style", "palette"}
    assert set(doc["probe_accuracy"]["class"]) == {"attribution", "chance", "pixels"}
    assert set(doc["topk_jaccard"]) >= {"within_class", "across_class"}
    for stem in ("similarity_matrix", "embedding", "class_heatmaps"):
        for ext in ("png", "svg"):
            assert (tmp_path / "figures" / f"{stem}.{ext}").stat().st_size > 0


def test_run_directory_row_mismatch(tmp_path: Path) -> None:
    _write_run_dir(tmp_path)
    np.save(tmp_path / "attributions.npy", np.zeros((5, N_LAYERS, N_HEADS), dtype=np.float32))
    with pytest.raises(HeadflowError, match=r"has 5 rows but images.parquet marks 36 rows used"):
        SemanticAnalysis().run(tmp_path)


def test_cli_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from headflow.cli import app

    _write_run_dir(tmp_path, n_used=24)
    runner = CliRunner()
    ok = runner.invoke(app, ["semantics", str(tmp_path), "--factors", "style", "--similarity", "jaccard:5",
                             "--n-permutations", "20", "--cv-folds", "2"])
    assert ok.exit_code == 0, ok.output
    assert "verdict:" in ok.output
    assert json.loads((tmp_path / "semantics.json").read_text())["resolved_parameters"]["factors_"] == ["style"]
    bad = runner.invoke(app, ["semantics", str(tmp_path), "--similarity", "euclid"])
    assert bad.exit_code == 2
    assert "must be one of cosine, spearman, jaccard:K" in bad.output


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("value", ["x", "jaccard", "jaccard:0", "jaccard:k", 3])
def test_bad_similarity_name(value: object) -> None:
    x, labels, table = crossed_design("noise", seed=0)
    msg = (r"^The 'similarity' parameter of SemanticAnalysis must be one of cosine, spearman, jaccard:K\. "
           rf"Got {value!r} instead\.$")
    with pytest.raises(HeadflowError, match=msg):
        SemanticAnalysis(similarity=value).fit(x, labels, table)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_permutations": 0}, r"The 'n_permutations' parameter of SemanticAnalysis must be an int in \[1, inf\)"),
    ({"cv_folds": 1}, r"The 'cv_folds' parameter of SemanticAnalysis must be an int in \[2, inf\)"),
    ({"top_k": True}, r"The 'top_k' parameter of SemanticAnalysis must be an int in \[1, inf\)"),
    ({"significance_level": 1.5}, r"The 'significance_level' parameter of SemanticAnalysis must be a float in "
                                  r"\(0, 1\)"),
    ({"factors": "style"}, r"The 'factors' parameter of SemanticAnalysis must be None or a non-empty list"),
    ({"factors": ["colour"]}, r"The 'factors' parameter of SemanticAnalysis must be names of factors in the "
                              r"data \(style, palette\)\. Got \['colour'\] instead\."),
])
def test_bad_parameters(kwargs: dict, match: str) -> None:
    x, labels, table = crossed_design("noise", seed=0)
    with pytest.raises(HeadflowError, match=match):
        SemanticAnalysis(**kwargs).fit(x, labels, table)


def test_mismatched_lengths() -> None:
    x, labels, table = crossed_design("noise", seed=0)
    with pytest.raises(HeadflowError, match=r"The 'labels' parameter of SemanticAnalysis\.fit must be a sequence "
                                            r"with one value per image \(96 values\)\. Got '95 values' instead\."):
        SemanticAnalysis().fit(x, labels[:-1], table)
    short = {**table, "style": table["style"][:10]}
    with pytest.raises(HeadflowError, match=r"The \"factors_table\['style'\]\" parameter .* Got '10 values'"):
        SemanticAnalysis().fit(x, labels, short)
    with pytest.raises(HeadflowError, match=r"The 'controls' parameter .* shape \(96, d\)"):
        SemanticAnalysis().fit(x, labels, table, controls={"pixels": np.zeros((5, 3))})
    with pytest.raises(HeadflowError, match=r"The 'attributions' parameter .* shape \(n_images, n_layers, n_heads\)"):
        SemanticAnalysis().fit(x.reshape(96, -1), labels, table)


def test_confounded_or_constant_factor() -> None:
    x, labels, table = crossed_design("noise", seed=0)
    with pytest.raises(HeadflowError, match=r"Factor 'shape' cannot be compared with class: no image pairs are "
                                            r"\(same class, different value\); it is confounded with class"):
        SemanticAnalysis(factors=["shape"]).fit(x, labels, {"shape": list(labels)})
    r = SemanticAnalysis(n_permutations=10).fit(x, labels, {**table, "flat": ["a"] * 96})
    assert r.resolved["skipped_factors"] == {"flat": "it has a single value"}
    with pytest.raises(HeadflowError, match=r"^No appearance factor can be compared with class \(flat: it has"):
        SemanticAnalysis().fit(x, labels, {"flat": ["a"] * 96})
    with pytest.raises(HeadflowError, match=r"non-finite values in images \[3\]"):
        bad = x.copy()
        bad[3, 0, 0] = np.nan
        SemanticAnalysis().fit(bad, labels, table)
