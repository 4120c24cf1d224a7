"""The one place headflow changes attention: a function registered with transformers' AttentionInterface.

Where state lives: nothing is global. Per forward pass, the engine passes a :class:`ForwardState`
as the keyword argument ``headflow_state`` to the model; transformers 5.x forwards model kwargs to
every attention call, so the function reads it there. Without that kwarg the function is plain
SDPA (``sdpa_attention_forward``). The function is selected for the language model only, and only
inside :func:`attention_scope`, which restores the previous implementation in ``finally``.

Two computations:

* **full** (reference path, whole prompt): keys/values of ablated heads' text queries are swapped
  for baseline keys/values by appending the baseline block as extra keys and a per-(row, head,
  query, key) bool mask; knockouts AND the mask; one SDPA call.
* **prefix** (the fast path): only the text suffix is run, as many rows; the shared prefix keys and
  values (system + image) are never copied per row. Attention is split into blocks over disjoint key
  sets (prefix non-image, real image, baseline image, suffix), each computed by a fused SDPA kernel with
  its log-sum-exp (:func:`block_kernel` picks it per device; the written-out computation is the
  reference), and merged exactly. Rows' queries are folded into one batch against the shared
  blocks, so the prefix keys are read once per layer, not once per row.

A model split over devices (``device_map``) runs each layer on its own device: the state a layer reads is moved
there once (:meth:`ForwardState.on`), baselines and masks at their use. A model whose layers cap their attention
scores (Gemma 2's ``softcap``) gets the cap in every path; SDPA has none, so those scores are written out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .spec import CompiledBatch

ATTENTION_NAME = "headflow"
STATE_KWARG = "headflow_state"


@dataclass
class LayerBaseline:
    """Baseline keys/values at the image positions of one layer, ``[kv_head, image_token, head_dim]``."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class ForwardState:
    """Everything one forward pass needs to know (lives for that pass only).

    ``mode`` is ``"full"`` (queries are the whole prompt) or ``"prefix"`` (the prefix path: queries start
    at ``prefix_length``; ``prefix[layer]`` holds the shared keys/values of positions ``< prefix_length``).
    """

    mode: str
    prefix_length: int
    length: int
    image_positions: torch.Tensor
    text_start: int
    batch: CompiledBatch | None = None
    baseline_kind: str = "none"
    baseline: list[LayerBaseline] | None = None
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    capture_attention: bool = False
    capture_all_queries: bool = False  # full path only: ``image_attention[layer]`` is ``(B, H, Q)``, differentiable
    image_attention: dict[int, torch.Tensor] = field(default_factory=dict)
    #: replayed: each layer's attention mask (bool ``[1, 1, Q, K]``), used instead of the one the layer receives
    masks: list[torch.Tensor] | None = None
    #: attribution patching (full path only): per (row, layer, head) coefficient α between the clean (0) and the
    #: ablated (1) reading of the image, float ``[B, layer, head]`` (may require grad); how α mixes: ``mix_kind``
    mix: torch.Tensor | None = None
    mix_kind: str = "output"
    #: prefix path: per layer, the prefix keys the model's own mask hides from the queries run (bool ``[S, prefix]``,
    #: True = hidden; None where it hides none)
    prefix_hidden: list[torch.Tensor | None] | None = None
    #: recording: each layer's mask as received, whether the layer is causal, and its sliding window
    mask_record: dict[int, tuple[Any, bool, int | None]] | None = None
    #: prefix path: ``"auto"`` (each block's fused kernel, :func:`block_kernel`) or ``"written"`` (the reference)
    kernel: str = "auto"
    #: a model split over devices: this state with its batch on each other device (see :meth:`on`)
    moved: dict[torch.device, "ForwardState"] = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> "ForwardState":
        """This state with its batch on ``device`` (itself when already there): the view a layer running on
        ``device`` reads. Views share every output container (records, captured attention), so what a layer
        writes lands in this state."""
        if self.batch is None or self.batch.device in (None, device):
            return self
        if device not in self.moved:
            self.moved[device] = dataclasses.replace(self, batch=self.batch.to(device), moved={})
        return self.moved[device]

    def touches(self, layer: int) -> bool:
        if self.capture_attention or self.capture_all_queries or self.mix is not None:
            return True
        if self.batch is None:
            return False
        if self.batch.scaled_heads(layer) is not None:
            return True
        if self.batch.ablated_heads(layer) is not None and self.baseline_kind != "none":
            return True
        return self.batch.knock_heads is not None and bool(self.batch.knock_heads[:, :, layer].any())


# ----------------------------------------------------------------------------------------------
# registration and scope


def headflow_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' own SDPA mask, but always materialised (a 4D bool mask, True = attend)."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register the attention and mask functions (idempotent; called lazily, never at import)."""
    AttentionInterface.register(ATTENTION_NAME, headflow_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, headflow_mask)


@contextlib.contextmanager
def attention_scope(model: torch.nn.Module, text_config_key: str = "text_config") -> Iterator[None]:
    """Select headflow's attention for the language model only; restore the previous choice after."""
    register()
    text_config = getattr(model.config, text_config_key)
    previous = text_config._attn_implementation
    model.set_attn_implementation({text_config_key: ATTENTION_NAME})
    try:
        yield
    finally:
        model.set_attn_implementation({text_config_key: previous or "sdpa"})


def headflow_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface entry: query ``(B, H, Q, D)``, key/value ``(B, G, K, D)`` post-RoPE."""
    state: ForwardState | None = kwargs.pop(STATE_KWARG, None)
    softcap = kwargs.pop("softcap", None)  # Gemma 2: scores capped at ±softcap (cap·tanh(s/cap)) before the softmax
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if state is None:
        return _plain_attention(module, query, key, value, attention_mask, dropout, scaling, softcap, **kwargs)
    state = state.on(query.device)
    layer = int(module.layer_idx)
    if state.masks is not None:
        attention_mask = state.masks[layer].to(query.device)
    if state.mask_record is not None:
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", True) if causal is None else causal)
        state.mask_record[layer] = (attention_mask, causal, int(window) if window else None)
    if state.record is not None:
        state.record[layer] = (key.detach(), value.detach())
    if state.mode == "prefix":
        return _prefix_path_attention(query, key, value, attention_mask, scale, state, layer, softcap)
    if not state.touches(layer):
        return _plain_attention(module, query, key, value, attention_mask, dropout, scaling, softcap, **kwargs)
    return _full_attention(query, key, value, attention_mask, scale, state, layer, softcap)


def _plain_attention(module, query, key, value, mask, dropout, scaling, softcap, **kwargs):
    """No intervention: transformers' SDPA function, or — with score softcapping, which SDPA cannot do — the same
    attention written out with the cap (as the model's eager attention computes it)."""
    if softcap is None:
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    rep = query.shape[1] // key.shape[1]
    keys, values = repeat_kv(key, rep), repeat_kv(value, rep)
    allowed = _causal_allowed(mask, query.shape[0], query.shape[2], keys.shape[2], 0, query.device)
    out, _ = _written(query, keys, values, allowed, scale, softcap)
    return out.transpose(1, 2).contiguous(), None


def _capped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Attention scores after the model's softcap (``cap·tanh(s/cap)``; unchanged without one)."""
    return scores if softcap is None else torch.tanh(scores / softcap) * softcap


# ----------------------------------------------------------------------------------------------
# full path (reference)


def _causal_allowed(mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, offset: int,
                    device: torch.device) -> torch.Tensor:
    """Bool ``(B|1, 1, Q, K)``: True = may attend."""
    if mask is not None:
        if mask.dtype == torch.bool:
            return mask
        return mask > torch.finfo(mask.dtype).min / 2
    q_pos = torch.arange(q_len, device=device) + offset
    return (torch.arange(k_len, device=device)[None, :] <= q_pos[:, None])[None, None]


def _full_attention(query, key, value, mask, scale, state: ForwardState, layer: int, softcap: float | None = None):
    if state.mix is not None:
        out = _mixed_attention(query, key, value, mask, scale, state, layer, softcap)
    else:
        ablated = state.batch.ablated_heads(layer) if state.batch is not None else None
        out = _full_attend(query, key, value, mask, scale, state, layer, ablated, softcap=softcap)
    return out.transpose(1, 2).contiguous(), None


def _full_attend(query, key, value, mask, scale, state: ForwardState, layer: int, ablated: torch.Tensor | None,
                 replacement: tuple[torch.Tensor, torch.Tensor] | None = None,
                 softcap: float | None = None) -> torch.Tensor:
    """One SDPA call over the whole prompt, output ``(B, H, Q, D)``.

    ``ablated`` (bool ``(B, H)``): pairs whose text queries read ``replacement`` (keys/values ``(B, H, I, D)``
    standing at the image positions) or, without it, the state's baseline, instead of the real image keys/values.
    Steering factors of the batch add ``log f`` to the scores of steered pairs' text queries on every key standing
    at an image position (real or replacement), after the model's score ``softcap`` if it has one (then the scores
    are written out: SDPA has no softcap).
    """
    batch, n_heads, q_len, _ = query.shape
    rep = n_heads // key.shape[1]
    keys, values = repeat_kv(key, rep), repeat_kv(value, rep)
    k_len = keys.shape[2]
    device = query.device
    allowed = _causal_allowed(mask, batch, q_len, k_len, 0, device).expand(batch, n_heads, q_len, k_len).clone()
    q_pos = torch.arange(q_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    if state.batch is not None:
        blocked = state.batch.blocked(layer, q_pos, k_pos)
        if blocked is not None:
            allowed &= ~blocked
    image = state.image_positions.to(device)
    text = q_pos >= state.text_start
    if ablated is not None and (state.baseline_kind != "none" or replacement is not None):
        swap = ablated[:, :, None] & text[None, None, :]  # (B, H, Q)
        image_allowed = allowed[..., image]
        allowed[..., image] = image_allowed & ~swap[..., None]
        if replacement is not None or state.baseline_kind != "knockout":
            if replacement is None:
                base = state.baseline[layer]
                base_k = repeat_kv(base.keys[None].to(keys.device, keys.dtype), rep).expand(batch, -1, -1, -1)
                base_v = repeat_kv(base.values[None].to(values.device, values.dtype), rep).expand(batch, -1, -1, -1)
            else:
                base_k, base_v = replacement
            keys = torch.cat([keys, base_k], dim=2)
            values = torch.cat([values, base_v], dim=2)
            allowed = torch.cat([allowed, image_allowed & swap[..., None]], dim=-1)
    factors = state.batch.scaled_heads(layer) if state.batch is not None else None
    attn_mask: torch.Tensor = allowed
    if factors is not None:  # steering: log f added to the steered pairs' text-query scores on image-position keys
        on_image = torch.zeros(keys.shape[2], dtype=torch.bool, device=device)
        on_image[image] = True
        on_image[k_len:] = True
        where = text[:, None] & on_image[None, :]  # (Q, K')
        log_f = factors.to(device=device, dtype=torch.float32).log()[:, :, None, None]  # 0 -> -inf
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device).masked_fill(~allowed, float("-inf"))
        bias = bias + torch.where(where, log_f, torch.zeros((), device=device))
        attn_mask = bias.to(query.dtype)
    if softcap is None:
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=attn_mask, scale=scale)
    else:
        out, _ = _written(query, keys, values, allowed, scale, softcap,
                          bias=bias if factors is not None else None)
    if state.capture_attention or state.capture_all_queries:
        last = slice(None) if state.capture_all_queries else slice(-1, None)
        scores = _capped(((query[:, :, last] @ keys.transpose(-1, -2)) * scale).float(), softcap)
        if factors is not None:
            scores = scores + bias[:, :, last]
        # finfo.min, not -inf: a query with no allowed key gets a finite (unused) row and no NaN gradient
        probs = scores.masked_fill(~allowed[:, :, last], torch.finfo(torch.float32).min).softmax(-1)
        on_image = probs[..., image].sum(-1) + probs[..., k_len:].sum(-1)  # (B, H, Q)
        state.image_attention[layer] = on_image if state.capture_all_queries else on_image[:, :, 0]
    return out


def _mixed_attention(query, key, value, mask, scale, state: ForwardState, layer: int,
                     softcap: float | None = None) -> torch.Tensor:
    """Attention with a continuous per-(row, head) coefficient ``α = state.mix[:, layer]`` between the clean
    (α = 0) and the ablated (α = 1) reading of the image by each head's text queries (attribution patching).

    ``mix_kind="output"``: the head's output at text queries is ``(1 − α)·clean + α·ablated`` (both computed
    exactly, so the change in the head's attention pattern is exact; AtP*'s correction).
    ``mix_kind="kv"``: its text queries read ``(1 − α)·real + α·baseline`` keys and values at the image positions
    (plain attribution patching: the softmax is linearised too). Exact at α ∈ {0, 1} either way.
    """
    alpha = state.mix[:, layer].to(query.device, query.dtype)  # (B, H), may require grad
    batch, n_heads, q_len, _ = query.shape
    every = torch.ones(batch, n_heads, dtype=torch.bool, device=query.device)
    text = (torch.arange(q_len, device=query.device) >= state.text_start).to(query.dtype)
    if state.mix_kind == "output":
        clean = _full_attend(query, key, value, mask, scale, state, layer, None, softcap=softcap)
        ablated = _full_attend(query, key, value, mask, scale, state, layer, every, softcap=softcap)
        return clean + (alpha[:, :, None, None] * text[None, None, :, None]) * (ablated - clean)
    rep = n_heads // key.shape[1]
    image = state.image_positions.to(query.device)
    base = state.baseline[layer]
    real_k, real_v = repeat_kv(key, rep)[:, :, image], repeat_kv(value, rep)[:, :, image]
    base_k = repeat_kv(base.keys[None].to(key.device, key.dtype), rep)
    base_v = repeat_kv(base.values[None].to(value.device, value.dtype), rep)
    a = alpha[:, :, None, None]
    return _full_attend(query, key, value, mask, scale, state, layer, every,
                        (real_k + a * (base_k - real_k), real_v + a * (base_v - real_v)), softcap=softcap)


# ----------------------------------------------------------------------------------------------
# prefix path (fast): blocks over disjoint key sets, merged by log-sum-exp


#: the kernels a block of the prefix path can be computed with (see :func:`block_kernel`)
KERNELS = ("cpu-flash", "cuda-flash", "cuda-efficient", "written")


def block_kernel(device_type: str, dtype: torch.dtype, head_dim: int, value_dim: int, masked: bool,
                 capability: tuple[int, int] | None = None, choice: str = "auto") -> str:
    """Which kernel computes one block of the prefix path (a pure function of the block's shape, so it is tested
    on any machine).

    * ``"cpu-flash"``: CPU, float32/bfloat16/float64: the SDPA flash kernel for CPU, with an additive mask.
    * ``"cuda-flash"``: CUDA, float16/bfloat16, no mask, head dims equal, a multiple of 8 and at most 256, an
      Ampere or newer GPU (compute capability >= 8.0): the FlashAttention-2 kernel that SDPA uses.
    * ``"cuda-efficient"``: CUDA otherwise (a mask, float32, an older GPU), head dim a multiple of 8 (4 in
      float32): the memory-efficient kernel with an additive bias.
    * ``"written"``: the computation written out with matmuls and float32 scores (any device; the reference).

    Every one returns the block's log-sum-exp, which the merge needs and the public SDPA does not return.
    ``choice="written"`` forces the reference (``InterventionEngine(kernel="written")``).
    """
    if choice == "written":
        return "written"
    if device_type == "cpu":
        return "cpu-flash" if dtype in (torch.float32, torch.bfloat16, torch.float64) else "written"
    if device_type != "cuda":
        return "written"
    half = dtype in (torch.float16, torch.bfloat16)
    if (not masked and half and head_dim == value_dim and head_dim % 8 == 0 and head_dim <= 256
            and capability is not None and capability >= (8, 0)):
        return "cuda-flash"
    if (half or dtype == torch.float32) and head_dim % (8 if half else 4) == 0 and value_dim % (8 if half else 4) == 0:
        return "cuda-efficient"
    return "written"


def _additive(allowed: torch.Tensor | None, dtype: torch.dtype, device: torch.device, align: int = 1
              ) -> torch.Tensor | None:
    """Bool mask (True = may attend) as an additive bias (0 / −∞). With ``align`` > 1 the key dimension is stored
    padded to a multiple of ``align`` and the bias is a view of the first ``K`` columns (the memory-efficient kernel
    reads the bias with an aligned row stride)."""
    if allowed is None:
        return None
    k = allowed.shape[-1]
    width = -(-k // align) * align
    bias = torch.zeros(*allowed.shape[:-1], width, dtype=dtype, device=device)
    bias[..., :k].masked_fill_(~allowed, float("-inf"))
    return bias[..., :k]


def _cpu_flash(query, key, value, allowed, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=_additive(allowed, query.dtype, query.device), scale=scale)
    return out, lse


def _cuda_flash(query, key, value, allowed, scale, op=None):
    op = op or torch.ops.aten._scaled_dot_product_flash_attention
    out, lse = op(query.contiguous(), key.contiguous(), value.contiguous(), 0.0, False, False, scale=scale)[:2]
    return out, lse


def _cuda_efficient(query, key, value, allowed, scale, op=None):
    op = op or torch.ops.aten._scaled_dot_product_efficient_attention
    bias = _additive(allowed, query.dtype, query.device, align=16)
    if bias is not None:  # the kernel wants the bias's batch and head dims as the query's, not broadcast
        full = (query.shape[0], query.shape[1], *bias.shape[2:])
        if tuple(bias.shape) != full:
            bias = _additive(allowed.expand(*full), query.dtype, query.device, align=16)
    out, lse = op(query.contiguous(), key.contiguous(), value.contiguous(), bias, True, 0.0, False, scale=scale)[:2]
    return out, lse[..., :query.shape[2]]  # the kernel pads the log-sum-exp's query dim to a multiple of 32


def _written(query, key, value, allowed, scale, softcap=None, bias=None):
    scores = _capped((query @ key.transpose(-1, -2)).float() * scale, softcap)
    if bias is not None:  # float, −∞ where not allowed (steering adds log f on top)
        scores = scores + bias
    elif allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = scores.logsumexp(-1)
    probs = torch.exp(scores - lse[..., None].clamp_min(torch.finfo(torch.float32).min))
    return probs.to(value.dtype) @ value, lse


_KERNEL_FUNCTIONS = {"cpu-flash": _cpu_flash, "cuda-flash": _cuda_flash, "cuda-efficient": _cuda_efficient,
                     "written": _written}


def attend_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None,
                    scale: float, kernel: str = "auto", softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over one key block, returning ``(output, logsumexp)``.

    The kernel is :func:`block_kernel`'s choice for the block: a fused SDPA kernel called directly (the public
    function does not return the log-sum-exp), or the computation written out (``kernel="written"``, and on
    devices without a fused kernel). A fused kernel that refuses the block at run time (an unsupported GPU or
    layout) is replaced by the written-out computation with a warning. Queries that may attend no key get output
    0 and log-sum-exp −∞. A model's score ``softcap`` (Gemma 2) is applied to the block's scores; no fused kernel
    has it, so such blocks are written out (the cap is elementwise, so the blocks still merge exactly).
    """
    capability = torch.cuda.get_device_capability(query.device) if query.device.type == "cuda" else None
    name = block_kernel(query.device.type, query.dtype, query.shape[-1], value.shape[-1], allowed is not None,
                        capability, "written" if softcap is not None else kernel)
    try:
        out, lse = (_written(query, key, value, allowed, scale, softcap) if softcap is not None
                    else _KERNEL_FUNCTIONS[name](query, key, value, allowed, scale))
    except RuntimeError as exc:
        if name == "written":
            raise
        import warnings

        from ..errors import HeadflowWarning

        warnings.warn(f"The {name} attention kernel refused a block of shape {tuple(query.shape)} x "
                      f"{tuple(key.shape)} ({str(exc).splitlines()[0][:120]}); computed written out instead.",
                      HeadflowWarning, stacklevel=2)
        out, lse = _written(query, key, value, allowed, scale)
    lse = lse.float()
    if allowed is not None:
        # The CPU kernel reports log-sum-exp 0 (not −∞) for a query that may attend nothing.
        empty = ~allowed.any(-1)
        if bool(empty.any()):
            empty = empty.expand(lse.shape)
            lse = lse.masked_fill(empty, float("-inf"))
            out = out.masked_fill(empty[..., None], 0.0)
    return out, lse


def _fold(query: torch.Tensor, n_kv: int) -> torch.Tensor:
    """``(B, H, S, D)`` → ``(1, G, B·rep·S, D)``: every row's queries of KV group g in one batch."""
    batch, n_heads, s, d = query.shape
    rep = n_heads // n_kv
    return query.view(batch, n_kv, rep, s, d).transpose(0, 1).reshape(1, n_kv, batch * rep * s, d)


def _unfold(folded: torch.Tensor, batch: int, n_heads: int, s: int) -> torch.Tensor:
    """Inverse of :func:`_fold` for outputs ``(1, G, N, D)`` or log-sum-exps ``(1, G, N)``."""
    n_kv = folded.shape[1]
    rep = n_heads // n_kv
    tail = folded.shape[3:]
    x = folded.reshape(n_kv, batch, rep, s, *tail).transpose(0, 1)
    return x.reshape(batch, n_heads, s, *tail)


def _fold_mask(allowed: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Bool ``(B, H, S, K)`` → ``(1, G, B·rep·S, K)``, matching :func:`_fold`."""
    return _fold(allowed, n_kv)


def _ablated_only_block(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, ablated: torch.Tensor,
                        scale: float, kernel: str = "auto", softcap: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the ablated (row, head) pairs only over the shared baseline block.

    Per KV group the ablated pairs' queries are gathered (padded to the largest group), attended
    against the shared baseline keys in one call, and scattered back; other pairs get log-sum-exp
    −∞. With ablation probability α this costs about α of attending every query.
    """
    batch, n_heads, s, d = query.shape
    n_kv = keys.shape[1]
    rep = n_heads // n_kv
    selected = ablated.view(batch, n_kv, rep).transpose(0, 1).reshape(n_kv, batch * rep)
    counts = selected.sum(1)
    width = int(counts.max())
    order = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)[:, :width]  # ablated first
    grouped = query.view(batch, n_kv, rep, s, d).transpose(0, 1).reshape(n_kv, batch * rep, s, d)
    gathered = torch.gather(grouped, 1, order[:, :, None, None].expand(n_kv, width, s, d))
    out, lse = attend_with_lse(gathered.reshape(1, n_kv, width * s, d), keys, values, None, scale, kernel, softcap)
    dv = out.shape[-1]
    valid = torch.arange(width, device=query.device)[None, :] < counts[:, None]
    lse = lse.view(n_kv, width, s).masked_fill(~valid[..., None], float("-inf"))
    full_out = torch.zeros(n_kv, batch * rep, s, dv, dtype=out.dtype, device=out.device)
    full_lse = torch.full((n_kv, batch * rep, s), float("-inf"), device=out.device)
    full_out.scatter_(1, order[:, :, None, None].expand(n_kv, width, s, dv), out.view(n_kv, width, s, dv))
    full_lse.scatter_(1, order[:, :, None].expand(n_kv, width, s), lse)
    out_bh = full_out.view(n_kv, batch, rep, s, dv).transpose(0, 1).reshape(batch, n_heads, s, dv)
    return out_bh, full_lse.view(n_kv, batch, rep, s).transpose(0, 1).reshape(batch, n_heads, s)


def _prefix_path_attention(query, key, value, mask, scale, state: ForwardState, layer: int,
                           softcap: float | None = None):
    batch, n_heads, s, _ = query.shape
    n_kv = key.shape[1]
    rep = n_heads // n_kv
    device = query.device
    offset = state.prefix_length
    prefix_k, prefix_v = state.prefix[layer]
    image = state.image_positions.to(device)
    is_image = torch.zeros(offset, dtype=torch.bool, device=device)
    is_image[image] = True
    other = (~is_image).nonzero().squeeze(-1)
    q_pos = torch.arange(s, device=device) + offset
    blocked = None
    if state.batch is not None:
        blocked = state.batch.blocked(layer, q_pos, torch.arange(offset + s, device=device))
    hidden = state.prefix_hidden[layer] if state.prefix_hidden is not None else None
    if hidden is not None:  # the model's own mask hides some prefix keys (a sliding window): applied like a knockout
        hidden = hidden.to(device)
        masked = torch.zeros(s, offset + s, dtype=torch.bool, device=device)
        masked[:, :offset] = hidden
        blocked = masked.expand(batch, n_heads, s, offset + s) if blocked is None else blocked | masked
    ablated = state.batch.ablated_heads(layer) if state.batch is not None else None
    swap = ablated is not None and state.baseline_kind != "none"
    factors = state.batch.scaled_heads(layer) if state.batch is not None else None
    log_f = factors.float().log()[:, :, None] if factors is not None else None  # (B, H, 1); factor 0 -> -inf
    folded_q = _fold(query, n_kv)

    def shared_block(keys, values, columns):
        allowed = None
        if blocked is not None:
            allowed = _fold_mask(~blocked[..., columns], n_kv)
        out, lse = attend_with_lse(folded_q, keys, values, allowed, scale, state.kernel, softcap)
        return _unfold(out, batch, n_heads, s), _unfold(lse, batch, n_heads, s)

    blocks: list[tuple[torch.Tensor, torch.Tensor]] = []
    image_blocks: list[int] = []
    if blocked is None and not state.capture_attention and factors is None:
        # Fast path: every pair reads the whole shared prefix in one block; ablated pairs (a fraction
        # α of them) are recomputed over [non-image prefix ∪ baseline] and their first block dropped.
        out_p, lse_p = shared_block(prefix_k, prefix_v, None)
        if swap:
            lse_p = lse_p.masked_fill(ablated[:, :, None], float("-inf"))
            keys, values = prefix_k[:, :, other], prefix_v[:, :, other]
            if state.baseline_kind != "knockout":
                base = state.baseline[layer]
                keys = torch.cat([keys, base.keys[None].to(query.device, query.dtype)], dim=2)
                values = torch.cat([values, base.values[None].to(query.device, query.dtype)], dim=2)
            if keys.shape[2]:
                blocks.append(_ablated_only_block(query, keys, values, ablated, scale, state.kernel, softcap))
        blocks.append((out_p, lse_p))
    else:
        if len(other):
            blocks.append(shared_block(prefix_k[:, :, other], prefix_v[:, :, other], other))
        out_img, lse_img = shared_block(prefix_k[:, :, image], prefix_v[:, :, image], image)
        if swap:
            lse_img = lse_img.masked_fill(ablated[:, :, None], float("-inf"))
        if log_f is not None:
            lse_img = lse_img + log_f
        image_blocks.append(len(blocks))
        blocks.append((out_img, lse_img))
        if swap and state.baseline_kind != "knockout":
            base = state.baseline[layer]
            base_k, base_v = base.keys[None].to(query.device, query.dtype), base.values[None].to(query.device, query.dtype)
            if blocked is None:
                out_b, lse_b = _ablated_only_block(query, base_k, base_v, ablated, scale, state.kernel, softcap)
            else:
                out_b, lse_b = shared_block(base_k, base_v, image)
                lse_b = lse_b.masked_fill(~ablated[:, :, None], float("-inf"))
            if log_f is not None:
                lse_b = lse_b + log_f
            image_blocks.append(len(blocks))
            blocks.append((out_b, lse_b))
    # The suffix block: each row's own keys, causal (one mask shared by all rows unless knocked out).
    allowed = _causal_allowed(mask, batch, s, s, offset, device)[:1, :, :, -s:]
    if blocked is not None:
        allowed = (allowed & ~blocked[..., offset:]).expand(batch, n_heads, s, s)
    suf_k, suf_v = repeat_kv(key, rep), repeat_kv(value, rep)
    blocks.append(attend_with_lse(query, suf_k, suf_v, allowed, scale, state.kernel, softcap))

    lses = torch.stack([lse for _, lse in blocks])  # (n_blocks, B, H, S)
    top = lses.max(0).values
    weights = torch.exp(lses - top)  # −∞ blocks get weight 0
    total = weights.sum(0)
    out = sum(w[..., None].to(o.dtype) * o for (o, _), w in zip(blocks, weights)) / total[..., None].to(query.dtype)
    if state.capture_attention:
        state.image_attention[layer] = (weights[image_blocks].sum(0) / total)[:, :, -1]
    return out.transpose(1, 2).contiguous(), None
