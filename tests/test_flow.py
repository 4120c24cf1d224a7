"""Token-level flow (F9) and object/background tokens (F10) on tiny models."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from headflow import HeadflowError, Intervention, InterventionEngine, Knockout
from headflow.data import Example, ListDataset
from headflow.per_image import answer_correct
from headflow.flow import DEFAULT_PAIRS, FlowResult, TokenFlow, parse_pairs
from headflow.flow import objects as obj
from headflow.flow.stats import bootstrap_indices, curve_summary, paired_later_test
from headflow.models.adapter import family_names

QUESTION = "What is the main object in the image? Answer in one word."


def example(i, label="circle", size=64):
    """A coloured rectangle on a plain background, with its exact mask."""
    rng = np.random.default_rng(i)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 120, 3)))
    y0, x0 = (int(v) for v in rng.integers(0, size // 2, 2))
    box = (x0, y0, x0 + size // 2, y0 + size // 3)
    ImageDraw.Draw(image).rectangle(box, fill=tuple(int(c) for c in rng.integers(140, 255, 3)))
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    return Example(id=f"test-{i}", image=image, label=label, mask=mask)


def dataset(n):
    return ListDataset("test", [example(i, label) for i, label in zip(range(n), ["circle", "square", "star", "moon"])])


@pytest.fixture(scope="module")
def llava(tiny_models):
    lm = tiny_models("llava")
    ex = example(0)
    engine = InterventionEngine(lm)
    return lm, engine, engine.prepare(ex.image, QUESTION), ex


@pytest.fixture(scope="module")
def flow_run(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    flow = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=200, n_random=3, n_maps=1, progress=False)
    return flow.run(dataset(4), out=out), out


def flow_rows(lm, prompt, ex):
    """Window rows of every default pair, object/background/random rows and per-token rows."""
    from headflow.models.geometry import token_coverage

    empty = set(prompt.groups.empty())  # PaliGemma: no system or role token
    pairs = [(s, t) for s, t in DEFAULT_PAIRS if not {s, t} & empty]
    rows = [Intervention(knockouts=obj.knockouts(s, t, [l], None)) for s, t in pairs for l in range(lm.n_layers)]
    heads = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.bool)
    heads[0, 1] = heads[1, 2] = heads[1, 3] = True
    rows += [Intervention(knockouts=obj.knockouts("image", "final", range(lm.n_layers), heads))]
    cov = token_coverage(lm, ex.image, ex.mask, prompt.inputs)
    o_rows, _, _ = obj.object_rows(prompt.groups, cov, layers=range(lm.n_layers), heads=None, n_random=2,
                                   rng=np.random.default_rng(0))
    t_rows, _ = obj.token_rows(prompt.groups, layers=[1], heads=None)
    return rows + o_rows + t_rows[:4]


@pytest.mark.parametrize("family", family_names())
def test_flow_rows_prefix_path_equals_full_prompt(tiny_models, family):
    lm = tiny_models(family)
    ex = example(1)
    engine = InterventionEngine(lm, batch_size=16)
    prompt = engine.prepare(ex.image, QUESTION)
    rows = flow_rows(lm, prompt, ex)
    slow = engine.run(prompt, rows, path="full")
    if engine.prefix_path_reason(prompt) is not None:  # PaliGemma, a prefix-LM: auto takes the full path
        fast = engine.run(prompt, rows)
        assert fast.path == "full" and fast.reason == engine.prefix_path_reason(prompt)
    else:
        fast = engine.run(prompt, rows, path="prefix")
        assert fast.path == "prefix" and slow.path == "full"
    assert torch.allclose(fast.logits, slow.logits, atol=1e-5)
    assert (fast.logits - prompt.clean_logits).abs().amax(-1).max() > 1e-4  # not all no-ops


def test_all_image_tokens_by_position_equal_image_group_knockout(llava):
    lm, engine, prompt, _ = llava
    explicit = Intervention(knockouts=obj.knockouts(list(prompt.groups.image), obj.text_positions(prompt.groups),
                                                    range(lm.n_layers), None))
    grouped = Intervention(knockouts=tuple(Knockout("image", t) for t in ("question", "role", "final")))
    out = engine.run(prompt, [explicit, grouped]).logits
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert (out[0] - prompt.clean_logits).abs().max() > 1e-4


def test_head_subset_of_all_heads_equals_all_heads(llava):
    lm, engine, prompt, _ = llava
    every = torch.ones(lm.n_layers, lm.n_heads, dtype=torch.bool)
    none = torch.zeros(lm.n_layers, lm.n_heads, dtype=torch.bool)
    rows = [Intervention(knockouts=obj.knockouts("image", "final", [1], h)) for h in (None, every, none)]
    out = engine.run(prompt, rows).logits
    assert torch.allclose(out[0], out[1], atol=1e-6)
    assert torch.allclose(out[2], prompt.clean_logits, atol=1e-4)


def test_flow_json_has_the_keys_and_sane_values(flow_run, tiny_models):
    result, out = flow_run
    lm = tiny_models("llava")
    summary = json.loads((out / "flow.json").read_text())
    window = max(1, round(lm.n_layers / 6))
    n_windows = lm.n_layers - window + 1
    assert summary["resolved"]["window_"] == window
    assert set(summary["pairs"]) == {f"{s}->{t}" for s, t in DEFAULT_PAIRS}
    for p in summary["pairs"].values():
        for key in ("curve", "curve_lo", "curve_hi"):
            assert len(p[key]) == n_windows and np.isfinite(p[key]).all()
        assert all(lo <= m + 1e-12 and m <= hi + 1e-12 for lo, m, hi in zip(p["curve_lo"], p["curve"], p["curve_hi"]))
        assert p["peak_layer"]["value"] in range(n_windows)
        assert set(p["mean_layer"]) == {"value", "lo", "hi"} and len(p["logit"]["curve"]) == n_windows
    for key in ("mean", "lo", "hi", "p_wilcoxon", "p_sign", "verdict", "claim"):
        assert key in summary["c3"]
    assert summary["c4"]["verdict"] in ("supported", "not supported")
    for condition in ("object", "background", "random_object", "random_background", "object_minus_random"):
        assert np.isfinite(summary["objects"][condition]["prob"]["mean"])
    assert summary["images"]["n_kept"] == 4 and summary["provenance"]["model"]["name"] == "tiny:llava"
    windows = pd.read_parquet(out / "flow_windows.parquet")
    assert list(windows.columns) == ["image_id", "pair", "source", "target", "window_start", "effect_prob",
                                     "effect_logit"]
    assert len(windows) == 4 * len(DEFAULT_PAIRS) * n_windows and np.isfinite(windows["effect_prob"]).all()
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {f"{n}.{e}" for n in ("flow_curves", "flow_objects", "flow_token_maps") for e in ("png", "svg")} <= figures
    assert not [p for p in out.rglob("*.tmp")]


def test_result_roundtrip_and_token_maps(flow_run):
    result, out = flow_run
    loaded = FlowResult.load(out)
    assert loaded.summary == json.loads(json.dumps(result.summary))
    pd.testing.assert_frame_equal(loaded.windows, result.windows)
    (image_id, m), = loaded.token_maps.items()
    assert m["effect_prob"].shape == m["coverage"].shape == (16,) and m["rects"].shape == (16, 4)
    np.testing.assert_array_equal(m["image"], result.token_maps[image_id]["image"])


def test_run_is_deterministic_and_one_engine_call_per_image(tiny_models, flow_run, monkeypatch):
    calls = []
    original = InterventionEngine.run
    monkeypatch.setattr(InterventionEngine, "run", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    flow = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=200, n_random=3, n_maps=1, progress=False)
    again = flow.run(dataset(4))
    assert len(calls) == 4
    assert again.summary == flow_run[0].summary


def test_interrupted_run_resumes_and_gives_the_same_result(tiny_models, flow_run, tmp_path, monkeypatch):
    import headflow.flow.knockout as knockout

    computed = []
    original = knockout._flow_image

    def crash_on_third(engine, plan, ex, index, **kw):
        if index == 2:
            raise KeyboardInterrupt
        computed.append(index)
        return original(engine, plan, ex, index, **kw)

    out = tmp_path / "flow"
    flow = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=200, n_random=3, n_maps=1, progress=False)
    monkeypatch.setattr(knockout, "_flow_image", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        flow.run(dataset(4), out=out)
    assert not (out / "flow.json").exists() and computed == [0, 1]

    monkeypatch.setattr(knockout, "_flow_image", lambda *a, **kw: computed.append(a[3]) or original(*a, **kw))
    resumed = flow.run(dataset(4), out=out)
    assert computed == [0, 1, 2, 3]  # images 0 and 1 were not recomputed
    assert resumed.summary == flow_run[0].summary
    pd.testing.assert_frame_equal(resumed.windows, flow_run[0].windows)
    pd.testing.assert_frame_equal(resumed.objects, flow_run[0].objects)
    assert not (out / ".flow_progress").exists()  # cleared once the result files are written

    other = TokenFlow(tiny_models("llava"), keep_wrong=True, n_bootstrap=100, progress=False)
    monkeypatch.setattr(knockout, "_flow_image", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        flow.run(dataset(4), out=tmp_path / "mixed")
    with pytest.raises(HeadflowError, match="different configuration .*n_bootstrap"):
        other.run(dataset(4), out=tmp_path / "mixed")


def test_bootstrap_is_seeded():
    effects = np.random.default_rng(0).normal(size=(10, 5)) - np.linspace(0, 1, 5)
    starts = np.arange(5)
    a = curve_summary(effects, starts, bootstrap_indices(10, 300, seed=7))
    b = curve_summary(effects, starts, bootstrap_indices(10, 300, seed=7))
    c = curve_summary(effects, starts, bootstrap_indices(10, 300, seed=8))
    assert a == b and a["curve_lo"] != c["curve_lo"]
    assert a["peak_layer"]["value"] == int(np.argmin(effects.mean(0)))


def test_c3_test_detects_a_later_layer():
    idx = bootstrap_indices(12, 500, seed=0)
    later, earlier = np.full(12, 3.0) + np.linspace(0, 1, 12), np.full(12, 1.0)
    result = paired_later_test(later, earlier, idx)
    assert result["verdict"] == "supported" and result["p_sign"] < 0.001 and result["p_wilcoxon"] < 0.001
    assert paired_later_test(earlier, later, idx)["verdict"] == "contradicted"


def test_c3_is_not_judged_where_a_group_of_knockouts_never_hurts():
    from headflow.flow.stats import hurts_somewhere

    idx = bootstrap_indices(20, 300, seed=0)
    starts = np.arange(4)
    rng = np.random.default_rng(0)
    noise = curve_summary(rng.normal(0, 1e-4, (20, 4)), starts, idx)  # no knockout changes the answer
    real = curve_summary(np.array([0, -0.2, -0.05, 0]) + rng.normal(0, 0.01, (20, 4)), starts, idx)
    tiny = curve_summary(np.array([0, -0.004, 0, 0]) + rng.normal(0, 1e-4, (20, 4)), starts, idx)
    assert hurts_somewhere([real]) and hurts_somewhere([noise, real])
    assert not hurts_somewhere([noise]) and not hurts_somewhere([tiny])  # tiny: clearly below 0, but < 1 %


def test_flow_answer_token_is_the_attribution_answer_token(tiny_models):
    """Flow and attribution pick the answer with one rule (headflow.answers), so they drop the same images."""
    lm = tiny_models("llava")
    tok, answers = lm.adapter.tokenizer(), lm.answers(QUESTION)
    circle = tok.convert_tokens_to_ids("▁circle")
    logits = torch.zeros(len(tok))
    assert answers.resolve("circle", logits).token_id == circle  # ties: the label as written, after a space
    capital = tok.convert_tokens_to_ids("▁Circle")
    logits[capital] = 5.0
    assert answers.resolve("circle", logits).token_id == capital


def test_wrong_answers_are_dropped_by_default(tiny_models):
    flow = TokenFlow(tiny_models("llava"), n_bootstrap=10, progress=False, objects=False)
    lm = tiny_models("llava")
    engine = InterventionEngine(lm)
    ex = dataset(2)
    answers = lm.answers(QUESTION)
    prompts = [engine.prepare(e.image, QUESTION) for e in ex]
    wrong = [e for e, p in zip(ex, prompts)
             if not answer_correct(engine, p, answers.resolve(e.label, p.clean_logits), answers)]
    if len(wrong) == len(ex):
        with pytest.raises(HeadflowError, match="No image is left.*keep_wrong=True"):
            flow.run(ex)
    else:
        assert flow.run(ex).summary["images"]["dropped_wrong"] == [e.id for e in wrong]


def test_bad_parameters_give_one_line_errors(tiny_models):
    lm = tiny_models("llava")
    with pytest.raises(HeadflowError, match=r"The 'window' parameter of TokenFlow must be None or an int in \[1, 2\]"):
        TokenFlow(lm, window=3).run(dataset(1))
    with pytest.raises(HeadflowError, match="The 'n_bootstrap' parameter of TokenFlow must be an int in"):
        TokenFlow(lm, n_bootstrap=0).run(dataset(1))
    with pytest.raises(HeadflowError, match="A flow pair must be 'source:target'"):
        parse_pairs("image:answer")
    assert parse_pairs("question:role, image->final") == (("question", "role"), ("image", "final"))


def test_cli_flow_command(tmp_path):
    from typer.testing import CliRunner

    from headflow.cli import app

    heads = tmp_path / "heads.txt"
    heads.write_text("0 1\n1,2\n")
    result = CliRunner().invoke(app, ["flow", "--model", "tiny:llava", "--out", str(tmp_path / "run"),
                                      "--images", "2", "--keep-wrong", "--bootstrap", "20", "--maps", "0",
                                      "--pairs", "question:final,image:final", "--heads", str(heads)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "flow.json").read_text())
    assert set(summary["pairs"]) == {"question->final", "image->final"}
    assert summary["params"]["heads"] == [[0, 1], [1, 2]]
    assert summary["c3"]["verdict"] in ("supported", "contradicted", "inconclusive")
    bad = CliRunner().invoke(app, ["flow", "--model", "tiny:llava", "--out", str(tmp_path / "x"),
                                   "--images", "1", "--heads", "top:3"])
    assert bad.exit_code == 2 and "--from-run" in bad.output


def test_heads_option_resolves_top_k_and_files(tmp_path):
    from headflow.flow.heads import resolve_heads

    scores = np.arange(8, dtype=float).reshape(2, 4)
    np.save(tmp_path / "attribution.npy", np.stack([scores, scores]))  # per image
    top = resolve_heads("top:3", tmp_path, 2, 4)
    assert top.nonzero().tolist() == [[1, 1], [1, 2], [1, 3]]
    assert resolve_heads("all", None, 2, 4) is None
    (tmp_path / "heads.json").write_text(json.dumps({"heads": [[0, 0], [1, 3]]}))
    assert resolve_heads(str(tmp_path / "heads.json"), None, 2, 4).nonzero().tolist() == [[0, 0], [1, 3]]
    with pytest.raises(HeadflowError, match=r"Head \(5, 0\) .* is out of range"):
        (tmp_path / "bad.txt").write_text("5 0\n")
        resolve_heads(str(tmp_path / "bad.txt"), None, 2, 4)
    with pytest.raises(HeadflowError, match="top:K with K in"):
        resolve_heads("top:99", tmp_path, 2, 4)
