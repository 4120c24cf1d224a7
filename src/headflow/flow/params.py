"""Parameters of TokenFlow: the only table of its constraints and defaults (no torch needed to read it)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import field_validator

from ..errors import HeadflowError
from ..method import EngineParams, field

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("question", "role"), ("question", "final"), ("image", "question"),
    ("image", "role"), ("image", "final"), ("role", "final"),
)


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


def parse_pairs(spec: str | Sequence) -> tuple[tuple[str, str], ...]:
    """``"question:role,image:final"`` or a sequence of ``(source, target)`` → validated pairs."""
    from ..models.groups import GROUP_NAMES

    items = [p.strip() for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
    pairs = []
    for item in items:
        parts = item.replace("->", ":").split(":") if isinstance(item, str) else list(item)
        if len(parts) != 2 or any(p not in GROUP_NAMES for p in parts):
            raise HeadflowError(f"A flow pair must be 'source:target' with token groups from "
                                f"{', '.join(GROUP_NAMES)}. Got {item!r} instead.")
        pairs.append((str(parts[0]), str(parts[1])))
    if not pairs:
        raise HeadflowError("The 'pairs' parameter of TokenFlow must name at least one pair, e.g. 'image:final'.")
    return tuple(dict.fromkeys(pairs))


def head_list(heads: Any) -> list[tuple[int, int]] | None:
    """Heads as ``[(layer, head), ...]`` from a bool ``[layer, head]`` tensor/array, ``HeadRef`` s or pairs."""
    if heads is None:
        return None
    if hasattr(heads, "nonzero") and getattr(heads, "ndim", 0) == 2:  # torch.Tensor / numpy bool matrix
        import numpy as np

        return [(int(l), int(h)) for l, h in np.argwhere(np.asarray(heads))]
    return [(int(r.layer), int(r.head)) if hasattr(r, "layer") else (int(r[0]), int(r[1])) for r in heads]


class FlowParams(EngineParams):
    """What defines a token-flow run."""

    window: int | None = field(None, "Layers per knockout window (default max(1, round(L / 6))).", ge=1)
    pairs: tuple[tuple[str, str], ...] = field(DEFAULT_PAIRS, "Token-group pairs source:target, comma-separated.")
    heads: list[tuple[int, int]] | None = field(None, "Knock out these (layer, head) pairs only (default: all).")
    n_bootstrap: int = field(1000, "Bootstrap resamples over images for every interval.", flag="--bootstrap", ge=1)
    seed: int = field(0, "Seed of the bootstrap and of the random token sets.")
    objects: Literal["auto"] | bool = field("auto", "Object/background analysis: 'auto' where examples carry masks "
                                            "and the family has patch geometry; True requires it.")
    object_layers: list[int] | None = field(None, "Layers of the object/background and per-token knockouts "
                                            "(default: all).")
    n_random: int = field(8, "Random token sets of the same sizes per image.", ge=0)
    n_maps: int = field(4, "Images (the first kept ones with masks) that get a per-token effect map.", flag="--maps",
                        ge=0)
    threshold: float = field(0.5, "Object coverage threshold for object tokens.", gt=0.0, le=1.0)
    progress: bool = field(True, "Show a progress bar over images.", runtime=True)

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> tuple[tuple[str, str], ...]:
        return parse_pairs(value)

    @field_validator("heads", mode="before")
    @classmethod
    def _heads(cls, value: Any) -> list[tuple[int, int]] | None:
        return head_list(value)

    @field_validator("object_layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> list[int] | None:
        return None if value is None else [int(x) for x in value]
