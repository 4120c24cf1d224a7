"""Subword tokenizers like the real checkpoints', trained locally: what the tiny families speak.

Real LVLM checkpoints do not tokenize word by word. Llama/Mistral language models (LLaVA-1.5, LLaVA-NeXT)
use SentencePiece BPE: a word carries its leading space as ``▁`` (``▁cat``), digits are split one by one
(``" 2"`` is ``▁`` + ``2``) and unknown characters fall back to bytes (``<0xE2>``). Qwen2 language models
(Qwen2-VL, Qwen2.5-VL, InternVL3) use byte-level BPE: the leading space is ``Ġ`` (``Ġcat``), digits stand
alone, and Qwen2's pre-tokenizer rule splits text before the merges. Answers and token groups that are
right on a word-level tokenizer can be wrong on these (a bare ``▁`` as the answer token, two labels sharing
their first piece), so the tiny families use these tokenizers.

Both are trained here, deterministically, with the ``tokenizers`` library on a small corpus of COCO's
one-word labels, the default dataset's classes, question and chat-template words, and wrapped in
transformers' own classes (:class:`~transformers.LlamaTokenizer`, :class:`~transformers.Qwen2Tokenizer`),
so that pre-tokenization, byte fallback and decoding are the real classes' own. The corpus weights make
frequent words whole pieces and rare ones split (``hydrant``, ``hairdryer``, ``toaster``), as in a real
vocabulary; ``tests/test_answers.py`` asserts the splits the answer tests rely on.

Where state lives: the trained vocabularies and merges are cached per process (:func:`trained_bpe`); each
call returns a new tokenizer object.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

__all__ = ["CORPUS_WORDS", "DATA_DIR", "RARE_WORDS", "gemma_tokenizer", "llama_tokenizer",
           "qwen2_tokenizer", "sentencepiece_vocab", "train_bpe", "trained_bpe"]

#: Words seen often in the training corpus: they end up as whole pieces (with their leading-space marker).
CORPUS_WORDS: tuple[str, ...] = (
    # the default dataset's classes
    "circle", "square", "triangle", "star", "heart", "cross", "arrow", "moon",
    "house", "tree", "car", "fish", "umbrella", "flower", "diamond", "key",
    # common COCO one-word labels
    "person", "bicycle", "bus", "train", "truck", "boat", "bird", "cat", "dog", "horse", "sheep", "cow",
    "bottle", "cup", "chair", "couch", "bed", "table", "hot", "laptop", "phone", "book", "clock", "pizza",
    "cake", "banana", "apple", "orange", "ball", "bench", "sign", "tv",
    # questions and answers
    "what", "is", "the", "main", "object", "in", "image", "answer", "with", "one", "word", "this", "a",
    "of", "which", "there", "it", "name", "picture", "shown", "single", "please", "color", "how", "many",
    "are", "you", "can", "see", "to", "on", "at", "and", "yes", "no", "red", "green", "blue", "small",
    "large", "left", "right", "center", "top", "bottom",
    # chat templates (system prompts, role names)
    "user", "assistant", "system", "helpful", "chat", "between", "curious", "human", "artificial",
    "intelligence", "gives", "detailed", "polite", "answers", "questions", "USER", "ASSISTANT",
)

#: COCO labels seen once: they stay split into several pieces, some sharing their first piece with a
#: whole word (``toaster`` starts like ``to``), as rare words do in real vocabularies.
RARE_WORDS: tuple[str, ...] = (
    "hydrant", "hairdryer", "toaster", "toilet", "hotdog", "stoplight", "microwave", "refrigerator", "broccoli",
    "giraffe", "zebra", "elephant", "scissors", "teddy", "snowboard", "skateboard", "surfboard", "keyboard",
    "television", "motorcycle", "airplane", "sandwich", "donut", "carrot", "suitcase", "frisbee", "kite",
)

_FREQUENT = 40  # occurrences of each corpus word (both cases of its first letter)
_PIECES = 2000  # at most this many trained pieces; in practice fewer: merges stop at _MIN_FREQUENCY
_MIN_FREQUENCY = 3  # a rare word (seen twice: with and without a leading space) is never merged whole

# Qwen2's pre-tokenizer split rule (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX)
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    import string

    symbols = " ".join(string.ascii_letters + string.digits + string.punctuation)
    lines = [symbols] * _FREQUENT
    for word in CORPUS_WORDS:
        lines.extend([f"{word} {word.capitalize()}"] * _FREQUENT)
    lines.append(" ".join(RARE_WORDS))
    return lines


#: where the trained vocabularies and merges are kept (package data; ``python -m headflow.models.subword``
#: retrains and rewrites them)
DATA_DIR = Path(__file__).with_name("subword_data")


@functools.lru_cache(maxsize=None)
def trained_bpe(style: str) -> tuple[str, str]:
    """The vocabulary and merges of ``style`` (``"llama"`` or ``"qwen2"``) as JSON strings (``{piece: id}``
    and ``[[left, right], ...]``), read from :data:`DATA_DIR`; cached per process."""
    if style not in ("llama", "qwen2"):
        raise ValueError(f"Unknown tokenizer style {style!r}; use 'llama' or 'qwen2'.")
    data = json.loads((DATA_DIR / f"{style}.json").read_text())
    return json.dumps(data["vocab"]), json.dumps(data["merges"])


def train_bpe(style: str) -> dict[str, Any]:
    """Train ``style``'s vocabulary and merges on the corpus (deterministic; about a second)."""
    if style == "llama":
        backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        # SentencePiece's view: "▁" marks a leading space; digits never merge (Llama's split_digits)
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Digits(individual_digits=True)])
        trainer = trainers.BpeTrainer(vocab_size=_PIECES, special_tokens=[], show_progress=False,
                                      min_frequency=_MIN_FREQUENCY)
    elif style == "qwen2":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=256 + _PIECES, special_tokens=[], show_progress=False,
                                      min_frequency=_MIN_FREQUENCY, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise ValueError(f"Unknown tokenizer style {style!r}; use 'llama' or 'qwen2'.")
    corpus = _corpus()
    # every line once more with a leading space, so "▁word"/"Ġword" and "word" are both learned
    backend.train_from_iterator(corpus + [" " + line for line in corpus], trainer=trainer)
    import tokenizers

    model = json.loads(backend.to_str())["model"]
    return {"style": style, "tokenizers": tokenizers.__version__, "vocab": model["vocab"], "merges": model["merges"]}


def _merges(style: str) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(trained_bpe(style)[1])]


def sentencepiece_vocab(specials: Sequence[str]) -> dict[str, int]:
    """``specials`` first, then the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``, then the Llama-style trained
    pieces: the id layout of SentencePiece vocabularies (Llama's, Gemma's)."""
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in sorted(json.loads(trained_bpe("llama")[0]).items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece[0], len(vocab))
    return vocab


def llama_tokenizer(special_tokens: Sequence[str] = (), *, image_token: str = "<image>",
                    extra_special_tokens: dict[str, str] | None = None, chat_template: str | None = None) -> Any:
    """A Llama/Mistral-style SentencePiece BPE tokenizer (:class:`transformers.LlamaTokenizer`).

    Ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``, the trained
    pieces, then ``special_tokens`` and the image token (added tokens, never split). ``<pad>`` is added as the
    padding token. ``tokenizer(text)`` prepends ``<s>``, as the checkpoints' tokenizers do (their chat templates
    do not write it).
    """
    from transformers import LlamaTokenizer

    vocab = sentencepiece_vocab(["<unk>", "<s>", "</s>"])
    named = {"image_token": image_token, **(extra_special_tokens or {})}
    tok = LlamaTokenizer(vocab=vocab, merges=_merges("llama"), add_bos_token=True, add_eos_token=False,
                         pad_token="<pad>", extra_special_tokens=named, model_max_length=4096,
                         **({"chat_template": chat_template} if chat_template is not None else {}))
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens([t for t in dict.fromkeys([*special_tokens, *named.values()])], special_tokens=True)
    return tok


def gemma_tokenizer(special_tokens: Sequence[str] = (), *, image_token: str,
                    extra_special_tokens: dict[str, str] | None = None, chat_template: str | None = None) -> Any:
    """A Gemma-style SentencePiece BPE tokenizer (:class:`transformers.GemmaTokenizer`): the Llama-style trained
    pieces (``▁`` marks a space, digits alone, byte fallback) under Gemma's ids and normaliser (spaces become ``▁``,
    no space is prepended).

    Ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, the 256 byte-fallback tokens, the trained
    pieces, then ``special_tokens`` and the named ones (added tokens, never split). ``tokenizer(text)`` prepends
    ``<bos>``, as Gemma's does (Gemma 3's chat template writes it too: encode its prompts without special tokens).
    """
    from transformers import GemmaTokenizer

    vocab = sentencepiece_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    named = {"image_token": image_token, **(extra_special_tokens or {})}
    tok = GemmaTokenizer(vocab=vocab, merges=_merges("llama"), add_bos_token=True, add_eos_token=False,
                         extra_special_tokens=named, model_max_length=4096,
                         **({"chat_template": chat_template} if chat_template is not None else {}))
    tok.add_tokens([t for t in dict.fromkeys([*special_tokens, *named.values()])], special_tokens=True)
    return tok


def qwen2_tokenizer(special_tokens: Sequence[str], *, image_token: str,
                    extra_special_tokens: dict[str, str] | None = None, chat_template: str | None = None,
                    eos_token: str = "<|im_end|>", bos_token: str | None = None) -> Any:
    """A Qwen2-style byte-level BPE tokenizer (:class:`transformers.Qwen2Tokenizer`).

    Ids: the 256 byte symbols and trained pieces, then ``<|endoftext|>`` (padding) and ``special_tokens``
    (ChatML's ``<|im_start|>``/``<|im_end|>``, vision markers), which are added tokens, never split. The same
    byte-level BPE stands in for the other byte-level vocabularies (Llama 3's, SmolLM2's, Mistral's Tekken);
    ``bos_token`` names the token a chat template writes as ``bos_token`` (never added by the tokenizer itself).
    """
    from transformers import Qwen2Tokenizer

    vocab = json.loads(trained_bpe("qwen2")[0])
    named = {"image_token": image_token, **(extra_special_tokens or {})}
    tok = Qwen2Tokenizer(vocab=vocab, merges=_merges("qwen2"), eos_token=eos_token, pad_token="<|endoftext|>",
                         unk_token=None, extra_special_tokens=named, model_max_length=4096,
                         **({"chat_template": chat_template} if chat_template is not None else {}),
                         **({"bos_token": bos_token} if bos_token is not None else {}))
    tok.add_tokens([t for t in dict.fromkeys(["<|endoftext|>", *special_tokens, *named.values()])],
                   special_tokens=True)
    return tok


if __name__ == "__main__":  # retrain and rewrite the package data
    DATA_DIR.mkdir(exist_ok=True)
    for name in ("llama", "qwen2"):
        (DATA_DIR / f"{name}.json").write_text(json.dumps(train_bpe(name), ensure_ascii=False) + "\n")
        print(f"wrote {DATA_DIR / f'{name}.json'}")
