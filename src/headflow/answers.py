"""Answers as the model would emit them: the answer's tokens after the prompt, and the scalar target.

A label (``"cat"``, ``"2"``, ``"hotdog"``) is written by the model after the chat template's answer header,
in one of several spellings: with or without a leading space, lower-case, capitalised or all-caps, or as an
alias (``"television"`` for ``tv``). Each spelling's tokens are found **in context**: the prompt text
followed by the spelling is tokenized, and the spelling's tokens are what comes after the prompt's own
tokens, so a SentencePiece ``▁`` or byte-level ``Ġ`` is handled exactly as the tokenizer does. A spelling
that merges into the prompt's last token, or whose first token is a bare space marker (Llama writes
``" 2"`` as ``▁`` + ``2``), is not one the first-token logit can measure and is left out.

- The **target token** of an image is the first token of the label's own spelling (not an alias) that the
  clean model scores highest: the paper's first-token logit.
- **Correctness** is decided on the whole word (``per_image.answer_correct``): the model's greedy answer,
  teacher-forced over a spelling's tokens, must be that spelling, and the token after it must not continue
  the word (``hot`` is not ``hotdog``). Two labels that share a first token are never confused.
- :meth:`Answers.collisions` lists label pairs that share a candidate first token (reported before a run).

Where state lives: an :class:`Answers` holds one tokenizer and one rendered prompt; it caches each label's
spellings for its own lifetime.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import HeadflowError

if TYPE_CHECKING:  # pragma: no cover
    import torch

TARGETS = ("logit", "logprob", "margin", "prob", "sequence")

#: Other words that count as a correct answer for a label (never used as the target token). The COCO
#: categories' full names for the one-word labels of ``headflow.data.coco.COCO_ONE_WORD``, and a few
#: everyday synonyms.
ALIASES: dict[str, tuple[str, ...]] = {
    "stoplight": ("traffic light",),
    "hydrant": ("fire hydrant",),
    "sign": ("stop sign",),
    "meter": ("parking meter",),
    "ball": ("sports ball",),
    "bat": ("baseball bat",),
    "glove": ("baseball glove",),
    "racket": ("tennis racket",),
    "glass": ("wine glass",),
    "hotdog": ("hot dog",),
    "plant": ("potted plant",),
    "table": ("dining table",),
    "phone": ("cell phone", "cellphone"),
    "teddy": ("teddy bear",),
    "hairdryer": ("hair drier", "hair dryer"),
    "tv": ("television",),
    "couch": ("sofa",),
    "airplane": ("plane", "aeroplane"),
    "motorcycle": ("motorbike",),
    "bicycle": ("bike",),
}


@dataclass(frozen=True)
class Spelling:
    """One way of writing an answer after the prompt: its text and its tokens there."""

    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Answer:
    """A label resolved on one image: the target spelling (``ids``, the model's highest-scoring spelling of the
    label itself) and every spelling that counts as correct (``accepted``, aliases included)."""

    label: str
    ids: tuple[int, ...]
    accepted: tuple[Spelling, ...]

    @property
    def token_id(self) -> int:
        """The target token: the answer's first token."""
        return self.ids[0]


def surface_forms(word: str) -> list[str]:
    """``word`` as written, lower-case, capitalised and all-caps, each with and without a leading space."""
    forms = dict.fromkeys([word, word.lower(), word.capitalize(), word.upper()])
    return [joiner + form for form in forms for joiner in ("", " ")]


class Answers:
    """How labels are written by the model after one rendered prompt.

    Parameters
    ----------
    tokenizer
        The model's text tokenizer.
    prompt_text : str
        The chat template rendered for the question, ending where the answer begins.
    joiner : str or None
        What the template writes between its answer header and an assistant's answer (``" "`` after LLaVA's
        ``ASSISTANT:``, ``""`` after Qwen's ``assistant\n``): target tokens and collisions use spellings with
        it; ``None`` (unknown) prefers neither.
    aliases : bool
        Count :data:`ALIASES` as correct answers too.
    """

    def __init__(self, tokenizer: Any, prompt_text: str, *, joiner: str | None = None, aliases: bool = True) -> None:
        self.tokenizer = tokenizer
        self.prompt_text = prompt_text
        self.joiner = joiner
        self.aliases = aliases
        self._prompt_ids = self._ids(prompt_text)
        self.spellings = functools.lru_cache(maxsize=None)(self._spellings)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _is_space(self, token_id: int) -> bool:
        return self.tokenizer.decode([token_id]).strip() == ""

    def _spellings(self, word: str) -> tuple[Spelling, ...]:
        """The in-context spellings of ``word`` (see the module docstring), in the order of
        :func:`surface_forms`, without duplicates."""
        out: dict[tuple[int, ...], Spelling] = {}
        n = len(self._prompt_ids)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        for text in surface_forms(word):
            ids = self._ids(self.prompt_text + text)
            answer = tuple(ids[n:])
            if ids[:n] != self._prompt_ids or not answer or self._is_space(answer[0]) or unk in answer:
                continue
            out.setdefault(answer, Spelling(text, answer))
        return tuple(out.values())

    def natural(self, label: str) -> tuple[Spelling, ...]:
        """The label's spellings with the template's joiner (all of them if it has none there, e.g. Llama's ``" 2"``
        is a bare ``▁`` + ``2``, so ``"2"`` is taken)."""
        own = self.spellings(label)
        if self.joiner is None:
            return own
        joined = tuple(s for s in own if (s.text[:1] == " ") == (self.joiner[:1] == " "))
        return joined or own

    def accepted(self, label: str) -> tuple[Spelling, ...]:
        """Every spelling that counts as a correct answer for ``label`` (its own, then its aliases')."""
        words = [label, *(ALIASES.get(label.lower(), ()) if self.aliases else ())]
        out: dict[tuple[int, ...], Spelling] = {}
        for word in words:
            for spelling in self.spellings(word):
                out.setdefault(spelling.ids, spelling)
        return tuple(out.values())

    def resolve(self, label: str, clean_logits: torch.Tensor) -> Answer:
        """The :class:`Answer` of ``label`` on one image: of the label's own spellings (with the template's joiner),
        the one whose first token the clean model scores highest (ties: the first in :func:`surface_forms` order)."""
        own = self.natural(label)
        if not own:
            raise HeadflowError(
                f"The answer {label!r} cannot be written as a token after this prompt (every spelling is unknown to "
                "the tokenizer, merges into the prompt, or starts with a bare space); check the label or vocabulary.")
        scores = [float(clean_logits[s.ids[0]]) for s in own]
        best = own[max(range(len(own)), key=lambda i: (scores[i], -i))]
        return Answer(label, best.ids, self.accepted(label))

    def collisions(self, labels: list[str]) -> list[dict[str, Any]]:
        """Pairs of labels whose spellings as written (not re-cased; with the template's joiner) share a first token,
        which a first-token target cannot tell apart: ``[{"labels": [a, b], "token": piece, "token_id": id}, ...]``."""
        first: dict[int, list[str]] = {}
        for label in sorted(set(labels)):
            for token in dict.fromkeys(s.ids[0] for s in self.natural(label) if s.text.strip() == label):
                first.setdefault(token, []).append(label)
        out = []
        for token, names in sorted(first.items()):
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    piece = self.tokenizer.convert_ids_to_tokens(token)
                    out.append({"labels": [a, b], "token": piece, "token_id": int(token)})
        return out

    def continues_word(self, ids: tuple[int, ...], next_id: int) -> bool:
        """Whether ``next_id`` glues onto the word written by ``ids`` (``hot`` + ``dog``), by decoding."""
        word = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        joined = self.tokenizer.decode([*ids, next_id], skip_special_tokens=True)
        rest = joined[len(word):] if joined.startswith(word) else " "
        return rest[:1].isalnum()


def target_values(logits: torch.Tensor, answer_id: int, kind: str = "logit",
                  continuation_logits: torch.Tensor | None = None, answer_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """Scalar target per row of final logits ``[row, vocab]``: logit, log-prob, margin, probability, or the
    whole answer's log-probability (``sequence``).

    ``margin`` is the answer logit minus the best other logit. ``sequence`` is the summed log-probability of the
    answer's tokens ``answer_ids``, teacher-forced: the final position's log-prob of the first, plus
    ``continuation_logits`` ``[row, token, vocab]`` (the run's logits at the appended tokens ``answer_ids[:-1]``)
    for the rest.
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
    if kind == "sequence":
        total = logits.log_softmax(-1)[:, answer_ids[0]]
        rest = answer_ids[1:]
        if rest:
            if continuation_logits is None or continuation_logits.shape[1] < len(rest):
                raise HeadflowError("The 'sequence' target needs the run's logits at the answer's tokens; run the rows "
                                    "with continuation=answer_ids[:-1].")
            steps = continuation_logits[:, :len(rest)].float().log_softmax(-1)
            import torch

            index = torch.tensor(rest, device=steps.device)[None, :, None].expand(len(steps), -1, 1)
            total = total + steps.gather(-1, index)[..., 0].sum(-1)
        return total
    raise HeadflowError(f"The 'target' parameter must be one of {', '.join(TARGETS)}. Got {kind!r} instead.")
