"""The answer token and the scalar target read from the final-position logits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import HeadflowError

if TYPE_CHECKING:  # pragma: no cover
    import torch

TARGETS = ("logit", "logprob", "margin", "prob")


def answer_candidates(tokenizer: Any, word: str) -> list[int]:
    """First token ids of the ways the model could start emitting ``word``.

    Covers leading-space variants (SentencePiece ``▁cat``, BPE ``Ġcat``) and capitalisation; unknown
    tokens are dropped.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[int] = []
    for text in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and ids[0] != unk and ids[0] not in out:
            out.append(int(ids[0]))
    return out


def resolve_answer_id(tokenizer: Any, word: str, clean_logits: torch.Tensor) -> int:
    """The answer's first token as the model would emit it: of the candidate spellings, the one the
    clean model scores highest (so a correct prediction is always matched exactly)."""
    candidates = answer_candidates(tokenizer, word)
    if not candidates:
        raise HeadflowError(f"The answer {word!r} has no known token in this tokenizer; check the label or vocabulary.")
    scores = clean_logits[candidates]
    return candidates[int(scores.argmax())]


def target_values(logits: torch.Tensor, answer_id: int, kind: str = "logit") -> torch.Tensor:
    """Scalar target per row of final logits ``[row, vocab]``: logit, log-prob, margin or probability.

    ``margin`` is the answer logit minus the best other logit.
    """
    logits = logits.float()
    if kind == "logit":
        return logits[:, answer_id]
    if kind == "logprob":
        return logits.log_softmax(-1)[:, answer_id]
    if kind == "prob":
        return logits.softmax(-1)[:, answer_id]
    if kind == "margin":
        others = logits.clone()
        others[:, answer_id] = float("-inf")
        return logits[:, answer_id] - others.max(-1).values
    raise HeadflowError(f"The 'target' parameter must be one of {', '.join(TARGETS)}. Got {kind!r} instead.")
