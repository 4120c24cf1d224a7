"""Token-level information flow by attention knockout (F9) with object/background tokens (F10).

Method (Geva et al. 2023, as used in arXiv 2509.17588): for a source token group ``S``, a target group
``T`` and a window of ``w`` consecutive layers ``[l, l + w)``, queries at ``T`` may not attend keys at
``S`` (score −∞) in those layers, for all heads or a given head subset. The effect on the answer is
``(p_ko − p_clean) / p_clean`` (relative change of the answer probability) and ``logit_ko − logit_clean``,
a curve over the window start ``l``. All windows × pairs (and the object/background and per-token rows)
of one image are rows of one :meth:`InterventionEngine.run` call, so the image prefix is computed once.

Where state lives: :class:`TokenFlow` only stores parameters; :meth:`TokenFlow.run` returns a frozen
:class:`FlowResult` that holds everything it computed and writes/reads a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import HeadflowError, param_error
from ..executor import map_images
from ..intervene import Intervention, InterventionEngine
from ..intervene.spec import ablation_matrix
from ..method import Method, Result, check_memory, provenance
from ..models.geometry import token_coverage, token_rects
from ..models.loading import load_model
from ..per_image import (answer_correct, check_labels, data_record, dataset_labels, engine_memory, worker_engine,
                         worker_spec)
from ..store import (ensure_config, load_pickle, read_json, read_parquet, run_lock, save_npz, save_parquet, save_pickle,
                     spec_hash, verify_file, write_json)
from . import objects as obj
from .params import FlowParams, pair_name
from .stats import (MIN_EFFECT, bootstrap_indices, curve_summary, hurts_somewhere, paired_later_test,
                    weighted_mean_layer)

if TYPE_CHECKING:
    from ..distributed import RayRunner

C3_EARLY = (("question", "role"), ("question", "final"))
C3_LATE = (("image", "role"), ("image", "final"))


# ----------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class FlowResult(Result):
    """What :class:`TokenFlow` computed.

    Attributes
    ----------
    summary : dict
        The content of ``flow.json``: per pair the mean curve (length ``L − w + 1``), peak and
        effect-weighted mean layer with bootstrap intervals; the C3 test; object/background effects and
        the C4 verdict; params, resolved params and provenance.
    windows : DataFrame
        Tidy ``image_id, pair, source, target, window_start, effect_prob, effect_logit``.
    objects : DataFrame
        Tidy ``image_id, condition, effect_prob, effect_logit, n_tokens`` (random draws averaged).
    token_maps : dict
        ``image_id → {"effect_prob": Float[ndarray, "image_token"], "coverage": Float[ndarray, "image_token"],
        "rects": Float[ndarray, "image_token 4"], "image": UInt8[ndarray, "height width 3"]}``.
    """

    summary: dict[str, Any]
    windows: pd.DataFrame
    objects: pd.DataFrame
    token_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    FILES = ("flow.json", "flow_windows.parquet", "flow_objects.parquet", "token_maps.npz")

    def save(self, out: str | Path) -> Path:
        """Write ``flow.json``, ``flow_windows.parquet``, ``flow_objects.parquet`` and ``token_maps.npz``
        (each atomically) into ``out``."""
        out = Path(out)
        save_parquet(out / "flow_windows.parquet", self.windows)
        save_parquet(out / "flow_objects.parquet", self.objects)
        arrays = {f"{i}/{key}": value for i, m in enumerate(self.token_maps.values()) for key, value in m.items()}
        save_npz(out / "token_maps.npz", ids=np.array(list(self.token_maps), dtype=str), **arrays)
        write_json(out / "flow.json", self.summary, allow_nan=False)  # last: its presence marks a complete run
        return out

    @classmethod
    def load(cls, out: str | Path) -> "FlowResult":
        out = Path(out)
        if not (out / "flow.json").exists():
            raise HeadflowError(f"{out} holds no flow.json; run `headflow flow --out {out}` first.")
        hint = f"headflow flow --out {out} with the options in {out / 'config.json'}"
        summary = read_json(out / "flow.json", rebuild_hint=hint)
        windows = read_parquet(out / "flow_windows.parquet", rebuild_hint=hint)
        objects = read_parquet(out / "flow_objects.parquet", rebuild_hint=hint) \
            if (out / "flow_objects.parquet").exists() else pd.DataFrame()
        verify_file(out / "token_maps.npz", rebuild_hint=hint)
        maps: dict[str, dict[str, np.ndarray]] = {}
        if (out / "token_maps.npz").exists():
            with np.load(out / "token_maps.npz") as data:
                for i, image_id in enumerate(data["ids"].tolist()):
                    maps[image_id] = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")}
        return cls(summary, windows, objects, maps)

    def plot(self, figures_dir: str | Path) -> list[Path]:
        """Write the figures (PNG + SVG) into ``figures_dir``; returns their paths."""
        from .plots import save_figures

        return save_figures(self, Path(figures_dir))

    @property
    def curves(self) -> dict[str, np.ndarray]:
        """Mean relative-probability effect per pair, ``Float[ndarray, "window"]`` (NaN for missing)."""
        return {name: np.array([np.nan if v is None else v for v in p["curve"]])
                for name, p in self.summary["pairs"].items()}


# ----------------------------------------------------------------------------------------------
# method


class TokenFlow(Method):
    """Attention-knockout flow between token groups, per window of layers, with bootstrap summaries.

    ``TokenFlow(model, **params).run(dataset, out=None)``; the parameters and their defaults are
    :class:`~headflow.flow.params.FlowParams` (``window``, ``pairs``, ``heads``, ``question``,
    ``n_bootstrap``, ``seed``, ``keep_wrong``, ``objects``, ``object_layers``, ``n_random``, ``n_maps``,
    ``threshold``, ``batch_size``, ``progress``).

    Parameters
    ----------
    model : LoadedModel or spec accepted by :func:`headflow.load_model`

    Examples
    --------
    >>> from headflow import load_model
    >>> from headflow.data import load_dataset
    >>> flow = TokenFlow(load_model("tiny:llava"), keep_wrong=True, n_bootstrap=50, n_maps=0, progress=False)
    >>> result = flow.run(load_dataset("default", n=2))
    >>> len(result.summary["pairs"]["image->final"]["curve"])  # L - w + 1 window starts
    2
    """

    Params = FlowParams

    # -- public -----------------------------------------------------------------------------
    def run(self, data: Sequence, *, out: str | Path | None = None, runner: "RayRunner | None" = None) -> FlowResult:
        """Run the knockouts on every image of ``data`` (a sequence of :class:`headflow.data.Example`);
        save into ``out`` if given (``flow.json`` and friends, figures under ``out/figures``).

        Re-running into ``out`` resumes an interrupted run and loads a finished one; a different
        configuration is refused with the list of what differs. With ``runner`` (a
        :class:`headflow.distributed.RayRunner`), the images are sharded over Ray workers, each loading the
        model from its spec; results are merged in dataset order and are the same as without a runner.
        """
        params = self.check()
        lm = load_model(self.model)
        n_layers = lm.n_layers
        if params.window is not None and params.window > n_layers:
            raise param_error("window", "TokenFlow", f"None or an int in [1, {n_layers}]", params.window)
        if params.object_layers is not None and not all(0 <= x < n_layers for x in params.object_layers):
            raise param_error("object_layers", "TokenFlow", f"None or layers in [0, {n_layers})",
                              list(params.object_layers))
        window = params.window if params.window is not None else max(1, round(n_layers / 6))
        if len(data):
            _check_pairs_measurable(lm, data[0].image, params)
            if out is None or not (Path(out) / "flow.json").exists():  # (a finished run is loaded, not computed)
                _check_memory(lm, params, data, window)
        heads = None if params.heads is None else ablation_matrix([tuple(h) for h in params.heads], n_layers,
                                                                  lm.n_heads)
        resolved = {"window_": window, "pairs_": [list(p) for p in params.pairs],
                    "window_starts_": list(range(n_layers - window + 1)),
                    "object_layers_": list(range(n_layers)) if params.object_layers is None else
                    list(params.object_layers),
                    "n_heads_knocked_": int(heads.sum()) if heads is not None else n_layers * lm.n_heads}
        spec = {"method": "TokenFlow", "model": lm.name, "weights": lm.weights_id, **params.spec(), "data": data_record(data),
                "n_images": len(data), "image_ids": _image_ids(data)}
        if out is None:
            return self._run(lm, params, data, window=window, heads=heads, resolved=resolved, runner=runner,
                             progress=_FlowProgress(None), spec_hash=spec_hash(spec))
        out = Path(out)
        with run_lock(out):  # one writer per run directory
            config = ensure_config(out, spec, {"params": params.model_dump(mode="json"), "resolved": resolved},
                                   rebuild_hint=f"headflow flow --out {out} with the options in {out / 'config.json'}")
            if (out / "flow.json").exists():
                _FlowProgress(out).clear()  # (left by a run killed between writing flow.json and clearing it)
                return FlowResult.load(out)  # finished with this configuration
            progress = _FlowProgress(out)
            result = self._run(lm, params, data, window=window, heads=heads, resolved=resolved, runner=runner,
                               progress=progress, spec_hash=config["spec_hash"])
            result.plot(out / "figures")  # before flow.json, which marks the run finished (figures included)
            result.save(out)
            progress.clear()
        return result

    # -- private ----------------------------------------------------------------------------
    def _run(self, lm, params: FlowParams, dataset: Sequence, *, window: int, heads: torch.Tensor | None,
             resolved: dict, runner: "RayRunner | None", progress: "_FlowProgress",
             spec_hash: str | None) -> FlowResult:
        engine = InterventionEngine(lm, batch_size=params.batch_size)
        starts = resolved["window_starts_"]
        labels = check_labels(lm.answers(params.question, aliases=params.aliases), dataset_labels(dataset))
        plan = _FlowPlan(question=params.question, keep_wrong=params.keep_wrong, aliases=params.aliases,
                         objects=params.objects,
                         seed=params.seed, n_random=params.n_random, threshold=params.threshold, pairs=params.pairs,
                         window=window, starts=tuple(starts), heads=heads,
                         object_layers=tuple(resolved["object_layers_"]))
        if runner is None:
            per_image = _flow_here(engine, plan, dataset, progress, params.n_maps, params.progress)
        else:  # [ray]
            per_image = _flow_on(runner, worker_spec(self.model), engine, plan, dataset, progress, params)
        resolved["batch_size"] = engine.batch_size
        records, object_records, maps = [], [], {}
        kept, dropped, skipped_objects, unanswerable = [], [], [], []
        geometry_error: str | None = None
        for one in per_image:  # in dataset order
            if not one.kept:
                (unanswerable if one.unanswerable else dropped).append(one.id)
                continue
            kept.append(one.id)
            records += one.windows
            object_records += one.objects
            if one.no_object_tokens:
                skipped_objects.append(one.id)
            if one.token_map is not None:
                maps[one.id] = one.token_map
            geometry_error = geometry_error or one.geometry_error
        windows = pd.DataFrame(records, columns=["image_id", "pair", "source", "target", "window_start",
                                                 "effect_prob", "effect_logit"])
        objects = pd.DataFrame(object_records, columns=["image_id", "condition", "effect_prob", "effect_logit",
                                                        "n_tokens"])
        summary = self._summarize(params, windows, objects, kept, params.pairs, starts)
        summary["images"] = {"n_total": len(kept) + len(dropped), "n_kept": len(kept), "kept": kept,
                             "dropped_wrong": dropped, "no_object_or_background_tokens": skipped_objects}
        summary["images"]["unanswerable"] = unanswerable
        summary.update(labels)
        if geometry_error is not None:
            summary["objects_skipped_reason"] = geometry_error
        summary["params"] = params.model_dump(mode="json")
        summary["resolved"] = resolved
        summary["provenance"] = provenance("TokenFlow", params=summary["params"], resolved=resolved,
                                           model=lm.describe(), data=data_record(dataset), spec_hash=spec_hash)
        return FlowResult(summary, windows, objects, maps)

    def _summarize(self, params: FlowParams, windows: pd.DataFrame, objects: pd.DataFrame, kept: list[str],
                   pairs: Sequence[tuple[str, str]], starts: list[int]) -> dict[str, Any]:
        if not kept:
            raise HeadflowError("No image is left to analyse: the clean model answered every image wrongly. "
                                "Pass keep_wrong=True (--keep-wrong) to keep them.")
        idx = bootstrap_indices(len(kept), params.n_bootstrap, params.seed)
        starts_arr = np.asarray(starts)
        order = {image_id: i for i, image_id in enumerate(kept)}
        per_pair: dict[str, dict[str, np.ndarray]] = {}
        out_pairs = {}
        for pair in pairs:
            name = pair_name(pair)
            sub = windows[windows["pair"] == name]
            per_pair[name] = {}
            for metric in ("effect_prob", "effect_logit"):
                table = np.full((len(kept), len(starts)), np.nan)
                table[[order[i] for i in sub["image_id"]], sub["window_start"].to_numpy()] = sub[metric].to_numpy()
                per_pair[name][metric] = table
            out_pairs[name] = {"source": pair[0], "target": pair[1],
                               **curve_summary(per_pair[name]["effect_prob"], starts_arr, idx),
                               "logit": curve_summary(per_pair[name]["effect_logit"], starts_arr, idx)}
        summary: dict[str, Any] = {"method": "TokenFlow", "paper": "arXiv:2509.17588",
                                   "effect": "relative change of the answer probability (p_ko - p_clean) / p_clean",
                                   "pairs": out_pairs}
        early = [pair_name(p) for p in C3_EARLY if pair_name(p) in per_pair]
        late = [pair_name(p) for p in C3_LATE if pair_name(p) in per_pair]
        if early and late:
            def layer_of(names: list[str]) -> np.ndarray:  # per image: weighted mean layer of the mean curve
                curves = np.stack([per_pair[n]["effect_prob"] for n in names]).mean(0)
                return weighted_mean_layer(curves, starts_arr)

            late_layer, early_layer = layer_of(late), layer_of(early)
            summary["c3"] = {
                "claim": "C3: question->{role, final} knockouts hurt at earlier layers than image->{role, final}",
                "statistic": "per image: effect-weighted mean layer (image pairs) minus (question pairs)",
                "question_pairs": early, "image_pairs": late,
                **paired_later_test(late_layer, early_layer, idx)}
            silent = [group for group, names in (("question", early), ("image", late))
                      if not hurts_somewhere([out_pairs[n] for n in names])]
            if silent:
                summary["c3"]["verdict"] = "inconclusive"
                summary["c3"]["reason"] = (
                    f"{' and '.join(silent)}->{{role, final}} knockouts lower the answer probability by less than "
                    f"{MIN_EFFECT:.0%} in every window (or not clearly), so their layer is noise; the layer "
                    f"difference is reported but not judged")
        else:
            summary["c3"] = {"verdict": "not tested", "reason": "needs question->role/final and image->role/final pairs"}
        objects_summary = obj.summarize_objects(objects, kept, idx)
        summary["objects"] = objects_summary
        summary["c4"] = objects_summary.pop("c4") if objects_summary else {"verdict": "not tested",
                                                                           "reason": "no masks or no patch geometry"}
        return summary


# ----------------------------------------------------------------------------------------------
# per image: shared by the single-process loop and the Ray workers


class _FlowProgress:
    """Per-image results of an unfinished run in ``out/.flow_progress`` (one atomic file per image), so
    that re-running the same command resumes; removed once the result files are written. ``out=None``:
    nothing is kept. (The run's configuration, checked on every re-run, is ``out/config.json``.)"""

    def __init__(self, out: str | Path | None) -> None:
        self.directory = None if out is None else Path(out) / ".flow_progress"

    def _path(self, index: int) -> Path:
        return self.directory / f"{index:07d}.pkl"

    def get(self, index: int, image_id: str | None) -> "_ImageFlow | None":
        if self.directory is None or not self._path(index).exists():
            return None
        one = load_pickle(self._path(index))
        return one if image_id is None or one.id == image_id else None

    def put(self, index: int, one: "_ImageFlow") -> None:
        if self.directory is not None:
            save_pickle(self._path(index), one)

    def clear(self) -> None:
        if self.directory is not None:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)


def _flow_here(engine: InterventionEngine, plan: "_FlowPlan", dataset: Sequence, progress: _FlowProgress,
               n_maps: int, show: bool) -> list["_ImageFlow"]:
    """Per-image results in dataset order, computed in this process.

    Whether an image gets a token map (the first ``n_maps`` kept ones with masks) and whether its object
    analysis is tried (not after a geometry error) depend on the images before it, so the items are made
    one at a time from what the finished ones say.
    """
    results: dict[int, _ImageFlow] = {}
    seen = {"maps": 0, "geometry_error": None}

    def record(index: int, one: "_ImageFlow") -> None:
        results[index] = one
        progress.put(index, one)
        seen["maps"] += one.token_map is not None
        seen["geometry_error"] = seen["geometry_error"] or one.geometry_error

    def items():
        for index in range(len(dataset)):
            ex = dataset[index]
            one = progress.get(index, ex.id)
            if one is not None:  # finished by an earlier, interrupted run
                record(index, one)
                continue
            yield index, (ex, index, seen["maps"] < n_maps, seen["geometry_error"] is None)

    n_todo = sum(progress.get(index, None) is None for index in range(len(dataset)))
    map_images(_flow_row, items(), n_items=n_todo, on_result=record, local_state=(engine, plan), desc="flow",
               progress=show)
    return [results[index] for index in range(len(dataset))]


def _flow_on(runner: "RayRunner", spec: tuple[str, str | None], engine: InterventionEngine, plan: "_FlowPlan",
             dataset: Sequence, progress: _FlowProgress, params: FlowParams) -> list["_ImageFlow"]:
    """[ray] Per-image results in dataset order, the same as :func:`_flow_here`'s.

    This process first runs the images with masks itself, in order, until which images get maps and
    whether object analysis is still tried is settled (usually the first ``n_maps`` images); every other
    image goes to the workers with flags that are then certain.
    """
    results: dict[int, _ImageFlow] = {}
    maps_done, geometry_error = 0, None
    for index in range(len(dataset)):
        if params.objects is False or maps_done >= params.n_maps or geometry_error is not None:
            break
        ex = dataset[index]
        if getattr(ex, "mask", None) is None:
            continue  # no object analysis, hence no map: a worker can do it
        one = progress.get(index, ex.id)
        if one is None:
            one = _flow_image(engine, plan, ex, index, maps=True, geometry=True)
            progress.put(index, one)
        results[index] = one
        maps_done += one.token_map is not None
        geometry_error = geometry_error or one.geometry_error
    for index in range(len(dataset)):  # finished by an earlier, interrupted run
        if index not in results and (one := progress.get(index, None)) is not None:
            results[index] = one
    todo = [index for index in range(len(dataset)) if index not in results]

    def collect(index: int, one: _ImageFlow) -> None:
        results[index] = one
        progress.put(index, one)

    map_images(_flow_row, ((index, (dataset[index], index, False, geometry_error is None)) for index in todo),
               n_items=len(todo), on_result=collect, setup=_setup_flow_worker,
               context=_FlowWorkerContext(*spec, params.batch_size, plan), runner=runner, desc="flow",
               progress=params.progress)
    # an image the workers saw fail the patch geometry switches object analysis off for the images after
    # it, as in the loop: redo those here without it (families either have patch geometry or not, so rare)
    first_error = min((i for i, one in results.items() if one.geometry_error is not None), default=None)
    for index in todo:
        if first_error is not None and index > first_error and results[index].tried_geometry:
            results[index] = _flow_image(engine, plan, dataset[index], index, maps=False, geometry=False)
    return [results[index] for index in range(len(dataset))]


def _check_pairs_measurable(lm, image, params: FlowParams) -> None:
    """Refuse, before any work, a pair whose token group is empty on this model's template (its knockouts would
    change nothing and draw a flat zero curve)."""
    _, groups = lm.encode(image, params.question)
    for source, target in params.pairs:
        for group in (source, target):
            if group in groups.empty():
                raise groups.empty_group_error(group, f"The flow pair {pair_name((source, target))}")


def _check_memory(lm, params: FlowParams, data: Sequence, window: int) -> None:
    """Refuse, before anything is written, a flow run whose per-image engine state (the first image's prompt,
    encoded) or results (window and object records, per-pair tables, bootstrap indices, token maps) do not fit."""
    image = data[0].image
    _, groups = lm.encode(image, params.question)
    n_images, n_starts, n_pairs = len(data), lm.n_layers - window + 1, len(params.pairs)
    n_image_tokens = len(groups.image)
    maps = params.n_maps > 0 and params.objects is not False
    rows = n_pairs * n_starts + 2 + 2 * params.n_random + (n_image_tokens if maps else 0)
    width, height = image.size
    results = (256 * n_images * (n_pairs * n_starts + 4)  # window and object records (Python tuples)
               + 2 * 2 * 8 * n_images * n_starts * n_pairs  # per-pair float64 tables (prob, logit), working copies
               + 8 * params.n_bootstrap * n_images  # bootstrap indices
               + min(params.n_maps, n_images) * (7 * 8 * n_image_tokens + 3 * width * height))  # token maps
    check_memory(engine_memory(lm, groups.length, params.batch_size, rows) + results,
                 f"The flow of {n_images} images ({rows} rows of {groups.length} tokens per image, batch size "
                 f"{params.batch_size}, {params.n_bootstrap} bootstrap resamples)",
                 "use a smaller --batch-size or --bootstrap, or fewer --images or --maps")


def _image_ids(dataset: Sequence) -> list[str] | None:
    """Image ids for the run's spec (None for very large datasets, as in attribution)."""
    if len(dataset) > 4096:
        return None
    return [ex.id for ex in dataset]


@dataclass(frozen=True)
class _FlowPlan:
    """The resolved parameters one image's knockouts need (picklable, sent once to Ray workers)."""

    question: str
    keep_wrong: bool
    aliases: bool
    objects: bool | str
    seed: int
    n_random: int
    threshold: float
    pairs: tuple[tuple[str, str], ...]
    window: int
    starts: tuple[int, ...]
    heads: torch.Tensor | None
    object_layers: tuple[int, ...]


@dataclass(frozen=True)
class _ImageFlow:
    """One image's rows: ``windows`` and ``objects`` are records of the tidy tables, ``token_map`` its map."""

    id: str
    kept: bool
    unanswerable: bool = False
    windows: list[tuple] = field(default_factory=list)
    objects: list[tuple] = field(default_factory=list)
    token_map: dict[str, np.ndarray] | None = None
    no_object_tokens: bool = False
    tried_geometry: bool = False
    geometry_error: str | None = None


def _flow_image(engine: InterventionEngine, plan: _FlowPlan, ex, index: int, *, maps: bool,
                geometry: bool) -> _ImageFlow:
    """All knockouts of one image in one :meth:`InterventionEngine.run` call.

    ``maps``: add the per-token rows (the caller counts maps); ``geometry``: try the object analysis
    (False after an earlier image had no patch geometry).
    """
    lm = engine.lm
    answers = lm.answers(plan.question, aliases=plan.aliases)
    if not answers.spellings(ex.label):  # reported before the run
        return _ImageFlow(ex.id, kept=False, unanswerable=True)
    prompt = engine.prepare(ex.image, plan.question)
    resolved = answers.resolve(ex.label, prompt.clean_logits)
    answer = resolved.token_id
    if not plan.keep_wrong and not answer_correct(engine, prompt, resolved, answers):
        return _ImageFlow(ex.id, kept=False)
    window_keys = [(src, tgt, s) for src, tgt in plan.pairs for s in plan.starts]
    rows = [Intervention(knockouts=obj.knockouts(src, tgt, range(s, s + plan.window), plan.heads))
            for src, tgt, s in window_keys]
    labels = [None] * len(rows)
    coverage = rects = geometry_error = None
    want_objects = plan.objects is not False and getattr(ex, "mask", None) is not None
    if plan.objects is True and getattr(ex, "mask", None) is None:
        raise HeadflowError(f"objects=True needs object masks, but example {ex.id!r} has none. "
                            "Use objects='auto' or a dataset with masks.")
    tried_geometry = want_objects and geometry
    if tried_geometry:
        try:
            rects = token_rects(lm, ex.image.size, prompt.inputs)
            coverage = token_coverage(lm, ex.image, ex.mask, prompt.inputs)
        except HeadflowError as exc:
            if plan.objects is True:
                raise
            geometry_error = str(exc)
    counts: dict[str, int] = {}
    no_object_tokens = False
    if coverage is not None:
        rng = np.random.default_rng([plan.seed, index])
        o_rows, o_labels, counts = obj.object_rows(prompt.groups, coverage, layers=plan.object_layers,
                                                   heads=plan.heads, n_random=plan.n_random, rng=rng,
                                                   threshold=plan.threshold)
        rows += o_rows
        labels += o_labels
        no_object_tokens = not o_rows
        if maps:
            t_rows, t_labels = obj.token_rows(prompt.groups, layers=plan.object_layers, heads=plan.heads)
            rows += t_rows
            labels += t_labels
    logits = engine.run(prompt, rows).logits
    lp = torch.log_softmax(logits.double(), -1)[:, answer]
    lp_clean = torch.log_softmax(prompt.clean_logits.double(), -1)[answer]
    effect_prob = (torch.exp(lp - lp_clean) - 1).numpy()
    effect_logit = (logits[:, answer].double() - prompt.clean_logits[answer].double()).numpy()
    records = [(ex.id, pair_name((src, tgt)), src, tgt, s, effect_prob[r], effect_logit[r])
               for r, (src, tgt, s) in enumerate(window_keys)]
    done = dict(id=ex.id, kept=True, windows=records, no_object_tokens=no_object_tokens,
                tried_geometry=tried_geometry, geometry_error=geometry_error)
    if coverage is None:
        return _ImageFlow(**done)
    n = len(window_keys)
    label_arr = np.array([obj.condition_of(x) for x in labels[n:]], dtype=object)
    ep, el = effect_prob[n:], effect_logit[n:]
    object_records = []
    for condition in obj.CONDITIONS:
        sel = label_arr == condition
        if sel.any():
            size_key = "n_object" if condition.endswith("object") else "n_background"
            object_records.append((ex.id, condition, float(ep[sel].mean()), float(el[sel].mean()), counts[size_key]))
    token = label_arr == "token"
    token_map = None
    if token.any():
        token_map = {"effect_prob": ep[token].astype(np.float64), "effect_logit": el[token].astype(np.float64),
                     "coverage": coverage, "rects": rects, "image": np.asarray(ex.image.convert("RGB"), dtype=np.uint8)}
    return _ImageFlow(**done, objects=object_records, token_map=token_map)


# -- [ray] Ray workers (headflow.distributed.RayRunner) ---------------------------------------------

@dataclass(frozen=True)
class _FlowWorkerContext:
    spec: str
    dtype: str | None
    batch_size: int | str
    plan: _FlowPlan


def _setup_flow_worker(context: _FlowWorkerContext, device: str) -> tuple[InterventionEngine, _FlowPlan]:
    return worker_engine(context.spec, context.dtype, device, context.batch_size), context.plan


def _flow_row(state: tuple[InterventionEngine, _FlowPlan], item) -> "_ImageFlow":
    """One image's knockouts (here or on a worker): ``item`` is ``(example, index, maps, geometry)``."""
    (engine, plan), (ex, index, maps, geometry) = state, item
    return _flow_image(engine, plan, ex, index, maps=maps, geometry=geometry)
