"""Training-time control of image→text attention, expressed with headflow's intervention engine.

:mod:`headflow.zoo.train` regularises the default model by knocking out image→text attention at
random per (sample, layer, head), and measures the phenomenon criteria (knockout accuracy, mean
ablation) while it trains. It does so through the one place headflow changes attention,
:mod:`headflow.intervene.attention`: a :class:`FlowControl` describes a batch and becomes a
:class:`~headflow.intervene.attention.ForwardState` for the full-prompt path (differentiable, so it
also serves training). Batches are right-padded, so the image sits at the same positions in every row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..intervene.attention import STATE_KWARG, ForwardState, LayerBaseline, attention_scope
from ..intervene.spec import CompiledBatch

__all__ = ["STATE_KWARG", "FlowControl", "flow_control"]


@dataclass
class FlowControl:
    """What the LM attention should do to image→text attention in one forward pass.

    Parameters
    ----------
    image_keys : torch.Tensor
        ``bool (B, S)``: image token positions (the same in every row).
    text_queries : torch.Tensor
        ``bool (B, S)``: text positions after the image (the queries that are intervened on).
    knockout : torch.Tensor, optional
        ``bool (B, L, H)``: query head ``h`` of layer ``l`` may not attend image keys from text queries.
    ablate : torch.Tensor, optional
        ``bool (B, L, H)``: query head ``h`` of layer ``l`` sees ``baseline`` keys/values at the image
        positions from text queries.
    baseline : dict, optional
        ``layer -> (k, v)``, each ``(G, n_image, D)`` post-RoPE keys/values per KV head and image position.
    record : dict, optional
        If given, ``layer -> list`` to which ``(k, v)`` of shape ``(B, G, n_image, D)`` at the image
        positions are appended (post-RoPE), to build a ``mean`` baseline.
    image_attention : bool
        Capture, differentiably, the attention mass every query of every head puts on the image
        positions: after the forward, ``state.image_attention[layer]`` is ``(B, H, S)``.
    """

    image_keys: torch.Tensor
    text_queries: torch.Tensor
    knockout: torch.Tensor | None = None
    ablate: torch.Tensor | None = None
    baseline: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    record: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = field(default=None)
    image_attention: bool = False

    def state(self) -> ForwardState:
        """The engine's per-forward state for this batch (pass it as ``model(..., **{STATE_KWARG: state})``)."""
        length = self.image_keys.shape[1]
        positions = self.image_keys[0].nonzero().flatten()
        text_start = int(positions[-1]) + 1
        knock = self.knockout if self.knockout is not None and bool(self.knockout.any()) else None
        ablate = self.ablate if self.ablate is not None and bool(self.ablate.any()) else None
        batch = CompiledBatch(
            size=self.image_keys.shape[0], ablate=ablate,
            knock_heads=None if knock is None else knock[:, None],
            knock_query=None if knock is None else self.text_queries[:, None],
            knock_key=None if knock is None else self.image_keys[:, None],
            first_query=text_start)
        baseline = None
        if ablate is not None:
            if self.baseline is None:
                raise ValueError("FlowControl.ablate needs baseline keys/values for every layer.")
            baseline = [LayerBaseline(*self.baseline[layer]) for layer in range(ablate.shape[1])]
        return ForwardState(mode="full", prefix_length=0, length=length, image_positions=positions, text_start=text_start,
                            batch=batch, baseline_kind="mean" if ablate is not None else "none", baseline=baseline,
                            record={} if self.record is not None else None,
                            capture_all_queries=self.image_attention)

    def collect(self, state: ForwardState) -> None:
        """Append the keys/values recorded at the image positions during the forward to ``record``."""
        if self.record is None:
            return
        positions = state.image_positions
        for layer, (key, value) in sorted(state.record.items()):
            self.record.setdefault(layer, []).append((key[:, :, positions], value[:, :, positions]))


@contextlib.contextmanager
def flow_control(model) -> Iterator[None]:
    """Select headflow's attention for the LM of ``model`` for the block (restored on exit, also on error)."""
    with attention_scope(model):
        yield
