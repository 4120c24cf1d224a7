"""Head attribution (docs/method.md F3/F4): random head ablations → linear fit → per-head attribution.

``HeadAttribution(model, **params).run(dataset, out=RUN_DIR)`` writes a resumable run directory:

===========================  =====================================================================
``config.json``              spec (model, data, parameters) + hash, versions
``images.parquet``           per image: id, label, factors, answer token, clean target, correct, used
``baseline.safetensors``     the baseline keys/values (mean / blank) per layer
``masks.npy``/``val_masks``  Bernoulli(ablation_prob) masks ``[mask, head]`` shared by all images
``targets.npy`` (+ .done)    target per used image and mask ``[image, mask + val_mask]``
``attention.npy``            clean final-token attention mass on image positions ``[image, layer, head]``
``final_hidden.npy``         clean final-token hidden state ``[image, hidden]`` (a control for probes)
``pixels.npy``               8×8 RGB thumbnails ``[image, 192]`` (a control for probes)
``attributions.npy``         ``a = −w`` per used image ``[image, layer, head]``
``summary.json``             headline numbers
===========================  =====================================================================
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import Dataset, Example
from ..errors import HeadflowError
from ..executor import map_images
from ..intervene import Baseline, InterventionEngine
from ..intervene.attention import LayerBaseline
from ..method import Method, Result, check_memory, provenance, versions
from ..models.loading import LoadedModel, load_model
from ..per_image import (ImageJob, accumulate_kv, answer_correct, baseline_to, checked_prompt, clean_target, data_record,
                         dataset_labels, image_baseline, image_job, image_targets, check_labels, load_baseline, mask_rows, save_baseline,
                         worker_engine, worker_spec)
from ..store import (RowStore, ensure_config, load_npy, read_json, read_parquet, run_lock, save_npy, save_parquet,
                     write_json)
from .fit import datamodeling_scores, design_rank, fit_linear, predict
from .params import AttributionParams, HeadParams

if TYPE_CHECKING:
    from ..distributed import RayRunner


def sample_masks(n: int, n_heads: int, prob: float, seed: int) -> np.ndarray:
    """Seeded i.i.d. Bernoulli(``prob``) ablation masks ``[n, n_heads]`` (True = ablated)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, n_heads, generator=gen) < prob).numpy()


class HeadAttribution(Method):
    """Per-head attribution of the answer to the image→text flow (arXiv 2509.17588, docs/method.md F3/F4).

    ``HeadAttribution(model, **params).run(dataset, out=RUN_DIR)``: random head ablations (each head ablated
    with probability ``ablation_prob``), the target of every image under every mask, and a linear fit per
    image whose negated weights are the attributions. Parameters and their defaults:
    :class:`~headflow.attribution.params.AttributionParams`.

    Parameters
    ----------
    model : LoadedModel or spec accepted by :func:`headflow.load_model`
    **params
        ``n_masks``, ``ablation_prob``, ``baseline``, ``target``, ``fit``, ``penalty``, ``n_val``, ``seed``,
        ``keep_wrong``, ``question``, ``batch_size`` (see :class:`AttributionParams`).

    Examples
    --------
    >>> from headflow.data import load_dataset
    >>> result = HeadAttribution("tiny:llava", n_masks=32, n_val=16, keep_wrong=True).run(
    ...     load_dataset("default", n=2))
    >>> result.attributions.shape  # (image, layer, head)
    (2, 2, 4)
    """

    Params = AttributionParams

    # -- public ----------------------------------------------------------------------------
    def run(self, data: Dataset | Sequence[Example], *, out: str | Path | None = None,
            runner: "RayRunner | None" = None) -> "AttributionResult":
        """Run (or resume) the attribution into the run directory ``out`` and return its result.

        ``out=None`` uses a new temporary directory. Re-running into ``out`` resumes; a different
        configuration is refused with the list of what differs. With ``runner`` (a
        :class:`headflow.distributed.RayRunner`), the masked runs (pass 2) are sharded over Ray workers, each
        loading the model from its spec; this process still does the clean runs, writes every row and fits.
        """
        params = self.check()
        spec_for_workers = worker_spec(self.model) if runner is not None else None  # [ray] fail before any work
        if len(data) == 0:
            raise HeadflowError("The dataset is empty; pass at least one image.")
        lm = load_model(self.model)
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="headflow-attribution-"))
        _check_memory(params.n_masks or max(512, 4 * lm.n_layers * lm.n_heads), params, lm, len(data))
        with run_lock(out):  # one writer per run directory
            return self._run(lm, params, data, out, runner, spec_for_workers)

    def _run(self, lm: LoadedModel, params: AttributionParams, data, out: Path, runner, spec_for_workers
             ) -> "AttributionResult":
        hint = rebuild_hint(out)
        n_heads = lm.n_layers * lm.n_heads
        n_masks = params.n_masks or max(512, 4 * n_heads)
        spec = {"method": "HeadAttribution", "model": lm.name, "weights": lm.weights_id, "model_class": type(lm.model).__name__,
                "data": data_record(data), "n_images": len(data),
                "image_ids": [ex.id for ex in _iter(data)] if len(data) <= 4096 else None,
                **params.spec(), "n_masks": n_masks}
        engine = InterventionEngine(lm, batch_size=params.batch_size)
        resolved = {"n_masks": n_masks, "n_heads_total": n_heads, "n_layers": lm.n_layers, "n_heads": lm.n_heads}
        config = ensure_config(out, spec, {"params": params.model_dump(mode="json"), "resolved": resolved,
                                           "model": lm.describe(), "versions": versions()}, rebuild_hint=hint)
        labels = check_labels(lm.answers(params.question, aliases=params.aliases), dataset_labels(data))
        table, baseline = clean_pass(engine, data, params, out, hint)
        masks = sample_masks(n_masks, n_heads, params.ablation_prob, params.seed)
        val_masks = sample_masks(params.n_val, n_heads, params.ablation_prob, params.seed + 1_000_003)
        save_npy(out / "masks.npy", masks)
        save_npy(out / "val_masks.npy", val_masks)
        used = table.index[table["used"]].tolist()
        if not used:
            raise HeadflowError("No image is answered correctly by the clean model, so none is left to analyse; "
                                "pass keep_wrong=True (--keep-wrong) to keep them.")
        store = RowStore(out, "targets", len(used), n_masks + params.n_val, rebuild_hint=hint)
        todo = [(row, idx) for row, idx in enumerate(used) if not store.done[row]]
        context = _TargetsContext(*(spec_for_workers or (None, None)), params.batch_size, params,
                                  baseline_to(baseline, "cpu") if runner is not None else baseline,
                                  np.vstack([masks, val_masks]))
        map_images(_masked_row, ((row, image_job(data, table, idx, params.baseline)) for row, idx in todo),
                   n_items=len(todo), on_result=store.write, local_state=(engine, context),
                   setup=_setup_worker, context=context, runner=runner, desc="attribution: masks per image")
        previous = out / "summary.json"
        used_before = read_json(previous).get("provenance", {}).get("resolved", {}) if previous.exists() else {}
        resolved["batch_size"] = used_before.get("batch_size", engine.batch_size) if not todo else engine.batch_size
        problems = dict(getattr(data, "problems", {}) or {})
        return self._fit(out, config, table, store, masks, val_masks, params, lm, problems, resolved, labels)

    # -- fit -------------------------------------------------------------------------------
    def _fit(self, out: Path, config: dict, table: pd.DataFrame, store: RowStore, masks: np.ndarray,
             val_masks: np.ndarray, params: AttributionParams, lm: LoadedModel,
             problems: dict[str, int], resolved: dict[str, Any], labels: dict[str, list]
             ) -> "AttributionResult":
        n_masks = len(masks)
        targets = np.asarray(store.data)
        train, val = targets[:, :n_masks].T, targets[:, n_masks:].T
        bias, weights = fit_linear(masks, train, params.fit, params.penalty)
        attributions, pearson, spearman = save_fit(out, table, lm, bias, weights, val_masks, val)
        used = table[table["used"]]
        mean = attributions.mean(0)
        order = np.argsort(-mean.ravel())[:20]
        summary = {
            "n_heads_total": int(mean.size), "n_layers": lm.n_layers, "n_heads": lm.n_heads,
            "n_images": int(len(used)), "n_images_total": int(len(table)), "n_masks": int(n_masks),
            "n_val": int(len(val_masks)), "ablation_prob": params.ablation_prob, "baseline": params.baseline,
            "target": params.target, "fit": params.fit,
            "clean_accuracy": float(table["correct"].mean()),
            **labels,
            "design_rank": design_rank(masks), "design_full_rank": design_rank(masks) == masks.shape[1] + 1,
            "lds_pearson_median": _nanmedian(pearson), "lds_spearman_median": _nanmedian(spearman),
            "lds_pearson_quartiles": _quartiles(pearson), "lds_spearman_quartiles": _quartiles(spearman),
            "top_heads": [[int(i // lm.n_heads), int(i % lm.n_heads), float(mean.ravel()[i])] for i in order],
            "data_problems": problems, "n_data_problems": int(sum(problems.values())),
            "spec_hash": config["spec_hash"],
            "provenance": provenance("HeadAttribution", params=params.model_dump(mode="json"), resolved=resolved,
                                     model=config.get("model"), data=config["spec"]["data"],
                                     spec_hash=config["spec_hash"]),
        }
        write_json(out / "summary.json", summary)
        return AttributionResult.load(out)


@dataclass(frozen=True)
class AttributionResult(Result):
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
        hint = rebuild_hint(run_dir)
        return cls(run_dir, load_npy(run_dir / "attributions.npy", rebuild_hint=hint),
                   read_parquet(run_dir / "images.parquet", rebuild_hint=hint),
                   read_json(run_dir / "summary.json", rebuild_hint=hint),
                   read_json(run_dir / "config.json", rebuild_hint=hint))

    def save(self, out: str | Path) -> Path:
        """Copy the result's files to another directory; returns it."""
        import shutil

        shutil.copytree(self.run_dir, out, dirs_exist_ok=True)
        return Path(out)

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        order = np.argsort(-self.mean_attribution.ravel())[:k]
        n_heads = self.attributions.shape[2]
        return [(int(i // n_heads), int(i % n_heads)) for i in order]

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        from .plots import plot_attribution

        return plot_attribution(self, Path(figures_dir) if figures_dir else self.run_dir / "figures")


def save_fit(out: Path, table: pd.DataFrame, lm: LoadedModel, bias: np.ndarray, weights: np.ndarray,
             val_masks: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write a fit's ``attributions.npy`` (``a = −w`` per used image), ``fit_bias.npy`` and the held-out check
    ``lds.parquet``; returns (attributions, Pearson, Spearman per used image). Shared with the hybrid."""
    pearson, spearman = datamodeling_scores(predict(bias, weights, val_masks), val)
    attributions = (-weights).reshape(-1, lm.n_layers, lm.n_heads).astype(np.float32)
    save_npy(out / "attributions.npy", attributions)
    save_npy(out / "fit_bias.npy", bias.astype(np.float32))
    used = table[table["used"]].copy()
    used["lds_pearson"], used["lds_spearman"] = pearson, spearman
    save_parquet(out / "lds.parquet", used[["id", "label", "lds_pearson", "lds_spearman"]])
    return attributions, pearson, spearman


# -- pass 1: clean runs (shared with attribution patching) ------------------------------------

def clean_pass(engine: InterventionEngine, dataset, params: "HeadParams", out: Path, hint: str) -> tuple[pd.DataFrame, Baseline | None]:
    """Pass 1 of a head-attribution run: every image run cleanly once (``images.parquet``, ``attention.npy``,
    ``final_hidden.npy``, ``pixels.npy`` and the shared ``baseline.safetensors``); loaded where already done.
    Shared by :class:`HeadAttribution` and :class:`~headflow.attribution.patching.HeadAttributionPatching`."""
    table_path = out / "images.parquet"
    if table_path.exists():
        table = read_parquet(table_path, rebuild_hint=hint)
        baseline = load_baseline(out / "baseline.safetensors", rebuild_hint=hint)
        if baseline is None and params.baseline in ("mean", "blank"):
            raise HeadflowError(f"{out / 'baseline.safetensors'} is missing, but images.parquet marks the clean "
                                f"pass complete. Delete the run directory to recompute: {hint}.")
        return table, baseline
    lm = engine.lm
    tokenizer = lm.adapter.tokenizer()
    answers = lm.answers(params.question, aliases=params.aliases)
    records, attention, hidden, pixels = [], [], [], []
    kv_sum: list[LayerBaseline] | None = None
    mean_colour = np.zeros(3)
    for idx, ex in enumerate(tqdm(_iter(dataset), total=len(dataset), desc="attribution: clean runs",
                                  unit="image")):
        prompt = engine.prepare(ex.image, params.question)
        if params.baseline == "mean":
            kv_sum = accumulate_kv(kv_sum, prompt.image_kv(), len(dataset))
        rgb = np.asarray(ex.image.convert("RGB"), dtype=np.float64)
        mean_colour += rgb.reshape(-1, 3).mean(0) / len(dataset)
        if not answers.spellings(ex.label):  # unanswerable (reported before the run): skipped
            records.append({"id": ex.id, "label": ex.label, **{f"factor_{k}": v for k, v in ex.factors.items()},
                            "answer_id": -1, "answer_ids": [], "answer_token": None, "predicted_token": None,
                            "clean_target": float("nan"), "clean_logit": float("nan"), "correct": False,
                            "used": False})
            continue
        answer = answers.resolve(ex.label, prompt.clean_logits)
        answer_id = answer.token_id
        predicted = int(prompt.clean_logits.argmax())
        clean = clean_target(engine, prompt, answer.ids, params.target)
        correct = answer_correct(engine, prompt, answer, answers)
        records.append({"id": ex.id, "label": ex.label, **{f"factor_{k}": v for k, v in ex.factors.items()},
                        "answer_id": answer_id, "answer_ids": list(answer.ids),
                        "answer_token": tokenizer.convert_ids_to_tokens(answer_id),
                        "predicted_token": tokenizer.convert_ids_to_tokens(predicted),
                        "clean_target": clean, "clean_logit": float(prompt.clean_logits[answer_id]),
                        "correct": correct, "used": bool(correct or params.keep_wrong)})
        if records[-1]["used"]:
            attention.append(prompt.image_attention.numpy())
            hidden.append(prompt.final_hidden.numpy())
            pixels.append(np.asarray(ex.image.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32).ravel()
                          / 255.0)
    baseline: Baseline | None = None
    if params.baseline == "mean":
        baseline = Baseline("mean", kv_sum)
    elif params.baseline == "blank":
        size = dataset[0].image.size
        blank = Image.new("RGB", size, tuple(int(round(c)) for c in mean_colour))
        baseline = Baseline.of_prompt(engine.prepare(blank, params.question), kind="blank")
    if baseline is not None:
        save_baseline(out / "baseline.safetensors", baseline)
    shape = (lm.n_layers, lm.n_heads)
    save_npy(out / "attention.npy", np.stack(attention) if attention else np.zeros((0, *shape), np.float32))
    save_npy(out / "final_hidden.npy", np.stack(hidden) if hidden else np.zeros((0, 1), np.float32))
    save_npy(out / "pixels.npy", np.stack(pixels) if pixels else np.zeros((0, 192), np.float32))
    table = pd.DataFrame.from_records(records)
    save_parquet(table_path, table)  # written last: marks the clean pass complete
    return table, baseline


# -- pass 2, per image: the same function here and on Ray workers ----------------------------------

@dataclass(frozen=True)
class _TargetsContext:
    """What computing one image's targets needs besides the image; put once into Ray's object store."""

    spec: str | None
    dtype: str | None
    batch_size: int | str
    params: AttributionParams
    baseline: Baseline | None
    all_masks: np.ndarray


def _masked_row(state: tuple[InterventionEngine, _TargetsContext], job: ImageJob) -> np.ndarray:
    """Targets of one image under every mask, ``[n_masks + n_val]`` float32."""
    engine, ctx = state
    params, lm = ctx.params, engine.lm
    prompt = checked_prompt(engine, ctx.spec, params.question, job) if ctx.spec else engine.prepare(
        job.image, params.question)
    baseline = image_baseline(engine, prompt, ctx.baseline, params.baseline, params.question, job.partner)
    targets, _ = image_targets(engine, prompt, mask_rows(ctx.all_masks, lm.n_layers, lm.n_heads), baseline,
                               job.answer_ids, params.target)
    return targets.cpu().numpy()


def _setup_worker(context: _TargetsContext, device: str) -> tuple[InterventionEngine, _TargetsContext]:
    """[ray] A worker's state (arrays from Ray's object store are read-only; torch wants writable ones)."""
    engine = worker_engine(context.spec, context.dtype, device, context.batch_size)
    return engine, replace(context, baseline=baseline_to(context.baseline, engine.lm.device),
                           all_masks=np.array(context.all_masks))


# -- helpers -------------------------------------------------------------------------------------

def _iter(dataset):
    for i in range(len(dataset)):
        yield dataset[i]


def rebuild_hint(out: Path) -> str:
    """The command that recomputes an attribution run (named in every integrity error of the run)."""
    return f"headflow attribute --out {out} with the options in {out / 'config.json'}"


def _check_memory(n_masks: int, params: AttributionParams, lm: LoadedModel, n_images: int) -> None:
    """Refuse, before touching the run directory, a design whose fit would not fit in memory."""
    n_rows, n_heads = n_masks + params.n_val, lm.n_layers * lm.n_heads
    needed = 8 * (n_rows * (n_heads + 1) + n_rows * n_images) * 3  # float64 design and targets, with working copies
    check_memory(needed, f"The fit of {n_rows} masks x {n_heads} heads x {n_images} images",
                 "use fewer --masks or --images")


def _nanmedian(x: np.ndarray) -> float:
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def _quartiles(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.nanpercentile(x, [25, 50, 75])] if np.isfinite(x).any() else []
