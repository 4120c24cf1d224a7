"""Validation of an attribution run (docs/method.md F5): rankings, completeness and faithfulness curves.

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
import torch

from ..errors import HeadflowError
from ..executor import map_images
from ..intervene import Baseline, Intervention, InterventionEngine
from ..method import Method, Result, check_memory, provenance
from ..models.loading import LoadedModel, load_model
from ..per_image import (ImageJob, baseline_to, checked_prompt, clean_target, engine_memory, image_baseline, image_job,
                         image_targets, load_baseline, rows_correct, worker_engine, worker_spec)
from ..store import RowStore, ensure_config, load_npy, read_json, run_lock, save_npy, write_json
from .core import AttributionResult, rebuild_hint
from .params import AttributionParams, ValidationParams

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
class ValidationResult(Result):
    """``validation.json`` of a run: per ranking the curves and their summaries."""

    run_dir: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, run_dir: str | Path) -> "ValidationResult":
        path = Path(run_dir) / "validation.json"
        if not path.exists():
            raise HeadflowError(f"{run_dir} has no validation.json; run 'headflow validate {run_dir}' first.")
        return cls(Path(run_dir), read_json(path, rebuild_hint=f"headflow validate {run_dir}"))

    def save(self, out: str | Path) -> Path:
        """Write ``validation.json`` into ``out`` (atomically); returns its path."""
        write_json(Path(out) / "validation.json", self.data)
        return Path(out) / "validation.json"

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        from .validate_plots import plot_validation

        return plot_validation(self, Path(figures_dir) if figures_dir else self.run_dir / "figures")


class Validation(Method):
    """Check an attribution run against single-head ablation, attention weight and random rankings.

    ``Validation(model=None, **params).run(RUN_DIR)``: ``model`` defaults to the run's own model; the
    parameters and their defaults are :class:`~headflow.attribution.params.ValidationParams` (``k_grid``,
    ``seed`` of the random ranking, ``max_images``, ``batch_size``). The run's masks, baseline, target and
    question are the attribution run's. Results go into the run directory (``validation.json``,
    ``single_head.npy``, ``validation/`` with its configuration and resumable rows, ``figures/``).
    """

    Params = ValidationParams
    stage = "validation"

    def run(self, data: "str | Path | AttributionResult", *, out: str | Path | None = None,
            runner: "RayRunner | None" = None, dataset=None) -> ValidationResult:
        """Validate the attribution run ``data`` (its directory or result); resumable.

        ``out`` must be the run directory (the default): validation reads and writes next to the run's
        arrays. ``dataset``: the run's images, when they cannot be reloaded from the run's record. With
        ``runner`` (a :class:`headflow.distributed.RayRunner`), both per-image passes (single-head ablations,
        then the curves) are sharded over Ray workers; this process writes every row.
        """
        params = self.check()
        result = data if isinstance(data, AttributionResult) else AttributionResult.load(data)
        run_dir = result.run_dir
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise HeadflowError(f"Validation writes into the attribution run directory {run_dir}; got out={out}. "
                                "Leave out unset (or copy the run first with AttributionResult.save).")
        with run_lock(run_dir):  # one writer per run directory
            return self._run(params, result, runner, dataset)

    def _run(self, params: ValidationParams, result: AttributionResult, runner, dataset) -> ValidationResult:
        run_dir = result.run_dir
        hint = f"headflow validate {run_dir} (after: rm -r {run_dir / 'validation'})"
        spec = result.config["spec"]
        model = self.model if self.model is not None else spec["model"]
        spec_for_workers = worker_spec(model) if runner is not None else None  # [ray] fail before any work
        run_params = AttributionParams(**{k: spec[k] for k in AttributionParams.model_fields if k in spec})
        lm = load_model(model)
        n_layers, n_heads = result.attributions.shape[1:]
        if (lm.n_layers, lm.n_heads) != (n_layers, n_heads):
            raise HeadflowError(f"The model has {lm.n_layers}x{lm.n_heads} heads but the run has {n_layers}x{n_heads}; "
                                "pass the run's own model.")
        n = n_layers * n_heads
        grid = list(params.k_grid or default_k_grid(n))
        used = result.images.index[result.images["used"]].tolist()[: params.max_images]
        resolved = {"k_grid": grid, "n_images": len(used)}
        if used and not (run_dir / "validation.json").exists():  # before anything is written
            dataset = dataset if dataset is not None else dataset_of(spec)
            _check_memory(lm, params, run_params.question, dataset[used[0]].image, len(used), n, grid)
        config = ensure_config(self.config_dir(run_dir), {"method": "Validation", "run": result.config["spec_hash"],
                                                          **params.spec()},
                               {"params": params.model_dump(mode="json"), "resolved": resolved}, rebuild_hint=hint)
        if (run_dir / "validation.json").exists():
            return ValidationResult.load(run_dir)  # finished with this configuration
        dataset = dataset if dataset is not None else dataset_of(spec)
        engine = InterventionEngine(lm, batch_size=params.batch_size)
        if used:  # the run's own model? (checked again on every image; this first check fails before any work)
            first = image_job(dataset, result.images, used[0], run_params.baseline)
            checked_prompt(engine, lm.name, run_params.question, first)
        shared = load_baseline(run_dir / "baseline.safetensors", rebuild_hint=rebuild_hint(run_dir))
        context = _ValidationContext(*(spec_for_workers or (None, None)), params.batch_size, run_params,
                                     baseline_to(shared, "cpu") if runner is not None else shared)

        def jobs(store: RowStore, extra=lambda row: None):
            todo = [(row, idx) for row, idx in enumerate(used) if not store.done[row]]
            return len(todo), ((row, (image_job(dataset, result.images, idx, run_params.baseline), extra(row)))
                               for row, idx in todo)

        def fill(store: RowStore, fn, ctx, desc: str, extra=lambda row: None) -> None:
            n_todo, items = jobs(store, extra)
            map_images(fn, items, n_items=n_todo, on_result=store.write, local_state=(engine, ctx),
                       setup=_setup_validation_worker, context=ctx, runner=runner, desc=desc)

        # pass A: clean, all-ablated and single-head targets
        single_store = RowStore(run_dir / "validation", "single", len(used), n + 2, rebuild_hint=hint)
        fill(single_store, _single_row, context, "validate: single heads")
        single = np.asarray(single_store.data)
        y_clean, y_all, y_single = single[:, 0], single[:, 1], single[:, 2:]
        single_effect = y_clean[:, None] - y_single
        save_npy(run_dir / "single_head.npy", single_effect.reshape(-1, n_layers, n_heads).astype(np.float32))

        attention = load_npy(run_dir / "attention.npy", rebuild_hint=rebuild_hint(run_dir)).reshape(-1, n)[: len(used)]
        orders = {
            "attribution": np.argsort(-result.mean_attribution.ravel(), kind="stable"),
            # (the ranking always uses the mean over all attributed images)
            "single_head": np.argsort(-single_effect.mean(0), kind="stable"),
            "attention": np.argsort(-attention.mean(0), kind="stable"),
            "random": np.random.default_rng(params.seed).permutation(n),
        }
        per_image = result.attributions.reshape(-1, n)[: len(used)]

        # pass B: curves (needs pass A's single-head ranking)
        n_cols = len(RANKINGS) * len(grid) * 2
        curve_store = RowStore(run_dir / "validation", "curves", len(used), n_cols * 2, rebuild_hint=hint)
        fill(curve_store, _curve_row, replace(context, orders=orders, grid=grid), "validate: curves",
             lambda row: np.argsort(-per_image[row], kind="stable"))
        resolved["batch_size"] = engine.batch_size
        data_out = self._summarise(np.asarray(curve_store.data), y_clean, y_all, grid, n, run_params, result)
        data_out["provenance"] = provenance("Validation", params=params.model_dump(mode="json"), resolved=resolved,
                                            model=lm.describe(), data=spec.get("data"),
                                            spec_hash=config["spec_hash"])
        out_result = ValidationResult(run_dir, data_out)
        out_result.plot()  # before validation.json, which marks the validation finished (figures included)
        out_result.save(run_dir)
        return out_result

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
            "k_grid": grid, "n_heads_total": n, "n_images": int(len(y_clean)), "target": params.target,
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


def _check_memory(lm: LoadedModel, params: ValidationParams, question: str, image, n_images: int, n_heads: int,
                  grid: list[int]) -> None:
    """Refuse, before anything is written, a validation whose per-image engine state (the prompt of the first
    image, encoded) or result rows (``single`` and ``curves``, float32, with working copies) do not fit in memory."""
    _, groups = lm.encode(image, question)
    rows = max(n_heads + 1, 2 * len(RANKINGS) * len(grid))  # pass A: all + single heads; pass B: the curves
    results = 3 * 4 * n_images * ((n_heads + 2) + 4 * len(RANKINGS) * len(grid))
    check_memory(engine_memory(lm, groups.length, params.batch_size, rows) + results,
                 f"The validation of {n_images} images ({rows} rows of {groups.length} tokens per image, batch size "
                 f"{params.batch_size})", "use a smaller --batch-size or fewer --max-images")


# -- per image: the same functions here and on Ray workers ----------------------------------------

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


def _prepared(engine: InterventionEngine, ctx: _ValidationContext, job: ImageJob):
    """The prompt (checked against the run's record on a worker) and its baseline."""
    params = ctx.params
    prompt = checked_prompt(engine, ctx.spec or engine.lm.name, params.question, job)  # the run's own model?
    return prompt, image_baseline(engine, prompt, ctx.baseline, params.baseline, params.question, job.partner)


def _single_row(state: tuple[InterventionEngine, _ValidationContext], item: tuple[ImageJob, None]) -> np.ndarray:
    """Pass A row: ``[y_clean, y_all_ablated, y_without_head_0, …]``, ``n_heads + 2`` float32."""
    (engine, ctx), (job, _) = state, item
    prompt, baseline = _prepared(engine, ctx, job)
    n_layers, n_heads = engine.lm.n_layers, engine.lm.n_heads
    everything = torch.ones(n_layers, n_heads, dtype=torch.bool)
    eye = torch.eye(n_layers * n_heads, dtype=torch.bool)
    rows = [Intervention(ablate=everything)] + [Intervention(ablate=m.view(n_layers, n_heads)) for m in eye]
    ys, _ = image_targets(engine, prompt, rows, baseline, job.answer_ids, ctx.params.target)
    clean = clean_target(engine, prompt, job.answer_ids, ctx.params.target)
    return np.concatenate([[clean], ys.cpu().numpy()]).astype(np.float32)


def _curve_row(state: tuple[InterventionEngine, _ValidationContext], item: tuple[ImageJob, np.ndarray]) -> np.ndarray:
    """Pass B row: targets, then correctness, of every (ranking, completeness/faithfulness, k) ablation."""
    (engine, ctx), (job, own_order) = state, item
    prompt, baseline = _prepared(engine, ctx, job)
    n_layers, n_heads = engine.lm.n_layers, engine.lm.n_heads
    n = n_layers * n_heads
    rankings = {**ctx.orders, "attribution_per_image": np.array(own_order)}
    rows = []
    for name in RANKINGS:
        for keep_top in (True, False):
            for k in ctx.grid:
                top = np.zeros(n, dtype=bool)
                top[rankings[name][:k]] = True
                ablate = top if keep_top else ~top
                rows.append(Intervention(ablate=torch.from_numpy(ablate).view(n_layers, n_heads)))
    ys, out = image_targets(engine, prompt, rows, baseline, job.answer_ids, ctx.params.target, check_answer=True)
    answers = engine.lm.answers(ctx.params.question, aliases=ctx.params.aliases)
    correct = rows_correct(out, job.answer_ids, answers).astype(np.float32)  # the whole answer word, per row
    return np.concatenate([ys.cpu().numpy(), correct])


def _setup_validation_worker(context: _ValidationContext, device: str):
    """[ray] A worker's state (arrays from Ray's object store are read-only; torch wants writable ones)."""
    engine = worker_engine(context.spec, context.dtype, device, context.batch_size)
    orders = None if context.orders is None else {k: np.array(v) for k, v in context.orders.items()}
    return engine, replace(context, baseline=baseline_to(context.baseline, engine.lm.device), orders=orders)


def dataset_of(spec: dict):
    """Reload a run's images from its recorded data (``load_dataset``'s arguments, options included)."""
    from ..data import load_dataset

    data = spec["data"]
    args = dict(data) if isinstance(data, dict) else {"spec": data, "n": spec["n_images"],
                                                       "seed": spec.get("data_seed", 0)}
    if "spec" not in args or args["spec"] == "custom":
        raise HeadflowError("The run's data was passed in Python and cannot be reloaded; pass dataset= to run().")
    try:
        return load_dataset(**args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise HeadflowError(f"Cannot reload the run's data {args['spec']!r}: {exc} Pass the dataset explicitly.") \
            from None
