"""The engine replays what the language model really receives (issue #15): inputs beyond embeddings and position
ids (DeepStack features), each layer's own mask (Gemma 3's bidirectional image block and sliding layers,
PaliGemma's prefix-LM), and the prefix path is chosen from those masks. Nothing is left behind on the model."""

import pytest
import torch

from headflow import Baseline, HeadflowError, Intervention, InterventionEngine, Knockout, load_model
from headflow.intervene.check import CHECK_QUESTION, check_image
from headflow.intervene.replay import extended_mask
from headflow.models.adapter import adapter_class, family_names


@pytest.mark.parametrize("family", family_names())
def test_identity_row_is_the_models_own_forward(tiny_models, family):
    """On the full path, the path auto chooses and the prefix path where valid, a row without intervention gives
    the model's own final logits: the language model re-run on what it received, then the model's output head."""
    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    with torch.no_grad():
        plain = lm.model(**prompt.inputs).logits[0, -1].float()
    paths = ("full", "auto") + (("prefix",) if engine.prefix_path_reason(prompt) is None else ())
    for path in paths:
        out = engine.run(prompt, [Intervention(), Intervention()], path=path)
        assert (out.reason is None) == (out.path == "prefix"), (family, path, out.path, out.reason)
        for row in out.logits:
            assert float((row - plain).abs().max()) <= 1e-4, (family, path)


def test_paligemma_takes_the_full_path_and_says_why(tiny_models):
    """A prefix-LM: image and prompt attend each other, so the image's keys depend on the question and the prefix
    path is refused from the model's own mask (no config flag says so); the full path equals the slow reference."""
    from slow_reference import ReferenceRow, reference_logits

    lm = tiny_models("paligemma")
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    why = engine.prefix_path_reason(prompt)
    assert why is not None and "bidirectional prefix" in why and "\n" not in why
    mask = prompt.recorded.masks[0]
    image = list(prompt.groups.image)
    assert bool(mask[image[0], prompt.groups.text_start])  # an image query attends the question
    rows = [Intervention(knockouts=(Knockout("image", "final"),))]
    out = engine.run(prompt, rows)
    assert out.path == "full" and out.reason == why
    with pytest.raises(HeadflowError, match="bidirectional prefix"):
        engine.run(prompt, rows, path="prefix")
    positions = prompt.groups.describe()
    want = reference_logits(lm, prompt.inputs, prompt.groups, ReferenceRow(knockouts=[
        (range(lm.n_layers), range(lm.n_heads), positions["final"], positions["image"])]))
    assert float((out.logits[0] - want).abs().max()) <= 1e-4
    assert float((want - prompt.clean_logits).abs().max()) > 1e-4


def test_gemma3_masks_are_replayed_and_matter(tiny_models):
    """Gemma 3's image block is bidirectional (token_type_ids, consumed outside the language model): the recorded
    mask has it; replaying a plain causal mask instead would move the logits (the identity tests can fail)."""
    lm = tiny_models("gemma3")
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    image = list(prompt.groups.image)
    assert all(bool(mask[image[0], image[-1]]) for mask in prompt.recorded.masks)
    assert engine.prefix_path_reason(prompt) is None  # the block lies inside the prefix
    causal = torch.ones_like(prompt.recorded.masks[0]).tril()
    saved = list(prompt.recorded.masks)
    prompt.recorded.masks = [causal for _ in saved]
    try:
        wrong = engine.run(prompt, [Intervention()], path="full").logits[0]
    finally:
        prompt.recorded.masks = saved
    assert float((wrong - prompt.clean_logits).abs().max()) > 1e-4


def test_qwen3_vl_deepstack_features_are_replayed_and_matter(tiny_models):
    """Qwen3-VL adds DeepStack visual features to early layers' hidden states at image positions: they are
    recorded with their positions, expanded per row on the full path, dropped on the prefix path (no image
    position is run there), and leaving them out would move the logits."""
    lm = tiny_models("qwen3_vl")
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    kwargs = prompt.recorded.kwargs
    assert {"visual_pos_masks", "deepstack_visual_embeds"} <= set(kwargs)
    assert kwargs["visual_pos_masks"][0].nonzero().flatten().tolist() == list(prompt.groups.image)
    rows = [Intervention(), Intervention(knockouts=(Knockout("image", "final"),))]
    full = engine.run(prompt, rows, path="full").logits
    fast = engine.run(prompt, rows, path="prefix").logits
    assert float((full - fast).abs().max()) <= 1e-4
    saved = dict(kwargs)
    del kwargs["deepstack_visual_embeds"], kwargs["visual_pos_masks"]
    try:
        wrong = engine.run(prompt, [Intervention()], path="full").logits[0]
    finally:
        kwargs.update(saved)
    assert float((wrong - prompt.clean_logits).abs().max()) > 1e-4


def test_gemma3_sliding_window_shorter_than_the_prompt():
    """Gemma 3 with a sliding window shorter than the prompt (and the bidirectional image block): the prefix path
    applies the window inside its prefix blocks; it, the full path and a teacher-forced continuation (the window
    carried past the prompt) equal the slow reference / the model's own forward."""
    from transformers import Gemma3ForConditionalGeneration

    from headflow.models.tiny import seeded_model
    from slow_reference import ReferenceRow, reference_logits

    model, processor = adapter_class("gemma3").tiny()
    model.config.text_config.sliding_window = 8
    lm = load_model((seeded_model(Gemma3ForConditionalGeneration, model.config, 0), processor))
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    assert prompt.recorded.windows == [8, None]
    sliding, full = prompt.recorded.masks
    assert not bool(sliding[-1, 0]) and bool(full[-1, 0])
    assert engine.prefix_path_reason(prompt) is None
    gen = torch.Generator().manual_seed(3)
    ablate = torch.rand(lm.n_layers, lm.n_heads, generator=gen) < 0.5
    ablate[0, 1] = True
    positions = prompt.groups.describe()
    row = Intervention(ablate=ablate, knockouts=(Knockout("question", "final"),))
    want = reference_logits(lm, prompt.inputs, prompt.groups, ReferenceRow(ablate=ablate, knockouts=[
        (range(lm.n_layers), range(lm.n_heads), positions["final"], positions["question"])]))
    assert float((want - prompt.clean_logits).abs().max()) > 1e-4
    for path in ("prefix", "full", "auto"):
        out = engine.run(prompt, [row], baseline=Baseline.knockout(), path=path)
        assert out.path == ("full" if path == "full" else "prefix") and (out.reason is None) == (out.path == "prefix")
        assert float((out.logits[0] - want).abs().max()) <= 1e-4, path
    ids = [5, 6, 7, 8, 9, 10, 11, 12, 13]  # past the window's reach from the prompt's last position
    inputs = dict(prompt.inputs)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)
    for key in ("attention_mask", "token_type_ids"):
        inputs[key] = torch.cat([inputs[key], torch.full((1, len(ids)), int(key == "attention_mask"))], 1)
    with torch.no_grad():
        reference = lm.model(**inputs).logits[0, -len(ids) - 1:].float()
    for path in ("prefix", "full"):
        out = engine.run(prompt, [Intervention()], continuation=ids, path=path)
        assert float((out.logits[0] - reference[0]).abs().max()) <= 1e-4, path
        assert float((out.continuation_logits[0] - reference[1:]).abs().max()) <= 1e-4, path


def test_extended_mask_continues_causally_within_the_window():
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    mask[:2, :2] = True  # a bidirectional block at the start
    out = extended_mask(mask, None, 2)
    assert out.shape == (6, 6) and torch.equal(out[:4, :4], mask) and not out[:4, 4:].any()
    assert out[4].tolist() == [True] * 5 + [False] and out[5].all()
    windowed = extended_mask(torch.ones(4, 4, dtype=torch.bool).tril(), 3, 2)
    assert windowed[4].tolist() == [False, False, True, True, True, False]
    assert windowed[5].tolist() == [False, False, False, True, True, True]


def _snapshot(model: torch.nn.Module) -> dict:
    """Every hook, every module's attribute names and every sub-config's attention implementation."""
    hooks = {name: (tuple(m._forward_pre_hooks), tuple(m._forward_hooks), tuple(m._forward_pre_hooks_with_kwargs),
                    tuple(m._backward_hooks)) for name, m in model.named_modules()}
    attributes = {name: tuple(sorted(vars(m))) for name, m in model.named_modules()}
    config = model.config
    implementations = {"": config._attn_implementation}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            implementations[key] = sub._attn_implementation
    return {"hooks": hooks, "attributes": attributes, "implementations": implementations}


@pytest.mark.parametrize("family", family_names())
def test_an_intervention_leaves_nothing_behind_on_the_model(tiny_models, family):
    """After prepare, runs on every path (with a continuation, with captured attention) and a run that raises,
    the model has the same hooks, the same attributes on every module and the same attention implementations."""
    lm = tiny_models(family)
    before = _snapshot(lm.model)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    rows = [Intervention(ablate=torch.ones(lm.n_layers, lm.n_heads, dtype=torch.bool)),
            Intervention(knockouts=(Knockout("image", "final"),))]
    for path in ("auto", "full"):
        engine.run(prompt, rows, baseline=Baseline.zero(prompt), path=path, capture_attention=True)
        engine.run(prompt, rows, baseline=Baseline.knockout(), path=path, continuation=[5, 6])
    with pytest.raises(HeadflowError):
        engine.run(prompt, [Intervention(ablate=[(0, 99)])], baseline=Baseline.knockout())
    after = _snapshot(lm.model)
    assert after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    assert after["implementations"] == before["implementations"]
    # and the model itself still computes what it computed before
    with torch.no_grad():
        plain = lm.model(**prompt.inputs).logits[0, -1].float()
    assert torch.allclose(plain, prompt.clean_logits, atol=1e-5)


def test_an_input_of_an_unknown_kind_is_refused_in_one_line():
    """Never silently left out: a language-model input without a replay rule stops prepare() with one line."""
    from headflow.intervene.replay import recorded_inputs

    embeds = torch.zeros(1, 3, 8)
    masks = {0: (None, True, None)}
    with pytest.raises(HeadflowError) as caught:
        recorded_inputs({"inputs_embeds": embeds, "rope_scales": torch.ones(1, 3)}, masks, 1, "SomeVLM")
    assert str(caught.value) == ("SomeVLM passes 'rope_scales' to its language model, an input headflow does not know "
                                 "how to replay; add it to headflow.intervene.replay.REPLAY with its rule.")
    with pytest.raises(HeadflowError, match="did not pass inputs_embeds"):
        recorded_inputs({"input_ids": torch.zeros(1, 3, dtype=torch.long)}, masks, 1, "SomeVLM")
    kept = recorded_inputs({"inputs_embeds": embeds, "use_cache": False, "flag": True}, masks, 1, "SomeVLM")
    assert set(kept.kwargs) == {"inputs_embeds", "flag", "position_ids"}
    assert kept.kwargs["position_ids"].tolist() == [[0, 1, 2]]
    assert torch.equal(kept.masks[0], torch.ones(3, 3).tril().bool())


@pytest.mark.parametrize("family", ["qwen3_vl", "gemma3"])
def test_two_images_of_the_same_size_keep_their_own_inputs(tiny_models, family):
    """The record belongs to each prepared prompt (nothing keyed by prompt length on the model or adapter): two
    images of the same size, prepared one after the other, each replay to their own logits, on both paths."""
    lm = tiny_models(family)
    engine = InterventionEngine(lm)
    first = engine.prepare(check_image(seed=0), CHECK_QUESTION)
    second = engine.prepare(check_image(seed=1), CHECK_QUESTION)
    assert first.groups.length == second.groups.length
    assert float((first.clean_logits - second.clean_logits).abs().max()) > 1e-4
    for prompt in (first, second):
        with torch.no_grad():
            plain = lm.model(**prompt.inputs).logits[0, -1].float()
        for path in ("prefix", "full"):
            got = engine.run(prompt, [Intervention()], path=path).logits[0]
            assert float((got - plain).abs().max()) <= 1e-4, (family, path)


def test_gemma2_score_softcapping_is_applied_on_every_path():
    """PaliGemma 2's Gemma 2 caps attention scores (``cap·tanh(s/cap)``), which SDPA cannot do. With a cap small
    enough to matter on a tiny model (0.5, with queries scaled up so that scores reach it): every invariant of ``check`` holds (the clean run equals the model's own
    eager forward), an ablation + knockout row equals the slow per-head reference (which applies the cap), a block
    of the prefix path computes the capped softmax and its log-sum-exp, and dropping the cap would move the logits
    by far more than the tolerance (so these comparisons can fail)."""
    import copy

    from headflow.intervene.attention import attend_with_lse
    from headflow.intervene.check import run_checks
    from slow_reference import ReferenceRow, reference_logits

    model, processor = adapter_class("paligemma").tiny()
    model.config.text_config.attn_logit_softcapping = 0.5
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.attn_logit_softcapping = 0.5
            layer.self_attn.q_proj.weight.mul_(40.0)  # random-init scores are ~1e-3: make some exceed the cap
    capped = load_model((model, processor))
    results = run_checks(capped)
    assert all(r.passed for r in results), [r.failure() for r in results if not r.passed]

    uncapped = copy.deepcopy(model)
    for layer in uncapped.model.language_model.layers:
        layer.self_attn.attn_logit_softcapping = None
    engine = InterventionEngine(capped)
    prompt = engine.prepare(check_image(), CHECK_QUESTION)
    without = InterventionEngine(load_model((uncapped, processor))).prepare(check_image(), CHECK_QUESTION)
    assert float((prompt.clean_logits - without.clean_logits).abs().max()) > 1e-2  # the cap matters here

    ablate = torch.zeros(capped.n_layers, capped.n_heads, dtype=torch.bool)
    ablate[0, 1] = ablate[1, 0] = True
    groups = prompt.groups
    inputs, _ = capped.encode(check_image(), CHECK_QUESTION)
    row = Intervention(ablate=ablate, knockouts=(Knockout("question", "final"),))
    want = reference_logits(capped, inputs, groups, ReferenceRow(
        ablate=ablate, knockouts=[(range(capped.n_layers), range(capped.n_heads), groups.final, groups.question)]))
    got = engine.run(prompt, [row], baseline=Baseline.knockout()).logits[0]
    assert float((got - want).abs().max()) <= 1e-4

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) * 4 for _ in range(3))
    allowed = torch.rand(1, 1, 5, 5, generator=g) < 0.7
    allowed[..., 0] = True
    out, lse = attend_with_lse(q, k, v, allowed, 0.5, softcap=0.5)
    scores = (torch.tanh((q @ k.transpose(-1, -2)) * 0.5 / 0.5) * 0.5).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)
