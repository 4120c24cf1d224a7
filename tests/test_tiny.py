"""Tiny random-weight VLMs (headflow.models.tiny): forward, image-token accounting, save/load."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:
    import headflow.models.tiny  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from headflow.models.adapter import family_names
from headflow.models.tiny import build_tiny

QUESTION = "What is the main object in the image? Answer with one word."
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
_NON_VISION_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "labels"}


def _image(h: int = 40, w: int = 60) -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(h, w, 3) * 255).astype("uint8"))


def _inputs(processor, image):
    if processor.chat_template is None:  # PaliGemma: the processor builds the prompt around "<image>" + question
        prompt = processor.image_token + QUESTION
    else:
        prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return processor(text=prompt, images=[image], return_tensors="pt")


def _image_token_ids(processor) -> tuple[int, ...]:
    """The processor's and its tokenizer's image token ids: one of them is the token repeated per image feature
    (Gemma3Processor.image_token_id is the begin-of-image token and its tokenizer's the soft token; Aya Vision's
    tokenizer names the "<image>" placeholder and its processor the patch token)."""
    return (processor.image_token_id, getattr(processor.tokenizer, "image_token_id", None))


def _num_image_features(model, inputs) -> int:
    vision_inputs = {k: v for k, v in inputs.items() if k not in _NON_VISION_KEYS}
    with torch.no_grad():
        out = model.model.get_image_features(**vision_inputs)
    feats = out.pooler_output
    feats = feats if isinstance(feats, (list, tuple)) else [feats]
    hidden = model.config.text_config.hidden_size
    return sum(f.numel() // hidden for f in feats)


@pytest.fixture(scope="module", params=family_names())
def tiny(request):
    model, processor = build_tiny(request.param)
    return request.param, model, processor


def test_forward_and_image_tokens(tiny):
    family, model, processor = tiny
    assert not model.training and model.dtype == torch.float32
    inputs = _inputs(processor, _image())
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = model.config.text_config.vocab_size
    assert vocab == len(processor.tokenizer)
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()
    image_token_id = model.config.image_token_id
    n_tokens = int((inputs["input_ids"] == image_token_id).sum())
    assert image_token_id in _image_token_ids(processor)
    assert n_tokens > 0 and n_tokens == _num_image_features(model, inputs)


def test_save_load_roundtrip(tiny, tmp_path):
    family, model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(model2) is type(model) and type(processor2) is type(processor)
    image = _image()
    a, b = _inputs(processor, image), _inputs(processor2, image)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(**a).logits, model2(**b).logits)


def test_chat_templates():
    _, llava = build_tiny("llava")
    assert (
        llava.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
        == f"USER: <image>\n{QUESTION} ASSISTANT:"
    )
    _, nxt = build_tiny("llava_next")
    assert (
        nxt.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
        == f"[INST] <image>\n{QUESTION} [/INST]"
    )
    _, qwen = build_tiny("qwen2_vl")
    assert qwen.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False).endswith(
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llava_next_anyres_token_count_depends_on_aspect_ratio():
    model, processor = build_tiny("llava_next")
    counts = {
        (h, w): int((_inputs(processor, _image(h, w))["input_ids"] == processor.image_token_id).sum())
        for h, w in [(32, 32), (40, 60), (60, 40)]
    }
    assert len(set(counts.values())) == 3, counts


def test_tokenizers_are_the_checkpoints_classes_and_the_committed_training():
    """Llama-line families speak a SentencePiece-style LlamaTokenizer, Qwen2-line ones a byte-level Qwen2Tokenizer;
    the committed vocabularies are what training on the corpus gives (on this tokenizers version)."""
    import json

    import tokenizers
    from transformers import LlamaTokenizer, Qwen2Tokenizer

    from headflow.models.subword import DATA_DIR, train_bpe

    kinds = {f: type(build_tiny(f)[1].tokenizer) for f in ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl")}
    assert kinds == {"llava": LlamaTokenizer, "llava_next": LlamaTokenizer, "qwen2_vl": Qwen2Tokenizer,
                     "qwen2_5_vl": Qwen2Tokenizer, "internvl": Qwen2Tokenizer}
    for style in ("llama", "qwen2"):
        committed = json.loads((DATA_DIR / f"{style}.json").read_text())
        if committed["tokenizers"] != tokenizers.__version__:
            pytest.skip(f"the vocabularies were trained with tokenizers {committed['tokenizers']}")
        fresh = train_bpe(style)
        assert fresh["vocab"] == committed["vocab"] and fresh["merges"] == committed["merges"]


def test_seed_determinism_and_unknown_family():
    a, _ = build_tiny("llava", seed=3)
    b, _ = build_tiny("llava", seed=3)
    c, _ = build_tiny("llava", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())
    assert any(not torch.equal(v, sc[k]) for k, v in sa.items())
    with pytest.raises(ValueError, match=re.escape(f"Unknown family 'x'. Supported: {', '.join(family_names())}.")):
        build_tiny("x")
