"""Peers, side by side (issue 18 item 5): the same head ablation written the way a user of each tool would.

The ablation (METHOD.md, F1/F2): in layer ``l``, query head ``h``'s TEXT queries (positions after the image) read
baseline keys/values (post-RoPE, per image position) at the image positions; image and prefix queries and the
other heads read the real ones. Target: the answer token's logit at the final position.

Peers, all on the same model, image, baseline (mean of two images' keys/values) and masks, all in fp32:

  hooks-1      plain PyTorch hooks, one full forward per mask. Forward hooks on ``q_proj``/``k_proj``/``v_proj``
               keep the projections, a pre-hook on ``self_attn`` keeps the rotary ``position_embeddings``, and a
               pre-hook on ``o_proj`` recomputes the ablated heads' text-query outputs (keys/values at the image
               positions swapped for the baseline, the family's own ``apply_rotary_pos_emb``) and writes them
               into ``o_proj``'s input. Layers without an ablated head are left alone.
  hooks-B      the same hooks, one forward per batch of masks (batch rows = masks, the mask row-indexed inside
               the hook; only rows that ablate a head of that layer are recomputed).
  nnsight-1    nnsight 0.8 (``TransformersModel``; the plain ``NNsight`` wrapper for M-RoPE models, whose position
               ids ``TransformersModel`` refuses), the same computation as intervention code, one trace per mask.
  nnsight-inv  one trace per batch, one invoke per mask: nnsight batches the invokes into one forward (not for
               M-RoPE models: the plain wrapper cannot batch invokes).
  nnsight-B    one trace, one invoke whose input has one row per mask; the intervention indexes the mask by row
               (the fastest nnsight allows: one forward, one intervention thread).
  hooks-cache  not in the issue's list: the hooks of hooks-B plus transformers' own KV cache of the prefix
               (system + image, computed once per image like headflow's ``prepare``), copied into a
               ``DynamicCache`` of one row per mask; only the text suffix runs per mask. This is headflow's
               prefix reuse done by hand: the strongest peer we could write with transformers alone.
  headflow     its engine: prefix (system + image) run once, only the text suffix per mask, many masks per batch.

Every peer is first checked against headflow's answer logits (max |diff| <= 1e-4, fp32) on the same masks; a
peer that fails gets no rate ratio printed. Timings alternate the methods within each repeat; medians.

    python benchmarks/peers.py --shape llava15                 # the side-by-side table
    python benchmarks/peers.py --scaling tokens                # cost per mask vs image tokens (144/576/2304)
    python benchmarks/peers.py --scaling batch                 # cost per mask vs batch size
    python benchmarks/peers.py --peers hooks-1 --floor         # + speed.py's floor (suffix alone): the bound
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import LONG_QUESTION, build_shape  # noqa: E402

from headflow.intervene import Baseline, InterventionEngine  # noqa: E402
from headflow.intervene.check import check_image  # noqa: E402
from headflow.per_image import mask_rows  # noqa: E402
from headflow.attribution.core import sample_masks  # noqa: E402

TOLERANCE = 1e-4
#: the peers issue 18 names (full forwards); the goal (headflow >= 10x the fastest) is stated against these
ISSUE_PEERS = ("hooks-1", "hooks-B", "nnsight-1", "nnsight-inv", "nnsight-B")
#: beyond the issue's list: plain hooks plus transformers' own KV cache of the prefix (headflow's idea, by hand)
ALL_PEERS = (*ISSUE_PEERS, "hooks-cache")
BATCHED = ("hooks-B", "nnsight-inv", "nnsight-B", "hooks-cache")


# ------------------------------------------------------------------------------------------------
# the shared setup: model, prompt, baseline, masks, and headflow's reference answer logits


@dataclass
class Setup:
    lm: object  # headflow LoadedModel
    engine: InterventionEngine
    prompt: object  # PreparedPrompt
    baseline: Baseline
    answer: int
    embeds: torch.Tensor  # [1, T, hidden]: what the language model receives (vision tower run once, not timed)
    position_ids: torch.Tensor | None
    image: torch.Tensor  # image positions (long)
    text_start: int
    base_keys: list[torch.Tensor]  # per layer [kv_head, image_token, head_dim], post-RoPE
    base_values: list[torch.Tensor]

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    @property
    def n_heads(self) -> int:
        return self.lm.n_heads

    def masks(self, n: int, seed: int = 0, prob: float = 0.1) -> torch.Tensor:
        """Bool ``[n, layer, head]``: the seeded Bernoulli masks headflow's attribution samples."""
        flat = sample_masks(n, self.n_layers * self.n_heads, prob, seed=seed)
        return torch.from_numpy(flat).view(n, self.n_layers, self.n_heads)

    def lm_kwargs(self, rows: int) -> dict:
        kwargs = {"inputs_embeds": self.embeds.expand(rows, -1, -1)}
        if self.position_ids is not None:
            pos = self.position_ids
            kwargs["position_ids"] = pos.expand(*pos.shape[:-2], rows, pos.shape[-1])
        return kwargs


def build_setup(shape: str, *, image_tokens: int | None = None, lm_size: dict | None = None, model=None) -> Setup:
    """The shared setup of ``shape`` (benchmarks/shapes.py), or of an already loaded ``model`` (tests)."""
    torch.manual_seed(0)
    lm = model if model is not None else build_shape(shape, image_tokens=image_tokens, lm_size=lm_size)
    engine = InterventionEngine(lm, batch_size=64)
    question = LONG_QUESTION if shape != "default" else "What is the main object in the image? Answer in one word."
    size = 336 if image_tokens is None else 14 * math.isqrt(image_tokens)
    prompt = engine.prepare(check_image(size=size), question)
    baseline = Baseline.mean([prompt, engine.prepare(check_image(size=size, seed=1), question)])
    layers = baseline.for_prompt(prompt)
    return Setup(lm=lm, engine=engine, prompt=prompt, baseline=baseline, answer=int(prompt.clean_logits.argmax()),
                 embeds=prompt.embeds, position_ids=prompt.position_ids,
                 image=torch.tensor(prompt.groups.image), text_start=prompt.groups.text_start,
                 base_keys=[b.keys for b in layers], base_values=[b.values for b in layers])


def headflow_logits(setup: Setup, masks: torch.Tensor, batch: int) -> torch.Tensor:
    """headflow's engine (prefix reuse): answer logits ``[n]``."""
    setup.engine.batch_size = batch
    rows = mask_rows(masks.reshape(len(masks), -1).numpy(), setup.n_layers, setup.n_heads)
    out = setup.engine.run(setup.prompt, rows, baseline=setup.baseline, path="prefix")
    return out.logits[:, setup.answer]


# ------------------------------------------------------------------------------------------------
# what every peer computes inside the attention of one layer (plain torch, the family's own RoPE)


def rope_fns(attn: torch.nn.Module) -> Callable:
    """The family's own ``apply_rotary_pos_emb`` (from the attention module's modeling file)."""
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def ablated_o_input(x, q, k, v, cos, sin, sel, *, base_k, base_v, image, text_start, n_heads, head_dim, scale,
                    rotary, cached: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``o_proj``'s input ``x`` ``[B, T, H·D]`` with the ablated (row, head) pairs' text-query outputs replaced.

    ``q``/``k``/``v``: the projections ``[B, T, ·]`` (pre-RoPE), ``cos``/``sin`` the layer's rotary embeddings,
    ``sel``: bool ``[B, H]`` ablated heads of this layer. Ablated pairs' text queries attend keys/values whose
    image positions hold the baseline (causal over the whole prompt).

    ``cached``: the run is the text suffix alone after a reused prefix cache; ``(keys, values)`` are the layer's
    whole post-RoPE cache ``[B, G, prefix + T, D]`` (prefix + suffix), ``x``/``q`` hold the suffix only."""
    b, t, _ = x.shape
    qh = q.view(b, t, n_heads, head_dim).transpose(1, 2)
    if cached is None:
        n_kv = k.shape[-1] // head_dim
        first = text_start  # first text row of x
        kh = k.view(b, t, n_kv, head_dim).transpose(1, 2)
        vh = v.view(b, t, n_kv, head_dim).transpose(1, 2)
        kh = rotary(kh, kh, cos, sin)[0]
        qt = rotary(qh[:, :, first:], qh[:, :, first:], cos[..., first:, :], sin[..., first:, :])[0]
    else:
        kh, vh = cached
        n_kv = kh.shape[1]
        first = 0
        qt = rotary(qh, qh, cos, sin)[0]
    s, length = t - first, kh.shape[2]
    kh, vh = kh.clone(), vh.clone()
    kh[:, :, image] = base_k.to(kh.dtype)
    vh[:, :, image] = base_v.to(vh.dtype)
    rep = n_heads // n_kv
    kh, vh = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1)
    allowed = torch.arange(length)[None, :] <= (torch.arange(s) + text_start)[:, None]  # (S, T) causal
    out = F.scaled_dot_product_attention(qt, kh, vh, attn_mask=allowed.to(qt.device), scale=scale)  # (B, H, S, D)
    xh = x.view(b, t, n_heads, head_dim).clone()
    xh[:, first:] = torch.where(sel[:, None, :, None], out.transpose(1, 2), xh[:, first:])
    return xh.view(b, t, n_heads * head_dim)


def layer_consts(setup: Setup, layer: int, attn: torch.nn.Module) -> dict:
    return dict(base_k=setup.base_keys[layer], base_v=setup.base_values[layer], image=setup.image,
                text_start=setup.text_start, n_heads=setup.n_heads, head_dim=attn.head_dim, scale=attn.scaling,
                rotary=rope_fns(attn))


def language_layers(model: torch.nn.Module):
    return model.model.language_model.layers


# ------------------------------------------------------------------------------------------------
# peer 1/2: plain PyTorch hooks


class HookAblation:
    """Forward hooks that apply ``self.masks`` (bool ``[B, layer, head]``) to the next forward."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.masks: torch.Tensor | None = None
        self.cache = None  # the prefix-cache peer: the cache of the forward under way
        self.handles: list = []
        self.saved: dict = {}

    def __enter__(self) -> "HookAblation":
        for layer, block in enumerate(language_layers(self.setup.lm.model)):
            attn = block.self_attn
            consts = layer_consts(self.setup, layer, attn)

            def keep_rope(module, args, kwargs, layer=layer):
                self.saved[layer, "rope"] = kwargs["position_embeddings"]

            def keep(name, layer=layer):
                def hook(module, args, output):
                    self.saved[layer, name] = output
                return hook

            def replace(module, args, layer=layer, consts=consts):
                sel = self.masks[:, layer]
                rows = sel.any(1).nonzero().squeeze(1)
                if len(rows) == 0:
                    return None
                x = args[0]
                cos, sin = self.saved[layer, "rope"]
                q, k, v = (self.saved[layer, n] for n in ("q", "k", "v"))
                cached = None
                if self.cache is not None:
                    cached = (self.cache.layers[layer].keys, self.cache.layers[layer].values)
                if len(rows) == len(sel):
                    return (ablated_o_input(x, q, k, v, cos, sin, sel, cached=cached, **consts),)
                pick = lambda t: t[rows] if t.shape[0] == len(sel) else t  # noqa: E731  (cos/sin may be batch 1)
                cached = None if cached is None else (cached[0][rows], cached[1][rows])
                new = ablated_o_input(x[rows], q[rows], k[rows], v[rows], pick(cos), pick(sin), sel[rows],
                                      cached=cached, **consts)
                x = x.clone()
                x[rows] = new
                return (x,)

            self.handles += [attn.register_forward_pre_hook(keep_rope, with_kwargs=True),
                             attn.q_proj.register_forward_hook(keep("q")),
                             attn.k_proj.register_forward_hook(keep("k")),
                             attn.v_proj.register_forward_hook(keep("v")),
                             attn.o_proj.register_forward_pre_hook(replace)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.saved.clear()

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """One full forward with ``len(masks)`` rows; answer logits ``[rows]``."""
        self.masks = masks
        with torch.no_grad():
            out = self.setup.lm.model(**self.setup.lm_kwargs(len(masks)), use_cache=False, logits_to_keep=1)
        self.saved.clear()
        return out.logits[:, -1, self.setup.answer].float()


    def forward_cached(self, masks: torch.Tensor, prefix) -> torch.Tensor:
        """The text suffix alone, ``len(masks)`` rows, after the prefix's keys/values (``prefix``: per layer
        ``(keys, values)`` of batch 1) copied into a fresh ``DynamicCache`` of that many rows."""
        from transformers import DynamicCache

        setup, rows = self.setup, len(masks)
        cache = DynamicCache()
        for layer, (k, v) in enumerate(prefix):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer)
        kwargs = setup.lm_kwargs(rows)
        kwargs["inputs_embeds"] = kwargs["inputs_embeds"][:, setup.text_start:]
        if "position_ids" in kwargs:
            kwargs["position_ids"] = kwargs["position_ids"][..., setup.text_start:]
        self.masks, self.cache = masks, cache
        try:
            with torch.no_grad():
                out = setup.lm.model(**kwargs, cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            self.cache = None
            self.saved.clear()
        return out.logits[:, -1, setup.answer].float()


def hooks_logits(setup: Setup, masks: torch.Tensor, batch: int) -> torch.Tensor:
    with HookAblation(setup) as hooks:
        return torch.cat([hooks.forward(masks[i:i + batch]) for i in range(0, len(masks), batch)])


def prefix_cache(setup: Setup) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The prefix (system + image) run once with ``use_cache=True``: per layer its post-RoPE ``(keys, values)``."""
    kwargs = setup.lm_kwargs(1)
    kwargs["inputs_embeds"] = kwargs["inputs_embeds"][:, :setup.text_start]
    if "position_ids" in kwargs:
        kwargs["position_ids"] = kwargs["position_ids"][..., :setup.text_start]
    with torch.no_grad():
        cache = setup.lm.model(**kwargs, use_cache=True, logits_to_keep=1).cache
    return [(layer.keys, layer.values) for layer in cache.layers]


def hooks_cached_logits(setup: Setup, masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Plain hooks plus the prefix KV cache a transformers user can reuse (computed once per image, untimed like
    headflow's ``prepare``): only the text suffix runs per mask, ``batch`` masks per forward."""
    if not hasattr(setup, "_prefix_cache"):
        setup._prefix_cache = prefix_cache(setup)
    with HookAblation(setup) as hooks:
        return torch.cat([hooks.forward_cached(masks[i:i + batch], setup._prefix_cache)
                          for i in range(0, len(masks), batch)])


# ------------------------------------------------------------------------------------------------
# peer 3: nnsight 0.8


def multi_axis_positions(setup: Setup) -> bool:
    """M-RoPE (Qwen2-VL): position ids ``[axis, batch, T]``, which nnsight 0.8's ``TransformersModel`` input
    assembly refuses (it splits ``position_ids`` by row: "`position_ids` has 3 rows, but `inputs_embeds` has 1")."""
    return setup.position_ids is not None and setup.position_ids.ndim == 3


def nnsight_model(setup: Setup):
    """``TransformersModel`` (batches several invokes); for M-RoPE models the plain ``NNsight`` wrapper, which passes
    inputs through untouched but cannot batch invokes."""
    from nnsight import NNsight, TransformersModel

    if not hasattr(setup, "_nnsight"):
        if multi_axis_positions(setup):
            setup._nnsight = NNsight(setup.lm.model)
        else:
            setup._nnsight = TransformersModel(setup.lm.model, task="image-text-to-text", processor=setup.lm.processor)
    return setup._nnsight


def _nnsight_intervene(model, setup: Setup, masks: torch.Tensor) -> object:
    """The intervention code of one invoke whose rows carry ``masks``; returns the saved answer logits."""
    for layer in range(setup.n_layers):
        sel = masks[:, layer]
        if not bool(sel.any()):
            continue
        attn = model.model.language_model.layers[layer].self_attn
        consts = layer_consts(setup, layer, attn._module)
        cos, sin = attn.inputs[1]["position_embeddings"]
        q, k, v = attn.q_proj.output, attn.k_proj.output, attn.v_proj.output
        attn.o_proj.input = ablated_o_input(attn.o_proj.input, q, k, v, cos, sin, sel, **consts)
    return model.lm_head.output[:, -1, setup.answer].save()


def nnsight_logits(setup: Setup, masks: torch.Tensor, batch: int, mode: str) -> torch.Tensor:
    """``mode``: ``"1"`` one trace per mask; ``"inv"`` one trace per batch, one invoke per mask;
    ``"B"`` one trace per batch, one invoke with one row per mask."""
    if mode == "inv" and multi_axis_positions(setup):
        raise NotImplementedError("nnsight 0.8 cannot batch invokes of M-RoPE inputs (see multi_axis_positions)")
    model = nnsight_model(setup)
    outs = []
    one = setup.lm_kwargs(1)
    with torch.no_grad():
        if mode == "1":
            for i in range(len(masks)):
                with model.trace(**one, use_cache=False, logits_to_keep=1):
                    saved = _nnsight_intervene(model, setup, masks[i:i + 1])
                outs.append(saved.float())
        elif mode == "inv":
            for start in range(0, len(masks), batch):
                chunk = masks[start:start + batch]
                saved = []
                with model.trace(use_cache=False, logits_to_keep=1) as tracer:
                    for i in range(len(chunk)):
                        with tracer.invoke(**one):
                            saved.append(_nnsight_intervene(model, setup, chunk[i:i + 1]))
                outs += [s.float() for s in saved]
        elif mode == "B":
            for start in range(0, len(masks), batch):
                chunk = masks[start:start + batch]
                with model.trace(**setup.lm_kwargs(len(chunk)), use_cache=False, logits_to_keep=1):
                    saved = _nnsight_intervene(model, setup, chunk)
                outs.append(saved.float())
        else:
            raise ValueError(mode)
    return torch.cat([o.reshape(-1) for o in outs])


def nnsight_available() -> bool:
    try:
        import nnsight  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# driving


def method_fn(name: str, batch: dict[str, int]) -> Callable[[Setup, torch.Tensor], torch.Tensor]:
    if name == "headflow":
        return lambda s, m: headflow_logits(s, m, batch["headflow"])
    if name == "floor":  # not a peer: the suffix alone, no prefix, no intervention (speed.py's (4)); a bound
        return lambda s, m: floor_logits(s, len(m), batch["headflow"])
    if name == "hooks-1":
        return lambda s, m: hooks_logits(s, m, 1)
    if name == "hooks-B":
        return lambda s, m: hooks_logits(s, m, batch["hooks-B"])
    if name == "hooks-cache":
        return lambda s, m: hooks_cached_logits(s, m, batch["hooks-cache"])
    if name.startswith("nnsight-"):
        mode = name.split("-", 1)[1]
        return lambda s, m: nnsight_logits(s, m, batch.get(name, 1), mode)
    raise ValueError(name)


def verify(setup: Setup, names, masks: torch.Tensor, batch: dict[str, int]) -> dict[str, float]:
    """Max |answer-logit difference| to headflow per peer, on ``masks`` and the all-heads mask, plus ``"effect"``:
    the largest change those masks make to the answer logit (so that agreement is not vacuous)."""
    masks = torch.cat([masks, torch.ones_like(masks[:1])])
    reference = headflow_logits(setup, masks, batch["headflow"])
    diffs = {name: float((method_fn(name, batch)(setup, masks) - reference).abs().max()) for name in names}
    return {**diffs, "effect": float((reference - setup.prompt.clean_logits[setup.answer]).abs().max())}


def measure(setup: Setup, names, n_masks: dict[str, int], batch: dict[str, int], repeats: int, seed: int = 1,
            record: dict | None = None) -> dict[str, float]:
    """Median seconds per mask per method; methods alternate within each repeat (one warm-up each). ``record``
    receives every repeat's seconds per mask."""
    masks = setup.masks(max(n_masks.values()), seed=seed)
    fns = {name: method_fn(name, batch) for name in names}
    for name in names:  # warm-up
        fns[name](setup, masks[: min(2, n_masks[name])])
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            m = masks[: n_masks[name]]
            start = time.perf_counter()
            fns[name](setup, m)
            times[name].append((time.perf_counter() - start) / len(m))
    if record is not None:
        record.update(times)
    return {name: statistics.median(ts) for name, ts in times.items()}


def floor_logits(setup: Setup, rows: int, batch: int) -> torch.Tensor:
    """Not a peer: the text suffix alone through the language model (no prefix, no cache, no intervention), as
    ``speed.py``'s floor (4); no exact method can beat it by much."""
    outs = []
    with torch.no_grad():
        for start in range(0, rows, batch):
            kwargs = setup.lm_kwargs(min(batch, rows - start))
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"][:, setup.text_start:]
            if "position_ids" in kwargs:
                kwargs["position_ids"] = kwargs["position_ids"][..., setup.text_start:]
            out = setup.lm.adapter.language_model()(**kwargs, use_cache=False)
            outs.append(setup.lm.adapter.output_logits(out.last_hidden_state[:, -1])[:, setup.answer])
    return torch.cat(outs)


def verified_ratios(rates: dict[str, float], verified: dict[str, bool]) -> dict[str, float]:
    """headflow's rate over each peer's, for verified peers only: an unverified peer gets no ratio."""
    return {n: rates["headflow"] / rate for n, rate in rates.items() if n != "headflow" and verified.get(n) is True}



def machine() -> dict:
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model_name = platform.processor()
    info = {"cpu": model_name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg": loadavg()}
    if nnsight_available():
        import nnsight
        info["nnsight"] = nnsight.__version__
    return info


def peers_available(names) -> list[str]:
    return [n for n in names if not n.startswith("nnsight") or nnsight_available()]


def batches(args) -> dict[str, int]:
    return {"headflow": args.batch_size, "hooks-cache": args.cache_batch,
            **{n: args.peer_batch for n in ("hooks-B", "nnsight-inv", "nnsight-B")}}


def mask_counts(args, names) -> dict[str, int]:
    """Masks timed per method: many for headflow and the prefix-cache peer, fewer for the full-forward peers."""
    return {n: args.masks if n in ("headflow", "hooks-cache") else args.peer_masks if n in BATCHED
            else args.single_masks for n in ["headflow", *names]}


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else ""


def side_by_side(args) -> dict:
    info = machine()
    setup = build_setup(args.shape)
    names = peers_available(args.peers)
    batch = batches(args)
    diffs = verify(setup, names, setup.masks(args.verify_masks, seed=0), batch)
    verified = {n: diffs[n] <= TOLERANCE for n in names}
    n_masks = mask_counts(args, names)
    timed = ["headflow", *names]
    if args.floor:
        timed.append("floor")
        n_masks["floor"] = args.masks
    every: dict = {}
    per_mask = measure(setup, timed, n_masks, batch, args.repeats, record=every)
    rates = {n: 1 / t for n, t in per_mask.items()}
    ratios = verified_ratios(rates, verified)
    issue = [n for n in ratios if n in ISSUE_PEERS]
    fastest = max(issue, key=rates.get) if issue else None
    return {"shape": args.shape, "prompt_tokens": setup.prompt.groups.length,
            "image_tokens": len(setup.image), "suffix_tokens": setup.prompt.groups.length - setup.text_start,
            "n_layers": setup.n_layers, "n_heads": setup.n_heads, "n_kv_heads": setup.lm.n_kv_heads,
            "batch": batch, "masks_timed": n_masks, "repeats": args.repeats, "verify_masks": args.verify_masks,
            "seconds_per_mask_each_repeat": every,
            "max_answer_logit_diff": diffs, "verified": verified, "masks_per_s": rates,
            "ratio_headflow_over": ratios,
            "fastest_verified_peer": fastest,
            "headflow_over_fastest_peer": rates["headflow"] / rates[fastest] if fastest else None,
            "machine": {**info, "loadavg_at_end": loadavg()}}


SCALING_LM = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=64)


def scaling_tokens(args) -> dict:
    info = machine()
    names = peers_available(args.peers)
    rows = []
    for tokens in args.image_tokens:
        setup = build_setup("llava15", image_tokens=tokens, lm_size=SCALING_LM)
        batch = batches(args)
        diffs = verify(setup, names, setup.masks(4, seed=0), batch)
        n_masks = mask_counts(args, names)
        per_mask = measure(setup, ["headflow", *names], n_masks, batch, args.repeats)
        rows.append({"image_tokens": tokens, "prompt_tokens": setup.prompt.groups.length,
                     "suffix_tokens": setup.prompt.groups.length - setup.text_start,
                     "ms_per_mask": {n: 1000 * t for n, t in per_mask.items()},
                     "verified": {n: diffs[n] <= TOLERANCE for n in names},
                     "max_answer_logit_diff": diffs})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"scaling": "image_tokens", "lm": SCALING_LM, "rows": rows, "machine": {**info, "loadavg_at_end": loadavg()}}


def scaling_batch(args) -> dict:
    info = machine()
    setup = build_setup(args.shape)
    names = [n for n in peers_available(args.peers) if n in BATCHED]
    rows = []
    diffs = verify(setup, names, setup.masks(args.verify_masks, seed=0),
                   {"headflow": args.batch_size, **{n: 4 for n in names}})
    for b in args.batch_sizes:
        batch = {"headflow": b, **{n: b for n in names}}
        n_masks = {n: max(b, args.peer_masks if n != "headflow" else args.masks) for n in ["headflow", *names]}
        n_masks = {n: b * max(1, m // b) for n, m in n_masks.items()}
        per_mask = measure(setup, ["headflow", *names], n_masks, batch, args.repeats)
        rows.append({"batch": b, "ms_per_mask": {n: 1000 * t for n, t in per_mask.items()}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"scaling": "batch", "shape": args.shape, "rows": rows, "max_answer_logit_diff": diffs,
            "verified": {n: diffs[n] <= TOLERANCE for n in names}, "machine": {**info, "loadavg_at_end": loadavg()}}


def print_side_by_side(r: dict) -> None:
    print(f"shape {r['shape']}: {r['prompt_tokens']} prompt / {r['image_tokens']} image / {r['suffix_tokens']} "
          f"suffix tokens, {r['n_layers']} layers x {r['n_heads']} heads ({r['n_kv_heads']} KV)")
    print(f"verification on {r['verify_masks']} masks + the all-heads mask; largest change of the answer logit "
          f"they make: {r['max_answer_logit_diff']['effect']:.3g}")
    print(f"{'method':<12} {'masks/s':>9} {'verified (max |d logit|)':>28} {'headflow / peer':>16}")
    for name, rate in r["masks_per_s"].items():
        if name == "headflow":
            print(f"{name:<12} {rate:9.2f} {'(reference)':>28} {'':>16}")
            continue
        if name == "floor":
            print(f"{name:<12} {rate:9.2f} {'(no ablation: a bound)':>28} "
                  f"{'floor/headflow ' + format(rate / r['masks_per_s']['headflow'], '.2f'):>16}")
            continue
        ok, d = r["verified"][name], r["max_answer_logit_diff"][name]
        ratio = f"{r['ratio_headflow_over'][name]:.1f}x" if name in r["ratio_headflow_over"] else "n/a (unverified)"
        print(f"{name:<12} {rate:9.2f} {('yes ' if ok else 'NO ') + f'({d:.1e})':>28} {ratio:>16}")
    if r["fastest_verified_peer"]:
        print(f"headflow / fastest verified peer of the issue's list ({r['fastest_verified_peer']}): "
              f"{r['headflow_over_fastest_peer']:.1f}x")
    print("machine:", r["machine"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llava15", choices=["default", "llava15", "qwen2vl"])
    parser.add_argument("--scaling", choices=["tokens", "batch"], help="a scaling table instead of the side-by-side")
    parser.add_argument("--peers", nargs="+", default=list(ALL_PEERS), choices=ALL_PEERS)
    parser.add_argument("--masks", type=int, default=128, help="masks timed for headflow")
    parser.add_argument("--peer-masks", type=int, default=32, help="masks timed for the batched peers")
    parser.add_argument("--single-masks", type=int, default=8, help="masks timed for the one-per-mask peers")
    parser.add_argument("--verify-masks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64, help="headflow's batch")
    parser.add_argument("--peer-batch", type=int, default=16, help="batch of hooks-B, nnsight-inv, nnsight-B")
    parser.add_argument("--cache-batch", type=int, default=64, help="batch of hooks-cache")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--image-tokens", type=int, nargs="+", default=[144, 576, 2304])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floor", action="store_true",
                        help="also time speed.py's floor (the suffix alone, no prefix, no ablation): a bound, not a peer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.shape == "qwen2vl":  # nnsight 0.8 cannot batch invokes of M-RoPE inputs (multi_axis_positions)
        args.peers = [p for p in args.peers if p != "nnsight-inv"]
    if args.scaling == "tokens":
        result = scaling_tokens(args)
    elif args.scaling == "batch":
        result = scaling_batch(args)
    else:
        result = side_by_side(args)
        if not args.json:
            print_side_by_side(result)
    if args.json or args.scaling:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
