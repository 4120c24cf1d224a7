"""Tiny random-weight vision-language models for tests and offline use.

Every family is built entirely locally (no hub access): a word-level tokenizer,
the family's native (PIL-backend) image processor and processor class, and a
randomly initialised ``*ForConditionalGeneration`` model with a few layers.

Usage::

    model, processor = build_tiny("llava")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown ?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=prompt, images=[pil_image], return_tensors="pt")
    logits = model(**inputs).logits

See ``FAMILIES.md`` next to this file for per-family facts (image token id,
attention-interface keys, position ids, module paths, patch geometry).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

__all__ = [
    "TINY_FAMILIES",
    "BASE_WORDS",
    "OBJECT_WORDS",
    "build_tiny",
    "build_word_tokenizer",
]

TINY_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "internvl")

OBJECT_WORDS = (
    "circle", "square", "triangle", "star", "heart", "cross", "arrow", "moon",
    "house", "tree", "car", "fish", "umbrella", "flower", "diamond", "key",
)

_QUESTION_WORDS = (
    "what", "is", "the", "main", "object", "in", "image", "answer", "one", "word",
    "shown", "name", "picture", "this", "a", "an", "of", "which", "there", "it",
    "with", "single", "please", "color", "shape", "yes", "no", "are", "and", "you",
    "can", "see", "describe", "i", "to", "on", "at", "how", "many", "red", "green",
    "blue", "black", "white", "yellow", "small", "large", "center", "left", "right",
)

_PUNCT = ("?", ".", ",", ":", "!", ";", "'", '"', "(", ")", "-", "/")

_ROLE_WORDS = ("ASSISTANT", "USER", "assistant", "user", "system", "You", "helpful")

BASE_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        list(_QUESTION_WORDS)
        + [w.capitalize() for w in _QUESTION_WORDS]
        + list(OBJECT_WORDS)
        + [w.capitalize() for w in OBJECT_WORDS]
        + list(_ROLE_WORDS)
        + ["[INST]", "[/INST]"]
        + list(_PUNCT)
        + [str(d) for d in range(10)]
    )
)


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------
def build_word_tokenizer(
    words: Sequence[str],
    special_tokens: Sequence[str],
    *,
    image_token: str,
    extra_special_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    unk_token: str = "<unk>",
    pad_token: str = "<pad>",
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer (whitespace split + isolated punctuation).

    Ids: ``special_tokens`` (plus unk/pad/bos/eos/image token if missing) come first
    in the given order, then ``words`` (deduplicated, order preserved).  Special
    tokens are never split, so e.g. ``"<image>\\nWhat"`` -> ``["<image>", "What"]``.
    ``image_token`` is exposed as ``tokenizer.image_token`` / ``image_token_id``;
    ``extra_special_tokens`` entries (name -> token) become further named attributes
    (e.g. ``context_image_token`` for InternVL).  No BOS/EOS is added automatically.
    """
    named = {"image_token": image_token, **(extra_special_tokens or {})}
    specials: list[str] = []
    for tok in [unk_token, pad_token, bos_token, eos_token, *special_tokens, *named.values()]:
        if tok is not None and tok not in specials:
            specials.append(tok)
    vocab: dict[str, int] = {}
    for tok in [*specials, *words]:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    backend.add_special_tokens(specials)
    # Words the pre-tokenizer would split (e.g. "[INST]") are registered as added tokens.
    glued = [
        w for w in dict.fromkeys(words)
        if w not in specials and len(backend.pre_tokenizer.pre_tokenize_str(w)) > 1
    ]
    if glued:
        backend.add_tokens([AddedToken(w, normalized=False, special=False) for w in glued])

    kwargs = dict(
        tokenizer_object=backend,
        unk_token=unk_token,
        pad_token=pad_token,
        eos_token=eos_token,
        extra_special_tokens=named,
        model_max_length=4096,
        padding_side="left",
    )
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    return PreTrainedTokenizerFast(**kwargs)


def _content_loop(image_str: str, video_str: str | None = None) -> str:
    """Jinja snippet rendering ``message['content']`` (string or list of typed parts)."""
    video = (
        f"{{% elif part['type'] == 'video' %}}{video_str}" if video_str is not None else ""
    )
    return (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_str}"
        f"{video}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
    )


# USER: <image>\n{question} ASSISTANT:
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else message['content'][0]['text'] }} "
    "{% elif message['role'] == 'user' %}USER: " + _content_loop("<image>\n") + " "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: " + _content_loop("") + "</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# [INST] <image>\n{question} [/INST]
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] " + _content_loop("<image>\n") + " [/INST]"
    "{% elif message['role'] == 'assistant' %} " + _content_loop("") + "</s>"
    "{% endif %}{% endfor %}"
)

# Qwen2-VL style (simplified: default system prompt, image/video placeholders).
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    + _content_loop(
        "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    )
    + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# InternVL3 (Qwen2 LM) style: image placeholder "<IMG_CONTEXT>" expanded by the processor
# into "<img><IMG_CONTEXT>*N</img>".
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    + _content_loop("<IMG_CONTEXT>\n", "<video>\n")
    + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _finish(model: PreTrainedModel) -> PreTrainedModel:
    model = model.float().eval()
    return model


# --------------------------------------------------------------------------------------
# llava
# --------------------------------------------------------------------------------------
def _build_llava(seed: int):
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size, patch_size = 32, 8  # 4x4 = 16 patches (+ CLS, dropped by "default")
    tok = build_word_tokenizer(
        BASE_WORDS, [], image_token="<image>", chat_template=LLAVA_CHAT_TEMPLATE
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tok.pad_token_id,
    )
    _seed(seed)
    model = LlavaForConditionalGeneration(config)
    return model, processor


# --------------------------------------------------------------------------------------
# llava_next (Mistral LM with GQA, any-resolution tiling)
# --------------------------------------------------------------------------------------
def _build_llava_next(seed: int):
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )

    image_size, patch_size = 32, 8
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    tok = build_word_tokenizer(
        BASE_WORDS, [], image_token="<image>", chat_template=MISTRAL_CHAT_TEMPLATE
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=None,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tok.pad_token_id,
    )
    _seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    return model, processor


# --------------------------------------------------------------------------------------
# qwen2_vl / qwen2_5_vl (Qwen2 LM with GQA + M-RoPE, native-resolution ViT, 2x2 merge)
# --------------------------------------------------------------------------------------
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)


def _qwen_tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(
        BASE_WORDS,
        QWEN_SPECIAL_TOKENS,
        image_token="<|image_pad|>",
        extra_special_tokens={
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        chat_template=QWEN_VL_CHAT_TEMPLATE,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


_QWEN_PATCH, _QWEN_MERGE = 8, 2  # one LM image token per 16x16 pixels
_QWEN_MIN_PIXELS, _QWEN_MAX_PIXELS = 32 * 32, 64 * 64  # 4 .. 16 image tokens


def _qwen_text_kwargs(tok) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        # head_dim = 64 / 4 = 16 -> 8 rotary frequencies split over (t, h, w)
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
    )


_NO_VIDEO_PROCESSORS: dict[str, type] = {}


def _image_only_processor_cls(base_cls: type) -> type:
    """``base_cls`` without the ``video_processor`` sub-processor.

    Qwen2VLProcessor / Qwen2_5_VLProcessor / InternVLProcessor require a video
    processor, but in transformers 5.x every video processor needs torchvision (and a
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

    # Explicit parameters (not **kwargs): ProcessorMixin derives the sub-processor list,
    # the saved init kwargs and the accepted from_pretrained kwargs from __init__'s code.
    if "image_seq_length" in inspect.signature(base_cls.__init__).parameters:  # InternVL

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
            base_cls.__init__(
                self, image_processor, tokenizer, None,
                image_seq_length=image_seq_length, chat_template=chat_template, **kwargs,
            )
    else:

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            base_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    cls = type(name, (base_cls,), {"__init__": __init__, "__module__": __name__, "__doc__": base_cls.__doc__})
    from transformers import AutoProcessor

    AutoProcessor.register(f"headflow_tiny_{name}", cls, exist_ok=True)
    _NO_VIDEO_PROCESSORS[name] = cls
    globals()[name] = cls
    return cls


def _qwen_processor(processor_cls, tok):
    from transformers import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=_QWEN_MIN_PIXELS,
        max_pixels=_QWEN_MAX_PIXELS,
        patch_size=_QWEN_PATCH,
        temporal_patch_size=2,
        merge_size=_QWEN_MERGE,
    )
    if is_torchvision_available():  # stock processor with a (tiny) Qwen2-VL video processor
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(
            min_pixels=_QWEN_MIN_PIXELS,
            max_pixels=_QWEN_MAX_PIXELS,
            patch_size=_QWEN_PATCH,
            temporal_patch_size=2,
            merge_size=_QWEN_MERGE,
        )
        return processor_cls(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=video_processor,
            chat_template=QWEN_VL_CHAT_TEMPLATE,
        )
    return _image_only_processor_cls(processor_cls)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_VL_CHAT_TEMPLATE
    )


def _qwen_ids(tok) -> dict:
    conv = tok.convert_tokens_to_ids
    return dict(
        image_token_id=conv("<|image_pad|>"),
        video_token_id=conv("<|video_pad|>"),
        vision_start_token_id=conv("<|vision_start|>"),
        vision_end_token_id=conv("<|vision_end|>"),
    )


def _build_qwen2_vl(seed: int):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.configuration_qwen2_vl import (
        Qwen2VLTextConfig,
        Qwen2VLVisionConfig,
    )

    tok = _qwen_tokenizer()
    processor = _qwen_processor(Qwen2VLProcessor, tok)
    vision = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=32,
        hidden_size=64,  # = LM hidden size (merger output)
        mlp_ratio=2,
        num_heads=2,
        patch_size=_QWEN_PATCH,
        spatial_merge_size=_QWEN_MERGE,
        temporal_patch_size=2,
    )
    text = Qwen2VLTextConfig(**_qwen_text_kwargs(tok))
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_ids(tok)
    )
    _seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    return model, processor


def _build_qwen2_5_vl(seed: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )

    tok = _qwen_tokenizer()
    processor = _qwen_processor(Qwen2_5_VLProcessor, tok)
    vision = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,  # = LM hidden size
        patch_size=_QWEN_PATCH,
        spatial_merge_size=_QWEN_MERGE,
        temporal_patch_size=2,
        window_size=32,  # 2x2 merged tokens per window
        fullatt_block_indexes=[1],
    )
    text = Qwen2_5_VLTextConfig(**_qwen_text_kwargs(tok))
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_ids(tok)
    )
    _seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model, processor


# --------------------------------------------------------------------------------------
# internvl (InternViT + pixel-shuffle projector + Qwen2 LM with GQA)
# --------------------------------------------------------------------------------------
def _build_internvl(seed: int):
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        Qwen2Config,
    )
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
    from transformers.utils import is_torchvision_available

    tile, patch, downsample = 32, 4, 0.5
    image_seq_length = int((tile // patch) ** 2 * downsample**2)  # 16 tokens per tile
    tok = build_word_tokenizer(
        BASE_WORDS,
        QWEN_SPECIAL_TOKENS,
        image_token="<IMG_CONTEXT>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        chat_template=INTERNVL_CHAT_TEMPLATE,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=True,  # dynamic tiling + thumbnail, as in InternVL checkpoints
        min_patches=1,
        max_patches=4,
    )
    if is_torchvision_available():
        from transformers import InternVLVideoProcessor

        processor = InternVLProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=InternVLVideoProcessor(size={"height": tile, "width": tile}),
            image_seq_length=image_seq_length,
            chat_template=INTERNVL_CHAT_TEMPLATE,
        )
    else:
        processor = _image_only_processor_cls(InternVLProcessor)(
            image_processor=image_processor,
            tokenizer=tok,
            image_seq_length=image_seq_length,
            chat_template=INTERNVL_CHAT_TEMPLATE,
        )
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[tile, tile],
        patch_size=[patch, patch],
    )
    text = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.context_image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=downsample,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    _seed(seed)
    model = InternVLForConditionalGeneration(config)
    return model, processor


_BUILDERS: dict[str, Callable[[int], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "llava": _build_llava,
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": _build_qwen2_5_vl,
    "internvl": _build_internvl,
}


def build_tiny(family: str, *, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build ``(model, processor)`` for a tiny random-weight model of ``family``.

    The model is fp32, in eval mode, with weights fully determined by ``seed``.
    """
    if family not in TINY_FAMILIES or family not in _BUILDERS:
        raise ValueError(
            f"Unknown tiny family {family!r}. Supported: {', '.join(TINY_FAMILIES)}"
        )
    model, processor = _BUILDERS[family](seed)
    return _finish(model), processor
