"""Object and background image tokens (F10): which image tokens carry the answer into the text.

Rows per image (all go into the same ``engine.run`` call as the window rows):

* ``object`` / ``background``: knock out image→text (queries at question, role and final may not
  attend those image tokens) from the object tokens only (coverage ≥ threshold) or the background
  tokens only (coverage 0), in ``layers`` (default: all);
* ``random_object:k`` / ``random_background:k``: the same from ``n_random`` seeded random sets of
  spatial image tokens of the same sizes;
* ``token:i`` (token maps, a few images): image token ``i`` alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..intervene.spec import Intervention, Knockout, TokenSelection
from ..models.geometry import BACKGROUND, OBJECT, classify_tokens
from ..models.groups import TokenGroups
from .stats import excludes_zero, mean_ci

CONDITIONS = ("object", "background", "random_object", "random_background")


def knockouts(source: TokenSelection, target: TokenSelection, layers: Sequence[int],
              heads: torch.Tensor | None) -> tuple[Knockout, ...]:
    """Knockouts of ``source → target`` in ``layers``, for all heads or the heads set in the bool
    ``[layer, head]`` matrix ``heads`` (layers with the same head set share one :class:`Knockout`)."""
    layers = [int(layer) for layer in layers]
    if heads is None:
        return (Knockout(source, target, layers=layers),)
    by_heads: dict[tuple[int, ...], list[int]] = {}
    for layer in layers:
        chosen = tuple(int(h) for h in heads[layer].nonzero().flatten().tolist())
        if chosen:
            by_heads.setdefault(chosen, []).append(layer)
    return tuple(Knockout(source, target, layers=ls, heads=list(hs)) for hs, ls in by_heads.items())


def text_positions(groups: TokenGroups) -> list[int]:
    """Question, role and final positions: the text after the image."""
    return [*groups.question, *groups.role, *groups.final]


def object_rows(groups: TokenGroups, coverage: np.ndarray, *, layers: Sequence[int], heads: torch.Tensor | None,
                n_random: int, rng: np.random.Generator, threshold: float = 0.5
                ) -> tuple[list[Intervention], list[str], dict[str, int]]:
    """Rows and labels for the object / background / random-set knockouts of one image.

    Returns ``(rows, labels, counts)``; a condition with no tokens (e.g. no object token) gets no row.
    """
    kinds = classify_tokens(coverage, threshold)
    image = np.asarray(groups.image)
    spatial = np.flatnonzero(np.isfinite(coverage))
    sets = {"object": np.flatnonzero(kinds == OBJECT), "background": np.flatnonzero(kinds == BACKGROUND)}
    counts = {"n_object": len(sets["object"]), "n_background": len(sets["background"]),
              "n_boundary": int((kinds == "boundary").sum()), "n_spatial": len(spatial)}
    target = text_positions(groups)
    rows, labels = [], []
    for name, idx in sets.items():
        if len(idx) == 0:
            continue
        rows.append(Intervention(knockouts=knockouts(image[idx].tolist(), target, layers, heads)))
        labels.append(name)
        for k in range(n_random):
            draw = rng.choice(spatial, size=len(idx), replace=False)
            rows.append(Intervention(knockouts=knockouts(image[np.sort(draw)].tolist(), target, layers, heads)))
            labels.append(f"random_{name}:{k}")
    return rows, labels, counts


def token_rows(groups: TokenGroups, *, layers: Sequence[int], heads: torch.Tensor | None
               ) -> tuple[list[Intervention], list[str]]:
    """One row per image token: that token → text knocked out."""
    target = text_positions(groups)
    rows = [Intervention(knockouts=knockouts([p], target, layers, heads)) for p in groups.image]
    return rows, [f"token:{i}" for i in range(len(groups.image))]


def condition_of(label: str) -> str:
    """``random_object:3`` → ``random_object``."""
    return label.split(":", 1)[0]


def summarize_objects(table: Any, image_ids: Sequence[str], idx: np.ndarray) -> dict[str, Any] | None:
    """Mean effects per condition with bootstrap intervals, differences to random sets of the same size,
    and the C4 verdict. ``table``: the tidy per-image frame (image_id, condition, effect_prob, effect_logit;
    random draws already averaged per image)."""
    if table is None or len(table) == 0:
        return None
    order = {image_id: i for i, image_id in enumerate(image_ids)}
    out: dict[str, Any] = {}
    arrays: dict[tuple[str, str], np.ndarray] = {}
    for metric in ("effect_prob", "effect_logit"):
        for condition in CONDITIONS:
            values = np.full(len(image_ids), np.nan)
            sub = table[table["condition"] == condition]
            values[[order[i] for i in sub["image_id"]]] = sub[metric].to_numpy(dtype=float)
            arrays[(condition, metric)] = values
    for condition in CONDITIONS:
        out[condition] = {m.split("_", 1)[1]: mean_ci(arrays[(condition, m)], idx) for m in ("effect_prob", "effect_logit")}
    for name in ("object", "background"):
        out[f"{name}_minus_random"] = {
            m.split("_", 1)[1]: mean_ci(arrays[(name, m)] - arrays[(f"random_{name}", m)], idx)
            for m in ("effect_prob", "effect_logit")}
    obj, bg = excludes_zero(out["object"]["prob"]), excludes_zero(out["background"]["prob"])
    out["c4"] = {
        "claim": "C4: both object and background tokens carry answer information "
                 "(the 95% intervals of both knockout effects on the answer probability exclude 0)",
        "object_excludes_zero": obj, "background_excludes_zero": bg,
        "verdict": "supported" if obj and bg else "not supported",
    }
    return out
