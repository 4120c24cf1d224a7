"""Answers and token groups on the tokenizers and chat templates real checkpoints use.

The tiny families speak subword tokenizers like their checkpoints' (``headflow.models.subword``: Llama-style
SentencePiece BPE, Qwen2-style byte-level BPE) and use the checkpoints' chat templates verbatim
(``headflow/models/templates``). Here: the groups of every family decoded token by token, the answer rules on
the labels that break first-token rules (``2``, ``3``, ``tv``/``TV``, ``hydrant``, ``hairdryer``, ``toaster``/
``toilet``, ``hot dog``), the teacher-forced continuation against the model's own forward, the ``sequence``
target, and the refusal of knockouts and flow pairs on an empty group.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from headflow import HeadflowError, load_model
from headflow.answers import ALIASES, Answers, target_values
from headflow.intervene import Intervention, InterventionEngine, Knockout, RunOutput
from headflow.method import DEFAULT_QUESTION
from headflow.models.adapter import family_names
from headflow.models.tiny import chat_template
from headflow.per_image import answer_correct, image_targets, rows_correct

IMAGE = Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype("uint8"))

# What each family's prompt is, token by token, outside the image: (system, question, role, final).
GROUPS = {
    "llava": (["<s>", "▁USER", ":", "▁"], ["<0x0A>"], ["▁ASSISTANT"], [":"]),
    "llava_next": (["<s>", "▁[", "I", "N", "S", "T", "]", "▁"], ["<0x0A>"], ["▁[", "/", "I", "N", "S", "T"], ["]"]),
    "qwen2_vl": (["<|im_start|>", "system", "Ċ", "Y", "ou", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", ".",
                  "<|im_end|>", "Ċ", "<|im_start|>", "user", "Ċ", "<|vision_start|>"], ["<|vision_end|>"],
                 ["<|im_end|>", "Ċ", "<|im_start|>", "assistant"], ["Ċ"]),
    "internvl": (["<|im_start|>", "user", "Ċ", "<img>"], ["</img>", "Ċ"], ["<|im_end|>", "Ċ", "<|im_start|>", "assistant"],
                 ["Ċ"]),
}
GROUPS["qwen2_5_vl"] = GROUPS["qwen3_vl"] = GROUPS["qwen2_vl"]  # Qwen3-VL: Qwen2-VL's template (templates/SOURCES.md)
GROUPS["llava_onevision"] = (["<|im_start|>", "user", "Ċ"], ["Ċ"], ["<|im_end|>", "Ċ", "<|im_start|>", "assistant"], ["Ċ"])
for _family, _bos in (("idefics3", "<|begin_of_text|>"), ("smolvlm", "<|im_start|>")):
    GROUPS[_family] = ([_bos, "U", "ser", ":", "<fake_token_around_image>", "<row_1_col_1>"], ["<fake_token_around_image>"],
                       ["<end_of_utterance>", "Ċ", "A", "ssistant"], [":"])
# The tokens inside the image span between image tokens (tile and row markers), on IMAGE; every other family: none.
_TILES = ["<fake_token_around_image>", "<row_1_col_2>", "Ċ", "<fake_token_around_image>", "<row_2_col_1>",
          "<fake_token_around_image>", "<row_2_col_2>", "Ċ", "Ċ", "<fake_token_around_image>", "<global-img>"]
GROUPS["aya_vision"] = (["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|START_OF_IMG|>", *"TILE_1"],
                        ["<|END_OF_IMG|>"], ["<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>"], ["<|CHATBOT_TOKEN|>"])
SEPARATORS = {"idefics3": _TILES, "smolvlm": _TILES,
              "aya_vision": [*"TILE_2", *"TILE_3", *"TILE_4", *"TILE_GLOBAL"]}  # "TILE_i" is text: one piece a letter
# Gemma 3: Gemma3Processor writes "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n" for the placeholder
GROUPS["gemma3"] = (["<bos>", "<start_of_turn>", "u", "ser", "<0x0A>", "<0x0A>", "<0x0A>", "<start_of_image>"],
                    ["<end_of_image>", "<0x0A>", "<0x0A>"], ["<end_of_turn>", "<0x0A>", "<start_of_turn>", "m", "o",
                                                            "d", "el"], ["<0x0A>"])
# PaliGemma: "<image>" x N + "<bos>" + question + "\n": nothing before the image, a one-token answer header
GROUPS["paligemma"] = ([], ["<bos>"], [], ["<0x0A>"])
GROUPS["glm4v"] = (["[gMASK]", "<sop>", "<|user|>", "Ċ", "<|begin_of_image|>"], ["<|end_of_image|>"], ["<|assistant|>"],
                   ["Ċ"])
QUESTION_TOKENS = {"llama": ["W", "hat", "▁is", "▁the", "▁main", "▁object", "▁in", "▁the", "▁image", "?"],
                   "qwen2": ["W", "hat", "Ġis", "Ġthe", "Ġmain", "Ġobject", "Ġin", "Ġthe", "Ġimage", "?"]}
STYLE = {"llava": "llama", "llava_next": "llama", "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "internvl": "qwen2",
         "llava_onevision": "qwen2", "idefics3": "qwen2", "smolvlm": "qwen2", "aya_vision": "qwen2",
         "qwen3_vl": "qwen2", "gemma3": "llama", "paligemma": "llama", "glm4v": "qwen2"}  # Gemma: Llama-style pieces
LABELS = ["2", "3", "tv", "TV", "hydrant", "hairdryer", "toaster", "toilet", "hotdog", "hot", "cat"]


@pytest.fixture(scope="module")
def models():
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(f"tiny:{family}")
        return cache[family]

    return get


def _tokens(lm, ids, positions):
    return lm.adapter.tokenizer().convert_ids_to_tokens([ids[p] for p in positions])


def test_every_family_has_its_groups_written_out_here():
    assert sorted(GROUPS) == sorted(family_names()) and sorted(STYLE) == sorted(family_names())


@pytest.mark.parametrize("family", sorted(GROUPS))
def test_groups_token_by_token_on_the_real_template(models, family):
    lm = models(family)
    inputs, groups = lm.encode(IMAGE, "What is the main object in the image?")
    ids = inputs["input_ids"][0].tolist()
    system, question_start, role, final = GROUPS[family]
    assert _tokens(lm, ids, groups.system) == system
    assert set(_tokens(lm, ids, groups.image)) == {lm.adapter.tokenizer().convert_ids_to_tokens(lm.adapter.image_token_id())}
    assert _tokens(lm, ids, groups.question) == [*question_start, *QUESTION_TOKENS[STYLE[family]]]
    assert _tokens(lm, ids, groups.role) == role  # LLaVA-NeXT-Mistral: the pieces of "[/INST]" but its last
    assert _tokens(lm, ids, groups.final) == final
    assert _tokens(lm, ids, groups.separators) == SEPARATORS.get(family, [])
    assert groups.describe()["separators"] == list(groups.separators)
    assert groups.empty() == list(lm.adapter.empty_groups)
    # every position in exactly one group, or a separator
    tagged = sorted([*groups.system, *groups.image, *groups.question, *groups.role, *groups.final, *groups.separators])
    assert tagged == list(range(groups.length))


def test_every_family_has_every_group(models):
    """A new family joins this test: no group may come out empty on its tiny model's template, except those its
    adapter declares empty (a prompt layout without that part: PaliGemma's has no system prompt and no role)."""
    for family in family_names():
        lm = models(family)
        _, groups = lm.encode(IMAGE, DEFAULT_QUESTION)
        assert groups.empty() == list(lm.adapter.empty_groups), family
        assert set(lm.adapter.empty_groups) <= {"system", "role"}, family  # image, question, final: never empty


def test_old_internvl_template_encodes_like_the_current_one(models):
    lm = models("internvl")
    current = lm.encode(IMAGE, DEFAULT_QUESTION)
    saved = lm.processor.chat_template
    lm.processor.chat_template = chat_template("internvl3_old")  # image placeholder "<image>\n"
    try:
        old = lm.encode(IMAGE, DEFAULT_QUESTION)
    finally:
        lm.processor.chat_template = saved
    assert old[1] == current[1] and torch.equal(old[0]["input_ids"], current[0]["input_ids"])


# -- answers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_answer_spellings_in_context(models, family):
    lm = models(family)
    answers = lm.answers(DEFAULT_QUESTION)
    tok = answers.tokenizer
    pieces = {label: [tok.convert_ids_to_tokens(list(s.ids)) for s in answers.spellings(label)] for label in LABELS}
    space = "▁" if family == "llava" else "Ġ"
    for label, spellings in pieces.items():
        assert spellings, label
        for spelling in spellings:  # no answer starts with a bare space marker
            assert tok.convert_tokens_to_string(spelling[:1]).strip(), (label, spelling)
    # numbers: "2" after the prompt is the digit itself (Llama writes " 2" as "▁" + "2": left out)
    assert pieces["2"] == [["2"]] and pieces["3"] == [["3"]]
    assert answers.collisions(["2", "3"]) == []
    # whole words and split words
    assert [space + "tv"] in pieces["tv"] and [space + "T", "V"] in pieces["tv"]  # TV is a spelling of tv
    assert [space + "h", "y", "dr", "ant"] in pieces["hydrant"]
    assert [space + "h", "air", "dr", "y", "er"] in pieces["hairdryer"]
    assert pieces["hot"] != pieces["hotdog"]
    # toaster and toilet share their first piece: reported as a collision
    assert [space + "to", "a", "s", "ter"] in pieces["toaster"] and [space + "to", "i", "le", "t"] in pieces["toilet"]
    pairs = [c["labels"] for c in answers.collisions(["toaster", "toilet", "cat"])]
    assert ["toaster", "toilet"] in pairs and not any("cat" in p for p in pairs)


class SayingEngine:
    """A stand-in engine whose model greedily says ``text`` after the prompt, then ends (for the rule alone)."""

    def __init__(self, answers: Answers, text: str) -> None:
        n = len(answers._prompt_ids)
        self.said = answers._ids(answers.prompt_text + text)[n:] + [answers.tokenizer.eos_token_id]
        self.vocab = len(answers.tokenizer)

    def onehot(self, token: int) -> torch.Tensor:
        out = torch.zeros(self.vocab)
        out[token] = 1.0
        return out

    def prompt(self):
        return SimpleNamespace(clean_logits=self.onehot(self.said[0]))

    def run(self, prompt, rows, *, continuation=(), **_):
        steps = []
        for k in range(len(continuation)):
            on_track = list(continuation[:k + 1]) == self.said[:k + 1]
            steps.append(self.onehot(self.said[k + 1] if on_track and k + 1 < len(self.said) else self.said[-1]))
        return RunOutput(prompt.clean_logits[None], None, "prefix", torch.stack(steps)[None])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize(("label", "said", "correct"), [
    ("toaster", " toaster", True), ("toaster", " toilet", False), ("toilet", " Toilet", True),
    ("toilet", " toaster", False), ("tv", " TV", True), ("tv", " television", True), ("tv", " tvmonitor", False),
    ("hotdog", " hot dog", True), ("hotdog", " hotdog", True), ("hot", " hotdog", False), ("hot", " hot", True),
    ("hydrant", " hydrant", True), ("hydrant", " hydrangea", False), ("2", "2", True), ("2", "3", False),
    ("3", " 3", False),  # Llama: " 3" starts with a bare "▁"; Qwen2: "Ġ" — neither is the answer "3"
    ("hairdryer", " hair dryer", True), ("cat", " cats", False),
])
def test_correctness_is_decided_on_the_whole_word(models, family, label, said, correct):
    answers = models(family).answers(DEFAULT_QUESTION)
    engine = SayingEngine(answers, said)
    prompt = engine.prompt()
    answer = answers.resolve(label, prompt.clean_logits)
    assert answer_correct(engine, prompt, answer, answers) is correct


def test_aliases_can_be_switched_off(models):
    answers = models("llava").answers(DEFAULT_QUESTION, aliases=False)
    engine = SayingEngine(answers, " television")
    prompt = engine.prompt()
    assert not answer_correct(engine, prompt, answers.resolve("tv", prompt.clean_logits), answers)


def test_aliases_cover_cocos_multi_word_names():
    from headflow.data.coco import COCO_ONE_WORD

    for name, word in COCO_ONE_WORD.items():
        assert name in ALIASES[word], (name, word)


def _appended(inputs: dict, ids: list[int], token_type: int = 0) -> dict:
    """The processor's inputs with text tokens ``ids`` appended (per-token inputs extended as for text; ``token_type``
    for ``token_type_ids``: PaliGemma's generated tokens are suffix tokens, 1, attended causally)."""
    length = inputs["input_ids"].shape[1]
    out = dict(inputs)
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.ndim == 2 and value.shape == (1, length):
            value_of = {"attention_mask": 1, "token_type_ids": token_type}.get(key, 0)
            fill = torch.tensor([ids]) if key == "input_ids" else torch.full((1, len(ids)), value_of)
            out[key] = torch.cat([value, fill.to(value.dtype)], dim=1)
    return out


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "internvl", "gemma3", "qwen3_vl", "paligemma"])
def test_continuation_is_the_models_own_forward(models, family):
    """Teacher-forced tokens after the prompt: the engine's logits (prefix and full path; PaliGemma, a prefix-LM:
    the full path) are the model's own forward on the prompt with those tokens appended."""
    lm = models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(IMAGE, DEFAULT_QUESTION)
    ids = list(lm.answers(DEFAULT_QUESTION).spellings("hairdryer")[0].ids)
    inputs = _appended(prompt.inputs, ids, token_type=int(family == "paligemma"))
    with torch.no_grad():
        reference = lm.model(**inputs).logits[0, -len(ids) - 1:].float()
    paths = ("full",) if family == "paligemma" else ("prefix", "full")
    assert (engine.prefix_path_reason(prompt) is None) == (family != "paligemma")
    for path in paths:
        out = engine.run(prompt, [Intervention()], continuation=ids, path=path)
        assert out.path == path
        torch.testing.assert_close(out.logits[0], reference[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.continuation_logits[0], reference[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_sequence_target_fast_path_matches_full_path_and_reference(models, family):
    lm = models(family)
    engine = InterventionEngine(lm)
    prompt = engine.prepare(IMAGE, DEFAULT_QUESTION)
    ids = lm.answers(DEFAULT_QUESTION).spellings("hydrant")[0].ids
    assert len(ids) > 1
    gen = torch.Generator().manual_seed(0)
    rows = [Intervention()] + [Intervention(ablate=torch.rand(lm.n_layers, lm.n_heads, generator=gen) < 0.4)
                               for _ in range(5)]
    from headflow.intervene import Baseline

    baseline = Baseline.zero(prompt)
    fast = engine.run(prompt, rows, baseline=baseline, continuation=ids[:-1], path="prefix")
    full = engine.run(prompt, rows, baseline=baseline, continuation=ids[:-1], path="full")
    seq_fast = target_values(fast.logits, ids[0], "sequence", fast.continuation_logits, ids)
    seq_full = target_values(full.logits, ids[0], "sequence", full.continuation_logits, ids)
    torch.testing.assert_close(seq_fast, seq_full, atol=1e-4, rtol=1e-4)
    # the identity row: the summed log-probability of the word under the model's own forward
    inputs = _appended(prompt.inputs, list(ids[:-1]))
    with torch.no_grad():
        logp = lm.model(**inputs).logits[0, -len(ids):].float().log_softmax(-1)
    reference = sum(float(logp[k, t]) for k, t in enumerate(ids))
    assert abs(float(seq_fast[0]) - reference) < 1e-4
    targets, _ = image_targets(engine, prompt, rows, baseline, ids, "sequence")
    torch.testing.assert_close(targets, seq_fast)
    # the first-token target is unchanged by the continuation
    torch.testing.assert_close(fast.logits, engine.run(prompt, rows, baseline=baseline).logits, atol=1e-5, rtol=1e-5)


def test_rows_correct_reads_each_rows_whole_answer(models):
    lm = models("llava")
    engine = InterventionEngine(lm)
    answers = lm.answers(DEFAULT_QUESTION)
    prompt = engine.prepare(IMAGE, DEFAULT_QUESTION)
    greedy, said = int(prompt.clean_logits.argmax()), []
    # the tiny model's own greedy answer, four tokens long, as the "label"
    out = engine.run(prompt, [Intervention()], continuation=[greedy])
    said = [greedy, int(out.continuation_logits[0, 0].argmax())]
    out = engine.run(prompt, [Intervention(), Intervention(knockouts=(Knockout("image", "final"),))],
                     continuation=said)
    slow = []
    for r in range(2):
        first = int(out.logits[r].argmax()) == said[0]
        rest = int(out.continuation_logits[r, 0].argmax()) == said[1]
        ends = not answers.continues_word(tuple(said), int(out.continuation_logits[r, 1].argmax()))
        slow.append(first and rest and ends)
    assert rows_correct(out, tuple(said), answers).tolist() == slow


# -- empty groups ----------------------------------------------------------------------------------------------

# A template whose answer header is one token (":"): there is no 'role' token.
ONE_TOKEN_HEADER = ("{% for message in messages %}USER: {% for c in message['content'] %}{% if c['type'] == 'image' %}"
                    "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                    "{% if add_generation_prompt %}:{% endif %}")


@pytest.fixture
def headless_llava():
    lm = load_model("tiny:llava")
    lm.processor.chat_template = ONE_TOKEN_HEADER
    return lm


def test_empty_group_is_reported_and_its_knockouts_refused(headless_llava):
    lm = headless_llava
    _, groups = lm.encode(IMAGE, DEFAULT_QUESTION)
    assert groups.empty() == ["role"] and groups.header == ":"
    engine = InterventionEngine(lm)
    prompt = engine.prepare(IMAGE, DEFAULT_QUESTION)
    with pytest.raises(HeadflowError, match=r"token group 'role' is empty \(the chat template writes ':' between"):
        engine.run(prompt, [Intervention(knockouts=(Knockout("image", "role"),))])
    engine.run(prompt, [Intervention(knockouts=(Knockout("image", "final"),))])  # other groups still work


def test_flow_refuses_a_pair_with_an_empty_group_before_any_work(headless_llava):
    from headflow.data import load_dataset
    from headflow.flow import TokenFlow

    data = load_dataset("default", n=2)
    with pytest.raises(HeadflowError, match=r"^The flow pair question->role cannot be measured on this prompt: its "
                                            r"token group 'role' is empty"):
        TokenFlow(headless_llava, objects=False, progress=False).run(data)
    result = TokenFlow(headless_llava, objects=False, progress=False, keep_wrong=True, n_bootstrap=10,
                       pairs=[("image", "final"), ("question", "final")]).run(data)
    assert set(result.summary["pairs"]) == {"image->final", "question->final"}


def test_a_template_without_an_answer_header_is_refused():
    lm = load_model("tiny:llava")
    lm.processor.chat_template = ONE_TOKEN_HEADER.replace(":{% endif %}", "{% endif %}")
    with pytest.raises(HeadflowError, match="writes nothing between the user's question and the answer"):
        lm.encode(IMAGE, DEFAULT_QUESTION)


# -- the analyses ----------------------------------------------------------------------------------------------


def test_attribution_records_collisions_and_the_whole_answers_target(tmp_path):
    """Labels sharing a first token are warned about before the run and recorded; with ``target='sequence'`` the
    clean target of each image is the summed log-probability of its answer's tokens under the model's forward."""
    from headflow.attribution import HeadAttribution
    from headflow.data import load_dataset
    from headflow.data.base import Example
    from headflow.errors import HeadflowWarning

    lm = load_model("tiny:qwen2_vl")  # after "assistant\n" the answer has no leading space: "to" + "aster"
    images = load_dataset("default", n=2)
    data = [Example(id=f"x{i}", image=ex.image, label=label, factors={})
            for i, (ex, label) in enumerate(zip(images, ["toaster", "toilet"]))]
    with pytest.warns(HeadflowWarning, match=r"The labels 'toaster' and 'toilet' can both start with the token 'to'"):
        result = HeadAttribution(lm, target="sequence", n_masks=8, n_val=8, keep_wrong=True).run(data, out=tmp_path)
    assert result.summary["answer_collisions"] == [
        {"labels": ["toaster", "toilet"], "token": "to", "token_id": lm.adapter.tokenizer().convert_tokens_to_ids("to")}]
    engine = InterventionEngine(lm)
    for row, ex in zip(result.images.itertuples(), data):
        ids = [int(t) for t in row.answer_ids]
        assert len(ids) > 1 and ids[0] == row.answer_id
        prompt = engine.prepare(ex.image, DEFAULT_QUESTION)
        inputs = _appended(prompt.inputs, ids[:-1])
        with torch.no_grad():
            logp = lm.model(**inputs).logits[0, -len(ids):].float().log_softmax(-1)
        assert abs(row.clean_target - sum(float(logp[k, t]) for k, t in enumerate(ids))) < 1e-4


def test_cli_shows_headflow_warnings_as_one_line():
    import warnings

    from headflow.cli import _one_line_warnings
    from headflow.errors import HeadflowWarning

    saved = warnings.formatwarning
    try:
        _one_line_warnings()
        assert warnings.formatwarning(HeadflowWarning("two labels"), HeadflowWarning, "f.py", 3) == "warning: two labels\n"
        assert "f.py:3" in warnings.formatwarning(UserWarning("other"), UserWarning, "f.py", 3)
    finally:
        warnings.formatwarning = saved


def test_images_whose_label_cannot_be_written_are_skipped_not_fatal(tmp_path):
    """The default model's word-level vocabulary has no 'zebra': that image is skipped with a warning and a record,
    the others are analysed."""
    from headflow.attribution import HeadAttribution
    from headflow.data import load_dataset
    from headflow.data.base import Example
    from headflow.errors import HeadflowWarning
    from headflow.flow import TokenFlow

    images = load_dataset("default", n=3)
    data = [Example(id=ex.id, image=ex.image, label="zebra" if i == 1 else ex.label, factors=ex.factors)
            for i, ex in enumerate(images)]
    with pytest.warns(HeadflowWarning, match=r"cannot write the label\(s\) 'zebra' as tokens"):
        result = HeadAttribution("default", n_masks=8, n_val=8, keep_wrong=True).run(data, out=tmp_path / "a")
    assert result.summary["unanswerable_labels"] == ["zebra"]
    assert result.images["used"].tolist() == [True, False, True] and len(result.attributions) == 2
    with pytest.warns(HeadflowWarning, match="zebra"):
        flow = TokenFlow("default", keep_wrong=True, objects=False, progress=False, n_bootstrap=10).run(data)
    assert flow.summary["images"]["unanswerable"] == [data[1].id] and flow.summary["images"]["n_kept"] == 2


def test_skipped_labels_are_printed_by_every_command_and_shown_in_the_report(tmp_path, monkeypatch):
    """A folder dataset with a 'zebra' (not in the default model's vocabulary) and a row without an image: attribute,
    flow and study print both with the skipped-item counts, and the report shows the labels where data problems are."""
    import csv
    import re
    import shutil

    from typer.testing import CliRunner

    from headflow.cli import app
    from headflow.data import export_folder, load_dataset
    from headflow.report import write_report

    root = export_folder(load_dataset("default", n=3), tmp_path / "data")
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["label"] = "zebra"
    rows.append({**rows[0], "image": "images/missing.png", "id": "missing"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = ["--model", "default", "--data", f"folder:{root}", "--keep-wrong"]
    skipped = "skipped 1 image(s) whose label the model cannot write: 'zebra' (relabel them with words the tokenizer knows)"
    runner = CliRunner()
    run = tmp_path / "run"
    outputs = {
        "attribute": runner.invoke(app, ["attribute", *common, "--masks", "8", "--val-masks", "8", "--out", str(run)]),
        "flow": runner.invoke(app, ["flow", *common, "--objects", "false", "--bootstrap", "10", "--out",
                                    str(run / "flow")]),
    }
    for command, res in outputs.items():
        assert res.exit_code == 0, (command, res.output)
        lines = res.stdout.splitlines()
        assert "skipped data items: missing_image 1" in lines and skipped in lines, (command, res.stdout)
    html = write_report(run).read_text()
    assert re.search(r'<td data-key="unanswerable_labels">zebra</td>', html)
    assert re.search(r"2 of 2 images kept; 1 skipped because the model cannot write their label \(zebra\)", html)
    # the study prints what its attribution step recorded (the same HeadAttribution as above; not re-run here)
    import headflow.study

    def study_of_the_run(model, data, out, **kwargs):
        assert (model, data) == ("default", f"folder:{root}")
        shutil.copytree(run, out)
        return out / "report.html"

    monkeypatch.setattr(headflow.study, "run_study", study_of_the_run)
    res = runner.invoke(app, ["study", *common, "--quick", "--masks", "8", "--out", str(tmp_path / "study")])
    assert res.exit_code == 0, res.output
    assert "skipped data items: missing_image 1" in res.stdout.splitlines() and skipped in res.stdout.splitlines()


# -- split images and several images: the tokens between image tokens are separators, never the question ----------


def test_separators_are_in_no_group_and_not_in_the_question():
    from headflow.models.groups import GROUP_NAMES, derive_groups

    # ids: 0 text, 9 image, 5 a separator; "system" 2 tokens, 2 image runs around 2 separators, question 3, header 2
    ids = [0, 0, 9, 9, 5, 5, 9, 9, 0, 0, 0, 7, 7]
    groups = derive_groups(ids, image_token_id=9, header_tokens=2)
    assert groups.image_runs == ((2, 3), (6, 7)) and groups.separators == (4, 5)
    assert groups.image == (2, 3, 6, 7) and groups.question == (8, 9, 10) and groups.text_start == 8
    assert groups.system == (0, 1) and groups.role == (11,) and groups.final == (12,)
    described = groups.describe()
    assert list(described) == [*GROUP_NAMES, "separators"] and described["separators"] == [4, 5]
    assert not groups.mask("image")[[4, 5]].any() and not groups.mask("question")[[4, 5]].any()
    # one image run: no separators, and the groups are what they always were
    single = derive_groups([0, 9, 9, 0, 0, 7], image_token_id=9, header_tokens=1)
    assert single.separators == () and single.question == (3, 4) and single.describe()["separators"] == []


@pytest.mark.parametrize(("family", "between"), [("llava", ["<0x0A>"]),
                                                 ("qwen2_vl", ["<|vision_end|>", "<|vision_start|>"])])
def test_two_images_in_one_prompt_share_one_image_span(models, family, between):
    """Two images: what the template writes between them is separators; the question is the same as with one."""
    lm = models(family)
    one_inputs, one = lm.encode(IMAGE, "What is the main object in the image?")
    inputs, two = lm.encode([IMAGE, IMAGE], "What is the main object in the image?")
    ids, one_ids = inputs["input_ids"][0].tolist(), one_inputs["input_ids"][0].tolist()
    assert len(two.image_runs) == 2 and len(two.image) == 2 * len(one.image)
    assert _tokens(lm, ids, two.separators) == between
    assert _tokens(lm, ids, two.question) == _tokens(lm, one_ids, one.question)
    assert _tokens(lm, ids, two.system) == _tokens(lm, one_ids, one.system)


# -- several images: one group per image besides their union -------------------------------------------------------


@pytest.mark.parametrize("family", family_names())
def test_each_image_of_a_prompt_has_its_own_group(models, family):
    """Two images of different sizes: ``image_1`` and ``image_2`` are each image's tokens as the processor writes
    them for that image alone (tiles and rows of a split image included), in order, partitioning ``image``; the
    separators are in neither."""
    from PIL import Image

    lm = models(family)
    first, second = Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 80), (30, 30, 200))
    inputs, groups = lm.encode([first, second], "What is the main object in the image?")
    alone = [lm.encode(image, "What is the main object in the image?")[1].image for image in (first, second)]
    assert groups.image_counts == tuple(len(a) for a in alone)
    assert groups.images[0] + groups.images[1] == groups.image
    assert groups.positions("image_1") == groups.images[0] and groups.positions("image_2") == groups.images[1]
    assert max(groups.images[0]) < min(groups.images[1])
    ids = inputs["input_ids"][0]
    assert (ids[list(groups.image)] == lm.adapter.image_token_id()).all()
    assert not set(groups.separators) & set(groups.image)
    assert list(groups.describe())[-3:] == ["image_1", "image_2", "separators"]
    _, one = lm.encode(first, "What is the main object in the image?")
    assert one.images == (one.image,) and "image_1" not in one.names  # one image: no per-image names


def test_a_knockout_of_one_image_equals_the_knockout_of_its_positions(models):
    from PIL import Image

    from headflow import InterventionEngine, Knockout

    lm = models("qwen2_vl")
    engine = InterventionEngine(lm)
    prompt = engine.prepare([Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 80), (30, 30, 200))],
                            "What is the main object in the image?")
    second = list(prompt.groups.images[1])
    by_name = engine.run(prompt, [Intervention(knockouts=(Knockout("image_2", "final"),))]).logits
    by_positions = engine.run(prompt, [Intervention(knockouts=(Knockout(second, "final"),))]).logits
    both = engine.run(prompt, [Intervention(knockouts=(Knockout("image", "final"),))]).logits
    assert torch.equal(by_name, by_positions) and not torch.allclose(by_name, both)
    with pytest.raises(HeadflowError, match=r"Unknown token group 'image_3'.*2 images: image_1 \.\. image_2"):
        engine.run(prompt, [Intervention(knockouts=(Knockout("image_3", "final"),))])
    one = engine.prepare(Image.new("RGB", (64, 48)), "What is the main object in the image?")
    with pytest.raises(HeadflowError, match="Per-image groups .* several images"):
        engine.run(one, [Intervention(knockouts=(Knockout("image_1", "final"),))])


def test_image_counts_that_do_not_add_up_are_refused():
    from headflow.models.groups import derive_groups

    with pytest.raises(HeadflowError, match=r"4 image tokens but its 2 images have 1 \+ 2 = 3"):
        derive_groups([0, 9, 9, 5, 9, 9, 0, 7], image_token_id=9, header_tokens=1, image_counts=(1, 2))
    groups = derive_groups([0, 9, 9, 5, 9, 9, 0, 7], image_token_id=9, header_tokens=1, image_counts=(2, 2))
    assert groups.images == ((1, 2), (4, 5))
