"""Head attribution (METHOD.md F3/F4): random head ablations → linear fit → per-head attribution.

``HeadAttribution(model, ...).run(dataset, out)`` writes a resumable run directory:

===========================  =====================================================================
``config.json``              spec (model, data, parameters) + hash, versions
``images.parquet``           per image: id, label, factors, answer token, clean target, correct, used
``baseline.safetensors``     the baseline keys/values (mean / blank) per layer
``masks.npy``/``val_masks``  Bernoulli(α) ablation masks ``[mask, head]`` shared by all images
``targets.npy`` (+ .done)    target per used image and mask ``[image, mask + val_mask]``
``attention.npy``            clean final-token attention mass on image positions ``[image, layer, head]``
``final_hidden.npy``         clean final-token hidden state ``[image, hidden]`` (a control for probes)
``pixels.npy``               8×8 RGB thumbnails ``[image, 192]`` (a control for probes)
``attributions.npy``         ``a = −w`` per used image ``[image, layer, head]``
``summary.json``             headline numbers
===========================  =====================================================================
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import __version__
from ..data.base import Dataset, Example
from ..errors import HeadflowError
from ..intervene import Baseline, Intervention, InterventionEngine, PreparedPrompt
from ..intervene.attention import LayerBaseline
from ..models.loading import LoadedModel, load_model
from ..store import RowStore, ensure_config, read_json, save_npy, save_parquet, write_json
from .answers import resolve_answer_id, target_values
from .fit import datamodeling_scores, design_rank, fit_linear, predict
from .params import AttributionParams, validate_params

if TYPE_CHECKING:
    from ..distributed import RayRunner


def sample_masks(n: int, n_heads: int, prob: float, seed: int) -> np.ndarray:
    """Seeded i.i.d. Bernoulli(``prob``) ablation masks ``[n, n_heads]`` (True = ablated)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, n_heads, generator=gen) < prob).numpy()


def mask_rows(masks: np.ndarray, n_layers: int, n_heads: int) -> list[Intervention]:
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).view(-1, n_layers, n_heads)
    return [Intervention(ablate=m) for m in tensor]


class HeadAttribution:
    """Per-head attribution of the answer to the image→text flow (arXiv 2509.17588, METHOD.md F3/F4).

    Parameters
    ----------
    model : LoadedModel or spec accepted by :func:`headflow.load_model`
    n_masks : int, optional
        Training masks; default ``max(512, 4·N)`` for ``N`` heads.
    ablation_prob : float
        Bernoulli probability α that a head is ablated in a mask (default 0.1).
    baseline : {"mean", "zero", "blank", "resample", "knockout"}
    target : {"logit", "logprob", "margin", "prob"}
    fit : {"ols", "ridge", "lasso"}
    n_val : int
        Held-out masks for the linear datamodeling score (LDS).
    seed : int
    keep_wrong : bool
        Keep images the clean model answers wrongly (dropped by default).
    batch_size : int
        Mask rows per forward pass.

    Examples
    --------
    >>> from headflow.data import load_dataset
    >>> result = HeadAttribution("tiny:llava", n_masks=32, n_val=16, keep_wrong=True).run(
    ...     load_dataset("default", n=2), out=tmp_path / "run")  # doctest: +SKIP
    """

    owner = "HeadAttribution"

    def __init__(self, model: LoadedModel | str, *, n_masks: int | None = None, ablation_prob: float = 0.1,
                 baseline: str = "mean", target: str = "logit", fit: str = "ols", fit_alpha: float = 1.0,
                 n_val: int = 256, seed: int = 0, keep_wrong: bool = False, question: str | None = None,
                 batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.params = dict(n_masks=n_masks, ablation_prob=ablation_prob, baseline=baseline, target=target, fit=fit,
                           fit_alpha=fit_alpha, n_val=n_val, seed=seed, keep_wrong=keep_wrong)
        if question is not None:
            self.params["question"] = question

    # -- public ----------------------------------------------------------------------------
    def run(self, dataset: Dataset | Sequence[Example], out: str | Path, *, data_spec: str | None = None,
            data_seed: int = 0, runner: "RayRunner | None" = None) -> "AttributionResult":
        """Run (or resume) the attribution and return its result; ``out`` is the run directory.

        With ``runner`` (a :class:`headflow.distributed.RayRunner`), the masked runs (pass 2) are
        sharded over Ray workers, each loading the model from its spec; this process still does the
        clean runs, writes every row and fits. Results are the same as without a runner.
        """
        params = validate_params(self.owner, **self.params)
        worker_model = _worker_model(self.model) if runner is not None else None  # [ray] fail before any work
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise HeadflowError(f"The 'batch_size' parameter of {self.owner} must be an int in [1, inf). "
                                f"Got {self.batch_size!r} instead.")
        if len(dataset) == 0:
            raise HeadflowError("The dataset is empty; pass at least one image.")
        lm = load_model(self.model)
        out = Path(out)
        n_heads = lm.n_layers * lm.n_heads
        n_masks = params.n_masks or max(512, 4 * n_heads)
        _check_memory(n_masks + params.n_val, n_heads, len(dataset))
        spec = {"method": "HeadAttribution", "model": lm.name, "model_class": type(lm.model).__name__,
                "data": data_spec or getattr(dataset, "name", "custom"), "data_seed": data_seed,
                "n_images": len(dataset),
                "image_ids": [ex.id for ex in _iter(dataset)] if len(dataset) <= 4096 else None,
                **params.model_dump(), "n_masks": n_masks}
        config = ensure_config(out, spec, {"resolved": {"n_masks": n_masks, "n_heads": n_heads,
                                                        "n_layers": lm.n_layers, "heads_per_layer": lm.n_heads},
                                           "model": lm.describe(), "versions": _versions()})
        engine = InterventionEngine(lm, batch_size=self.batch_size)
        table, baseline = self._clean_pass(engine, dataset, params, out)
        masks = sample_masks(n_masks, n_heads, params.ablation_prob, params.seed)
        val_masks = sample_masks(params.n_val, n_heads, params.ablation_prob, params.seed + 1_000_003)
        save_npy(out / "masks.npy", masks)
        save_npy(out / "val_masks.npy", val_masks)
        used = table.index[table["used"]].tolist()
        if not used:
            raise HeadflowError("No image is answered correctly by the clean model, so none is left to analyse; "
                                "pass keep_wrong=True (--keep-wrong) to keep them.")
        store = RowStore(out, "targets", len(used), n_masks + params.n_val)
        all_masks = np.vstack([masks, val_masks])
        todo = [(row, idx) for row, idx in enumerate(used) if not store.done[row]]
        bar = tqdm(total=len(todo), desc="attribution: masks per image", unit="image", disable=not todo)

        def write(row: int, values: np.ndarray) -> None:
            store.write(row, values)
            bar.update()

        if runner is not None:  # [ray] pass 2 on Ray workers; this process stays the only writer
            context = _WorkerContext(*worker_model, self.batch_size, params, _baseline_to(baseline, "cpu"),
                                     all_masks)
            jobs = ((row, _image_job(dataset, table, idx, params)) for row, idx in todo)
            runner.map(_setup_worker, _run_worker, jobs, n_items=len(todo), context=context, on_result=write)
        else:
            for row, idx in todo:
                write(row, _image_targets(engine, _image_job(dataset, table, idx, params), baseline, all_masks,
                                          params))
        bar.close()
        problems = dict(getattr(dataset, "problems", {}) or {})
        return self._fit(out, config, table, store, masks, val_masks, params, lm, problems)

    # -- pass 1: clean runs ------------------------------------------------------------------
    def _clean_pass(self, engine: InterventionEngine, dataset, params: AttributionParams,
                    out: Path) -> tuple[pd.DataFrame, Baseline | None]:
        table_path = out / "images.parquet"
        if table_path.exists():
            table = pd.read_parquet(table_path)
            return table, _load_baseline(out / "baseline.safetensors")
        lm = engine.lm
        tokenizer = getattr(lm.processor, "tokenizer", lm.processor)
        records, attention, hidden, pixels = [], [], [], []
        kv_sum: list[LayerBaseline] | None = None
        mean_colour = np.zeros(3)
        for idx, ex in enumerate(tqdm(_iter(dataset), total=len(dataset), desc="attribution: clean runs",
                                      unit="image")):
            prompt = engine.prepare(ex.image, params.question)
            answer_id = resolve_answer_id(tokenizer, ex.label, prompt.clean_logits)
            predicted = int(prompt.clean_logits.argmax())
            clean = float(target_values(prompt.clean_logits[None], answer_id, params.target)[0])
            correct = predicted == answer_id
            records.append({"id": ex.id, "label": ex.label, **{f"factor_{k}": v for k, v in ex.factors.items()},
                            "answer_id": answer_id, "answer_token": tokenizer.convert_ids_to_tokens(answer_id),
                            "predicted_token": tokenizer.convert_ids_to_tokens(predicted),
                            "clean_target": clean, "clean_logit": float(prompt.clean_logits[answer_id]),
                            "correct": correct, "used": bool(correct or params.keep_wrong)})
            rgb = np.asarray(ex.image.convert("RGB"), dtype=np.float64)
            mean_colour += rgb.reshape(-1, 3).mean(0) / len(dataset)
            if records[-1]["used"]:
                attention.append(prompt.image_attention.numpy())
                hidden.append(prompt.final_hidden.numpy())
                pixels.append(np.asarray(ex.image.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32).ravel()
                              / 255.0)
            if params.baseline == "mean":
                kv_sum = _accumulate(kv_sum, prompt.image_kv(), len(dataset))
        baseline: Baseline | None = None
        if params.baseline == "mean":
            baseline = Baseline("mean", kv_sum)
        elif params.baseline == "blank":
            size = dataset[0].image.size
            blank = Image.new("RGB", size, tuple(int(round(c)) for c in mean_colour))
            baseline = Baseline.of_prompt(engine.prepare(blank, params.question), kind="blank")
        if baseline is not None:
            _save_baseline(out / "baseline.safetensors", baseline)
        n_used = sum(r["used"] for r in records)
        shape = (lm.n_layers, lm.n_heads)
        save_npy(out / "attention.npy", np.stack(attention) if attention else np.zeros((0, *shape), np.float32))
        save_npy(out / "final_hidden.npy", np.stack(hidden) if hidden else np.zeros((0, 1), np.float32))
        save_npy(out / "pixels.npy", np.stack(pixels) if pixels else np.zeros((0, 192), np.float32))
        table = pd.DataFrame.from_records(records)
        save_parquet(table_path, table)  # written last: marks the clean pass complete
        del n_used
        return table, baseline

    def _baseline_for(self, engine, dataset, table: pd.DataFrame, idx: int, prompt: PreparedPrompt,
                      shared: Baseline | None, params: AttributionParams) -> Baseline:
        partner = dataset[_resample_partner(table, idx)].image if params.baseline == "resample" else None
        return _image_baseline(engine, prompt, shared, params, partner)

    # -- fit -------------------------------------------------------------------------------
    def _fit(self, out: Path, config: dict, table: pd.DataFrame, store: RowStore, masks: np.ndarray,
             val_masks: np.ndarray, params: AttributionParams, lm: LoadedModel,
             problems: dict[str, int]) -> "AttributionResult":
        n_masks = len(masks)
        targets = np.asarray(store.data)
        train, val = targets[:, :n_masks].T, targets[:, n_masks:].T
        bias, weights = fit_linear(masks, train, params.fit, params.fit_alpha)
        pearson, spearman = datamodeling_scores(predict(bias, weights, val_masks), val)
        attributions = (-weights).reshape(-1, lm.n_layers, lm.n_heads).astype(np.float32)
        save_npy(out / "attributions.npy", attributions)
        save_npy(out / "fit_bias.npy", bias.astype(np.float32))
        used = table[table["used"]].copy()
        used["lds_pearson"], used["lds_spearman"] = pearson, spearman
        save_parquet(out / "lds.parquet", used[["id", "label", "lds_pearson", "lds_spearman"]])
        mean = attributions.mean(0)
        order = np.argsort(-mean.ravel())[:20]
        summary = {
            "n_heads": int(mean.size), "n_layers": lm.n_layers, "heads_per_layer": lm.n_heads,
            "n_images": int(len(used)), "n_images_total": int(len(table)), "n_masks": int(n_masks),
            "n_val": int(len(val_masks)), "ablation_prob": params.ablation_prob, "baseline": params.baseline,
            "target": params.target, "fit": params.fit,
            "clean_accuracy": float(table["correct"].mean()),
            "design_rank": design_rank(masks), "design_full_rank": design_rank(masks) == masks.shape[1] + 1,
            "lds_pearson_median": _nanmedian(pearson), "lds_spearman_median": _nanmedian(spearman),
            "lds_pearson_quartiles": _quartiles(pearson), "lds_spearman_quartiles": _quartiles(spearman),
            "top_heads": [[int(i // lm.n_heads), int(i % lm.n_heads), float(mean.ravel()[i])] for i in order],
            "data_problems": problems, "n_data_problems": int(sum(problems.values())),
            "spec_hash": config["spec_hash"],
        }
        write_json(out / "summary.json", summary)
        return AttributionResult.load(out)


@dataclass(frozen=True)
class AttributionResult:
    """A finished attribution run, read from its directory.

    Attributes
    ----------
    attributions : Float[ndarray, "image layer head"]
        ``a = −w``: the target lost when the head is ablated, per used image.
    images : DataFrame
        Per-image table (all images; ``used`` marks the rows of ``attributions``).
    summary, config : dict
    """

    run_dir: Path
    attributions: np.ndarray
    images: pd.DataFrame
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def mean_attribution(self) -> np.ndarray:
        """Mean over images, ``[layer, head]``."""
        return self.attributions.mean(0)

    @property
    def used_images(self) -> pd.DataFrame:
        return self.images[self.images["used"]].reset_index(drop=True)

    @classmethod
    def load(cls, run_dir: str | Path) -> "AttributionResult":
        run_dir = Path(run_dir)
        if not (run_dir / "summary.json").exists():
            raise HeadflowError(f"{run_dir} is not a finished attribution run (no summary.json); run "
                                "'headflow attribute' with --out pointing there first.")
        return cls(run_dir, np.load(run_dir / "attributions.npy"), pd.read_parquet(run_dir / "images.parquet"),
                   read_json(run_dir / "summary.json"), read_json(run_dir / "config.json"))

    def save(self, run_dir: str | Path) -> None:
        """Copy the result's files to another directory."""
        import shutil

        shutil.copytree(self.run_dir, run_dir, dirs_exist_ok=True)

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        order = np.argsort(-self.mean_attribution.ravel())[:k]
        n_heads = self.attributions.shape[2]
        return [(int(i // n_heads), int(i % n_heads)) for i in order]

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        from .plots import plot_attribution

        return plot_attribution(self, Path(figures_dir) if figures_dir else self.run_dir / "figures")


# -- pass 2, per image: shared by the single-process loop and the Ray workers ---------------------

@dataclass(frozen=True)
class _ImageJob:
    """What one masked-runs row needs: the image, its resample partner (or None) and its answer."""

    image: Image.Image
    partner: Image.Image | None
    answer_id: int
    clean_logit: float


def _image_job(dataset, table: pd.DataFrame, idx: int, params: AttributionParams) -> _ImageJob:
    partner = dataset[_resample_partner(table, idx)].image if params.baseline == "resample" else None
    return _ImageJob(dataset[idx].image, partner, int(table.at[idx, "answer_id"]), float(table.at[idx, "clean_logit"]))


def _resample_partner(table: pd.DataFrame, idx: int) -> int:
    """The next image (cyclically) of a different class: the deterministic 'resample' baseline source."""
    labels = table["label"].tolist()
    n = len(labels)
    for step in range(1, n):
        other = (idx + step) % n
        if labels[other] != labels[idx]:
            return other
    raise HeadflowError("The 'resample' baseline needs images of at least two classes.")


def _image_baseline(engine, prompt: PreparedPrompt, shared: Baseline | None, params: AttributionParams,
                    partner: Image.Image | None) -> Baseline:
    if params.baseline in ("mean", "blank"):
        return shared
    if params.baseline == "knockout":
        return Baseline.knockout()
    if params.baseline == "zero":
        return Baseline.zero(prompt)
    return Baseline.of_prompt(engine.prepare(partner, params.question), kind="resample")


def _image_targets(engine: InterventionEngine, job: _ImageJob, shared: Baseline | None, all_masks: np.ndarray,
                   params: AttributionParams, prompt: PreparedPrompt | None = None) -> np.ndarray:
    """Targets of one image under every mask, ``[n_masks + n_val]`` float32."""
    lm = engine.lm
    prompt = prompt if prompt is not None else engine.prepare(job.image, params.question)
    baseline = _image_baseline(engine, prompt, shared, params, job.partner)
    logits = engine.run(prompt, mask_rows(all_masks, lm.n_layers, lm.n_heads), baseline=baseline).logits
    return target_values(logits, job.answer_id, params.target).cpu().numpy()


# -- [ray] Ray workers (headflow.distributed.RayRunner) ---------------------------------------------

@dataclass(frozen=True)
class _WorkerContext:
    """Everything a worker needs, put once into Ray's object store."""

    spec: str
    dtype: str | None
    batch_size: int | str
    params: AttributionParams
    baseline: Baseline | None
    all_masks: np.ndarray


def _worker_model(model) -> tuple[str, str | None]:
    """The spec (and dtype) a Ray worker loads the model from; a model built in Python cannot be shipped."""
    if isinstance(model, (str, Path)):
        return str(model), None
    name = getattr(model, "name", None) if isinstance(model, LoadedModel) else None
    if name and (name == "default" or name.startswith("tiny:") or Path(name).is_dir()
                 or (name.count("/") == 1 and not name.startswith(("/", ".")))):
        return name, str(model.dtype).replace("torch.", "")
    got = f"a LoadedModel named {name!r}" if name else f"a {type(model).__name__}"
    raise HeadflowError(
        f"With a Ray runner each worker loads the model from its spec, but the model is {got}, which cannot be "
        "shipped to workers. Pass a spec instead: 'default', 'tiny:<family>', a local directory or a hub id.")


def _setup_worker(context: _WorkerContext, device: str) -> tuple[InterventionEngine, _WorkerContext]:
    lm = load_model(context.spec, device=device, dtype=context.dtype)
    # (arrays from Ray's object store are read-only; torch wants writable ones)
    context = replace(context, baseline=_baseline_to(context.baseline, lm.device),
                      all_masks=np.array(context.all_masks))
    return InterventionEngine(lm, batch_size=context.batch_size), context


def _baseline_to(baseline: Baseline | None, device) -> Baseline | None:
    if baseline is None or baseline.layers is None:
        return baseline
    return Baseline(baseline.kind, [LayerBaseline(b.keys.to(device), b.values.to(device)) for b in baseline.layers])


def _checked_prompt(engine: InterventionEngine, ctx, job: _ImageJob) -> PreparedPrompt:
    """Prepare a worker's image and check its clean logit against the run's record (same model?)."""
    prompt = engine.prepare(job.image, ctx.params.question)
    got = float(prompt.clean_logits[job.answer_id])
    if not np.isclose(got, job.clean_logit, rtol=1e-2, atol=1e-2):
        raise HeadflowError(
            f"The Ray worker's model ({ctx.spec!r}) gives a clean logit of {got:.4f} where this run recorded "
            f"{job.clean_logit:.4f}; the worker loaded a different model. Pass the run's model spec.")
    return prompt


def _run_worker(state: tuple[InterventionEngine, _WorkerContext], job: _ImageJob) -> np.ndarray:
    engine, ctx = state
    prompt = _checked_prompt(engine, ctx, job)
    return _image_targets(engine, job, ctx.baseline, ctx.all_masks, ctx.params, prompt=prompt)


# -- helpers -------------------------------------------------------------------------------------

def _iter(dataset):
    for i in range(len(dataset)):
        yield dataset[i]


def _accumulate(total: list[LayerBaseline] | None, kv: list[LayerBaseline], n: int) -> list[LayerBaseline]:
    """Running mean of image keys/values (per-head mean over positions when counts differ)."""
    if total is not None and total[0].keys.shape[1] != kv[0].keys.shape[1]:
        kv = [LayerBaseline(b.keys.mean(1, keepdim=True), b.values.mean(1, keepdim=True)) for b in kv]
        total = [LayerBaseline(t.keys.mean(1, keepdim=True), t.values.mean(1, keepdim=True)) for t in total]
    if total is None:
        return [LayerBaseline(b.keys.float() / n, b.values.float() / n) for b in kv]
    return [LayerBaseline(t.keys + b.keys.float() / n, t.values + b.values.float() / n) for t, b in zip(total, kv)]


def _save_baseline(path: Path, baseline: Baseline) -> None:
    tensors = {}
    for i, layer in enumerate(baseline.layers):
        tensors[f"keys.{i}"] = layer.keys.contiguous().cpu()
        tensors[f"values.{i}"] = layer.values.contiguous().cpu()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"kind": baseline.kind})
    tmp.replace(path)


def _load_baseline(path: Path) -> Baseline | None:
    if not path.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        kind = f.metadata().get("kind", "mean")
    tensors = load_file(str(path))
    n = len([k for k in tensors if k.startswith("keys.")])
    return Baseline(kind, [LayerBaseline(tensors[f"keys.{i}"], tensors[f"values.{i}"]) for i in range(n)])


def _check_memory(n_rows: int, n_heads: int, n_images: int) -> None:
    """Refuse, before touching the run directory, a design whose fit would not fit in memory."""
    import os

    needed = 8 * (n_rows * (n_heads + 1) + n_rows * n_images) * 3  # float64 design and targets, with working copies
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return
    if needed > available:
        raise HeadflowError(f"{n_rows} masks x {n_heads} heads x {n_images} images needs about {needed / 2**30:.1f} GiB "
                            f"for the fit but {available / 2**30:.1f} GiB is free; use fewer --masks or --images.")


def _versions() -> dict[str, str]:
    import transformers

    return {"headflow": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _nanmedian(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def _quartiles(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.nanpercentile(x, [25, 50, 75])] if np.isfinite(x).any() else []
