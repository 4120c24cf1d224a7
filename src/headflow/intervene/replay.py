"""What the language model really receives on a prompt's clean run, recorded once and replayed on both paths.

The engine does not re-run the whole vision-language model for each batch: it re-runs the language model
alone on what the clean run handed it. :func:`recording` captures every keyword argument of the language
model's forward (a forward pre-hook with kwargs, removed on exit): embeddings and position ids, and whatever
else a family passes (token-type ids, DeepStack visual features and their positions, ...). The attention
function records each layer's attention mask as it arrives (the model's own mask: causal, sliding window,
bidirectional image block, prefix-LM), so the masks are replayed per layer too, instead of being rebuilt from
config flags. Each kind of input is replayed by a rule of its own (:data:`REPLAY`): per-position tensors are
cut to the positions run (the suffix on the prefix path), extended by teacher-forced tokens and expanded per
batch row; DeepStack features, which concern image positions only, travel with their position mask and are
dropped where no image position is run. An input of a kind headflow does not know is refused in ``prepare``
(one line naming it), never silently left out.

Where state lives: a :class:`RecordedInputs` belongs to one :class:`~headflow.intervene.engine.PreparedPrompt`
and lives as long as it. Nothing is kept on the model or its adapter.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import HeadflowError

#: Keyword arguments of the language model that are not per-prompt inputs: the engine sets them itself
#: (``use_cache``, the headflow state) or they carry nothing for a single unpadded prompt run without cache.
NOT_REPLAYED = frozenset({
    "headflow_state", "cache", "past_key_values", "use_cache", "output_hidden_states", "output_attentions",
    "return_dict", "input_ids", "attention_mask", "cache_position",
})

#: How each known input is replayed: ``sequence`` (per-position, the sequence on axis 1 and the batch on axis
#: 0), ``positions`` (position ids: sequence last, batch second to last, any leading rotary axes), ``visual``
#: (a list of per-image-position features aligned with ``visual_pos_masks``).
REPLAY = {
    "inputs_embeds": "sequence",
    "token_type_ids": "sequence",
    "mm_token_type_ids": "sequence",
    "visual_pos_masks": "sequence",
    "per_layer_inputs": "sequence",
    "position_ids": "positions",
    "deepstack_visual_embeds": "visual",
}

#: what an appended (teacher-forced text) token has for each per-position input other than embeddings
APPENDED_VALUE = {"token_type_ids": 0, "mm_token_type_ids": 0, "visual_pos_masks": False}


@dataclass
class RecordedInputs:
    """The language model's inputs on one prompt's clean run (batch 1).

    Attributes
    ----------
    kwargs : dict
        Keyword arguments to replay, as received.
    masks : list of Bool[Tensor, "position position"]
        Each layer's attention mask (True = may attend); layers of one kind share one tensor.
    windows : list of int or None
        Each layer's sliding window, where it has one (used to extend its mask past the prompt).
    length : int
    """

    kwargs: dict[str, Any]
    masks: list[torch.Tensor]
    windows: list[int | None]
    length: int

    def distinct_masks(self) -> list[tuple[int, torch.Tensor, int | None]]:
        """``(first layer, mask, window)`` once per distinct mask."""
        seen: dict[tuple[int, int | None], int] = {}
        for layer, (mask, window) in enumerate(zip(self.masks, self.windows)):
            seen.setdefault((id(mask), window), layer)
        return [(layer, self.masks[layer], self.windows[layer]) for layer in seen.values()]


@contextlib.contextmanager
def recording(language_model: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Capture the keyword arguments of ``language_model``'s next forward; the hook is removed on exit."""
    captured: dict[str, Any] = {}

    def grab(_module, args, kwargs):
        if args:
            raise HeadflowError(f"{type(_module).__name__} was called with {len(args)} positional argument(s); "
                                "headflow replays the language model's keyword arguments only.")
        captured.clear()
        captured.update(kwargs)

    handle = language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def mask_as_bool(mask: Any, is_causal: bool, length: int) -> torch.Tensor:
    """A layer's attention mask as the attention function received it, as bool ``[length, length]``."""
    if mask is None:
        full = torch.ones(length, length, dtype=torch.bool)
        return full.tril() if is_causal else full
    if not torch.is_tensor(mask) or mask.ndim != 4 or mask.shape[0] != 1 or mask.shape[1] != 1:
        raise HeadflowError(f"The language model's attention mask has shape {getattr(mask, 'shape', type(mask))}; "
                            "headflow replays one [1, 1, query, key] mask per layer.")
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask[0, 0].detach().cpu()


def recorded_inputs(kwargs: dict[str, Any], layer_masks: dict[int, tuple[Any, bool, int | None]], n_layers: int,
                    model_name: str) -> RecordedInputs:
    """Check what the language model received and keep what is replayed.

    ``layer_masks[layer]`` is ``(mask as received, module.is_causal, sliding window)``.
    """
    if kwargs.get("inputs_embeds") is None:
        raise HeadflowError(f"{model_name} did not pass inputs_embeds to its language model; its family adapter "
                            "must override how the prompt is run.")
    embeds = kwargs["inputs_embeds"]
    length = int(embeds.shape[1])
    kept: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in NOT_REPLAYED or value is None:
            continue
        if name in REPLAY:
            kept[name] = value
        elif torch.is_tensor(value) or isinstance(value, (list, tuple, dict)):
            raise HeadflowError(f"{model_name} passes {name!r} to its language model, an input headflow does not "
                                "know how to replay; add it to headflow.intervene.replay.REPLAY with its rule.")
        else:
            kept[name] = value  # a plain setting (a flag, a number): replayed as is
    if "position_ids" not in kept:  # the language model's default, made explicit so that a suffix keeps its own
        kept["position_ids"] = torch.arange(length, device=embeds.device)[None]
    converted: dict[int, torch.Tensor] = {}
    masks, windows = [], []
    for layer in range(n_layers):
        raw, is_causal, window = layer_masks[layer]
        key = (id(raw), is_causal)
        if key not in converted:
            converted[key] = mask_as_bool(raw, is_causal, length)
        masks.append(converted[key])
        windows.append(window)
    return RecordedInputs(kept, masks, windows, length)


# ----------------------------------------------------------------------------------------------
# masks


def extended_mask(mask: torch.Tensor, window: int | None, appended: int) -> torch.Tensor:
    """A layer's ``[L, L]`` mask over ``appended`` more (teacher-forced text) tokens: ``[L+n, L+n]``.

    An appended query attends what the prompt's final query attends and every later position up to itself,
    within the layer's sliding window if it has one; no prompt query attends an appended key.
    """
    if not appended:
        return mask
    length = mask.shape[0]
    total = length + appended
    out = torch.zeros(total, total, dtype=torch.bool)
    out[:length, :length] = mask
    q = torch.arange(length, total)[:, None]
    k = torch.arange(total)[None, :]
    rows = torch.cat([mask[-1].expand(appended, -1), torch.ones(appended, appended, dtype=torch.bool)], dim=1)
    rows &= k <= q
    if window is not None:
        rows &= k > q - window
    out[length:] = rows
    return out


def replay_masks(recorded: RecordedInputs, start: int, appended: int,
                 device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Per layer, the bool mask ``[1, 1, S, S]`` among the positions run (``start`` on, appended tokens included),
    and, on the prefix path (``start`` > 0), which prefix keys the mask hides from them (bool ``[S, start]``, True
    = hidden; None where it hides none, e.g. a sliding window that covers the prompt)."""
    done: dict[tuple[int, int | None], tuple[torch.Tensor, torch.Tensor | None]] = {}
    masks, hidden = [], []
    for mask, window in zip(recorded.masks, recorded.windows):
        key = (id(mask), window)
        if key not in done:
            full = extended_mask(mask, window, appended)
            hides = ~full[start:, :start]
            done[key] = (full[start:, start:][None, None].to(device), hides.to(device) if bool(hides.any()) else None)
        masks.append(done[key][0])
        hidden.append(done[key][1])
    return masks, hidden


def prefix_violation(recorded: RecordedInputs, prefix_length: int, appended: int) -> str | None:
    """Why the model's own mask rules out the prefix path for this prompt (``None`` if it allows it).

    The prefix path reuses the prefix keys and values of the clean run, so it is exact when no prefix query
    attends a later position (they do not depend on the suffix). Which prefix keys each later query may attend
    (all of them under a causal mask, those within the window under a sliding window) is applied inside the
    prefix blocks (:func:`replay_masks`).
    """
    for layer, mask, window in recorded.distinct_masks():
        ahead = extended_mask(mask, window, appended)[:prefix_length, prefix_length:]
        if bool(ahead.any()):
            q, k = (int(i) for i in ahead.nonzero()[0])
            return (f"the model's own mask in layer {layer} lets the prefix query at position {q} attend position "
                    f"{k + prefix_length} after the prefix (a bidirectional prefix: its keys and values depend on "
                    "the positions after it)")
    visual = recorded.kwargs.get("visual_pos_masks")
    if visual is not None and bool(visual[:, prefix_length:].any()):
        return "the language model receives visual features at positions after the prefix"
    return None


# ----------------------------------------------------------------------------------------------
# inputs


def replay_kwargs(recorded: RecordedInputs, start: int, rows: int,
                  appended: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, Any]:
    """The language model's keyword arguments for positions ``start..`` of the prompt, then ``appended``
    (embeddings ``[1, n, hidden]`` and position ids), for ``rows`` batch rows."""
    kwargs = recorded.kwargs
    n = 0 if appended is None else appended[0].shape[1]
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        kind = REPLAY.get(name)
        if kind is None:
            out[name] = value
        elif kind == "sequence":
            cut = value[:, start:]
            if n:
                if name == "inputs_embeds":
                    tail = appended[0].to(cut.dtype)
                elif name in APPENDED_VALUE:
                    tail = torch.full((1, n, *cut.shape[2:]), APPENDED_VALUE[name], dtype=cut.dtype, device=cut.device)
                else:
                    raise HeadflowError(f"Teacher-forced tokens need the language model's {name!r} at new positions, "
                                        "which headflow cannot compute; run without a continuation.")
                cut = torch.cat([cut, tail.to(cut.device)], dim=1)
            out[name] = cut.expand(rows, *cut.shape[1:])
        elif kind == "positions":
            cut = value[..., start:]
            if n:
                cut = torch.cat([cut, appended[1].to(cut.device).expand(*cut.shape[:-1], -1)], dim=-1)
            out[name] = cut.expand(*cut.shape[:-2], rows, cut.shape[-1])
    visual = kwargs.get("visual_pos_masks")
    if "deepstack_visual_embeds" in kwargs:
        if visual is None:
            raise HeadflowError("The language model receives DeepStack features without their positions.")
        if start and not bool(visual[:, start:].any()):
            out.pop("visual_pos_masks", None)  # no image position is run: nothing to add
            out.pop("deepstack_visual_embeds", None)
        elif start:
            raise HeadflowError("DeepStack features at positions after the prefix; use the full path.")
        else:
            out["deepstack_visual_embeds"] = [e.repeat(rows, 1) for e in kwargs["deepstack_visual_embeds"]]
    return out
