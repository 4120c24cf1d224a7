"""Training/diagnostic utility for the default model: image->text attention control in the LM.

This is *not* headflow's intervention engine (that lives in :mod:`headflow.intervene`). It exists so
that :mod:`headflow.zoo.train` can regularise the flow of image information during training (random
knockout of image->text attention per layer and per head) and measure the phenomenon criteria it
targets (knockout accuracy, single-head mean-ablation logit drop) without depending on the engine.

Mechanism: a LM attention function, registered in ``transformers.AttentionInterface`` under
:data:`ATTN_NAME` and switched on only inside :func:`flow_control` (which restores the previous
implementation in ``finally``). The per-batch instructions travel as the ``headflow_flow`` keyword
argument of the model's forward, which transformers passes down to every attention call; there is
no global state beyond the (idempotent) registration of the function name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["ATTN_NAME", "FlowControl", "flow_control", "flow_attention"]

ATTN_NAME = "headflow_zoo_flow"


@dataclass
class FlowControl:
    """What the LM attention should do to image->text attention in one forward pass.

    Parameters
    ----------
    image_keys : torch.Tensor
        ``bool (B, S)``: image token positions.
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
    """

    image_keys: torch.Tensor
    text_queries: torch.Tensor
    knockout: torch.Tensor | None = None
    ablate: torch.Tensor | None = None
    baseline: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    record: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = field(default=None)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _bool_mask(attention_mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """A ``(B|1, 1, Q, K)`` bool mask (True = attend) from whatever transformers passed."""
    if attention_mask is None:
        return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask[..., :k_len]
    return attention_mask[..., :k_len] == 0


def flow_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, headflow_flow=None, **kwargs):
    """LM attention with optional image->text knockout / baseline substitution (see :class:`FlowControl`).

    ``query`` is ``(B, H, Q, D)``; ``key``/``value`` are ``(B, G, K, D)`` post-RoPE. Returns
    ``((B, Q, H, D), None)``. Without instructions for this layer it delegates to SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    ctl: FlowControl | None = headflow_flow
    layer = module.layer_idx
    if ctl is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    bsz, n_heads, q_len, _ = query.shape
    k_len = key.shape[2]
    img = ctl.image_keys[:, :k_len]
    if ctl.record is not None:
        n_img = int(img[0].sum())
        idx = img.nonzero()[:, 1].view(bsz, 1, n_img, 1)
        ki = key.gather(2, idx.expand(-1, key.shape[1], -1, key.shape[3]))
        vi = value.gather(2, idx.expand(-1, value.shape[1], -1, value.shape[3]))
        ctl.record.setdefault(layer, []).append((ki.detach(), vi.detach()))
    knock = ctl.knockout[:, layer] if ctl.knockout is not None else None
    abl = ctl.ablate[:, layer] if ctl.ablate is not None else None
    do_knock = knock is not None and bool(knock.any())
    do_abl = abl is not None and bool(abl.any())
    if not (do_knock or do_abl):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    n_rep = module.num_key_value_groups
    k = _repeat_kv(key, n_rep)
    v = _repeat_kv(value, n_rep)
    base = _bool_mask(attention_mask, q_len, k_len, query.device)
    mask = base.expand(bsz, n_heads, q_len, k_len)
    block = ctl.text_queries[:, k_len - q_len : k_len, None] & img[:, None, :]  # (B, Q, K)
    block = block[:, None]
    if do_knock:
        mask = mask & ~(knock[:, :, None, None] & block)
    if do_abl:
        if ctl.baseline is None or layer not in ctl.baseline:
            raise ValueError(f"FlowControl.ablate targets layer {layer} but no baseline keys/values were given for it.")
        bk, bv = ctl.baseline[layer]
        bk = _repeat_kv(bk[None], n_rep)  # (1, H, n_img, D)
        bv = _repeat_kv(bv[None], n_rep)
        n_img = bk.shape[2]
        idx = img.nonzero()[:, 1].view(bsz, 1, n_img, 1).expand(-1, n_heads, -1, k.shape[3])
        k_extra = torch.zeros_like(k).scatter(2, idx, bk.expand(bsz, -1, -1, -1).to(k.dtype))
        v_extra = torch.zeros_like(v).scatter(2, idx, bv.expand(bsz, -1, -1, -1).to(v.dtype))
        sel = abl[:, :, None, None] & block & mask
        mask = torch.cat([mask & ~sel, sel], dim=-1)
        k = torch.cat([k, k_extra], dim=2)
        v = torch.cat([v, v_extra], dim=2)
    empty = ~mask.any(-1, keepdim=True)
    if bool(empty.any()):  # padded rows: let them attend anything rather than produce NaN
        mask = mask | empty
    out = F.scaled_dot_product_attention(
        query, k, v, attn_mask=mask, dropout_p=dropout if module.training else 0.0, scale=scaling
    )
    return out.transpose(1, 2).contiguous(), None


def _flow_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, flow_attention)
    AttentionMaskInterface.register(ATTN_NAME, _flow_mask)


@contextlib.contextmanager
def flow_control(model) -> Iterator[None]:
    """Switch the LM of a LLaVA ``model`` to :func:`flow_attention` for the duration of the block.

    Inside, pass ``headflow_flow=FlowControl(...)`` to ``model(...)``. The previous attention
    implementation is restored on exit, also on error.
    """
    _register()
    text_cfg = model.config.text_config
    vision_cfg = model.config.vision_config
    prev_text, prev_vision = text_cfg._attn_implementation, vision_cfg._attn_implementation
    model.set_attn_implementation({"text_config": ATTN_NAME, "vision_config": prev_vision or "sdpa"})
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": prev_text or "sdpa", "vision_config": prev_vision or "sdpa"})
