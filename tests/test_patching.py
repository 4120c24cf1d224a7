"""Attribution patching: the mixing coefficient is an exact generalisation of ablation, its gradient is the
finite-difference derivative, and a patching run is read like a regression run."""

import numpy as np
import pytest
import torch

from headflow import Baseline, HeadflowError, Intervention, InterventionEngine, load_model
from headflow.attribution import AttributionResult, HeadAttributionPatching
from headflow.attribution.patching import patching_gradient
from headflow.intervene.check import CHECK_QUESTION, check_image


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_mix_zero_is_clean_and_mix_one_is_the_ablation(tiny_models, family):
    """α = 0 reproduces the model's own logits; α = 1 on a random head set equals headflow's ablation of those
    heads (full and prefix path), for both mixes and for the knockout baseline (GQA: heads share KV heads)."""
    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    other = Baseline.of_prompt(engine.prepare(check_image(seed=1), CHECK_QUESTION))
    shape = (lm.n_layers, lm.n_heads)
    heads = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) < 0.5
    heads[-1, 1] = True
    with torch.no_grad():
        for kind, baseline in (("output", other), ("kv", other), ("output", Baseline.knockout())):
            clean = engine.mixed(prompt, torch.zeros(1, *shape), baseline=baseline, kind=kind)[0, 0].float()
            assert torch.allclose(clean, prompt.clean_logits, atol=1e-5), kind
            ablated = engine.mixed(prompt, heads[None].float(), baseline=baseline, kind=kind)[0, 0].float()
            for path in ("full", "prefix"):
                want = engine.run(prompt, [Intervention(ablate=heads)], baseline=baseline, path=path).logits[0]
                assert torch.allclose(ablated, want, atol=1e-5), (kind, baseline.kind, path)
            assert float((ablated - clean).abs().max()) > 1e-3  # the ablation does something
    with pytest.raises(HeadflowError, match="knockout baseline has none"):
        engine.mixed(prompt, torch.zeros(1, *shape), baseline=Baseline.knockout(), kind="kv")
    with pytest.raises(HeadflowError, match="must have shape"):
        engine.mixed(prompt, torch.zeros(1, 1, 1), baseline=other)
    assert lm.model.config.get_text_config()._attn_implementation != "headflow"  # scope restored
    assert all(p.grad is None for p in lm.model.parameters())  # no gradient left on the weights


def test_gradient_equals_the_finite_difference_per_head():
    """∂y/∂α_c from one backward pass equals the central finite difference (α_c = ±1e-3, every head, one
    batch), in float64 (the model's norms compute in float32, hence the step), for both mixes; the two mixes
    differ by more than the tolerance, so the check has power."""
    from headflow.models.adapter import adapter_class

    model, processor = adapter_class("llava").tiny()
    lm = load_model((model.double(), processor))
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    baseline = Baseline.of_prompt(engine.prepare(check_image(seed=1), CHECK_QUESTION))
    answer = int(prompt.clean_logits.argmax())
    n_layers, n_heads = lm.n_layers, lm.n_heads
    n, eps = n_layers * n_heads, 1e-3
    steps = torch.zeros(2 * n, n, dtype=torch.float64)
    steps[torch.arange(n) * 2, torch.arange(n)] = eps
    steps[torch.arange(n) * 2 + 1, torch.arange(n)] = -eps
    grads = {}
    for kind in ("output", "kv"):
        grads[kind] = patching_gradient(engine, prompt, baseline, (answer,), "logprob", kind)
        with torch.no_grad():
            y = engine.mixed(prompt, steps.view(2 * n, n_layers, n_heads), baseline=baseline, kind=kind)[:, 0]
            y = y.log_softmax(-1)[:, answer]
        fd = ((y[0::2] - y[1::2]) / (2 * eps)).view(n_layers, n_heads).numpy()
        scale = float(np.abs(fd).max())
        assert scale > 1e-3
        np.testing.assert_allclose(grads[kind], fd, rtol=0, atol=5e-3 * scale, err_msg=kind)
    assert float(np.abs(grads["output"] - grads["kv"]).max()) > 5e-3 * float(np.abs(grads["output"]).max())


def test_a_patching_run_has_the_attribution_layout_and_is_read_like_one(tmp_path):
    from headflow.data import load_dataset

    data = load_dataset("default", n=3)
    out = tmp_path / "run"
    result = HeadAttributionPatching("tiny:llava", keep_wrong=True, n_check=2, target="logprob").run(data, out=out)
    for name in ("config.json", "images.parquet", "baseline.safetensors", "attention.npy", "attributions.npy",
                 "gradients.npy", "summary.json"):
        assert (out / name).exists(), name
    again = AttributionResult.load(out)
    assert again.attributions.shape == (3, 2, 4) and np.array_equal(again.attributions, result.attributions)
    s = result.summary
    assert s["method"] == "patching" and s["mix"] == "output" and s["exact_check"]["n_images"] == 2
    # on a 2-layer model the first-order estimate ranks the exact single-head effects well
    assert s["exact_check"]["spearman_median"] > 0.7
    # resumed: loaded rows, same numbers; other parameters refused
    assert np.array_equal(HeadAttributionPatching("tiny:llava", keep_wrong=True, n_check=2, target="logprob").run(
        data, out=out).attributions, result.attributions)
    with pytest.raises(HeadflowError, match="differs in: mix"):
        HeadAttributionPatching("tiny:llava", keep_wrong=True, n_check=2, target="logprob", mix="kv").run(data, out=out)
    with pytest.raises(HeadflowError, match="knockout baseline has none"):
        HeadAttributionPatching("tiny:llava", mix="kv", baseline="knockout").run(data)
    result.plot()
    assert (out / "figures" / "attribution_heatmap.png").exists()
    from headflow.report import write_report

    page = write_report(out).read_text()  # the report reads a patching run: its LDS section says why it is absent
    assert "attribution patching (mix output)" in page
