"""Tiny random-weight vision-language models for tests and offline use: the shared parts.

Every family builds its tiny model in its own adapter file (``FamilyAdapter.tiny`` in
``models/families/<name>.py``), entirely locally (no hub access): a subword tokenizer like the checkpoint's
(:mod:`.subword`: SentencePiece-style for Llama/Mistral, byte-level BPE for Qwen2), the checkpoint's own chat
template (verbatim, ``templates/``), the family's native (PIL-backend) image processor and processor class,
and a randomly initialised ``*ForConditionalGeneration`` model with a few layers. This module holds what
several families share: the templates, a tiny CLIP vision config, image-only processor classes, the language
model's sizes and the seeded model construction.

Usage::

    model, processor = build_tiny("llava")  # = headflow.models.adapter.adapter_class("llava").tiny()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[pil_image], return_tensors="pt")
    logits = model(**inputs).logits

See ``FAMILIES.md`` next to this file for per-family facts (image token id,
attention-interface keys, position ids, module paths, patch geometry).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, ProcessorMixin

from .adapter import adapter_class

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "TEMPLATES_DIR",
    "build_tiny",
    "chat_template",
    "clip_vision_config",
    "image_only_processor_cls",
    "qwen2_lm_config",
    "seeded_model",
    "tiny_lm_config",
]

#: where the checkpoints' chat templates are kept, verbatim (sources and licences: ``templates/SOURCES.md``)
TEMPLATES_DIR = Path(__file__).with_name("templates")


def chat_template(name: str) -> str:
    """The chat template of a checkpoint line, verbatim (``templates/<name>.jinja``; e.g. ``"llava"`` is
    llava-hf/llava-1.5-7b-hf's)."""
    return (TEMPLATES_DIR / f"{name}.jinja").read_text()


# --------------------------------------------------------------------------------------
# shared pieces of the family builders
# --------------------------------------------------------------------------------------
# ChatML special tokens of Qwen2-based language models (Qwen2-VL, Qwen2.5-VL, InternVL3).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)


def clip_vision_config(image_size: int, patch_size: int) -> Any:
    """A 2-layer CLIP vision tower (hidden 32) of ``image_size`` pixels in ``patch_size`` patches."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


def tiny_lm_config(tok: Any, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of every tiny family's language-model config: one size for all (64 hidden, 2 layers,
    4 query heads of 16 dims), the tokenizer's vocabulary and special ids; ``overrides`` set what a family
    needs (its KV heads, context length, rope settings)."""
    sizes = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id)
    return {**sizes, **overrides}


def qwen2_lm_config(tok: Any) -> Any:
    """The tiny Qwen2 language model of the families built on one (InternVL3, LLaVA-OneVision): :func:`tiny_lm_config`
    with 2 KV heads, plain RoPE and no BOS."""
    from transformers import Qwen2Config

    return Qwen2Config(**tiny_lm_config(tok, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=None,
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                        tie_word_embeddings=False))


def seeded_model(model_cls: type[PreTrainedModel], config: Any, seed: int) -> PreTrainedModel:
    """``model_cls(config)`` with weights fully determined by ``seed``: fp32, in eval mode."""
    torch.manual_seed(seed)
    return model_cls(config).float().eval()


_NO_VIDEO_PROCESSORS: dict[str, type] = {}


def image_only_processor_cls(base_cls: type) -> type:
    """``base_cls`` without the ``video_processor`` sub-processor.

    Qwen2VLProcessor / Qwen2_5_VLProcessor / InternVLProcessor / LlavaOnevisionProcessor / SmolVLMProcessor
    require a video processor, but in transformers 5.x every video processor needs torchvision (and a
    ``None`` video processor can neither be constructed nor saved).  Without
    torchvision we use this image-only subclass (named e.g. ``Qwen2VLProcessorNoVideo``);
    it is registered in ``PROCESSOR_MAPPING`` under a private string key so that
    ``AutoProcessor.from_pretrained`` resolves the saved ``processor_class`` name --
    in any process that has imported this module (a fresh process that has not
    falls back to the stock class, which then needs torchvision).
    """
    name = f"{base_cls.__name__}NoVideo"
    if name in _NO_VIDEO_PROCESSORS:
        return _NO_VIDEO_PROCESSORS[name]

    # Explicit parameters (not **kwargs): ProcessorMixin derives the sub-processor list, the saved init kwargs
    # (inspect.signature) and the accepted from_pretrained kwargs (__code__.co_varnames) from __init__'s code, so
    # the subclass's __init__ is written out with the base's own parameters, less the video processor.
    params = [p for p in list(inspect.signature(base_cls.__init__).parameters.values())[1:]
              if p.name != "video_processor" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    defaults = {p.name: None if p.default is inspect.Parameter.empty else p.default for p in params}
    source = (f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in defaults)}, **kwargs):\n"
              f"    _base.__init__(self, video_processor=None, {', '.join(f'{n}={n}' for n in defaults)}, **kwargs)\n")
    namespace: dict[str, Any] = {"_base": base_cls, "_defaults": defaults}
    exec(compile(source, f"<{name}.__init__>", "exec"), namespace)  # noqa: S102 - a fixed template of names
    __init__ = namespace["__init__"]

    body = {"__init__": __init__, "__module__": __name__, "__doc__": base_cls.__doc__}
    if base_cls.apply_chat_template is not ProcessorMixin.apply_chat_template:
        # e.g. SmolVLMProcessor's reads its video processor's frame defaults: without video, the plain one
        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

        body["apply_chat_template"] = apply_chat_template
    cls = type(name, (base_cls,), body)
    from transformers import AutoProcessor

    AutoProcessor.register(f"headflow_tiny_{name}", cls, exist_ok=True)
    _NO_VIDEO_PROCESSORS[name] = cls
    globals()[name] = cls
    return cls


def build_tiny(family: str, *, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """``(model, processor)`` of a tiny random-weight model of a registered family (its adapter's ``tiny``).

    The model is fp32, in eval mode, with weights fully determined by ``seed``. An unknown family raises
    :class:`~headflow.HeadflowError` (a ``ValueError``) listing the registered ones.
    """
    return adapter_class(family).tiny(seed=seed)
