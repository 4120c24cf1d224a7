"""``HeadSteering``: scale how strongly the found heads read the image, on clean and on degraded images.

**Definition.** Steering head ``(l, h)`` by a factor ``f`` multiplies the attention weights of its text queries
(every query after the image) on the image positions by ``f`` and renormalises them, i.e. adds ``log f`` to
those queries' scores on image keys (:class:`~headflow.intervene.Intervention` ``scale``). ``f = 1`` is the
identity (the model's own logits), ``f = 0`` hides the image from the head: exactly headflow's ablation with the
``knockout`` baseline; ``f > 1`` amplifies the head's reading of the image, ``0 < f < 1`` damps it. Image queries
are untouched. Both engine paths compute it (prefix path = full path, tested).

**Measurement.** For the top-``k`` heads of an attribution run (mean attribution), the top-``k`` heads by clean
attention weight on the image (``attention.npy``) and ``k`` random heads (seeded), every factor is applied to the
whole head set at once, on each used image of the run, clean and under each corruption (Gaussian pixel noise,
Gaussian blur, occlusion of the object mask or box; parameters recorded). Per (condition, ranking, factor): the
accuracy (greedy answer is the whole label, as in the run) and the mean answer logit.

Where state lives: nothing is kept on the method object; rows are in ``RUN_DIR/steering/`` (``config.json``,
``rows.npy`` resumable per image, ``steering.json``, ``figures/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import HeadflowError
from ..executor import map_images
from ..intervene import Intervention, InterventionEngine
from ..method import Method, Result, provenance
from ..models.loading import load_model
from ..per_image import ImageJob, checked_prompt, recorded_answer_ids, rows_correct
from ..store import RowStore, ensure_config, load_npy, read_json, run_lock, write_json
from .params import SteeringParams, parse_corruption

__all__ = ["HeadSteering", "SteeringResult", "corrupt_image", "RANKINGS"]

RANKINGS = ("attribution", "attention", "random")
STAGE = "steering"
JSON_NAME = "steering.json"


def corrupt_image(image: Image.Image, corruption: str, *, mask: np.ndarray | None = None,
                  seed: int = 0) -> Image.Image:
    """``image`` degraded by ``corruption`` (``noise:STD``, ``blur:RADIUS``, ``occlude:mask|box``); the noise is
    seeded by ``seed``. Occlusion fills the object's pixels (``mask``) or their bounding box with the image's mean
    colour."""
    kind, param = parse_corruption(corruption)
    rgb = image.convert("RGB")
    if kind == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(radius=float(param)))
    pixels = np.asarray(rgb, dtype=np.float64) / 255.0
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0.0, float(param), pixels.shape)
        pixels = np.clip(pixels + noise, 0.0, 1.0)
    else:
        if mask is None:
            raise HeadflowError("occlude needs object masks, and this run's data has none; use noise or blur.")
        region = np.asarray(mask, dtype=bool)
        if param == "box" and region.any():
            ys, xs = np.nonzero(region)
            region = np.zeros_like(region)
            region[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        pixels = pixels.copy()
        pixels[region] = pixels.reshape(-1, 3).mean(0)
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


@dataclass(frozen=True)
class SteeringResult(Result):
    """``steering.json`` of a run: per condition (``clean`` and each corruption), ranking and factor, the accuracy
    and the mean answer logit; the steered heads of each ranking; the identity check."""

    run_dir: Path
    data: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.run_dir / STAGE

    @classmethod
    def load(cls, run_dir: str | Path) -> "SteeringResult":
        path = Path(run_dir) / STAGE / JSON_NAME
        if not path.exists():
            raise HeadflowError(f"{run_dir} has no {STAGE}/{JSON_NAME}; run 'headflow steer {run_dir}' first.")
        return cls(Path(run_dir), read_json(path, rebuild_hint=f"headflow steer {run_dir}"))

    def save(self, out: str | Path) -> Path:
        """Write ``steering.json`` into ``out`` (atomically); returns its path."""
        write_json(Path(out) / JSON_NAME, self.data)
        return Path(out) / JSON_NAME

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        """Accuracy and mean answer logit vs factor, one panel per condition, one line per ranking."""
        from .plots import plot_steering

        return plot_steering(self, Path(figures_dir) if figures_dir else self.directory / "figures")


class HeadSteering(Method):
    """Steer the heads an attribution run found: accuracy and answer logit over a sweep of factors.

    ``HeadSteering(model=None, **params).run(RUN_DIR)``: ``model`` defaults to the run's own; parameters and
    defaults: :class:`~headflow.steering.params.SteeringParams` (``factors``, ``corrupt``, ``k``, ``seed``,
    ``max_images``, ``batch_size``). The question and the answers are the run's. Writes ``RUN_DIR/steering/``.
    """

    Params = SteeringParams
    stage = STAGE

    def run(self, data: Any, *, out: str | Path | None = None, runner: Any = None,
            dataset: Any = None) -> SteeringResult:
        """Steer on the attribution run ``data`` (its directory or result); resumable. ``out`` must be the run
        directory (the default); ``dataset``: the run's images, when they cannot be reloaded from its record."""
        from ..attribution import AttributionResult

        params = self.check()
        if runner is not None:
            raise HeadflowError("HeadSteering runs in this process; run it without --ray.")
        result = data if isinstance(data, AttributionResult) else AttributionResult.load(data)
        run_dir = result.run_dir
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise HeadflowError(f"HeadSteering writes into the attribution run directory {run_dir}; got out={out}. "
                                "Leave out unset.")
        n_heads = result.attributions.shape[1] * result.attributions.shape[2]
        if params.k > n_heads:
            raise HeadflowError(f"The 'k' parameter of HeadSteering must be at most the model's {n_heads} heads. "
                                f"Got {params.k} instead.")
        with run_lock(run_dir):
            return self._run(params, result, dataset)

    def _run(self, params: SteeringParams, result, dataset) -> SteeringResult:
        from ..attribution.validate import dataset_of

        run_dir = result.run_dir
        spec = result.config["spec"]
        hint = f"headflow steer {run_dir} (after: rm -r {run_dir / STAGE})"
        lm = load_model(self.model if self.model is not None else spec["model"])
        n_layers, n_heads = result.attributions.shape[1:]
        if (lm.n_layers, lm.n_heads) != (n_layers, n_heads):
            raise HeadflowError(f"The model has {lm.n_layers}x{lm.n_heads} heads but the run has {n_layers}x{n_heads}; "
                                "pass the run's own model.")
        used = result.images.index[result.images["used"]].tolist()[: params.max_images]
        heads = _rankings(result, params)
        conditions = ["clean", *params.corrupt]
        config = ensure_config(self.config_dir(run_dir), {"method": "HeadSteering", "run": result.config["spec_hash"],
                                                          **params.spec()},
                               {"params": params.model_dump(mode="json"), "heads": heads}, rebuild_hint=hint)
        if (run_dir / STAGE / JSON_NAME).exists():
            return SteeringResult.load(run_dir)  # finished with this configuration
        dataset = dataset if dataset is not None else dataset_of(spec)
        if any(c.startswith("occlude") for c in conditions) and used and dataset[used[0]].mask is None:
            raise HeadflowError("occlude needs object masks, and this run's data has none; use noise or blur.")
        engine = InterventionEngine(lm, batch_size=params.batch_size)
        answers = lm.answers(spec["question"], aliases=spec.get("aliases", True))
        shape = (len(conditions), len(RANKINGS), len(params.factors))
        rows = []
        for ranking in RANKINGS:
            for factor in params.factors:
                scale = torch.ones(n_layers, n_heads)
                for layer, head in heads[ranking]:
                    scale[layer, head] = factor
                rows.append(Intervention(scale=scale))
        store = RowStore(run_dir / STAGE, "rows", len(used), 2 * int(np.prod(shape)), rebuild_hint=hint)
        question = spec["question"]

        def one(_state, item) -> np.ndarray:
            idx = item
            ex = dataset[idx]
            if ex.id != result.images.at[idx, "id"]:
                raise HeadflowError(f"Image {idx} of the dataset is {ex.id!r} but the run recorded "
                                    f"{result.images.at[idx, 'id']!r}; pass the run's own data.")
            answer_ids = recorded_answer_ids(result.images, idx)
            logits, correct = [], []
            for condition in conditions:
                if condition == "clean":  # checked against the run's record: is this the run's model?
                    job = ImageJob(ex.image, None, answer_ids, float(result.images.at[idx, "clean_logit"]))
                    prompt = checked_prompt(engine, str(lm.name), question, job)
                else:
                    prompt = engine.prepare(corrupt_image(ex.image, condition, mask=ex.mask,
                                                          seed=params.seed * 1_000_003 + idx), question)
                out = engine.run(prompt, rows, continuation=answer_ids)
                logits.append(out.logits[:, answer_ids[0]].cpu().numpy())
                correct.append(rows_correct(out, answer_ids, answers).astype(np.float32))
            return np.concatenate([np.concatenate(logits), np.concatenate(correct)]).astype(np.float32)

        todo = [(row, idx) for row, idx in enumerate(used) if not store.done[row]]
        if todo:  # the run's model? checked on the first image before any work (each clean prompt is checked too)
            first = todo[0][1]
            checked_prompt(engine, str(lm.name), question, ImageJob(
                dataset[first].image, None, recorded_answer_ids(result.images, first),
                float(result.images.at[first, "clean_logit"])))
        map_images(one, todo, n_items=len(todo), on_result=store.write, desc="steer: images")
        table = np.asarray(store.data, dtype=np.float64).reshape(len(used), 2, *shape)
        logit, correct = table[:, 0], table[:, 1]
        clean_logits = result.images.loc[used, "clean_logit"].to_numpy(dtype=np.float64)
        identity = [i for i, f in enumerate(params.factors) if f == 1.0]
        identity_diff = (float(np.abs(logit[:, 0, :, identity[0]] - clean_logits[:, None]).max())
                         if identity and used else None)
        curves = {condition: {ranking: {"accuracy": correct[:, c, r].mean(0).tolist() if used else [],
                                        "mean_logit": logit[:, c, r].mean(0).tolist() if used else []}
                              for r, ranking in enumerate(RANKINGS)}
                  for c, condition in enumerate(conditions)}
        data = {"method": "HeadSteering", "factors": params.factors, "conditions": conditions,
                "corruptions": {c: dict(zip(("kind", "param"), parse_corruption(c))) for c in params.corrupt},
                "rankings": list(RANKINGS), "heads": heads, "k": params.k, "n_images": len(used),
                "curves": curves, "identity_max_abs_diff": identity_diff,
                "definition": "factor f multiplies the steered heads' text-query attention weights on image positions "
                              "and renormalises (log f added to their scores); 1 = identity, 0 = knockout ablation",
                "provenance": provenance("HeadSteering", params=params.model_dump(mode="json"),
                                         resolved={"n_images": len(used), "heads": heads},
                                         model=result.config.get("model"), data=spec.get("data"),
                                         spec_hash=config["spec_hash"])}
        steering = SteeringResult(run_dir, data)
        steering.plot()  # figures before the file that marks the stage finished
        steering.save(run_dir / STAGE)
        return steering


def _rankings(result, params: SteeringParams) -> dict[str, list[list[int]]]:
    """The ``k`` steered heads of each ranking, as ``[layer, head]`` pairs."""
    n_layers, n_heads = result.attributions.shape[1:]
    attention_path = result.run_dir / "attention.npy"
    attention = load_npy(attention_path).mean(0) if attention_path.exists() else None
    if attention is None or attention.shape != (n_layers, n_heads):
        raise HeadflowError(f"{attention_path} is missing or has another shape; the attention ranking needs the "
                            "run's clean attention weights (rerun 'headflow attribute').")
    order = {"attribution": np.argsort(-result.mean_attribution.ravel(), kind="stable"),
             "attention": np.argsort(-attention.ravel(), kind="stable"),
             "random": np.random.default_rng(params.seed).permutation(n_layers * n_heads)}
    return {name: [[int(i // n_heads), int(i % n_heads)] for i in order[name][: params.k]] for name in RANKINGS}
