"""What one batch row does to the language model's attention: head ablation and attention knockout.

A row is an :class:`Intervention`; a batch is a list of rows, compiled once per batch into tensors
(:class:`CompiledBatch`) that the attention function indexes per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

import torch

from ..errors import HeadflowError
from ..models.groups import TokenGroups

#: a token group name (``"image"``) or explicit positions
TokenSelection = Union[str, Sequence[int]]


@dataclass(frozen=True, order=True)
class HeadRef:
    """One attention head of the language model: ``(layer, query head)``."""

    layer: int
    head: int


@dataclass(frozen=True)
class Knockout:
    """Queries at ``target`` may not attend keys at ``source`` (score −∞).

    ``layers``/``heads`` restrict it to some layers and query heads (``None`` = all). Sources and
    targets are group names (``"image"``, ``"question"``, ``"role"``, ``"final"``, ``"system"``; ``"image_1"``,
    ``"image_2"``, ... on a prompt with several images) or explicit token positions, e.g. the object tokens of
    an image.
    """

    source: TokenSelection
    target: TokenSelection
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None


@dataclass(frozen=True)
class Intervention:
    """One batch row.

    Parameters
    ----------
    ablate : bool tensor ``[layer, head]`` or iterable of :class:`HeadRef` / ``(layer, head)``, optional
        Heads whose text queries (after the image) see the baseline instead of the real image
        keys/values.
    knockouts : tuple of :class:`Knockout`
        Attention knockouts applied in the same row.
    scale : float tensor ``[layer, head]`` or mapping ``{HeadRef | (layer, head): factor}``, optional
        Steering: each listed head's text queries (after the image) weigh the image positions by ``factor``
        (factor ``f`` adds ``log f`` to their scores on image keys, i.e. multiplies the attention weights on
        the image by ``f`` and renormalises). 1 is the identity, 0 hides the image (the knockout baseline's
        ablation), above 1 amplifies the head's reading of the image. Unlisted heads keep factor 1.
    """

    ablate: torch.Tensor | Iterable[HeadRef | tuple[int, int]] | None = None
    knockouts: tuple[Knockout, ...] = field(default_factory=tuple)
    scale: torch.Tensor | dict | None = None

    def __post_init__(self) -> None:
        knockouts = (self.knockouts,) if isinstance(self.knockouts, Knockout) else tuple(self.knockouts)
        if not all(isinstance(k, Knockout) for k in knockouts):
            raise HeadflowError("Intervention(knockouts=...) takes Knockout objects, e.g. Knockout('image', 'final').")
        object.__setattr__(self, "knockouts", knockouts)


def ablation_matrix(ablate, n_layers: int, n_heads: int) -> torch.Tensor:
    """``ablate`` as a bool ``[layer, head]`` tensor, with a clear error for out-of-range heads."""
    if ablate is None:
        return torch.zeros(n_layers, n_heads, dtype=torch.bool)
    if torch.is_tensor(ablate):
        if tuple(ablate.shape) != (n_layers, n_heads):
            raise HeadflowError(
                f"An ablation mask must have shape (n_layers, n_heads) = ({n_layers}, {n_heads}). "
                f"Got {tuple(ablate.shape)} instead."
            )
        return ablate.to(dtype=torch.bool, device="cpu")
    out = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for ref in ablate:
        layer, head = (ref.layer, ref.head) if isinstance(ref, HeadRef) else ref
        _check_head(layer, head, n_layers, n_heads)
        out[layer, head] = True
    return out


def scale_matrix(scale, n_layers: int, n_heads: int) -> torch.Tensor:
    """``scale`` as a float ``[layer, head]`` tensor of factors (1 where not given), with clear errors."""
    out = torch.ones(n_layers, n_heads, dtype=torch.float32)
    if scale is None:
        return out
    if torch.is_tensor(scale):
        if tuple(scale.shape) != (n_layers, n_heads):
            raise HeadflowError(f"A steering scale must have shape (n_layers, n_heads) = ({n_layers}, {n_heads}). "
                                f"Got {tuple(scale.shape)} instead.")
        out = scale.detach().to(dtype=torch.float32, device="cpu").clone()
    else:
        for ref, factor in dict(scale).items():
            layer, head = (ref.layer, ref.head) if isinstance(ref, HeadRef) else ref
            _check_head(layer, head, n_layers, n_heads)
            out[layer, head] = float(factor)
    if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
        raise HeadflowError(f"Steering factors must be finite and >= 0. Got {out[~torch.isfinite(out) | (out < 0)][0].item()!r}"
                            " instead.")
    return out


def _check_head(layer: int, head: int, n_layers: int, n_heads: int) -> None:
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise HeadflowError(
            f"Head ({layer}, {head}) is out of range: the model has {n_layers} layers and {n_heads} heads per layer."
        )


def selection_mask(selection: TokenSelection, groups: TokenGroups) -> torch.Tensor:
    """Bool ``(length,)`` mask of a group name or a list of positions."""
    if isinstance(selection, str):
        groups.positions(selection)  # an unknown name is one line
        if selection in groups.empty():  # a knockout of nothing would be a silent no-op
            raise groups.empty_group_error(selection, f"A knockout with the group {selection!r}")
        return groups.mask(selection)
    positions = list(selection)
    bad = [p for p in positions if not 0 <= int(p) < groups.length]
    if bad:
        raise HeadflowError(f"Token positions {bad[:5]} are outside the prompt of {groups.length} tokens.")
    out = torch.zeros(groups.length, dtype=torch.bool)
    out[positions] = True
    return out


@dataclass
class CompiledBatch:
    """A batch of rows as tensors.

    Attributes
    ----------
    ablate : Bool[Tensor, "batch layer head"] or None
    knock_heads : Bool[Tensor, "batch slot layer head"] or None
        Where each knockout slot applies.
    knock_query, knock_key : Bool[Tensor, "batch slot position"] or None
        Target (query) and source (key) positions of each slot.
    first_query : int
        Smallest query position any row intervenes on (``length`` if none).
    scale : Float[Tensor, "batch layer head"] or None
        Steering factors (None where every factor is 1).
    """

    size: int
    ablate: torch.Tensor | None
    knock_heads: torch.Tensor | None
    knock_query: torch.Tensor | None
    knock_key: torch.Tensor | None
    first_query: int
    scale: torch.Tensor | None = None

    @property
    def device(self) -> torch.device | None:
        """Where the batch's tensors live (``None`` for a batch with no intervention tensors)."""
        return next((t.device for t in (self.ablate, self.knock_heads, self.scale) if t is not None), None)

    def to(self, device: torch.device) -> "CompiledBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CompiledBatch(self.size, move(self.ablate), move(self.knock_heads), move(self.knock_query),
                             move(self.knock_key), self.first_query, move(self.scale))

    def extended(self, n: int) -> "CompiledBatch":
        """The batch over ``n`` more positions after the prompt (teacher-forced answer tokens), which no knockout
        names: their query and key masks are False."""
        if n == 0 or self.knock_query is None:
            return self
        pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:-1], n)], dim=-1)  # noqa: E731
        return CompiledBatch(self.size, self.ablate, self.knock_heads, pad(self.knock_query), pad(self.knock_key),
                             self.first_query, self.scale)

    def ablated_heads(self, layer: int) -> torch.Tensor | None:
        """Bool ``[batch, head]`` of ablated heads in ``layer``, or None if none is."""
        if self.ablate is None:
            return None
        at_layer = self.ablate[:, layer]
        return at_layer if bool(at_layer.any()) else None

    def scaled_heads(self, layer: int) -> torch.Tensor | None:
        """Float ``[batch, head]`` steering factors in ``layer``, or None if every one is 1."""
        if self.scale is None:
            return None
        at_layer = self.scale[:, layer]
        return at_layer if bool((at_layer != 1).any()) else None

    def blocked(self, layer: int, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor | None:
        """Bool ``[batch, head, query, key]``: pairs knocked out in ``layer``, or None if none is."""
        if self.knock_heads is None:
            return None
        heads = self.knock_heads[:, :, layer]  # (B, K, H)
        if not bool(heads.any()):
            return None
        q = self.knock_query[:, :, query_positions].to(heads.dtype)  # (B, K, Q)
        k = self.knock_key[:, :, key_positions]
        # OR over slots of (head ∧ query ∧ key) as a float product-sum.
        prod = torch.einsum("bsh,bsq,bsk->bhqk", heads.float(), q.float(), k.float())
        return prod > 0


def compile_rows(rows: Sequence[Intervention], groups: TokenGroups, n_layers: int, n_heads: int) -> CompiledBatch:
    """Turn rows into a :class:`CompiledBatch`; validates heads, layers and positions."""
    if not rows:
        raise HeadflowError("A batch needs at least one Intervention row.")
    batch = len(rows)
    ablate = torch.stack([ablation_matrix(r.ablate, n_layers, n_heads) for r in rows])
    scale = torch.stack([scale_matrix(r.scale, n_layers, n_heads) for r in rows])
    first_query = groups.length
    if ablate.any() or bool((scale != 1).any()):
        first_query = groups.text_start
    n_slots = max(len(r.knockouts) for r in rows)
    knock_heads = knock_query = knock_key = None
    if n_slots:
        knock_heads = torch.zeros(batch, n_slots, n_layers, n_heads, dtype=torch.bool)
        knock_query = torch.zeros(batch, n_slots, groups.length, dtype=torch.bool)
        knock_key = torch.zeros(batch, n_slots, groups.length, dtype=torch.bool)
        for b, row in enumerate(rows):
            for s, ko in enumerate(row.knockouts):
                layers = list(range(n_layers)) if ko.layers is None else list(ko.layers)
                heads = list(range(n_heads)) if ko.heads is None else list(ko.heads)
                for layer in layers:
                    for head in heads:
                        _check_head(layer, head, n_layers, n_heads)
                lh = torch.zeros(n_layers, n_heads, dtype=torch.bool)
                if layers and heads:
                    lh[torch.tensor(layers)[:, None], torch.tensor(heads)[None, :]] = True
                knock_heads[b, s] = lh
                knock_query[b, s] = selection_mask(ko.target, groups)
                knock_key[b, s] = selection_mask(ko.source, groups)
                targets = knock_query[b, s].nonzero()
                if len(targets) and lh.any():
                    first_query = min(first_query, int(targets[0]))
    return CompiledBatch(batch, ablate if ablate.any() else None, knock_heads, knock_query, knock_key, first_query,
                         scale if bool((scale != 1).any()) else None)
