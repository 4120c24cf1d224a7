"""``headflow plan``: what a head attribution of a model will cost, before it runs.

From the model's shape and one encoded prompt: the memory of the intervention engine per image and per batch
row (:func:`headflow.per_image.engine_memory`, the estimate the memory guards use), the largest batch size that
fits a given memory, the memory of the linear fit, the disk of the run directory (every array it writes, from
their shapes), and — with a probe — the time per image, extrapolated from one timed batch of masked rows on one
image. Nothing is written.

Where state lives: nothing here keeps state; :func:`plan_attribution` returns a plain dict.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .errors import HeadflowError
from .intervene import Baseline, InterventionEngine
from .intervene.check import CHECK_QUESTION, check_image
from .method import DEFAULT_BATCH_SIZE, available_memory, format_bytes
from .models.loading import LoadedModel
from .per_image import engine_memory, mask_rows

__all__ = ["plan_attribution", "format_plan"]


def plan_attribution(lm: LoadedModel, *, n_images: int, n_masks: int | None = None, n_val: int = 256,
                     batch_size: int = DEFAULT_BATCH_SIZE, memory: int | None = None, probe: bool = True,
                     question: str = CHECK_QUESTION) -> dict[str, Any]:
    """The cost of ``HeadAttribution`` on ``n_images`` images (``n_masks=None``: the default ``max(512, 4N)``).

    ``memory``: the bytes to plan for (default: what is free now). With ``probe``, one batch of ``batch_size``
    masked rows is run on one test image and timed (after one untimed warm-up batch).
    """
    if n_images < 1:
        raise HeadflowError(f"The 'images' option of plan must be an int in [1, inf). Got {n_images!r} instead.")
    if batch_size < 1:
        raise HeadflowError(f"The 'batch_size' option of plan must be an int in [1, inf). Got {batch_size!r} instead.")
    n_heads = lm.n_layers * lm.n_heads
    n_masks = n_masks if n_masks is not None else max(512, 4 * n_heads)
    rows = n_masks + n_val
    engine_ = InterventionEngine(lm, batch_size=batch_size)
    began = time.perf_counter()
    prompt = engine_.prepare(check_image(), question)  # one clean forward: which path the masks will take
    prepare_seconds = time.perf_counter() - began
    groups = prompt.groups
    tokens, image_tokens = groups.length, len(groups.image)
    reason = engine_.prefix_path_reason(prompt)
    suffix = None if reason is not None else tokens - prompt.prefix_length
    base = engine_memory(lm, tokens, 1, 0, suffix)
    per_row = engine_memory(lm, tokens, 1, 1, suffix) - base
    engine = engine_memory(lm, tokens, batch_size, rows, suffix)
    budget = memory if memory is not None else available_memory()
    fits = None
    if budget is not None and per_row > 0:
        fits = int(max(0, (budget - base - 2 * rows * _vocab(lm) * 4)) // per_row)
    head_dim = int(getattr(lm.text_config, "head_dim", None) or lm.text_config.hidden_size // lm.n_heads)
    hidden = int(lm.text_config.hidden_size)
    disk = {
        "targets.npy": n_images * rows * 4,
        "masks.npy + val_masks.npy": rows * n_heads,
        "attributions.npy": n_images * n_heads * 4,
        "attention.npy": n_images * n_heads * 4,
        "final_hidden.npy": n_images * hidden * 4,
        "pixels.npy": n_images * 192 * 4,
        "baseline.safetensors": lm.n_layers * 2 * lm.n_kv_heads * image_tokens * head_dim * 4,
    }
    plan: dict[str, Any] = {
        "model": lm.name, "n_layers": lm.n_layers, "n_heads": lm.n_heads, "n_kv_heads": lm.n_kv_heads,
        "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
        "prompt_tokens": tokens, "image_tokens": image_tokens, "path": "prefix" if reason is None else "full",
        "path_reason": reason, "n_images": n_images, "n_masks": n_masks,
        "n_val": n_val, "rows_per_image": rows, "batch_size": batch_size,
        "memory": {"engine_per_image": engine, "per_batch_row": per_row, "fit": 8 * 3 * (rows * (n_heads + 1)
                                                                                      + rows * n_images),
                   "budget": budget, "largest_batch_size_that_fits": fits},
        "disk": {**disk, "total": int(sum(disk.values()))},
    }
    if probe:
        plan["time"], measured = _probe(engine_, prompt, prepare_seconds, batch_size, rows, n_images)
        plan["memory"]["measured_per_batch_row"] = measured
    return plan


def _vocab(lm: LoadedModel) -> int:
    return int(getattr(lm.text_config, "vocab_size", 0) or 0)


def _probe(engine: InterventionEngine, prompt, prepare: float, batch_size: int, rows: int,
           n_images: int) -> tuple[dict[str, float], int | None]:
    """Seconds per masked row from one timed batch (after a warm-up), extrapolated to the run; and the batch's
    measured peak memory above what was in use before it, per row (:func:`peak_memory`; None where it cannot be
    measured)."""
    lm = engine.lm
    gen = np.random.default_rng(0)
    masks = gen.random((batch_size, lm.n_layers * lm.n_heads)) < 0.1
    batch = mask_rows(masks, lm.n_layers, lm.n_heads)
    baseline = Baseline.zero(prompt)
    engine.run(prompt, batch, baseline=baseline)  # warm-up
    if lm.device.type == "cuda":  # pragma: no cover - timed on a GPU only
        torch.cuda.synchronize()
    with peak_memory(lm.device) as peak:
        began = time.perf_counter()
        engine.run(prompt, batch, baseline=baseline)
        if lm.device.type == "cuda":  # pragma: no cover
            torch.cuda.synchronize()
        per_row = (time.perf_counter() - began) / batch_size
    per_image = prepare + rows * per_row
    measured = None if peak.bytes is None else peak.bytes // batch_size
    return {"seconds_per_row": per_row, "seconds_per_image": per_image, "seconds_total": per_image * n_images}, measured


class peak_memory:
    """Peak memory in use inside the block above what was in use when it began, in ``.bytes`` after it (``None``
    where it cannot be measured): on CUDA from the allocator's peak statistics; on a Linux CPU from the process's
    resident-set high-water mark, reset at the start (``/proc/self/clear_refs``) after the C heap has handed what
    it keeps free back to the system (glibc ``malloc_trim``), so that the growth of the resident set is the block's
    own."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, None
        self._start: int | None = None

    def __enter__(self) -> "peak_memory":
        import gc

        gc.collect()
        if self.device.type == "cuda":  # pragma: no cover - GPU only
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu":
            try:
                _trim_heap()  # memory freed earlier but kept by malloc would hide part of the block's peak
                self._start = _status("VmRSS")
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":  # pragma: no cover
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            try:
                self.bytes = max(0, _status("VmHWM") - self._start)
            except OSError:
                self.bytes = None


def _trim_heap() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measure may then read low
        pass


def _status(key: str) -> int:
    """A ``/proc/self/status`` memory line in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as the lines ``headflow plan`` prints."""
    mem, disk = plan["memory"], plan["disk"]
    lines = [
        f"headflow plan: {plan['model']} ({plan['n_layers']} layers x {plan['n_heads']} heads, {plan['n_kv_heads']} "
        f"kv heads, {plan['dtype']} on {plan['device']}), {plan['prompt_tokens']} prompt tokens of which "
        f"{plan['image_tokens']} image tokens",
        f"  attribution of {plan['n_images']} images: {plan['n_masks']} + {plan['n_val']} masks per image, "
        f"batches of {plan['batch_size']} rows",
        f"  memory: engine {format_bytes(mem['engine_per_image'])} per image ({format_bytes(mem['per_batch_row'])} "
        f"per batch row on the {plan['path']} path), fit {format_bytes(mem['fit'])}"
        + (f"; the probe measured {format_bytes(mem['measured_per_batch_row'])} per batch row"
           if mem.get("measured_per_batch_row") is not None else ""),
    ]
    if plan["path_reason"]:
        lines.append(f"  full path: {plan['path_reason']}")
    if mem["budget"] is not None:
        fits = mem["largest_batch_size_that_fits"]
        lines.append(f"  of {format_bytes(mem['budget'])}: batches of up to "
                     f"{'n/a' if fits is None else fits} rows fit" + ("" if fits is None or fits >= plan['batch_size']
                                                                    else " — use a smaller --batch-size"))
    lines.append(f"  disk: {format_bytes(disk['total'])} for the run directory (targets "
                 f"{format_bytes(disk['targets.npy'])})")
    if "time" in plan:
        t = plan["time"]
        lines.append(f"  time (probe): {t['seconds_per_row'] * 1e3:.2f} ms per masked row, "
                     f"{t['seconds_per_image']:.1f} s per image, {t['seconds_total'] / 60:.1f} min in all")
    return "\n".join(lines)
