"""Head steering: factor 1 is the identity, factor 0 the knockout ablation, the prefix path equals the full path
and the slow reference, and a steering sweep over a finished run."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headflow import Baseline, HeadflowError, Intervention, InterventionEngine
from headflow.cli import app
from headflow.intervene.check import CHECK_QUESTION, check_image


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_factor_one_is_the_identity_and_factor_zero_the_knockout_ablation(tiny_models, family):
    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    shape = (lm.n_layers, lm.n_heads)
    gen = torch.Generator().manual_seed(2)
    heads = torch.rand(*shape, generator=gen) < 0.5
    heads[-1, 1] = True
    for path in ("full", "prefix"):
        same = engine.run(prompt, [Intervention(scale=torch.ones(*shape))], path=path).logits[0]
        assert torch.allclose(same, prompt.clean_logits, atol=1e-5), path
        zero = engine.run(prompt, [Intervention(scale=torch.where(heads, 0.0, 1.0))], path=path).logits[0]
        knocked = engine.run(prompt, [Intervention(ablate=heads)], baseline=Baseline.knockout(), path=path).logits[0]
        assert torch.allclose(zero, knocked, atol=1e-5), path
        assert float((zero - prompt.clean_logits).abs().max()) > 1e-3
    # the prefix path equals the full path for steering rows (also with ablations and attention capture)
    factors = torch.rand(4, *shape, generator=gen) * 3
    other = Baseline.of_prompt(engine.prepare(check_image(seed=1), CHECK_QUESTION))
    rows = [Intervention(scale=f, ablate=(heads if i % 2 else None)) for i, f in enumerate(factors)]
    full = engine.run(prompt, rows, baseline=other, path="full", capture_attention=True)
    fast = engine.run(prompt, rows, baseline=other, path="prefix", capture_attention=True)
    assert fast.path == "prefix" and engine.run(prompt, rows, baseline=other).path == "prefix"
    assert torch.allclose(full.logits, fast.logits, atol=1e-5)
    assert torch.allclose(full.image_attention, fast.image_attention, atol=1e-5)
    with pytest.raises(HeadflowError, match="finite and >= 0"):
        engine.run(prompt, [Intervention(scale={(0, 0): -1.0})])
    with pytest.raises(HeadflowError, match="must have shape"):
        engine.run(prompt, [Intervention(scale=torch.ones(1, 1))])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_steering_matches_the_slow_reference(tiny_models, family):
    """Factors per head (0, between, above 1) equal the model re-run with each head's attention written out."""
    from slow_reference import ReferenceRow, reference_logits

    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    inputs, groups = lm.encode(check_image(), CHECK_QUESTION)
    factors = torch.tensor([0.0, 0.5, 1.0, 2.5]).repeat(lm.n_layers * lm.n_heads // 4 + 1)[: lm.n_layers * lm.n_heads]
    factors = factors.view(lm.n_layers, lm.n_heads)
    want = reference_logits(lm, inputs, groups, ReferenceRow(scale=factors))
    assert float((want - prompt.clean_logits).abs().max()) > 1e-4
    for path in ("full", "prefix"):
        got = engine.run(prompt, [Intervention(scale=factors)], path=path).logits[0]
        assert float((got - want).abs().max()) <= 1e-4, path


def test_corruptions_are_deterministic_and_recorded():
    from headflow.steering import corrupt_image

    image = check_image()
    assert np.array_equal(np.asarray(corrupt_image(image, "noise:0.1", seed=3)),
                          np.asarray(corrupt_image(image, "noise:0.1", seed=3)))
    assert not np.array_equal(np.asarray(corrupt_image(image, "noise:0.1", seed=3)), np.asarray(image))
    mask = np.zeros(image.size[::-1], dtype=bool)
    mask[4:8, 5:9] = True
    occluded = np.asarray(corrupt_image(image, "occlude:box", mask=mask))
    assert (occluded[4:8, 5:9] == occluded[4, 5]).all() and np.array_equal(occluded[0], np.asarray(image)[0])
    with pytest.raises(HeadflowError, match="occlude needs object masks"):
        corrupt_image(image, "occlude:mask")


def test_steer_sweep_on_a_finished_run(tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["attribute", "--model", "tiny:llava", "--images", "2", "--keep-wrong", "--method",
                                   "patching", "--n-check", "0", "--out", str(run)])
    assert res.exit_code == 0, res.output
    argv = ["steer", str(run), "--factors", "0,1,2", "--corrupt", "noise:0.1,occlude:mask", "--k", "2"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    data = json.loads((run / "steering" / "steering.json").read_text())
    assert data["conditions"] == ["clean", "noise:0.1", "occlude:mask"] and data["n_images"] == 2
    assert data["identity_max_abs_diff"] < 1e-5  # factor 1 reproduces the run's clean logits
    assert data["corruptions"]["noise:0.1"] == {"kind": "noise", "param": 0.1}
    assert all(len(data["heads"][r]) == 2 for r in ("attribution", "attention", "random"))
    curves = data["curves"]["clean"]["attribution"]["mean_logit"]
    assert len(curves) == 3 and curves[0] != curves[1]
    for name in ("steering_accuracy.png", "steering_logit.png"):
        assert (run / "steering" / "figures" / name).exists()
    before = (run / "steering" / "steering.json").read_bytes()
    assert CliRunner().invoke(app, argv).exit_code == 0  # finished: loaded, not recomputed
    assert (run / "steering" / "steering.json").read_bytes() == before
    res = CliRunner().invoke(app, [*argv[:-1], "3"])
    assert res.exit_code == 2 and "differs in: k" in res.output
