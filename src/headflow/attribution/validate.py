"""Validation of an attribution run (METHOD.md F5): rankings, completeness and faithfulness curves.

Rankings of heads: ``attribution`` (mean over images), ``attribution_per_image`` (each image's own
attribution), ``single_head`` (mean effect of ablating one head alone), ``attention`` (mean mass the
final token's query puts on image positions, clean run) and ``random`` (seeded). For each ``k`` on a
grid: *completeness* ablates the top-``k`` heads, *faithfulness* ablates every head but the top-``k``.
Curves are normalised with ratios of means over images:
``completeness_k = mean(y_clean − y_k) / mean(y_clean − y_all)`` and
``faithfulness_k = mean(y_k − y_all) / mean(y_clean − y_all)`` (our choice: robust where one image's
``y_clean − y_all`` is near zero).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import HeadflowError
from ..intervene import Baseline, Intervention, InterventionEngine, PreparedPrompt
from ..models.loading import LoadedModel, load_model
from ..store import RowStore, read_json, save_npy, write_json
from .answers import target_values
from .core import (AttributionResult, _baseline_to, _checked_prompt, _image_baseline, _ImageJob, _load_baseline,
                   _resample_partner, _worker_model)
from .params import AttributionParams

if TYPE_CHECKING:
    from ..distributed import RayRunner

RANKINGS = ("attribution", "attribution_per_image", "single_head", "attention", "random")


def default_k_grid(n_heads: int) -> list[int]:
    """Every k for small models; otherwise ~33 points, dense at small k, always with 0 and N."""
    if n_heads <= 64:
        return list(range(n_heads + 1))
    grid = set(np.unique(np.round(np.geomspace(1, n_heads, 24)).astype(int)).tolist())
    grid |= set(np.linspace(0, n_heads, 9).astype(int).tolist())
    return sorted(grid)


def first_k_reaching(curve: np.ndarray, grid: list[int], level: float = 0.8) -> int | None:
    hits = np.nonzero(np.asarray(curve) >= level)[0]
    return int(grid[hits[0]]) if len(hits) else None


def area_under(curve: np.ndarray, grid: list[int]) -> float:
    x = np.asarray(grid, dtype=float) / max(grid[-1], 1)
    y = np.asarray(curve, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@dataclass(frozen=True)
class ValidationResult:
    """``validation.json`` of a run: per ranking the curves and their summaries."""

    run_dir: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, run_dir: str | Path) -> "ValidationResult":
        path = Path(run_dir) / "validation.json"
        if not path.exists():
            raise HeadflowError(f"{run_dir} has no validation.json; run 'headflow validate {run_dir}' first.")
        return cls(Path(run_dir), read_json(path))

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        from .validate_plots import plot_validation

        return plot_validation(self, Path(figures_dir) if figures_dir else self.run_dir / "figures")


class Validation:
    """Check an attribution run against single-head ablation, attention weight and random rankings.

    Parameters
    ----------
    model : LoadedModel or spec, optional
        Defaults to the model named in the run's config.
    k_grid : list of int, optional
    seed : int
        Seed of the random ranking.
    batch_size : int
    max_images : int, optional
        Validate on the first ``max_images`` used images only (default: all).
    """

    def __init__(self, model: LoadedModel | str | None = None, *, k_grid: list[int] | None = None, seed: int = 0,
                 batch_size: int = 64, max_images: int | None = None) -> None:
        self.model, self.k_grid, self.seed, self.batch_size = model, k_grid, seed, batch_size
        self.max_images = max_images

    def run(self, run_dir: str | Path, dataset=None, runner: "RayRunner | None" = None) -> ValidationResult:
        """Validate the run in ``run_dir`` (resumable) and write ``validation.json`` and its figures.

        With ``runner`` (a :class:`headflow.distributed.RayRunner`), both per-image passes (single-head
        ablations, then the curves) are sharded over Ray workers, each loading the model from its spec;
        this process writes every row. Results are the same as without a runner.
        """
        run_dir = Path(run_dir)
        result = AttributionResult.load(run_dir)
        spec = result.config["spec"]
        model = self.model if self.model is not None else spec["model"]
        worker_model = _worker_model(model) if runner is not None else None  # [ray] fail before any work
        params = AttributionParams(**{k: spec[k] for k in AttributionParams.model_fields if k in spec})
        lm = load_model(model)
        dataset = dataset if dataset is not None else _dataset_of(spec)
        n_layers, n_heads = result.attributions.shape[1:]
        if (lm.n_layers, lm.n_heads) != (n_layers, n_heads):
            raise HeadflowError(f"The model has {lm.n_layers}x{lm.n_heads} heads but the run has {n_layers}x{n_heads}; "
                                "pass the run's own model.")
        n = n_layers * n_heads
        grid = self.k_grid or default_k_grid(n)
        engine = InterventionEngine(lm, batch_size=self.batch_size)
        used = result.images.index[result.images["used"]].tolist()[: self.max_images]
        shared = _load_baseline(run_dir / "baseline.safetensors")
        context = _ValidationContext(*(worker_model or (None, None)), self.batch_size, params, shared)
        local = (engine, context)

        def todo(store: RowStore, extra=lambda row: None) -> list[tuple[int, int, Any]]:
            return [(row, idx, extra(row)) for row, idx in enumerate(used) if not store.done[row]]

        # pass A: clean, all-ablated and single-head targets
        single_store = RowStore(run_dir / "validation", "single", len(used), n + 2)
        _fill(single_store, todo(single_store), dataset, result, params, "validate: single heads",
              _single_row, _run_single, local, runner)
        single = np.asarray(single_store.data)
        y_clean, y_all, y_single = single[:, 0], single[:, 1], single[:, 2:]
        single_effect = y_clean[:, None] - y_single
        save_npy(run_dir / "single_head.npy", single_effect.reshape(-1, n_layers, n_heads).astype(np.float32))

        attention = np.load(run_dir / "attention.npy").reshape(-1, n)[: len(used)]
        orders = {
            "attribution": np.argsort(-result.mean_attribution.ravel(), kind="stable"),
            # (the ranking always uses the mean over all attributed images)
            "single_head": np.argsort(-single_effect.mean(0), kind="stable"),
            "attention": np.argsort(-attention.mean(0), kind="stable"),
            "random": np.random.default_rng(self.seed).permutation(n),
        }
        per_image = result.attributions.reshape(-1, n)[: len(used)]

        # pass B: curves (needs pass A's single-head ranking)
        n_cols = len(RANKINGS) * len(grid) * 2
        curve_store = RowStore(run_dir / "validation", "curves", len(used), n_cols * 2)
        context = replace(context, orders=orders, grid=list(grid))
        _fill(curve_store, todo(curve_store, lambda row: np.argsort(-per_image[row], kind="stable")), dataset,
              result, params, "validate: curves", _curve_row, _run_curve, (engine, context), runner)
        curves = np.asarray(curve_store.data)
        data = self._summarise(curves, y_clean, y_all, grid, n, params, result)
        write_json(run_dir / "validation.json", data)
        out = ValidationResult(run_dir, data)
        out.plot()
        return out

    def _summarise(self, curves, y_clean, y_all, grid, n, params, result) -> dict[str, Any]:
        n_k = len(grid)
        half = curves.shape[1] // 2
        ys, acc = curves[:, :half], curves[:, half:]
        denom = float(np.mean(y_clean - y_all))
        rankings: dict[str, Any] = {}
        for r, name in enumerate(RANKINGS):
            base = r * 2 * n_k
            comp_y = ys[:, base: base + n_k]
            faith_y = ys[:, base + n_k: base + 2 * n_k]
            completeness = np.mean(y_clean[:, None] - comp_y, 0) / denom
            faithfulness = np.mean(faith_y - y_all[:, None], 0) / denom
            rankings[name] = {
                "k80_completeness": first_k_reaching(completeness, grid),
                "k80_faithfulness": first_k_reaching(faithfulness, grid),
                "auc_completeness": area_under(completeness, grid),
                "auc_faithfulness": area_under(faithfulness, grid),
                "completeness": completeness.tolist(),
                "faithfulness": faithfulness.tolist(),
                "accuracy_completeness": acc[:, base: base + n_k].mean(0).tolist(),
                "accuracy_faithfulness": acc[:, base + n_k: base + 2 * n_k].mean(0).tolist(),
            }
        ours = rankings["attribution"]["k80_completeness"]
        others = [rankings[k]["k80_completeness"] for k in ("single_head", "attention", "random")]
        others_n = [o if o is not None else n + 1 for o in others]
        holds = ours is not None and ours <= 0.75 * min(others_n)
        subset = ours is not None and ours <= 0.5 * others_n[2]
        return {
            "k_grid": grid, "n_heads": n, "n_images": int(len(y_clean)), "target": params.target,
            "baseline": params.baseline, "mean_clean_target": float(np.mean(y_clean)),
            "mean_all_ablated_target": float(np.mean(y_all)), "normaliser": denom,
            "rankings": rankings,
            "c1": {"claim": "the attribution ranking needs clearly fewer heads (k80 completeness) than the others",
                   "k80_attribution": ours, "k80_others": dict(zip(("single_head", "attention", "random"), others)),
                   "rule": "holds if k80(attribution) <= 0.75 * min(k80 of single_head, attention, random)",
                   "holds": bool(holds)},
            "subset": {"claim": "a distinct subset of heads carries the flow: the attribution ranking reaches 80 % "
                                "completeness with far fewer heads than a random ranking",
                       "k80_attribution": ours, "k80_random": others[2],
                       "rule": "holds if k80(attribution) <= 0.5 * k80(random)", "holds": bool(subset)},
        }


# -- per image: shared by the single-process loops and the Ray workers ------------------------------

@dataclass(frozen=True)
class _ValidationContext:
    """What computing a row needs besides the image; put once into Ray's object store for workers.

    ``orders`` (ranking name → head order ``[n_heads]``) and ``grid`` are set for pass B only.
    """

    spec: str | None
    dtype: str | None
    batch_size: int | str
    params: AttributionParams
    baseline: Baseline | None
    orders: dict[str, np.ndarray] | None = None
    grid: list[int] | None = None


def _image_job_checked(dataset, result: AttributionResult, idx: int, params: AttributionParams) -> _ImageJob:
    """The image, resample partner and answer of used image ``idx``, after checking the data is the run's."""
    ex = dataset[idx]
    if ex.id != result.images.at[idx, "id"]:
        raise HeadflowError(f"Image {idx} of the dataset is {ex.id!r} but the run recorded "
                            f"{result.images.at[idx, 'id']!r}; pass the run's own data.")
    partner = dataset[_resample_partner(result.images, idx)].image if params.baseline == "resample" else None
    return _ImageJob(ex.image, partner, int(result.images.at[idx, "answer_id"]),
                     float(result.images.at[idx, "clean_logit"]))


def _fill(store: RowStore, todo: list[tuple[int, int, Any]], dataset, result: AttributionResult,
          params: AttributionParams, desc: str, compute, worker_fn, local, runner) -> None:
    """Compute the missing rows of ``store``: here with ``compute``, or on Ray workers with ``worker_fn``.

    ``todo`` holds ``(row, image index, extra)``; each row gets ``compute(engine, ctx, job, extra)``.
    This process is the only writer either way.
    """
    bar = tqdm(total=len(todo), desc=desc, unit="image", disable=not todo)

    def write(row: int, values: np.ndarray) -> None:
        store.write(row, values)
        bar.update()

    engine, ctx = local
    items = ((row, (_image_job_checked(dataset, result, idx, params), extra)) for row, idx, extra in todo)
    if runner is not None:  # [ray]
        runner.map(_setup_validation_worker, worker_fn, items, n_items=len(todo), context=ctx, on_result=write)
    else:
        for row, (job, extra) in items:
            write(row, compute(engine, ctx, job, extra))
    bar.close()


def _single_row(engine: InterventionEngine, ctx: _ValidationContext, job: _ImageJob, extra: None,
                prompt: PreparedPrompt | None = None) -> np.ndarray:
    """Pass A row: ``[y_clean, y_all_ablated, y_without_head_0, …]``, ``n_heads + 2`` float32."""
    lm, params = engine.lm, ctx.params
    prompt = prompt if prompt is not None else engine.prepare(job.image, params.question)
    baseline = _image_baseline(engine, prompt, ctx.baseline, params, job.partner)
    n_layers, n_heads = lm.n_layers, lm.n_heads
    everything = torch.ones(n_layers, n_heads, dtype=torch.bool)
    eye = torch.eye(n_layers * n_heads, dtype=torch.bool)
    rows = [Intervention(ablate=everything)] + [Intervention(ablate=m.view(n_layers, n_heads)) for m in eye]
    ys = target_values(engine.run(prompt, rows, baseline=baseline).logits, job.answer_id, params.target)
    clean = target_values(prompt.clean_logits[None], job.answer_id, params.target)
    return torch.cat([clean, ys]).cpu().numpy()


def _curve_row(engine: InterventionEngine, ctx: _ValidationContext, job: _ImageJob, own_order: np.ndarray,
               prompt: PreparedPrompt | None = None) -> np.ndarray:
    """Pass B row: targets, then correctness, of every (ranking, completeness/faithfulness, k) ablation."""
    lm, params = engine.lm, ctx.params
    prompt = prompt if prompt is not None else engine.prepare(job.image, params.question)
    baseline = _image_baseline(engine, prompt, ctx.baseline, params, job.partner)
    n_layers, n_heads = lm.n_layers, lm.n_heads
    n = n_layers * n_heads
    rankings = {**ctx.orders, "attribution_per_image": own_order}
    rows = []
    for name in RANKINGS:
        for keep_top in (True, False):
            for k in ctx.grid:
                top = np.zeros(n, dtype=bool)
                top[rankings[name][:k]] = True
                ablate = top if keep_top else ~top
                rows.append(Intervention(ablate=torch.from_numpy(ablate).view(n_layers, n_heads)))
    logits = engine.run(prompt, rows, baseline=baseline).logits
    ys = target_values(logits, job.answer_id, params.target).cpu().numpy()
    correct = (logits.argmax(-1) == job.answer_id).float().cpu().numpy()
    return np.concatenate([ys, correct])


# -- [ray] Ray workers (headflow.distributed.RayRunner) ---------------------------------------------

def _setup_validation_worker(context: _ValidationContext, device: str):
    lm = load_model(context.spec, device=device, dtype=context.dtype)
    # (arrays from Ray's object store are read-only; torch wants writable ones)
    orders = None if context.orders is None else {k: np.array(v) for k, v in context.orders.items()}
    return InterventionEngine(lm, batch_size=context.batch_size), replace(
        context, baseline=_baseline_to(context.baseline, lm.device), orders=orders)


def _run_single(state, item) -> np.ndarray:
    (engine, ctx), (job, extra) = state, item
    return _single_row(engine, ctx, job, extra, prompt=_checked_prompt(engine, ctx, job))


def _run_curve(state, item) -> np.ndarray:
    (engine, ctx), (job, own_order) = state, item
    return _curve_row(engine, ctx, job, np.array(own_order), prompt=_checked_prompt(engine, ctx, job))


def _dataset_of(spec: dict):
    from ..data import load_dataset

    data = spec["data"]
    try:
        return load_dataset(data, n=spec["n_images"], seed=spec.get("data_seed", 0))
    except ValueError as exc:
        raise HeadflowError(f"Cannot reload the run's data {data!r}: {exc} Pass the dataset explicitly.") from None
