"""End-to-end tests of the default-model training script and of the shipped checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from headflow.data import load_dataset  # noqa: E402
from headflow.zoo.build import QUESTIONS  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "src" / "headflow" / "zoo" / "default"
PROMPT = f"USER: <image>\n{QUESTIONS[0]} ASSISTANT:"


def _prompt(processor, question: str = QUESTIONS[0]) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def _check_loadable(path: Path) -> tuple[object, object]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert _prompt(processor) == PROMPT
    tok = processor.tokenizer
    text = "USER: <image>\nWhich object is shown? ASSISTANT: star </s>"
    ids = tok(text)["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[:4] == ["<s>", "USER", ":", "<image>"] and toks[-4:] == ["ASSISTANT", ":", "star", "</s>"]
    assert tok.decode(ids, skip_special_tokens=True).split() == ["USER", ":", "Which", "object", "is", "shown", "?", "ASSISTANT", ":", "star"]
    ex = load_dataset("default", n=2)[1]
    batch = processor(images=[ex.image], text=[PROMPT], return_tensors="pt")
    n_img = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_img == model.config.image_seq_length == (96 // 16) ** 2
    assert tok.convert_ids_to_tokens(batch["input_ids"][0, -2:].tolist()) == ["ASSISTANT", ":"]
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[1] >= batch["input_ids"].shape[1] + 1
    return model, processor


@pytest.mark.slow
def test_quick_training_runs_every_stage_saves_a_loadable_model_and_measures_every_question_type(tmp_path) -> None:
    from headflow.data.default import ANSWER_WORDS, QUESTION_TYPES

    out = tmp_path / "quick2"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HEADFLOW_THREADS="2")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-m", "headflow.zoo.train", "--out", str(out), "--quick", "--question-weights", "size=1,count=1,exists=4",
         "--instruct-exists-steps", "2", "--vision-patch-weight", "1", "--vision-token-presence", "0.5", "--align-word-weight", "0.5",
         "--instruct-lm-lr-scale", "0.5", "--size", "text_rope_theta=100000", "--instruct-scaffold-steps", "6",
         "--instruct-scaffold-ramp", "4", "--instruct-scaffold-exists-only"],
        capture_output=True, text=True, timeout=170, env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert set(summary["seconds"]) >= {"data", "vision", "text", "align", "instruct", "total_train"}
    assert set(summary["train_accuracy"]["instruct"]) == set(QUESTION_TYPES)
    held = summary["heldout"]
    assert set(held["accuracy_per_type"]) == set(QUESTION_TYPES) and held["n_eval"] == 48
    assert set(held["k80_completeness"]) == {"by_image_mass", "random"}
    card = (out / "MODEL_CARD.md").read_text()
    assert "Instruction tuning" in card and "question types drawn class 27%, colour 9%" in card and "exists 36%" in card
    assert summary["config"]["question_weights"] == [3.0, 1.0, 1.0, 1.0, 1.0, 4.0]  # class keeps its default 3
    assert summary["config"]["size"]["text_rope_theta"] == 100000 and "RoPE base 100,000" in card
    assert summary["config"]["instruct_scaffold_steps"] == 6 and "a scaffold for the first 6 steps" in card
    assert summary["config"]["instruct_scaffold_exists_only"] is True and "on the `exists` questions only" in card
    assert json.loads((out / "config.json").read_text())["text_config"]["rope_parameters"]["rope_theta"] == 100000.0
    assert summary["config"]["text_exists_steps"] == 3 and "the first 3 on `exists` questions alone" in card
    assert summary["config"]["instruct_exists_steps"] == 2 and summary["config"]["vision_patch_weight"] == 1.0
    vision = summary["train_accuracy"]["vision"]
    assert 0.0 <= vision["patch"] <= 1.0 and 0.0 <= vision["distractor"] <= 1.0  # the per-patch head ran
    assert "a linear head on every patch token" in card and "on distractors'" in card
    assert summary["config"]["vision_token_presence"] == 0.5 and 0.0 <= vision["token_present"] <= 1.0  # it ran
    assert "a presence head on every patch token alone (which classes the scene holds; x 0.5)" in card
    assert "every token's presence head all 16 right" in card
    assert summary["config"]["align_word_weight"] == 0.5 and "x 0.5 a word-likeness loss" in card
    assert summary["config"]["instruct_lm_lr_scale"] == 0.5 and "(vision x 0.3, language model x 0.5)" in card
    model, processor = _check_loadable(out)
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads
    vocab = processor.tokenizer.get_vocab()
    assert all(w in vocab for words in ANSWER_WORDS.values() for w in words)



@pytest.mark.slow
def test_vision_cache_serves_a_language_model_of_another_size(tmp_path, capsys) -> None:
    """Stage 0 trains the tower only, so its cache is reused (not retrained) under ``--size text_hidden=...``."""
    from transformers import LlavaForConditionalGeneration

    from headflow.zoo.train import main

    cache = tmp_path / "vision.pt"
    quick = ["--quick", "--no-measure", "--vision-cache", str(cache), "--vision-steps", "2", "--text-steps", "2",
             "--align-steps", "2", "--instruct-steps", "2", "--n-train", "64"]
    main(["--out", str(tmp_path / "a"), *quick])
    tower = {k: v for k, v in torch.load(cache, weights_only=False)["state"].items() if "vision_tower" in k}
    main(["--out", str(tmp_path / "b"), *quick, "--size", "text_hidden=64,text_mlp=96", "--align-lr", "0", "--instruct-lr", "0"])
    b = json.loads((tmp_path / "b" / "training.json").read_text())
    a = json.loads((tmp_path / "a" / "training.json").read_text())
    assert b["config"]["size"]["text_hidden"] == 64 and b["seconds"]["vision"] == a["seconds"]["vision"]  # from the cache
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b")
    assert model.config.text_config.hidden_size == 64 and model.config.text_config.intermediate_size == 96
    state = model.state_dict()
    for k, v in tower.items():  # learning rates 0 after stage 0: the tower is the cached one
        torch.testing.assert_close(state[k], v)
    with pytest.raises(SystemExit) as err:  # a tower of another size: one line, exit 2
        main(["--out", str(tmp_path / "c"), *quick, "--size", "vision_hidden=64"])
    assert err.value.code == 2
    assert f"--vision-cache {cache} holds no vision tower of this model's size" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["text_hidden=100", "text_width=64", "text_hidden=0", "image_size=64", "text_hidden"])
def test_train_cli_rejects_bad_size(capsys, size) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit) as err:
        main(["--out", "unused", "--size", size])
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg.startswith("python -m headflow.zoo.train: error: --size") and ("must be a multiple" in msg or repr(size) in msg)


def test_train_cli_rejects_negative_seed(capsys) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit):
        main(["--out", "unused", "--seed", "-1"])
    assert "--seed must be a non-negative int" in capsys.readouterr().err


def test_exists_first_steps_draw_only_exists_questions_half_yes() -> None:
    from headflow.data.default import CLASSES
    from headflow.zoo.train import _ONLY_EXISTS, Scenes, _sample_questions

    rng = np.random.default_rng(0)
    n = 4000
    present = np.zeros((n, len(CLASSES)), bool)
    present[np.arange(n), rng.integers(len(CLASSES), size=n)] = True
    sc = Scenes(np.zeros((n, 1, 1, 3), np.uint8), np.zeros((n, 5), np.int64), present, [""] * n, [""] * n,
                np.zeros((n, 36), np.int64))
    qs = _sample_questions(sc, np.arange(n), np.random.default_rng(1), weights=_ONLY_EXISTS)
    assert {q[0] for q in qs} == {"exists"}
    answers = np.array([q[3] == "yes" for q in qs])
    truth = np.array([present[i, CLASSES.index(q[2])] for i, q in enumerate(qs)])
    assert (answers == truth).all() and 0.47 < answers.mean() < 0.53


@pytest.mark.parametrize("share", [0.0, 0.6, 1.0])
def test_distractor_probes_set_how_often_a_present_probe_is_a_distractor(share) -> None:
    from headflow.data.default import CLASSES
    from headflow.zoo.train import _ONLY_EXISTS, Scenes, _sample_questions

    rng = np.random.default_rng(0)
    n = 6000
    attrs = np.zeros((n, 5), np.int64)
    attrs[:, 0] = rng.integers(len(CLASSES), size=n)
    present = np.zeros((n, len(CLASSES)), bool)
    present[np.arange(n), attrs[:, 0]] = True
    present[np.arange(n) % 2 == 0, (attrs[np.arange(n) % 2 == 0, 0] + 1) % len(CLASSES)] = True  # even: one distractor
    sc = Scenes(np.zeros((n, 1, 1, 3), np.uint8), attrs, present, [""] * n, [""] * n, np.zeros((n, 36), np.int64))
    qs = _sample_questions(sc, np.arange(n), np.random.default_rng(1), weights=_ONLY_EXISTS, distractor_probes=share)
    yes = np.array([q[3] == "yes" for q in qs])
    truth = np.array([present[i, CLASSES.index(q[2])] for i, q in enumerate(qs)])
    assert (yes == truth).all() and 0.47 < yes.mean() < 0.53
    is_distractor = np.array([CLASSES.index(q[2]) != attrs[i, 0] for i, q in enumerate(qs)])
    with_one = (np.arange(n) % 2 == 0) & yes
    # uniform over the two present objects, plus ``share`` of the draws forced onto the distractor
    assert abs(is_distractor[with_one].mean() - (share + (1 - share) / 2)) < 0.04
    assert not is_distractor[(np.arange(n) % 2 == 1) & yes].any()  # no distractor: the main object


def test_instruct_groups_give_the_language_model_its_own_rate_only_when_asked() -> None:
    from dataclasses import replace

    from transformers import LlavaForConditionalGeneration

    from headflow.zoo.build import build_config, build_processor
    from headflow.zoo.train import QUICK, _instruct_groups

    processor = build_processor(QUICK.size, world=2)
    model = LlavaForConditionalGeneration(build_config(processor.tokenizer, QUICK.size))
    vision = {id(p) for p in model.model.vision_tower.parameters()}
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    lr = QUICK.instruct_lr
    same = _instruct_groups(model, QUICK)  # the shipped recipe: two groups, as before the knob existed
    assert [len(g) for g, _ in same] == [len(list(model.parameters())) - len(vision), len(vision)]
    assert [r for _, r in same] == [lr, lr * QUICK.vision_lr_scale]
    split = _instruct_groups(model, replace(QUICK, instruct_lm_lr_scale=0.1))
    lm = {id(p) for p in model.parameters()} - vision - projector
    assert [{id(p) for p in g} for g, _ in split] == [projector, lm, vision] and lm and projector
    assert [r for _, r in split] == [lr, lr * 0.1, lr * QUICK.vision_lr_scale]


def test_train_cli_rejects_a_distractor_share_above_one(capsys) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit) as err:
        main(["--out", "/tmp/never", "--instruct-distractor-probes", "1.5"])
    assert err.value.code == 2
    assert "--instruct-distractor-probes is a probability, from 0 to 1. Got 1.5 instead." in capsys.readouterr().err


def test_patch_labels_name_the_object_covering_most_of_each_patch() -> None:
    from headflow.data.default import CLASSES, render_scene
    from headflow.zoo.train import patch_labels

    seen = set()
    for i in range(12):
        scene = render_scene(3, i, stream=1)
        labels = patch_labels(scene)
        for p in range(36):  # the slow way: count each object's pixels in the patch
            r, c = divmod(p, 6)
            counts = [int(o.mask[16 * r:16 * r + 16, 16 * c:16 * c + 16].sum()) for o in scene.objects]
            best = int(np.argmax(counts))
            want = CLASSES.index(scene.objects[best].label) if counts[best] >= 16 else len(CLASSES)
            assert labels[p] == want
        seen |= set(labels.tolist())
    assert len(CLASSES) in seen and len(seen) > 3  # background and several classes occur


def test_train_cli_rejects_negative_exists_steps(capsys) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit) as err:
        main(["--out", "unused", "--text-exists-steps", "-1"])
    assert err.value.code == 2
    assert "--text-exists-steps must be an int >= 0. Got -1 instead." in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["kind=2", "class=0", "class=two", "class", "exists=inf"])
def test_train_cli_rejects_bad_question_weights(capsys, weights) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit) as err:
        main(["--out", "unused", "--question-weights", weights])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "--question-weights takes TYPE=W pairs" in msg and repr(weights) in msg


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").is_file(), reason="default checkpoint not built")
def test_shipped_default_model() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20
    assert (DEFAULT_DIR / "MODEL_CARD.md").is_file()
    model, processor = _check_loadable(DEFAULT_DIR)
    cfg = model.config.text_config
    assert cfg.num_hidden_layers >= 6 and cfg.num_attention_heads == 8 and cfg.num_key_value_heads == 4
    ds = load_dataset("default", n=48, seed=5)
    batch = processor(images=[e.image for e in ds], text=[PROMPT] * len(ds), return_tensors="pt")
    with torch.no_grad():
        pred = model(**batch).logits[:, -1].argmax(-1)
    words = processor.tokenizer.convert_ids_to_tokens(pred.tolist())
    acc = sum(w == e.label for w, e in zip(words, ds)) / len(ds)
    assert acc >= 0.85


def test_training_defaults_are_the_shipped_models_recipe() -> None:
    """`python -m headflow.zoo.train` with no flags is the recipe the embedded weights were trained with."""
    from dataclasses import asdict

    from headflow.zoo.train import TrainConfig

    shipped = json.loads((DEFAULT_DIR / "training.json").read_text())["config"]
    assert json.loads(json.dumps(asdict(TrainConfig()))) == shipped


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").is_file(), reason="default checkpoint not built")
def test_training_image_attention_equals_eager_attention_weights() -> None:
    """The image-attention cost of training reads, through headflow's attention, the same per-query mass on
    image tokens as transformers' eager attention returns, and it carries gradients."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from headflow.zoo.diagnostics import STATE_KWARG, FlowControl, flow_control
    from headflow.zoo.train import image_mass_per_query, token_groups

    processor = AutoProcessor.from_pretrained(DEFAULT_DIR)
    eager = AutoModelForImageTextToText.from_pretrained(DEFAULT_DIR, attn_implementation="eager").eval()
    ours = AutoModelForImageTextToText.from_pretrained(DEFAULT_DIR).eval()
    ds = load_dataset("default", n=3)
    batch = processor(images=[e.image for e in ds], text=[PROMPT] * len(ds), return_tensors="pt")
    image, text = token_groups(batch["input_ids"], ours.config.image_token_id)
    with torch.no_grad():
        reference = eager(**batch, output_attentions=True).attentions  # LM layers: (B, H, S, S)
    control = FlowControl(image_keys=image, text_queries=text, image_attention=True)
    state = control.state()
    with flow_control(ours):
        ours(**batch, **{STATE_KWARG: state})
    n_layers = ours.config.text_config.num_hidden_layers
    assert sorted(state.image_attention) == list(range(n_layers))
    for layer in range(n_layers):
        expected = reference[layer][..., image[0]].sum(-1)  # (B, H, S)
        torch.testing.assert_close(state.image_attention[layer].detach(), expected, atol=1e-5, rtol=1e-4)
    mass = image_mass_per_query(state, text)
    mass.backward()
    grad = ours.model.language_model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.skipif(not (DEFAULT_DIR / "model.safetensors").is_file(), reason="default checkpoint not built")
def test_merged_image_tokens_give_the_models_own_logits() -> None:
    """Alignment's word-likeness loss reads the projector's tokens and feeds them back merged into the LM input:
    that path gives the logits of ``model(input_ids, pixel_values)`` on the same inputs."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from headflow.zoo.train import image_tokens, merged_input

    processor = AutoProcessor.from_pretrained(DEFAULT_DIR)
    model = AutoModelForImageTextToText.from_pretrained(DEFAULT_DIR).eval()
    ds = load_dataset("default", n=3)
    batch = processor(images=[e.image for e in ds], text=[PROMPT] * len(ds), return_tensors="pt")
    with torch.no_grad():
        own = model(**batch).logits
        tokens = image_tokens(model, batch["pixel_values"])
        merged = model(inputs_embeds=merged_input(model, batch["input_ids"], tokens), attention_mask=batch["attention_mask"]).logits
    assert tokens.shape == (3, model.config.image_seq_length, model.config.text_config.hidden_size)
    torch.testing.assert_close(merged, own, atol=1e-6, rtol=1e-6)
    assert not torch.equal(merged, model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"] * 0).logits.detach())


def test_word_likeness_loss_is_least_for_the_class_word_and_ignores_background_patches() -> None:
    from headflow.zoo.train import word_likeness_loss

    words = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([[3, 16, 5], [16, 0, 16]])  # 16 = no object on the patch
    named = torch.randn(2, 3, 32)
    named[classes < 16] = 2.0 * words[classes[classes < 16]]  # each object patch is (a multiple of) its class word
    wrong = named.clone()
    wrong[classes < 16] = words[(classes[classes < 16] + 1) % 16]
    best = word_likeness_loss(named, classes, words)
    cos = torch.nn.functional.normalize(words, dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
    expected = torch.nn.functional.cross_entropy(cos[[3, 5, 0]] / 0.1, torch.tensor([3, 5, 0]))
    torch.testing.assert_close(best, expected)  # the norm does not matter, only the direction
    assert word_likeness_loss(wrong, classes, words) > best + 5
    background = named.clone()
    background[classes == 16] = torch.randn(3, 32)  # background patches are free
    torch.testing.assert_close(word_likeness_loss(background, classes, words), best)


def test_a_token_can_name_its_class_and_its_colour_at_once() -> None:
    """The two terms of the word-likeness loss (class words, colour words) do not compete: a token along the sum
    of its class word and colour word names both, as the caption "a red key" does; the class word alone names
    no colour."""
    from headflow.zoo.train import word_likeness_loss

    g = torch.Generator().manual_seed(1)
    classes, colours = torch.randn(16, 64, generator=g), torch.randn(5, 64, generator=g)
    unit = torch.nn.functional.normalize
    both = (unit(classes[3], dim=0) + unit(colours[2], dim=0)).reshape(1, 1, 64)
    assert word_likeness_loss(both, torch.tensor([[3]]), classes) < 0.2
    assert word_likeness_loss(both, torch.tensor([[2]]), colours) < 0.2
    alone = classes[3].reshape(1, 1, 64)
    assert word_likeness_loss(alone, torch.tensor([[2]]), colours) > 1.0


def test_patch_colours_name_the_main_objects_colour_on_its_patches_only() -> None:
    from headflow.data.default import COLOURS
    from headflow.zoo.train import TRAIN_STREAM, render_scenes

    sc = render_scenes(8, 0, TRAIN_STREAM)
    main = sc.patches == sc.attrs[:, :1]
    assert main.any(1).all() and (~main & (sc.patches < 16)).any()  # every scene's main object labels patches; distractors too
    assert (sc.patch_colours[main] == np.repeat(sc.attrs[:, 1], main.sum(1))).all()
    assert (sc.patch_colours[~main] == len(COLOURS)).all()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_train_cli_rejects_a_negative_or_nan_weight(capsys, value) -> None:
    from headflow.zoo.train import main

    with pytest.raises(SystemExit) as err:
        main(["--out", "/tmp/never", "--align-word-weight", value])
    assert err.value.code == 2
    assert f"--align-word-weight must be a finite number >= 0. Got {float(value)} instead." in capsys.readouterr().err



def test_the_instruction_scaffold_names_each_patch_in_words_at_the_projectors_norm() -> None:
    """The scaffold gives, per image position: the class word's direction on a distractor's patches, the sum of
    the class and colour words' unit vectors on the main object's, ``<image>``'s elsewhere, each at the norm of
    the projector's token there; and its share of the LM's input falls from 1 to 0 over the ramp."""
    from types import SimpleNamespace

    from headflow.data.default import COLOURS
    from headflow.zoo.train import TRAIN_STREAM, TrainConfig, render_scenes, scaffold_share, scaffold_tokens

    sc = render_scenes(6, 0, TRAIN_STREAM)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(40, 24, generator=g)
    prompts = SimpleNamespace(class_ids=list(range(16)), colour_ids=list(range(16, 16 + len(COLOURS))), image_token_id=39)
    real = torch.randn(6, 36, 24, generator=g) * 7
    tokens = scaffold_tokens(sc, np.arange(6), prompts, emb, real)
    torch.testing.assert_close(tokens.norm(dim=-1), real.norm(dim=-1))
    unit = torch.nn.functional.normalize
    main = torch.from_numpy(sc.patches == sc.attrs[:, :1])
    patches = torch.from_numpy(sc.patches)
    distractor, empty = (patches < 16) & ~main, patches == 16
    assert main.any() and distractor.any() and empty.any()
    direction = unit(tokens, dim=-1)
    torch.testing.assert_close(direction[empty], unit(emb[39], dim=0).expand(int(empty.sum()), -1))
    torch.testing.assert_close(direction[distractor], unit(emb[patches[distractor]], dim=-1))
    colour = torch.from_numpy(sc.patch_colours)[main] + 16
    torch.testing.assert_close(direction[main], unit(unit(emb[patches[main]], dim=-1) + unit(emb[colour], dim=-1), dim=-1))

    cfg = TrainConfig(instruct_scaffold_steps=3, instruct_scaffold_ramp=4)
    assert [scaffold_share(s, cfg) for s in range(9)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert scaffold_share(0, TrainConfig(instruct_scaffold_steps=0)) == 1.0  # no scaffold
    shipped = TrainConfig()  # 4,000 steps of words, then 1,500 of blend
    assert [scaffold_share(s, shipped) for s in (0, 3999, 4000, 4749, 5499, 5500)] == [0, 0, 1 / 1500, 750 / 1500, 1, 1]
    assert [scaffold_share(s, TrainConfig(instruct_scaffold_steps=2, instruct_scaffold_ramp=0)) for s in range(4)] == [0, 0, 1, 1]
