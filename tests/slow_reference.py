"""A slow, independent reference for the intervention engine: the model re-run eagerly, one row at a time, with
each head's attention written out by hand.

Independent of headflow's engine: nothing here imports ``headflow.intervene`` (no prefix cache, no block merge,
no SDPA kernel, no folded queries, no compiled batches). The reference registers its own attention function
with transformers' ``AttentionInterface`` and transformers' own ``eager_mask`` as its mask function, so each
layer receives the model's post-RoPE queries, keys and values and the model's own mask from transformers,
whatever builds it (causal, sliding window, Gemma 3's bidirectional image block and PaliGemma's bidirectional
prefix, both built by the top-level model from ``token_type_ids`` through the same mask interface; the test
checks that the reference's clean run equals the plain forward, so a mask it missed would fail there); then, per query head, it computes ``softmax(cap(q k^T * scale) + mask) v`` in float64 (``cap``: the model's score softcap, if any)
with the row's intervention applied literally:

* **ablation** of head ``(layer, h)``: queries at or after the text start see, at image positions, the
  baseline keys/values of the head's KV group instead of the real ones (baseline ``None``: they may not
  attend image positions at all);
* **knockout** ``(layers, heads, query positions, key positions)``: those queries may not attend those keys
  in those layers and heads;
* **steering** factor ``f`` of head ``(layer, h)``: its text queries' scores on image keys get ``+ log f``
  (their softmax weights on the image multiplied by ``f`` and renormalised).

Where state lives: :func:`reference_scope` selects the reference attention for the language model and restores
the previous implementation on exit; the row travels in a closure that lives for one forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

NAME = "headflow_slow_reference"


@dataclass
class ReferenceRow:
    """One row for the reference.

    ``ablate``: bool ``[layer, head]`` or None. ``baseline``: per layer ``(keys, values)`` of shape
    ``[kv_head, image_token, head_dim]`` (None: the knockout baseline, image keys hidden). ``knockouts``:
    ``(layers, heads, query positions, key positions)`` tuples.
    """

    ablate: torch.Tensor | None = None
    baseline: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    knockouts: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]] = ()
    #: steering factors float ``[layer, head]`` (None: all 1): text queries' weights on image keys times f, renormalised
    scale: torch.Tensor | None = None
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _attention_for(row: ReferenceRow, image: list[int], text_start: int):
    image_idx = torch.tensor(image)

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        layer = int(module.layer_idx)
        row.record[layer] = (key.detach().clone(), value.detach().clone())
        batch, n_heads, q_len, head_dim = query.shape
        assert batch == 1, "the reference runs one row at a time"
        n_kv = key.shape[1]
        rep = n_heads // n_kv
        scale = scaling if scaling is not None else head_dim ** -0.5
        k_len = key.shape[2]
        if attention_mask is None:
            allowed_base = torch.ones(q_len, k_len, dtype=torch.bool).tril()
        else:
            allowed_base = attention_mask[0, 0] > torch.finfo(attention_mask.dtype).min / 2
        out = torch.empty(q_len, n_heads, value.shape[-1], dtype=torch.float64)
        for h in range(n_heads):
            g = h // rep
            q = query[0, h].double()
            k, v = key[0, g].double(), value[0, g].double()
            allowed = allowed_base.clone()
            for layers, heads, queries, keys in row.knockouts:
                if layer in layers and h in heads:
                    q_idx = torch.tensor(list(queries), dtype=torch.long)
                    k_idx = torch.tensor(list(keys), dtype=torch.long)
                    allowed[q_idx[:, None], k_idx[None, :]] = False
            ablated = row.ablate is not None and bool(row.ablate[layer, h])
            for rows, swap in ((slice(0, text_start), False), (slice(text_start, q_len), ablated)):
                keys_h, values_h, allow = k.clone(), v.clone(), allowed[rows].clone()
                if swap:
                    if row.baseline is None:
                        allow[:, image_idx] = False
                    else:
                        base_k, base_v = row.baseline[layer]
                        keys_h[image_idx] = base_k[g].double()
                        values_h[image_idx] = base_v[g].double()
                scores = (q[rows] @ keys_h.T) * scale
                if kwargs.get("softcap") is not None:  # Gemma 2: the model's score cap, before the mask
                    scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
                scores = scores.masked_fill(~allow, float("-inf"))
                if rows.start == text_start and row.scale is not None:  # steering: weights on the image times f
                    scores[:, image_idx] = scores[:, image_idx] + torch.tensor(float(row.scale[layer, h])).double().log()
                out[rows, h] = torch.softmax(scores, dim=-1) @ values_h
        return out[None].to(query.dtype), None

    return attention


@contextlib.contextmanager
def reference_scope(lm, row: ReferenceRow, image: list[int], text_start: int) -> Iterator[None]:
    """Select the reference attention (with ``row``) for the language model; restore the previous choice after."""
    AttentionInterface.register(NAME, _attention_for(row, image, text_start))
    AttentionMaskInterface.register(NAME, eager_mask)
    key = lm.adapter.text_config_key
    text_config = getattr(lm.model.config, key)
    previous = text_config._attn_implementation
    lm.model.set_attn_implementation({key: NAME})
    try:
        yield
    finally:
        lm.model.set_attn_implementation({key: previous or "sdpa"})


def reference_logits(lm, inputs: dict, groups, row: ReferenceRow) -> torch.Tensor:
    """Final-position logits ``[vocab]`` of the model with ``row`` applied by the reference."""
    with reference_scope(lm, row, list(groups.image), groups.text_start), torch.no_grad():
        return lm.model(**inputs, use_cache=False).logits[0, -1].float()


def reference_image_kv(lm, inputs: dict, groups) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values at the image positions of a clean run, ``[kv_head, image_token, head_dim]``
    (what a baseline built from this prompt holds)."""
    row = ReferenceRow()
    reference_logits(lm, inputs, groups, row)
    image = torch.tensor(list(groups.image))
    return [(row.record[layer][0][0][:, image], row.record[layer][1][0][:, image]) for layer in sorted(row.record)]
