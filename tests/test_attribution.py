"""Head attribution: exact fits, the run directory, resumption, validation."""

import json

import numpy as np
import pytest
import torch

from headflow import HeadflowError
from headflow.answers import target_values
from headflow.method import DEFAULT_QUESTION
from headflow.attribution import AttributionResult, HeadAttribution, Validation, sample_masks
from headflow.attribution.fit import datamodeling_scores, fit_linear, predict
from headflow.data import load_dataset
from headflow import load_model
from headflow.store import RowStore


def test_ols_recovers_a_known_linear_model_and_matches_sklearn():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    masks = sample_masks(300, 12, 0.3, seed=1)
    true_w = rng.normal(size=(3, 12))
    true_b = rng.normal(size=3)
    targets = true_b[None] + masks @ true_w.T
    bias, weights = fit_linear(masks, targets, "ols")
    assert np.allclose(weights, true_w, atol=1e-8) and np.allclose(bias, true_b, atol=1e-8)
    noisy = targets + rng.normal(scale=0.1, size=targets.shape)
    bias, weights = fit_linear(masks, noisy, "ols")
    reference = LinearRegression().fit(masks.astype(float), noisy)
    assert np.allclose(weights, reference.coef_, atol=1e-8) and np.allclose(bias, reference.intercept_, atol=1e-8)
    pearson, spearman = datamodeling_scores(predict(bias, weights, masks), noisy)
    assert (pearson > 0.95).all() and (spearman > 0.9).all()
    for method in ("ridge", "lasso"):
        _, w = fit_linear(masks, targets, method, penalty=1e-4)
        assert np.allclose(w, true_w, atol=0.05)
    with pytest.raises(HeadflowError, match="'fit' parameter of HeadAttribution must be one of ols, ridge, lasso"):
        fit_linear(masks, targets, "svm")


def test_masks_are_seeded_bernoulli():
    a, b = sample_masks(4000, 20, 0.1, seed=3), sample_masks(4000, 20, 0.1, seed=3)
    assert np.array_equal(a, b) and abs(a.mean() - 0.1) < 0.01
    assert not np.array_equal(a, sample_masks(4000, 20, 0.1, seed=4))


def test_targets_and_answer_resolution(tiny_models):
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    assert torch.allclose(target_values(logits, 1, "logit"), torch.tensor([3.0, 0.0]))
    assert torch.allclose(target_values(logits, 1, "margin"), torch.tensor([1.0, -5.0]))
    assert torch.allclose(target_values(logits, 1, "prob"), logits.softmax(-1)[:, 1])
    assert torch.allclose(target_values(logits, 1, "logprob"), logits.log_softmax(-1)[:, 1])
    lm = tiny_models("llava")
    answers = lm.answers(DEFAULT_QUESTION)
    tok = lm.adapter.tokenizer()
    star = tok.convert_tokens_to_ids("▁star")
    fake = torch.zeros(len(tok))
    fake[star] = 1.0
    assert answers.resolve("star", fake).ids == (star,)
    with pytest.raises(HeadflowError, match="cannot be written as a token"):
        answers.resolve("\n", fake)  # whitespace only: every spelling starts with a bare space


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_models):
    lm = tiny_models("llava")
    out = tmp_path_factory.mktemp("attr") / "run"
    data = load_dataset("default", n=3)
    result = HeadAttribution(lm, n_masks=48, n_val=16, keep_wrong=True, batch_size=32).run(data, out=out)
    return lm, data, out, result


def test_run_directory_contents(small_run):
    lm, data, out, result = small_run
    for name in ("config.json", "images.parquet", "masks.npy", "val_masks.npy", "targets.npy", "attributions.npy",
                 "baseline.safetensors", "summary.json", "attention.npy", "lds.parquet"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("n_heads_total", "n_heads", "n_images", "n_masks", "clean_accuracy", "lds_pearson_median", "lds_spearman_median",
                "top_heads"):
        assert key in summary
    assert summary["n_heads_total"] == lm.n_layers * lm.n_heads == 8 and summary["n_heads"] == lm.n_heads
    assert summary["n_masks"] == 48
    assert result.attributions.shape == (3, lm.n_layers, lm.n_heads)
    config = json.loads((out / "config.json").read_text())
    assert config["versions"]["transformers"].startswith("5.")
    top = summary["top_heads"][0]
    assert np.isclose(result.mean_attribution[top[0], top[1]], top[2], atol=1e-6)


def test_targets_equal_direct_engine_runs(small_run):
    """The stored targets are exactly what the engine gives for the stored masks (prefix path)."""
    from headflow import Baseline, InterventionEngine
    from headflow.per_image import load_baseline, mask_rows

    lm, data, out, result = small_run
    engine = InterventionEngine(lm)
    prompt = engine.prepare(data[1].image, result.config["spec"]["question"])
    masks = np.load(out / "masks.npy")[:10]
    baseline = load_baseline(out / "baseline.safetensors")
    assert baseline.kind == "mean"
    # the naive loop: full prompt, one mask per forward
    full = torch.cat([engine.run(prompt, [row], baseline=baseline, path="full").logits
                      for row in mask_rows(masks, lm.n_layers, lm.n_heads)])
    expected = target_values(full, int(result.images.at[1, "answer_id"]), "logit").numpy()
    assert np.allclose(np.load(out / "targets.npy")[1, :10], expected, atol=1e-4)


def test_attribute_uses_the_prefix_path(small_run, monkeypatch):
    """`attribute` goes through the engine's prefix-reuse path (the one benchmarks/speed.py measures)."""
    from headflow.intervene.engine import InterventionEngine

    lm, data, out, _ = small_run
    paths = []
    original = InterventionEngine.run

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        paths.append(result.path)
        return result

    monkeypatch.setattr(InterventionEngine, "run", spy)
    HeadAttribution(lm, n_masks=16, n_val=8, keep_wrong=True).run(data, out=out.parent / "spy")
    assert paths and set(paths) == {"prefix"}


def test_resume_after_a_crash_gives_identical_results(small_run, monkeypatch, tmp_path):
    lm, data, out, result = small_run
    calls = {"n": 0}
    original = RowStore.write

    def crash_after_one(self, row, values):
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return original(self, row, values)

    run = tmp_path / "resumed"
    monkeypatch.setattr(RowStore, "write", crash_after_one)
    method = HeadAttribution(lm, n_masks=48, n_val=16, keep_wrong=True, batch_size=32)
    with pytest.raises(KeyboardInterrupt):
        method.run(data, out=run)
    assert not (run / "summary.json").exists()
    assert np.load(run / "targets.done.npy").sum() == 1
    monkeypatch.setattr(RowStore, "write", original)
    resumed = method.run(data, out=run)
    assert np.array_equal(resumed.attributions, result.attributions)  # bit for bit
    assert np.array_equal(np.load(run / "targets.npy"), np.load(out / "targets.npy"))
    with pytest.raises(HeadflowError, match="different configuration \\(differs in: ablation_prob\\)"):
        HeadAttribution(lm, n_masks=48, n_val=16, keep_wrong=True, ablation_prob=0.2).run(data, out=run)


def test_bad_parameters(tiny_models, tmp_path):
    lm = tiny_models("llava")
    data = load_dataset("default", n=1)
    with pytest.raises(HeadflowError, match=r"The 'ablation_prob' parameter of HeadAttribution must be a float in \(0, 1\)\. Got 1\.5 instead\."):
        HeadAttribution(lm, ablation_prob=1.5).run(data, out=tmp_path / "x")
    with pytest.raises(HeadflowError, match="The 'baseline' parameter of HeadAttribution must be one of mean, zero, blank, resample, knockout"):
        HeadAttribution(lm, baseline="median").run(data, out=tmp_path / "y")
    with pytest.raises(HeadflowError, match="No image is answered correctly"):
        HeadAttribution(lm, n_masks=8, n_val=8).run(data, out=tmp_path / "z")
    with pytest.raises(HeadflowError, match="The fit of .* needs about .* GiB but .* is free; use fewer --masks"):
        HeadAttribution(lm, n_masks=10**11, keep_wrong=True).run(data, out=tmp_path / "huge")
    assert not (tmp_path / "huge").exists()  # refused before the run directory is touched


@pytest.mark.parametrize("baseline", ["zero", "knockout", "blank", "resample"])
def test_other_baselines_run(tiny_models, tmp_path, baseline):
    lm = tiny_models("llava")
    data = load_dataset("default", n=2)
    result = HeadAttribution(lm, n_masks=16, n_val=8, keep_wrong=True, baseline=baseline).run(data, out=tmp_path / "r")
    assert np.isfinite(result.attributions).all() and result.summary["baseline"] == baseline


def test_validation_curves(small_run):
    lm, data, out, _ = small_run
    v = Validation(lm).run(out, dataset=data)
    ranks = v.data["rankings"]
    assert set(ranks) == {"attribution", "attribution_per_image", "single_head", "attention", "random"}
    n = lm.n_layers * lm.n_heads
    for r in ranks.values():
        assert len(r["completeness"]) == n + 1
        # k = 0 ablates nothing (completeness 0); k = N ablates everything (completeness 1)
        assert abs(r["completeness"][0]) < 1e-5 and abs(r["completeness"][-1] - 1) < 1e-5
        assert abs(r["faithfulness"][-1] - 1) < 1e-5 and abs(r["faithfulness"][0]) < 1e-5
    single = np.load(out / "single_head.npy")
    assert single.shape == (3, lm.n_layers, lm.n_heads)
    for name in ("validation_curves.png", "attribution_vs_attention.svg"):
        assert (out / "figures" / name).exists()


def test_planted_heads_rank_on_top(tmp_path):
    """Ground truth: silence every head but three (their o_proj columns set to 0); only those three can
    carry anything — image information included — so they must be the top three, the rest exactly 0."""
    lm = load_model("tiny:llava", seed=3)
    n_layers, n_heads = lm.n_layers, lm.n_heads
    head_dim = lm.text_config.head_dim
    planted = {(0, 1), (1, 2), (1, 3)}
    with torch.no_grad():
        for layer, block in enumerate(lm.adapter.language_model().layers):
            for head in range(n_heads):
                if (layer, head) not in planted:
                    block.self_attn.o_proj.weight[:, head * head_dim:(head + 1) * head_dim] = 0
    data = load_dataset("default", n=3)
    result = HeadAttribution(lm, n_masks=64, n_val=16, keep_wrong=True, ablation_prob=0.3).run(data, out=tmp_path / "p")
    magnitude = np.abs(result.mean_attribution).ravel()  # random weights: a planted head may help or hurt
    top3 = {(int(i // n_heads), int(i % n_heads)) for i in np.argsort(-magnitude)[:3]}
    assert top3 == planted
    others = [result.mean_attribution[l, h] for l in range(n_layers) for h in range(n_heads) if (l, h) not in planted]
    # silenced heads only pick up the fit's residual from interactions among the planted ones
    assert np.abs(others).max() < 0.2 * min(abs(result.mean_attribution[l, h]) for l, h in planted)


def test_default_model_fits_and_attribution_order_beats_random(tmp_path):
    """Issue 4's criteria on the embedded default, smaller than the demo (32 images, 256 + 64 masks):
    held-out LDS median >= 0.7, and ablating the heads in attribution order removes 80 % of the
    all-heads logit drop with fewer heads than a random order needs. (The second-edition default has no
    image-attention cost, and the distinct-subset rule, at most half of random's, does not hold on it:
    27 vs 40 here; the first edition's cost made it hold, 10 vs 35.)"""
    lm = load_model("default")
    data = load_dataset("default", n=32)
    run = tmp_path / "default"
    result = HeadAttribution(lm, n_masks=256, n_val=64).run(data, out=run)
    assert result.summary["n_images"] >= 27  # clean accuracy ~91 %: wrong answers are dropped
    assert result.summary["lds_pearson_median"] >= 0.7
    validation = Validation(lm).run(run, dataset=data).data
    rankings, subset = validation["rankings"], validation["subset"]
    k_attr, k_random = rankings["attribution"]["k80_completeness"], rankings["random"]["k80_completeness"]
    assert (subset["k80_attribution"], subset["k80_random"]) == (k_attr, k_random)
    assert k_attr is not None and k_random is not None and k_attr < k_random, (k_attr, k_random)
    assert subset["holds"] == (k_attr <= 0.5 * k_random)
