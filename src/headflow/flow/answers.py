"""The answer token: the first token of the label word as the model would emit it.

Where the head-attribution package provides the resolver (``headflow.attribution.answers``), flow uses
it, so both analyses pick the same answer token and drop the same images.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import HeadflowError


def answer_candidates(tokenizer: Any, label: str) -> list[int]:
    """Candidate answer ids from ``" " + label`` and ``label`` (in that order, de-duplicated, no unk).

    The spellings that are a single token; if neither is, the first token of each spelling.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    single, first = [], []
    for text in (" " + label, label):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids or ids[0] == unk:
            continue
        (single if len(ids) == 1 else first).append(int(ids[0]))
    return list(dict.fromkeys(single or first))


def answer_token(tokenizer: Any, label: str, clean_logits: torch.Tensor | None = None) -> int:
    """The id of the answer's first token.

    With ``clean_logits`` and the attribution package present, this is
    :func:`headflow.attribution.answers.resolve_answer_id` (the candidate spelling the clean model
    scores highest). Otherwise: tries ``" " + label`` and ``label``; prefers a spelling the tokenizer
    maps to a single non-unk token, and among the candidates the model's clean prediction.

    Raises
    ------
    HeadflowError
        If neither spelling gives a known token.
    """
    if clean_logits is not None:
        try:
            from ..attribution.answers import resolve_answer_id
        except ImportError:
            resolve_answer_id = None
        if resolve_answer_id is not None:
            return resolve_answer_id(tokenizer, label, torch.as_tensor(clean_logits))
    candidates = answer_candidates(tokenizer, label)
    if not candidates:
        raise HeadflowError(f"The label {label!r} has no known token in the model's tokenizer (both ' {label}' and "
                            f"'{label}' map to the unknown token). Use labels from the model's vocabulary.")
    if clean_logits is not None:
        predicted = int(torch.as_tensor(clean_logits).argmax())
        if predicted in candidates:
            return predicted
    return candidates[0]
