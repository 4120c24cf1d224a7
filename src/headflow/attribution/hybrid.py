"""Hybrid head attribution: attribution patching screens the heads, the regression fits the screened ones.

1. **Screen.** Attribution patching (:func:`~headflow.attribution.patching.patching_gradient`: one forward and one
   backward pass per image) estimates every head's effect; the estimate of head ``c`` is the mean over images of
   ``|a_c|``. The screen keeps the top ``M`` heads: ``screen_heads`` of them, or the fewest whose estimates cover
   ``screen_coverage`` of the total (``1`` keeps every head).
2. **Regression.** Random Bernoulli(``ablation_prob``) masks over the ``M`` screened heads only (the others are
   never ablated), ``n_masks = max(64, 4M)`` by default, the target of every image under every mask, and the
   linear fit of :class:`~headflow.attribution.HeadAttribution` on the screened columns. Unscreened heads get
   attribution 0.
3. **Held-out check.** The held-out masks are the regression's (the same seed), over *all* heads, so the LDS also
   tests the screen: an unscreened head that matters lowers it.

With ``screen_coverage=1`` the masks are exactly the regression's for the same ``n_masks`` and ``seed`` (the
screened heads are kept in index order), so the result equals :class:`~headflow.attribution.HeadAttribution`'s.

``HeadAttributionHybrid(model, **params).run(dataset, out=RUN_DIR)`` writes the regression's layout
(``config.json``, ``images.parquet``, ``baseline.safetensors``, ``attention.npy``, ``final_hidden.npy``,
``pixels.npy``, ``masks.npy`` ``[mask, head]`` over all heads, ``val_masks.npy``, ``targets.npy``,
``attributions.npy`` ``[image, layer, head]``, ``fit_bias.npy``, ``lds.parquet``, ``summary.json``) plus
``gradients.npy`` (the screen's ``∂y/∂α`` per used image, resumable) and ``screen.json`` (the screened heads and
the estimate). Where state lives: nothing is kept on the method object; everything is in the run directory.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.base import Dataset, Example
from ..errors import HeadflowError
from ..executor import map_images
from ..method import Method, provenance
from ..models.loading import LoadedModel, load_model
from ..per_image import ImageJob, image_baseline, image_job, image_targets, mask_rows
from ..store import RowStore, run_lock, save_npy, write_json
from .core import AttributionResult, rebuild_hint, sample_masks, save_fit
from .fit import design_rank, fit_linear
from .params import HybridParams
from .patching import begin_run, gradient_pass

__all__ = ["HeadAttributionHybrid", "screen_heads"]


def screen_heads(estimate: np.ndarray, coverage: float = 0.99, n_heads: int | None = None) -> np.ndarray:
    """Indices (ascending) of the heads a screen keeps from ``estimate`` ``[head]`` (>= 0): the top ``n_heads``,
    or the fewest whose estimates cover ``coverage`` of the total (every head for ``coverage=1`` or a zero total).
    """
    estimate = np.asarray(estimate, dtype=np.float64).ravel()
    order = np.argsort(-estimate, kind="stable")
    total = float(estimate.sum())
    if n_heads is not None:
        keep = min(int(n_heads), estimate.size)
    elif coverage >= 1.0 or total <= 0:
        keep = estimate.size
    else:
        keep = min(int(np.searchsorted(np.cumsum(estimate[order]), coverage * total)) + 1, estimate.size)
    return np.sort(order[:keep])


class HeadAttributionHybrid(Method):
    """Per-head attribution: attribution patching screens the heads, random-ablation regression fits the top ones.

    ``HeadAttributionHybrid(model, **params).run(dataset, out=RUN_DIR)``; parameters and defaults:
    :class:`~headflow.attribution.params.HybridParams` (the regression's, the patching ``mix``, and
    ``screen_coverage`` / ``screen_heads``). Returns an :class:`~headflow.attribution.AttributionResult` whose
    ``summary["screen"]`` lists the screened heads.

    Examples
    --------
    >>> from headflow.data import load_dataset
    >>> result = HeadAttributionHybrid("tiny:llava", screen_heads=4, n_val=16, keep_wrong=True).run(
    ...     load_dataset("default", n=2))
    >>> result.attributions.shape, result.summary["screen"]["n_screened"], result.summary["n_masks"]
    ((2, 2, 4), 4, 64)
    """

    Params = HybridParams

    def run(self, data: Dataset | Sequence[Example], *, out: str | Path | None = None,
            runner: Any = None) -> AttributionResult:
        """Run (or resume) the hybrid into ``out`` (a new temporary directory if None)."""
        params = self.check()
        if runner is not None:
            raise HeadflowError("HeadAttributionHybrid runs in this process; run it without --ray.")
        if len(data) == 0:
            raise HeadflowError("The dataset is empty; pass at least one image.")
        lm = load_model(self.model)
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="headflow-hybrid-"))
        with run_lock(out):
            return self._run(lm, params, data, out)

    def _run(self, lm: LoadedModel, params: HybridParams, data, out: Path) -> AttributionResult:
        hint = rebuild_hint(out) + " and --method hybrid"
        n_heads = lm.n_layers * lm.n_heads
        run = begin_run(lm, params, data, out, "HeadAttributionHybrid", hint)
        engine, config, resolved, labels, table, baseline, used = (
            run.engine, run.config, run.resolved, run.labels, run.table, run.baseline, run.used)

        # 1. the screen: attribution patching on every used image
        gradients, screen_seconds = gradient_pass(run, params, data, out, hint, "hybrid: screen (patching)")
        estimate = np.abs(gradients.astype(np.float64)).mean(0)
        screened = screen_heads(estimate, params.screen_coverage, params.screen_heads)
        m = len(screened)
        n_masks = params.n_masks or max(64, 4 * m)
        total = float(estimate.sum())
        screen = {"heads": [[int(c // lm.n_heads), int(c % lm.n_heads)] for c in screened], "n_screened": m,
                  "coverage_requested": params.screen_coverage, "screen_heads_requested": params.screen_heads,
                  "coverage": float(estimate[screened].sum() / total) if total > 0 else None,
                  "estimate": estimate.reshape(lm.n_layers, lm.n_heads).tolist(),
                  "what": "estimate = mean over images of |attribution patching estimate| per head; the regression "
                          "ablates the screened heads only"}
        write_json(out / "screen.json", screen)

        # 2. the regression over the screened heads (held-out masks over all heads, as the regression's)
        masks = np.zeros((n_masks, n_heads), dtype=bool)
        masks[:, screened] = sample_masks(n_masks, m, params.ablation_prob, params.seed)
        val_masks = sample_masks(params.n_val, n_heads, params.ablation_prob, params.seed + 1_000_003)
        save_npy(out / "masks.npy", masks)
        save_npy(out / "val_masks.npy", val_masks)
        rows = mask_rows(np.vstack([masks, val_masks]), lm.n_layers, lm.n_heads)
        store = RowStore(out, "targets", len(used), n_masks + params.n_val, rebuild_hint=hint)
        began = time.perf_counter()

        def masked(_state, job: ImageJob) -> np.ndarray:
            prompt = engine.prepare(job.image, params.question)
            base = image_baseline(engine, prompt, baseline, params.baseline, params.question, job.partner)
            targets, _ = image_targets(engine, prompt, rows, base, job.answer_ids, params.target)
            return targets.cpu().numpy()

        todo_masks = [(row, idx) for row, idx in enumerate(used) if not store.done[row]]
        map_images(masked, ((row, image_job(data, table, idx, params.baseline)) for row, idx in todo_masks),
                   n_items=len(todo_masks), on_result=store.write, desc="hybrid: masks per image")
        if screen_seconds is not None:
            resolved["screen_seconds_per_image"] = screen_seconds
        if todo_masks:
            resolved["mask_seconds_per_image"] = (time.perf_counter() - began) / len(todo_masks)
        resolved.update(n_masks=n_masks, n_screened=m)

        targets = np.asarray(store.data)
        train, val = targets[:, :n_masks].T, targets[:, n_masks:].T
        bias, w = fit_linear(masks[:, screened], train, params.fit, params.penalty)
        weights = np.zeros((len(used), n_heads))
        weights[:, screened] = w
        attributions, pearson, spearman = save_fit(out, table, lm, bias, weights, val_masks, val)
        mean = attributions.mean(0)
        order = np.argsort(-mean.ravel())[:20]
        problems = dict(getattr(data, "problems", {}) or {})
        rank = design_rank(masks[:, screened])
        summary = {
            "method": "hybrid", "mix": params.mix,
            "n_heads_total": n_heads, "n_layers": lm.n_layers, "n_heads": lm.n_heads,
            "n_images": len(used), "n_images_total": int(len(table)), "n_masks": int(n_masks),
            "n_val": int(params.n_val), "ablation_prob": params.ablation_prob, "baseline": params.baseline,
            "target": params.target, "fit": params.fit, "clean_accuracy": float(table["correct"].mean()), **labels,
            "screen": {k: v for k, v in screen.items() if k != "estimate"},
            "design_rank": rank, "design_full_rank": rank == m + 1,
            "lds_pearson_median": _nanmedian(pearson), "lds_spearman_median": _nanmedian(spearman),
            "lds_pearson_quartiles": _quartiles(pearson), "lds_spearman_quartiles": _quartiles(spearman),
            "top_heads": [[int(i // lm.n_heads), int(i % lm.n_heads), float(mean.ravel()[i])] for i in order],
            "data_problems": problems, "n_data_problems": int(sum(problems.values())),
            "spec_hash": config["spec_hash"],
            "provenance": provenance("HeadAttributionHybrid", params=params.model_dump(mode="json"),
                                     resolved=resolved, model=config.get("model"), data=config["spec"]["data"],
                                     spec_hash=config["spec_hash"]),
        }
        write_json(out / "summary.json", summary)
        return AttributionResult.load(out)


def _nanmedian(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def _quartiles(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.nanpercentile(x, [25, 50, 75])] if np.isfinite(x).any() else []
