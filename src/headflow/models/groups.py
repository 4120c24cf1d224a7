"""Token groups of a prompt: which positions are system, image, question, role and final.

Groups are derived from the processor's output (image placeholder ids after expansion) and the
family's chat template, never from hard-coded indices. ``role`` and ``final`` are the tokens of what the
template writes between the end of the user's question and the answer (the end of the user's turn and the
assistant header: ``" ASSISTANT:"``, ``" [/INST]"``, ``"<|im_end|>\n<|im_start|>assistant\n"``), found by
rendering the template around a sentinel question (:func:`answer_header`) — not from what
``add_generation_prompt`` adds, which some real templates ignore (LLaVA-NeXT-Mistral's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import HeadflowError

GROUP_NAMES: tuple[str, ...] = ("system", "image", "question", "role", "final")


@dataclass(frozen=True)
class TokenGroups:
    """Positions of each token group in one prompt of ``length`` tokens.

    ``system`` is everything before the first image token (system prompt and user header);
    ``image`` the expanded image placeholder tokens (``image_runs``: each run of consecutive image tokens, i.e.
    each image, or each tile / row of a split image); ``separators`` the other tokens inside the image span
    (between the first and the last image token: the tile and row markers of a split image such as Idefics3's
    ``<fake_token_around_image><row_1_col_2>`` or Pixtral's ``[IMG_BREAK]``, and whatever lies between two
    images); ``question`` everything after the last image token up to the end of the user's question; ``role`` the
    template's tokens between the question and the answer (``header``: end of the user turn and assistant
    header), without its last token; ``final`` the last position, where the answer's first token is
    predicted. A group can be empty on some templates (``role`` when the header is one token):
    :meth:`empty` lists them, and knockouts that touch one are refused.

    A prompt with several images has one group per image besides their union ``image``: ``image_1``,
    ``image_2``, ... (numbered from 1 in the order the images were given; :attr:`images` holds their positions,
    ``images[0]`` is ``image_1``), each image's tokens as its own processor writes them for that image alone
    (``image_counts``), tiles and rows of a split image included.

    Separators are in no group of :data:`GROUP_NAMES`: they carry no pixels, so ``image`` (what ablations
    replace and what a knockout with source ``"image"`` hides) is the image tokens alone, and they are not the
    user's text, so ``question`` never holds them. They lie before :attr:`text_start`, in the shared prefix,
    and :meth:`describe` lists them.
    """

    length: int
    image_runs: tuple[tuple[int, ...], ...]
    role_start: int
    header: str = ""
    separators: tuple[int, ...] = ()
    #: image tokens of each image, in order (empty: one image, all of ``image``)
    image_counts: tuple[int, ...] = ()

    @property
    def image(self) -> tuple[int, ...]:
        return tuple(p for run in self.image_runs for p in run)

    @property
    def images(self) -> tuple[tuple[int, ...], ...]:
        """The image positions of each image of the prompt (one entry per image)."""
        image = self.image
        if len(self.image_counts) < 2:
            return (image,)
        out, start = [], 0
        for n in self.image_counts:
            out.append(image[start:start + n])
            start += n
        return tuple(out)

    @property
    def names(self) -> tuple[str, ...]:
        """The group names this prompt has: :data:`GROUP_NAMES`, then ``image_1``, ``image_2``, ... when it has
        several images."""
        n = len(self.images)
        return GROUP_NAMES + (tuple(f"image_{k}" for k in range(1, n + 1)) if n > 1 else ())

    @property
    def first_image(self) -> int:
        return self.image_runs[0][0]

    @property
    def text_start(self) -> int:
        """First position after the last image token: where intervened text queries begin."""
        return self.image_runs[-1][-1] + 1

    @property
    def system(self) -> tuple[int, ...]:
        return tuple(range(self.first_image))

    @property
    def question(self) -> tuple[int, ...]:
        return tuple(range(self.text_start, self.role_start))

    @property
    def role(self) -> tuple[int, ...]:
        return tuple(range(self.role_start, self.length - 1))

    @property
    def final(self) -> tuple[int, ...]:
        return (self.length - 1,)

    def positions(self, name: str) -> tuple[int, ...]:
        """Positions of a group by name (``"image"``, ``"question"``, ``"image_2"``, ...)."""
        if name in GROUP_NAMES:
            return getattr(self, name)
        if name in self.names:
            return self.images[int(name.split("_")[1]) - 1]
        fix = (f" This prompt has {len(self.images)} images: image_1 .. image_{len(self.images)}."
               if len(self.images) > 1 else " Per-image groups (image_1, ...) exist on prompts with several images.")
        raise HeadflowError(f"Unknown token group {name!r}. Use one of: {', '.join(GROUP_NAMES)}.{fix}")

    def mask(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool ``(length,)`` mask of a group."""
        out = torch.zeros(self.length, dtype=torch.bool, device=device)
        out[list(self.positions(name))] = True
        return out

    def describe(self) -> dict[str, list[int]]:
        """Positions of every group (:attr:`names`: per-image groups on a prompt with several images), then
        ``separators`` (possibly empty)."""
        return {**{name: list(self.positions(name)) for name in self.names}, "separators": list(self.separators)}

    def empty(self) -> list[str]:
        """Names of the groups with no token on this prompt (e.g. ``role`` on a one-token header)."""
        return [name for name in GROUP_NAMES if not self.positions(name)]

    def empty_group_error(self, name: str, what: str) -> HeadflowError:
        """The one-line refusal of ``what`` (a knockout, a flow pair) that needs the empty group ``name``."""
        return HeadflowError(
            f"{what} cannot be measured on this prompt: its token group {name!r} is empty (the chat template writes "
            f"{self.header!r} between the question and the answer). Leave out pairs with {name!r}.")


def runs_of(positions: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Split sorted positions into runs of consecutive integers."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return tuple(tuple(r) for r in runs)


#: the question text rendered in place of the user's question to find where it ends in the template
SENTINEL = "HEADFLOWSENTINELQUESTION"


def answer_header(render: Callable[[str], str]) -> str:
    """The text the chat template writes after the user's question, up to where the answer begins.

    ``render(question)`` is the chat template applied to a one-turn prompt with the generation prompt. The
    header is what follows a sentinel question in ``render(SENTINEL)``.
    """
    text = render(SENTINEL)
    if text.count(SENTINEL) != 1:
        raise HeadflowError("The chat template does not write the user's question once, verbatim; headflow cannot "
                            "tell where the question ends. Use a template that renders the question text as given.")
    return text[text.index(SENTINEL) + len(SENTINEL):]


def header_token_count(tokenizer: Any, text: str, header: str) -> int:
    """How many tokens of ``text`` (a rendered prompt ending in ``header``) belong to the header: those that start
    at or after the header's first character, by the tokenizer's own character offsets."""
    if not text.endswith(header):
        raise HeadflowError(f"The rendered prompt does not end with the template's answer header {header!r}.")
    start = len(text) - len(header)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sum(1 for lo, hi in offsets if lo >= start and hi > lo) if header else 0


def derive_groups(input_ids: Sequence[int], image_token_id: int, header_tokens: int, header: str = "",
                  image_counts: Sequence[int] = ()) -> TokenGroups:
    """Token groups from the prompt ids and the number of tokens of the template's answer header at its end.

    The header (``role`` + ``final``) is the last ``header_tokens`` tokens; a header of no token leaves the
    answer to be predicted right after the question, which no group layout can describe (an error). The
    non-image tokens between the first and the last image token are the ``separators``. ``image_counts``: the
    image tokens of each image, in order, for a prompt with several images (they must add up to the prompt's).
    """
    ids = list(input_ids)
    image_positions = [i for i, t in enumerate(ids) if t == image_token_id]
    if not image_positions:
        raise HeadflowError(
            "The prompt contains no image token; pass an image and use the model's chat template "
            "(headflow inserts the image placeholder for you)."
        )
    runs = runs_of(image_positions)
    last_image = runs[-1][-1]
    if last_image >= len(ids) - 1:
        raise HeadflowError("The prompt ends with an image token; add a question after the image.")
    if header_tokens < 1:
        raise HeadflowError(f"The chat template writes nothing between the user's question and the answer "
                            f"(header {header!r}), so there is no 'role' or 'final' token; use the model's chat "
                            "template with its assistant header.")
    role_start = len(ids) - header_tokens
    if role_start <= last_image:
        raise HeadflowError(f"The template's answer header {header!r} overlaps the image tokens; headflow needs the "
                            "question after the image.")
    image = set(image_positions)
    separators = tuple(p for p in range(runs[0][0], last_image) if p not in image)
    counts = tuple(int(n) for n in image_counts) if len(image_counts) > 1 else ()
    if counts and sum(counts) != len(image_positions):
        raise HeadflowError(f"The prompt has {len(image_positions)} image tokens but its {len(counts)} images have "
                            f"{' + '.join(map(str, counts))} = {sum(counts)} on their own; headflow cannot tell which "
                            "tokens belong to which image. Pass the images one per prompt.")
    return TokenGroups(length=len(ids), image_runs=runs, role_start=role_start, header=header, separators=separators,
                       image_counts=counts)
