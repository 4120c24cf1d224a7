"""Token groups of a prompt: which positions are system, image, question, role and final.

Groups are derived from the processor's output (image placeholder ids after expansion) and the
family's chat template (the assistant header is what ``add_generation_prompt`` appends), never from
hard-coded indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import HeadflowError

GROUP_NAMES: tuple[str, ...] = ("system", "image", "question", "role", "final")


@dataclass(frozen=True)
class TokenGroups:
    """Positions of each token group in one prompt of ``length`` tokens.

    ``system`` is everything before the first image token (system prompt and user header);
    ``image`` the expanded image placeholder tokens (``image_runs`` lists each image separately);
    ``question`` everything after the last image token up to the assistant header; ``role`` the
    assistant header the chat template adds, without its last token; ``final`` the last position,
    where the answer's first token is predicted.
    """

    length: int
    image_runs: tuple[tuple[int, ...], ...]
    role_start: int

    @property
    def image(self) -> tuple[int, ...]:
        return tuple(p for run in self.image_runs for p in run)

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
        image = set(self.image)
        return tuple(p for p in range(self.first_image, self.role_start) if p not in image)

    @property
    def role(self) -> tuple[int, ...]:
        return tuple(range(self.role_start, self.length - 1))

    @property
    def final(self) -> tuple[int, ...]:
        return (self.length - 1,)

    def positions(self, name: str) -> tuple[int, ...]:
        """Positions of a group by name (``"image"``, ``"question"``, ...)."""
        if name not in GROUP_NAMES:
            raise HeadflowError(f"Unknown token group {name!r}. Use one of: {', '.join(GROUP_NAMES)}.")
        return getattr(self, name)

    def mask(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Bool ``(length,)`` mask of a group."""
        out = torch.zeros(self.length, dtype=torch.bool, device=device)
        out[list(self.positions(name))] = True
        return out

    def describe(self) -> dict[str, list[int]]:
        return {name: list(self.positions(name)) for name in GROUP_NAMES}


def runs_of(positions: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Split sorted positions into runs of consecutive integers."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return tuple(tuple(r) for r in runs)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def derive_groups(input_ids: Sequence[int], image_token_id: int, no_generation_ids: Sequence[int]) -> TokenGroups:
    """Token groups from the prompt ids and the ids of the same prompt without the generation prompt.

    The assistant header starts where the two tokenisations part (their longest common prefix).
    """
    ids = list(input_ids)
    image_positions = [i for i, t in enumerate(ids) if t == image_token_id]
    if not image_positions:
        raise HeadflowError(
            "The prompt contains no image token; pass an image and use the model's chat template "
            "(headflow inserts the image placeholder for you)."
        )
    runs = runs_of(image_positions)
    role_start = common_prefix_length(ids, no_generation_ids)
    last_image = runs[-1][-1]
    # The header must lie after the image and leave the final position on its own.
    role_start = min(max(role_start, last_image + 1), len(ids) - 1)
    if last_image >= len(ids) - 1:
        raise HeadflowError("The prompt ends with an image token; add a question after the image.")
    return TokenGroups(length=len(ids), image_runs=runs, role_start=role_start)
