"""Attribution patching (Nanda 2023; AtP*, Kramár et al. 2024): head attribution from one forward and one
backward pass per image, in the run-directory layout of :class:`~headflow.attribution.HeadAttribution`.

Each head ``c`` gets a continuous coefficient ``α_c`` between its clean (``α = 0``) and its ablated (``α = 1``,
headflow's ablation with the run's baseline) reading of the image by its text queries, inside headflow's own
attention function (:meth:`headflow.intervene.InterventionEngine.mixed`). The target's gradient at ``α = 0`` is
the first-order estimate of the target change when ``c`` alone is ablated, so the attribution is
``a_c = −∂y/∂α_c`` (the sign convention of the regression's ``a = −w``: the target lost when the head is
ablated). ``mix="output"`` (default) mixes the head's output, so the change of its attention pattern is exact and
only the rest of the network is linearised (AtP*'s correction for attention saturation); ``mix="kv"`` mixes the
image keys/values it reads (plain AtP: the softmax is linearised too).

``HeadAttributionPatching(model, **params).run(dataset, out=RUN_DIR)`` writes ``config.json``, ``images.parquet``,
``baseline.safetensors``, ``attention.npy``, ``final_hidden.npy``, ``pixels.npy`` (pass 1, shared with the
regression), ``gradients.npy`` (+ ``.done``; ``∂y/∂α`` per used image and head, resumable), ``attributions.npy``
``[image, layer, head]`` and ``summary.json``, so ``headflow validate``, ``semantics``, ``compare`` and the
report read it as they read a regression run. The first ``n_check`` used images are also checked against the
exact single-head ablation effects (Spearman per image, ``exact_check`` in ``summary.json``).

Where state lives: nothing is kept on the method object; everything is in the run directory.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..answers import target_values
from ..data.base import Dataset, Example
from ..errors import HeadflowError
from ..executor import map_images
from ..intervene import Intervention, InterventionEngine
from ..method import Method, provenance, versions
from ..models.loading import LoadedModel, load_model
from ..per_image import ImageJob, check_labels, data_record, dataset_labels, image_baseline, image_job, image_targets
from ..store import RowStore, ensure_config, run_lock, save_npy, write_json
from .core import AttributionResult, clean_pass, rebuild_hint
from .params import PatchingParams

__all__ = ["HeadAttributionPatching", "patching_gradient"]


def patching_gradient(engine: InterventionEngine, prompt, baseline, answer_ids: tuple[int, ...], target: str,
                      mix: str = "output") -> np.ndarray:
    """``∂y/∂α`` ``[layer, head]`` at ``α = 0`` for one prepared prompt: one forward and one backward pass."""
    lm = engine.lm
    alpha = torch.zeros(1, lm.n_layers, lm.n_heads, device=lm.device, requires_grad=True)
    continuation = answer_ids[:-1] if target == "sequence" else ()
    logits = engine.mixed(prompt, alpha, baseline=baseline, kind=mix, continuation=continuation)
    y = target_values(logits[:, 0], answer_ids[0], target, logits[:, 1:] if continuation else None, answer_ids)
    (grad,) = torch.autograd.grad(y.sum(), alpha)
    return grad[0].detach().float().cpu().numpy()


@dataclass
class BegunRun:
    """A one-process attribution run after its start: the engine, the checked configuration, the label report, the
    clean pass's image table and baseline, and the used images (the table's row index of each)."""

    engine: InterventionEngine
    config: dict[str, Any]
    resolved: dict[str, Any]
    labels: dict[str, list]
    table: Any
    baseline: Any
    used: list[int]


def begin_run(lm: LoadedModel, params, data, out: Path, method: str, hint: str) -> BegunRun:
    """What :class:`HeadAttributionPatching` and the hybrid do first: the run's ``config.json`` (a different
    configuration refused), the labels reported, the clean pass (shared with the regression), the used images."""
    n_heads = lm.n_layers * lm.n_heads
    spec = {"method": method, "model": lm.name, "weights": lm.weights_id, "model_class": type(lm.model).__name__,
            "data": data_record(data), "n_images": len(data),
            "image_ids": [data[i].id for i in range(len(data))] if len(data) <= 4096 else None, **params.spec()}
    engine = InterventionEngine(lm, batch_size=params.batch_size)
    resolved: dict[str, Any] = {"n_heads_total": n_heads, "n_layers": lm.n_layers, "n_heads": lm.n_heads}
    config = ensure_config(out, spec, {"params": params.model_dump(mode="json"), "resolved": resolved,
                                       "model": lm.describe(), "versions": versions()}, rebuild_hint=hint)
    labels = check_labels(lm.answers(params.question, aliases=params.aliases), dataset_labels(data))
    table, baseline = clean_pass(engine, data, params, out, hint)
    used = table.index[table["used"]].tolist()
    if not used:
        raise HeadflowError("No image is answered correctly by the clean model, so none is left to analyse; "
                            "pass keep_wrong=True (--keep-wrong) to keep them.")
    return BegunRun(engine, config, resolved, labels, table, baseline, used)


def gradient_pass(run: BegunRun, params, data, out: Path, hint: str, desc: str) -> tuple[np.ndarray, float | None]:
    """The patching gradient ``dy/dα`` of every used image and head into ``out/gradients`` (resumable row store):
    ``(gradients [image, layer·head] float32, seconds per image computed now or None if all were done)``."""
    engine, lm = run.engine, run.engine.lm
    store = RowStore(out, "gradients", len(run.used), lm.n_layers * lm.n_heads, rebuild_hint=hint)
    todo = [(row, idx) for row, idx in enumerate(run.used) if not store.done[row]]
    began = time.perf_counter()

    def one(_state, job: ImageJob) -> np.ndarray:
        prompt = engine.prepare(job.image, params.question)
        base = image_baseline(engine, prompt, run.baseline, params.baseline, params.question, job.partner)
        return patching_gradient(engine, prompt, base, job.answer_ids, params.target, params.mix).ravel()

    map_images(one, ((row, image_job(data, run.table, idx, params.baseline)) for row, idx in todo),
               n_items=len(todo), on_result=store.write, desc=desc)
    seconds = (time.perf_counter() - began) / len(todo) if todo else None
    return np.asarray(store.data, dtype=np.float32), seconds


class HeadAttributionPatching(Method):
    """Per-head attribution by attribution patching: one forward and one backward pass per image.

    ``HeadAttributionPatching(model, **params).run(dataset, out=RUN_DIR)``; parameters and defaults:
    :class:`~headflow.attribution.params.PatchingParams` (``baseline``, ``target``, ``question``, ``keep_wrong``,
    ``aliases`` as for :class:`~headflow.attribution.HeadAttribution`; ``mix``, ``n_check``). Returns an
    :class:`~headflow.attribution.AttributionResult`.

    Examples
    --------
    >>> from headflow.data import load_dataset
    >>> result = HeadAttributionPatching("tiny:llava", keep_wrong=True, n_check=0).run(load_dataset("default", n=2))
    >>> result.attributions.shape  # (image, layer, head)
    (2, 2, 4)
    """

    Params = PatchingParams

    def run(self, data: Dataset | Sequence[Example], *, out: str | Path | None = None,
            runner: Any = None) -> AttributionResult:
        """Run (or resume) attribution patching into ``out`` (a new temporary directory if None)."""
        params = self.check()
        if runner is not None:
            raise HeadflowError("HeadAttributionPatching runs in this process (one forward and backward pass per "
                                "image); run it without --ray.")
        if len(data) == 0:
            raise HeadflowError("The dataset is empty; pass at least one image.")
        lm = load_model(self.model)
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="headflow-patching-"))
        with run_lock(out):
            return self._run(lm, params, data, out)

    def _run(self, lm: LoadedModel, params: PatchingParams, data, out: Path) -> AttributionResult:
        hint = rebuild_hint(out) + " and --method patching"
        run = begin_run(lm, params, data, out, "HeadAttributionPatching", hint)
        engine, config, resolved, labels, table, baseline, used = (
            run.engine, run.config, run.resolved, run.labels, run.table, run.baseline, run.used)
        gradients, seconds = gradient_pass(run, params, data, out, hint, "attribution patching: images")
        if seconds is not None:
            resolved["seconds_per_image"] = seconds
        attributions = (-gradients).reshape(-1, lm.n_layers, lm.n_heads)
        save_npy(out / "attributions.npy", attributions)
        check = self._exact_check(engine, data, table, used, attributions, baseline, params)
        mean = attributions.mean(0)
        order = np.argsort(-mean.ravel())[:20]
        problems = dict(getattr(data, "problems", {}) or {})
        summary = {
            "method": "patching", "mix": params.mix,
            "n_heads_total": int(mean.size), "n_layers": lm.n_layers, "n_heads": lm.n_heads,
            "n_images": int(len(used)), "n_images_total": int(len(table)), "n_masks": None, "n_val": None,
            "ablation_prob": None, "baseline": params.baseline, "target": params.target, "fit": "patching",
            "clean_accuracy": float(table["correct"].mean()), **labels,
            "exact_check": check,
            "top_heads": [[int(i // lm.n_heads), int(i % lm.n_heads), float(mean.ravel()[i])] for i in order],
            "data_problems": problems, "n_data_problems": int(sum(problems.values())),
            "spec_hash": config["spec_hash"],
            "provenance": provenance("HeadAttributionPatching", params=params.model_dump(mode="json"),
                                     resolved=resolved, model=config.get("model"), data=config["spec"]["data"],
                                     spec_hash=config["spec_hash"]),
        }
        write_json(out / "summary.json", summary)
        return AttributionResult.load(out)

    @staticmethod
    def _exact_check(engine: InterventionEngine, data, table, used: list[int], attributions: np.ndarray, baseline,
                     params: PatchingParams) -> dict[str, Any]:
        """Per image (the first ``n_check`` used ones): Spearman between the estimate and the exact effect of
        ablating each head alone (``y_clean − y_ablated``, one batch of single-head rows on the prefix path)."""
        from scipy.stats import spearmanr

        lm = engine.lm
        n = lm.n_layers * lm.n_heads
        rows = [Intervention(ablate=torch.eye(n, dtype=torch.bool)[c].view(lm.n_layers, lm.n_heads))
                for c in range(n)]
        values = []
        for row, idx in enumerate(used[: params.n_check]):
            job = image_job(data, table, idx, params.baseline)
            prompt = engine.prepare(job.image, params.question)
            base = image_baseline(engine, prompt, baseline, params.baseline, params.question, job.partner)
            targets, _ = image_targets(engine, prompt, rows, base, job.answer_ids, params.target)
            exact = float(table.at[idx, "clean_target"]) - targets.cpu().numpy()
            rho = spearmanr(exact, attributions[row].ravel()).statistic
            values.append(float(rho) if np.isfinite(rho) else float("nan"))
        finite = [v for v in values if np.isfinite(v)]
        return {"n_images": len(values), "spearman": values,
                "spearman_median": float(np.median(finite)) if finite else None,
                "what": "Spearman, per image, between the patching estimate and the exact single-head ablation "
                        "effect (y_clean - y_ablated) over all heads"}
