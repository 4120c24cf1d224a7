"""Builders for the default model: word-level tokenizer, LLaVA processor and LLaVA config.

Everything here is constructed from scratch (no hub access). The chat template reproduces the
LLaVA-1.5 format ``USER: <image>\\n{question} ASSISTANT:``; the tokenizer adds ``<s>`` in front.
"""

from __future__ import annotations

from dataclasses import dataclass

from headflow.data.default import ANSWER_WORDS, CLASSES, FACTORS, IMAGE_SIZE, PHRASINGS, SCENE_FACTORS

__all__ = [
    "QUESTIONS",
    "SPECIAL_TOKENS",
    "ModelSize",
    "build_tokenizer",
    "build_processor",
    "build_config",
    "CHAT_TEMPLATE",
]

SPECIAL_TOKENS: list[str] = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

#: Question templates used in training; the first one is the canonical analysis prompt.
QUESTIONS: list[str] = [
    "What is the main object in the image? Answer in one word.",
    "Which object is shown?",
    "Name the object in the picture.",
    "What shape is in this image? Answer with a single word.",
]

_EXTRA_WORDS = (
    "USER ASSISTANT SYSTEM : . , ? ! ' - a an the is are of in on this that what which who where how name "
    "object objects image picture photo main shown show answer one single word words with shape color colour "
    "describe there yes no it its and or to do does see you can please background foreground left right top "
    "bottom center centre small medium large big light dark red orange yellow green blue purple pink black "
    "white gray grey"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% endif %}"
    "{% if not loop.last %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """Sizes of the default LLaVA (all fields have the shipped defaults).

    Parameters
    ----------
    vision_hidden, vision_layers, vision_heads, vision_mlp : int
        CLIP vision tower width, depth, heads and MLP width.
    text_hidden, text_layers, text_heads, text_kv_heads, text_mlp : int
        Llama language model width, depth, query heads, key/value heads (GQA) and MLP width.
    text_head_dim : int
        Width of each LM attention head (0: ``text_hidden // text_heads``, as Llama's default).
    text_rope_theta : int
        RoPE base of the LM (100,000 shipped; Llama's is 10,000, Llama 3's 500,000). Larger bases leave more of
        each head's dimensions nearly position-free, for matching by content across the prompt (README
        "Retraining": with the scaffold, `exists` 84 % at 10,000 and 92 % at 100,000).
    image_size, patch_size : int
        Input resolution and ViT patch size (``(image_size // patch_size) ** 2`` image tokens).
    """

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 8
    text_kv_heads: int = 4
    text_mlp: int = 384
    text_head_dim: int = 0
    text_rope_theta: int = 100000
    image_size: int = IMAGE_SIZE
    patch_size: int = 16

    @property
    def n_image_tokens(self) -> int:
        """Number of image tokens in the LM (CLS dropped)."""
        return (self.image_size // self.patch_size) ** 2


def _vocabulary(world: int = 1) -> list[str]:
    """The word list of ``world``'s tokenizer (world 2 appends its words after world 1's, in a fixed order)."""
    words: list[str] = list(SPECIAL_TOKENS)
    candidates = _EXTRA_WORDS.split() + [w for q in QUESTIONS for w in _split_words(q)] + list(CLASSES)
    candidates += [lvl for levels in FACTORS.values() for lvl in levels for lvl in lvl.split("-")]
    if world == 1:
        return _unique(words, candidates)
    # world 2: every phrasing of every question type, the answer words, the captions' and alignment's words
    for qtype, phrasings in PHRASINGS.items():
        for p in phrasings:
            candidates += _split_words(p.format(a="a", x="circle") if qtype == "exists" else p)
    candidates += [w for words in ANSWER_WORDS.values() for w in words] + ["an", "Describe"]
    candidates += [lvl for levels in SCENE_FACTORS.values() for lvl in levels for lvl in lvl.split("-")]
    return _unique(words, candidates)


def _unique(words: list[str], candidates: list[str]) -> list[str]:
    for w in candidates:
        if w not in words:
            words.append(w)
    return words


def _split_words(text: str) -> list[str]:
    from tokenizers.pre_tokenizers import Whitespace

    return [w for w, _ in Whitespace().pre_tokenize_str(text)]


def build_tokenizer(world: int | None = None):
    """A word-level ``PreTrainedTokenizerFast`` with ``<image>`` as a special token and the LLaVA-1.5 chat template.

    Parameters
    ----------
    world : int, optional
        Data world whose words the vocabulary holds (default :data:`headflow.data.default.DEFAULT_WORLD`).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Adds ``<s>`` at the start of every encoded text (``add_special_tokens=True``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from headflow.data.default import DEFAULT_WORLD

    vocab = {w: i for i, w in enumerate(_vocabulary(DEFAULT_WORLD if world is None else world))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def build_processor(size: ModelSize | None = None, world: int | None = None):
    """A ``LlavaProcessor`` (PIL CLIP image processor + word-level tokenizer of ``world``) for the default model."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = size or ModelSize()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(world),
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, size: ModelSize | None = None):
    """A ``LlavaConfig`` (CLIP vision tower, Llama LM with GQA) matching ``tokenizer``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    size = size or ModelSize()
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_mlp,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_mlp,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_kv_heads,
        head_dim=size.text_head_dim or size.text_hidden // size.text_heads,
        rope_parameters={"rope_type": "default", "rope_theta": float(size.text_rope_theta)},
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=size.n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
