"""The intervention engine against slow, independent references on tiny models of every family."""

import re

import pytest
import torch

from headflow import Baseline, HeadflowError, Intervention, InterventionEngine, Knockout, load_model
from headflow.intervene.check import CHECK_QUESTION, check_image, random_rows, run_checks
from headflow.models.adapter import family_names


@pytest.mark.parametrize("family", family_names())
def test_check_invariants_pass(tiny_models, family):
    results = run_checks(tiny_models(family))
    assert [r.name for r in results] == ["a_clean_vs_hf", "b_identity_ablation", "c_prefix_vs_full", "d_same_seed"]
    for r in results:
        assert r.passed and r.error is None and r.max_abs_diff <= 1e-4, (family, r)


@pytest.fixture(scope="module")
def llava(tiny_models):
    lm = tiny_models("llava")
    engine = InterventionEngine(lm)
    return lm, engine, engine.prepare(check_image(), CHECK_QUESTION)


def test_ablating_all_heads_with_knockout_equals_masked_attention(llava):
    """Independent slow reference: the plain model with a 4D mask hiding image keys from text queries."""
    lm, engine, prompt = llava
    length, text_start = prompt.groups.length, prompt.groups.text_start
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))
    allowed[text_start:, list(prompt.groups.image)] = False
    inputs, _ = lm.encode(check_image(), CHECK_QUESTION)
    with torch.no_grad():
        reference = lm.model(**{**inputs, "attention_mask": allowed[None, None]}).logits[0, -1]
    everything = torch.ones(lm.n_layers, lm.n_heads, dtype=torch.bool)
    for path in ("full", "prefix"):
        out = engine.run(prompt, [Intervention(ablate=everything)], baseline=Baseline.knockout(), path=path)
        assert torch.allclose(out.logits[0], reference, atol=1e-5), path
    # and the intervention is not a no-op
    assert (reference - prompt.clean_logits).abs().max() > 1e-3


def test_knockout_image_to_text_equals_ablation_with_knockout_baseline(llava):
    lm, engine, prompt = llava
    everything = torch.ones(lm.n_layers, lm.n_heads, dtype=torch.bool)
    ablated = engine.run(prompt, [Intervention(ablate=everything)], baseline=Baseline.knockout()).logits
    knocked = engine.run(prompt, [Intervention(knockouts=(Knockout("image", t) for t in ("question", "role", "final")))])
    assert torch.allclose(ablated, knocked.logits, atol=1e-5)


@pytest.mark.parametrize("family", family_names())
def test_ablation_changes_only_that_heads_output(tiny_models, family):
    """Hook o_proj's input: ablating (l, h) changes head h's slice in layer l only, at text positions only."""
    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    layer, head = lm.n_layers - 1, 1  # head 1 shares its KV head with head 0 under GQA
    head_dim = lm.text_config.hidden_size // lm.n_heads if not getattr(lm.text_config, "head_dim", None) \
        else lm.text_config.head_dim
    captured = {}
    layers = lm.adapter.language_model().layers

    def grab(i):
        return lambda module, args: captured.__setitem__(i, args[0].detach().clone())

    def o_proj_inputs(ablate):
        handles = [layers[i].self_attn.o_proj.register_forward_pre_hook(grab(i)) for i in range(lm.n_layers)]
        try:
            engine.run(prompt, [Intervention(ablate=ablate)], baseline=Baseline.zero(prompt), path="full")
        finally:
            for h in handles:
                h.remove()
        return dict(captured)

    none = o_proj_inputs(torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.bool))
    one = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.bool)
    one[layer, head] = True
    ablated = o_proj_inputs(one)
    for i in range(layer):
        assert torch.equal(none[i], ablated[i])
    diff = (none[layer] - ablated[layer]).abs()[0].view(prompt.groups.length, lm.n_heads, head_dim).amax(-1)
    changed = diff > 1e-6
    assert changed[prompt.groups.text_start:, head].all()
    assert not changed[:, [h for h in range(lm.n_heads) if h != head]].any()
    assert not changed[: prompt.groups.text_start].any()


def test_math_kernel_matches_sdpa_kernel(llava):
    lm, engine, prompt = llava
    rows = random_rows(lm.n_layers, lm.n_heads, 4, seed=3, knockouts=True)
    baseline = Baseline.zero(prompt)
    fast = engine.run(prompt, rows, baseline=baseline, path="prefix", capture_attention=True)
    slow = InterventionEngine(lm, kernel="written").run(prompt, rows, baseline=baseline, path="prefix",
                                                        capture_attention=True)
    assert torch.allclose(fast.logits, slow.logits, atol=1e-5)
    assert torch.allclose(fast.image_attention, slow.image_attention, atol=1e-5)


def test_attention_capture_prefix_equals_full_and_sums_to_probability(llava):
    lm, engine, prompt = llava
    rows = random_rows(lm.n_layers, lm.n_heads, 3, seed=5, knockouts=True)
    base = Baseline.zero(prompt)
    full = engine.run(prompt, rows, baseline=base, path="full", capture_attention=True).image_attention
    fast = engine.run(prompt, rows, baseline=base, path="prefix", capture_attention=True).image_attention
    assert full.shape == (3, lm.n_layers, lm.n_heads)
    assert torch.allclose(full, fast, atol=1e-5)
    assert ((prompt.image_attention > 0) & (prompt.image_attention < 1)).all()


def test_auto_path_falls_back_when_image_queries_are_touched(llava):
    lm, engine, prompt = llava
    rows = [Intervention(knockouts=(Knockout("system", "image"),))]
    out = engine.run(prompt, rows)
    assert out.path == "full"
    assert (out.logits[0] - prompt.clean_logits).abs().max() > 1e-4
    with pytest.raises(HeadflowError, match="prefix path cannot serve"):
        engine.run(prompt, rows, path="prefix")
    assert engine.run(prompt, [Intervention(knockouts=(Knockout("image", "final"),))]).path == "prefix"


def test_a_sliding_window_shorter_than_the_prompt_is_applied_inside_the_prefix_blocks(monkeypatch):
    """A language model with a sliding window shorter than the prompt: the prefix keys and values still do not
    depend on the suffix, so the prefix path serves it, hiding the prefix keys outside each query's window (read
    from the model's own mask); prefix, full and auto equal the slow reference, which applies that mask. Without
    the window inside the prefix blocks the prefix path would be off (so this test can fail)."""
    from headflow.intervene import replay
    from headflow.models.adapter import adapter_class
    from slow_reference import ReferenceRow, reference_logits

    lm = load_model(adapter_class("llava_next").tiny())  # its own copy: the shared tiny model stays unchanged
    engine = InterventionEngine(lm)
    lm.model.config.text_config.sliding_window = 8
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    assert not bool(prompt.recorded.masks[0][-1, 0])  # the model's own mask hides the oldest positions
    rows = [Intervention(knockouts=(Knockout("image", "final"),))]
    assert engine.prefix_path_reason(prompt) is None and engine.prefix_path_reason(prompt, rows) is None
    early = [Intervention(knockouts=(Knockout("system", "image"),))]
    assert "at or before the image" in engine.prefix_path_reason(prompt, early)
    inputs, groups = lm.encode(check_image(), CHECK_QUESTION)
    positions = groups.describe()
    want = reference_logits(lm, inputs, groups, ReferenceRow(knockouts=[(range(lm.n_layers), range(lm.n_heads),
                                                                         positions["final"], positions["image"])]))
    for path in ("prefix", "full", "auto"):
        out = engine.run(prompt, rows, path=path)
        assert out.path == ("full" if path == "full" else "prefix")
        assert torch.allclose(out.logits[0], want, atol=1e-4), path
    with torch.no_grad():
        plain = lm.model(**inputs).logits[0, -1].float()
    assert torch.allclose(prompt.clean_logits, plain, atol=1e-4)
    assert torch.allclose(engine.run(prompt, [Intervention()], path="prefix").logits[0], plain, atol=1e-4)
    real = replay.replay_masks
    monkeypatch.setattr(replay, "replay_masks", lambda *a: (real(*a)[0], [None] * lm.n_layers))
    from headflow.intervene import engine as engine_module

    monkeypatch.setattr(engine_module, "replay_masks", replay.replay_masks)
    ignored = engine.run(prompt, [Intervention()], path="prefix").logits[0]
    assert float((ignored - plain).abs().max()) > 1e-4


def test_batching_does_not_change_results(llava):
    lm, engine, prompt = llava
    rows = random_rows(lm.n_layers, lm.n_heads, 5, seed=9, knockouts=True)
    base = Baseline.zero(prompt)
    whole = engine.run(prompt, rows, baseline=base).logits
    small = InterventionEngine(lm, batch_size=2).run(prompt, rows, baseline=base).logits
    single = torch.cat([engine.run(prompt, [r], baseline=base).logits for r in rows])
    assert torch.allclose(whole, small, atol=1e-5) and torch.allclose(whole, single, atol=1e-5)


def test_mean_baseline_is_mean_of_recorded_image_kv(llava):
    lm, engine, prompt = llava
    other = engine.prepare(check_image(seed=1), CHECK_QUESTION)
    mean = Baseline.mean([prompt, other])
    a, b = prompt.image_kv()[0], other.image_kv()[0]
    assert torch.allclose(mean.layers[0].keys, (a.keys + b.keys) / 2)
    assert mean.layers[0].keys.shape == (lm.n_kv_heads, len(prompt.groups.image), a.keys.shape[-1])


def test_scope_restores_attention_even_on_error(llava):
    lm, engine, prompt = llava
    before = lm.model.config.get_text_config()._attn_implementation
    with pytest.raises(HeadflowError):
        engine.run(prompt, [Intervention(ablate=[(0, 99)])], baseline=Baseline.knockout())
    rows = [Intervention(ablate=torch.ones(lm.n_layers, lm.n_heads, dtype=torch.bool))]
    engine.run(prompt, rows, baseline=Baseline.knockout())
    assert lm.model.config.get_text_config()._attn_implementation == before
    layers = lm.adapter.language_model().layers
    assert not lm.adapter.language_model()._forward_pre_hooks
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in layers)


def test_bad_inputs_give_one_line_errors(llava):
    lm, engine, prompt = llava
    with pytest.raises(HeadflowError, match=r"Head \(0, 99\) is out of range: the model has 2 layers and 4 heads"):
        engine.run(prompt, [Intervention(ablate=[(0, 99)])], baseline=Baseline.knockout())
    with pytest.raises(HeadflowError, match="must have shape"):
        engine.run(prompt, [Intervention(ablate=torch.ones(3, 3, dtype=torch.bool))], baseline=Baseline.knockout())
    with pytest.raises(HeadflowError, match="Unknown token group 'answer'"):
        engine.run(prompt, [Intervention(knockouts=(Knockout("image", "answer"),))])
    with pytest.raises(HeadflowError, match="no baseline was given"):
        engine.run(prompt, [Intervention(ablate=[(0, 0)])])
    with pytest.raises(HeadflowError, match=re.escape(f"Unknown family 'gpt9'. Supported: {', '.join(family_names())}.")):
        load_model("tiny:gpt9")
    with pytest.raises(HeadflowError, match="at least one image"):
        lm.encode([], CHECK_QUESTION)
    with pytest.raises(HeadflowError, match="batch_size"):
        InterventionEngine(lm, batch_size=0)
    for err in (HeadflowError,):
        try:
            engine.run(prompt, [Intervention(ablate=[(5, 0)])], baseline=Baseline.knockout())
        except err as exc:
            assert "\n" not in str(exc)


def test_prompt_without_image_token_is_rejected():
    from headflow.models.groups import derive_groups

    with pytest.raises(HeadflowError, match="no image token"):
        derive_groups([1, 2, 3], image_token_id=7, header_tokens=1)


def test_unknown_model_type_lists_supported(tiny_models):
    from headflow.models.adapter import adapter_for

    lm = tiny_models("llava")

    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()

    with pytest.raises(HeadflowError, match="Unsupported model type 'gpt2'. Supported: .*llava.*register_adapter"):
        adapter_for(Fake(), lm.processor)


def test_auto_batch_size_calibrates_without_losing_rows(llava):
    lm, engine, prompt = llava
    rows = random_rows(lm.n_layers, lm.n_heads, 300, seed=11, knockouts=False)
    base = Baseline.zero(prompt)
    auto = InterventionEngine(lm, batch_size="auto")
    first = auto.run(prompt, rows, baseline=base).logits
    assert auto.batch_size in (16, 32, 64, 128) and not auto._calibrate
    assert torch.allclose(first, engine.run(prompt, rows, baseline=base).logits, atol=1e-5)


def test_out_of_memory_backs_off_and_retries(llava, monkeypatch):
    lm, engine, prompt = llava
    rows = random_rows(lm.n_layers, lm.n_heads, 10, seed=12, knockouts=False)
    base = Baseline.zero(prompt)
    auto = InterventionEngine(lm, batch_size="auto")
    auto._calibrate, auto.batch_size = False, 8
    original = InterventionEngine._run_prefix

    def small_memory(self, prompt, chunk, *args):
        if chunk.size > 3:
            raise torch.OutOfMemoryError("fake")
        return original(self, prompt, chunk, *args)

    monkeypatch.setattr(InterventionEngine, "_run_prefix", small_memory)
    out = auto.run(prompt, rows, baseline=base).logits
    assert auto.batch_size == 2 and out.shape[0] == 10
    monkeypatch.undo()
    assert torch.allclose(out, engine.run(prompt, rows, baseline=base).logits, atol=1e-5)


# -- (e): one random ablation row and one knockout row against the slow reference (tests/slow_reference.py) ------


@pytest.mark.parametrize("family", family_names())
def test_engine_matches_the_slow_per_head_reference(tiny_models, family):
    """Every registered family: a random ablation row (another image's keys/values as the baseline), a random
    knockout row, and both with the knockout baseline, on the full path and the path auto chooses, equal the
    model re-run eagerly with each head's attention written out by hand (float64), within 1e-4."""
    from headflow.intervene.attention import LayerBaseline
    from slow_reference import ReferenceRow, reference_image_kv, reference_logits

    lm = tiny_models(family)
    inputs, groups = lm.encode(check_image(), CHECK_QUESTION)
    clean = reference_logits(lm, inputs, groups, ReferenceRow())
    with torch.no_grad():
        plain = lm.model(**inputs).logits[0, -1].float()
    assert torch.allclose(clean, plain, atol=1e-4), (family, "the reference itself differs from the HF forward")
    other_inputs, other_groups = lm.encode(check_image(seed=1), CHECK_QUESTION)
    assert len(other_groups.image) == len(groups.image)
    kv = reference_image_kv(lm, other_inputs, other_groups)

    gen = torch.Generator().manual_seed(sum(map(ord, family)))
    ablate = torch.rand(lm.n_layers, lm.n_heads, generator=gen) < 0.4
    ablate[-1, 1] = True  # never empty
    positions = groups.describe()
    layers = (torch.rand(lm.n_layers, generator=gen) < 0.5).nonzero().flatten().tolist() or [0]
    heads = (torch.rand(lm.n_heads, generator=gen) < 0.5).nonzero().flatten().tolist() or [1]
    second = ("question", "role") if "role" not in groups.empty() else ("image", "question")
    knockouts = (Knockout("image", "final", layers=layers, heads=heads), Knockout(*second))
    as_reference = [(k.layers or range(lm.n_layers), k.heads or range(lm.n_heads), positions[k.target],
                     positions[k.source]) for k in knockouts]

    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    other = Baseline("custom", [LayerBaseline(k, v) for k, v in kv])
    cases = [("ablation", Intervention(ablate=ablate), other, ReferenceRow(ablate=ablate, baseline=kv)),
             ("knockout", Intervention(knockouts=knockouts), None, ReferenceRow(knockouts=as_reference)),
             ("both, knockout baseline", Intervention(ablate=ablate, knockouts=knockouts), Baseline.knockout(),
              ReferenceRow(ablate=ablate, knockouts=as_reference))]
    moved = 0.0
    for name, row, baseline, reference_row in cases:
        want = reference_logits(lm, inputs, groups, reference_row)
        moved = max(moved, float((want - clean).abs().max()))
        for path in ("full", "auto"):
            got = engine.run(prompt, [row], baseline=baseline, path=path)
            diff = float((got.logits[0] - want).abs().max())
            assert diff <= 1e-4, (family, name, path, got.path, diff)
    assert moved > 1e-4, (family, "the rows do not change the logits; the comparison would prove nothing")


@pytest.mark.parametrize("family", family_names())
def test_check_passes_in_bfloat16_within_its_stated_tolerance(family):
    """The invariants hold in bfloat16 too, to 8 ulps of the largest clean logit (measured: at most 1 ulp); the
    tolerance is not loose: float32's is still 1e-4."""
    from headflow.intervene.check import tolerance_for

    lm = load_model(f"tiny:{family}", dtype="bfloat16")
    results = run_checks(lm, n_rows=4)
    assert all(r.passed for r in results), [r.failure for r in results if not r.passed]
    scale = results[0].tolerance / (8 * torch.finfo(torch.bfloat16).eps)
    assert 1.0 <= scale < 100 and tolerance_for(torch.float32, scale) == 1e-4
