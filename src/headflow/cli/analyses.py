"""``headflow attribute | validate | flow | semantics | study | demo``: one command per analysis.

Each command's method options come from the method's parameter model (:mod:`headflow.cli.options`); the
command only loads the model and data, builds the method, runs it and prints the headline numbers.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from ..attribution.params import AttributionParams, HybridParams, PatchingParams, ValidationParams
from ..compare.params import CompareParams
from ..errors import HeadflowError
from ..flow.params import FlowParams
from ..semantics.params import SemanticParams
from ..steering.params import SteeringParams
from .options import SHARED, command, fail, load_from, method_options, params_from


@contextlib.contextmanager
def _ray_runner(address: str | None, workers: int | None, gpus_per_worker: float | None = None) -> Iterator[Any]:
    """A connected RayRunner for --ray (None when --ray is not given), closed when the command ends; it
    connects first, so a bad address fails before any work."""
    if address is None:
        given = [flag for flag, value in (("--workers", workers), ("--gpus-per-worker", gpus_per_worker))
                 if value is not None]
        if given:
            fail(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --ray (e.g. --ray local).")
        yield None
        return
    from ..distributed import RayRunner

    runner = RayRunner(address, num_workers=workers, gpus_per_worker=gpus_per_worker)
    runner.connect()
    try:
        yield runner
    finally:
        runner.close()


def _data(values: dict[str, Any]):
    from ..data import load_dataset

    columns = {k: values.get(k) for k in ("image_column", "label_column", "mask_column")}
    try:
        return load_dataset(values["data"], n=values["images"], seed=values["data_seed"],
                            **{k: v for k, v in columns.items() if v is not None})
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise HeadflowError(str(exc)) from None


def _shared(*names: str) -> list[inspect.Parameter]:
    return [SHARED[n] for n in names]


DATA_OPTIONS = ("model", "adapter", "data", "images", "data_seed", "image_column", "label_column", "mask_column")
RUN_OPTIONS = ("device", "dtype", "ray", "workers", "gpus_per_worker")


def register(app: typer.Typer) -> None:
    """Add the analysis commands to ``app``."""
    ablation_prob = inspect.Parameter(
        "ablation_prob", inspect.Parameter.KEYWORD_ONLY, annotation=str,
        default=typer.Option(str(AttributionParams.model_fields["ablation_prob"].default), "--ablation-prob",
                             help="Bernoulli probability that a head is ablated in a mask; a list (0.05,0.1,0.2) "
                                  "runs one attribution per value and compares their held-out LDS."))

    method = inspect.Parameter("method", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
        ATTRIBUTION_METHODS[0], "--method", help="regression (random head ablations -> linear fit) | patching "
        "(attribution patching: one forward and one backward pass per image) | hybrid (patching screens the heads, "
        "the regression fits the screened ones)."))
    patching_only = method_options(PatchingParams, skip=tuple(AttributionParams.model_fields))
    hybrid_only = method_options(HybridParams, skip=(*AttributionParams.model_fields, *PatchingParams.model_fields))

    @command(app, "attribute", _shared(*DATA_OPTIONS, "out", *RUN_OPTIONS) + [method]
             + method_options(AttributionParams, overrides={"ablation_prob": ablation_prob}) + patching_only
             + hybrid_only)
    def attribute(**values: Any) -> None:
        """Head attribution: random head ablations -> linear fit -> per-head attribution (resumable); or
        --method patching: attribution patching, one forward and one backward pass per image."""
        from ..attribution import HeadAttribution, ablation_prob_sweep

        if values["method"] not in ATTRIBUTION_METHODS:
            fail(f"--method must be one of {', '.join(ATTRIBUTION_METHODS)}. Got {values['method']!r} instead.")
        if values["method"] == "patching":
            _attribute_patching(values)
            return
        if values["method"] == "hybrid":
            _attribute_hybrid(values)
            return
        _only_with("regression", "patching", values, PatchingParams, skip=tuple(HybridParams.model_fields))
        _only_with("regression", "patching or hybrid", values, PatchingParams,
                   skip=tuple(AttributionParams.model_fields))
        _only_with("regression", "hybrid", values, HybridParams, skip=(*AttributionParams.model_fields,
                                                                       *PatchingParams.model_fields))
        try:
            probs = [float(v) for v in values["ablation_prob"].split(",") if v.strip()]
        except ValueError:
            probs = []
        if not probs:
            fail("--ablation-prob must be a number or a comma-separated list like 0.05,0.1,0.2. "
                 f"Got {values['ablation_prob']!r} instead.")
        params = params_from(AttributionParams, values, "attribute", skip=("ablation_prob",))
        for p in probs:  # every value is checked before anything loads or runs
            HeadAttribution(None, ablation_prob=p, **params).check()
        out = values["out"]
        with _ray_runner(values["ray"], values["workers"], values["gpus_per_worker"]) as runner:
            lm = load_from(values)
            dataset = _data(values)
            if len(probs) > 1:
                if runner is not None:
                    fail("--ray runs one attribution; run a sweep without --ray, or one value per command.")
                sweep = ablation_prob_sweep(lm, dataset, out, probs, **params)
                for row in sweep["sweep"]:
                    typer.echo(f"ablation_prob {row['ablation_prob']:<6g} LDS median Pearson "
                               f"{row['lds_pearson_median']:.3f} / Spearman {row['lds_spearman_median']:.3f}  "
                               f"({row['run_dir']})")
                typer.echo(f"best ablation_prob {sweep['best_ablation_prob']:g}; wrote "
                           f"{out / 'ablation_prob_sweep.json'}")
                return
            method = HeadAttribution(lm, ablation_prob=probs[0], **params)
            result = method.run(dataset, out=out, runner=runner)
            result.plot()
        s = result.summary
        typer.echo(f"{s['n_images']} images x {s['n_masks']} masks, clean accuracy {s['clean_accuracy']:.3f}, "
                   f"LDS median Pearson {s['lds_pearson_median']:.3f} / Spearman {s['lds_spearman_median']:.3f}")
        _attribution_tail(result, out)

    run_dir = inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                                default=typer.Argument(..., help="An attribution run directory."))
    model_opt = inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                  default=typer.Option(None, "--model", help="Defaults to the run's model."))

    @command(app, "validate", [run_dir, model_opt, SHARED["adapter"], *_shared(*RUN_OPTIONS), *method_options(ValidationParams)])
    def validate(**values: Any) -> None:
        """Rankings (attribution, single-head, attention weight, random) and completeness/faithfulness curves."""
        from ..attribution import Validation
        from ..store import read_json

        run = values["run_dir"]
        params = params_from(ValidationParams, values, "validate")
        Validation(None, **params).check()
        with _ray_runner(values["ray"], values["workers"], values["gpus_per_worker"]) as runner:
            if not (run / "config.json").exists():
                fail(f"{run} is not an attribution run directory (no config.json); run 'headflow attribute --out "
                     f"{run}' first.")
            spec = values["model"] or read_json(run / "config.json")["spec"]["model"]
            result = Validation(load_from(values, spec), **params).run(run, runner=runner)
        for name, r in result.data["rankings"].items():
            typer.echo(f"  {name:<22} k80 completeness {str(r['k80_completeness']):>5}  k80 faithfulness "
                       f"{str(r['k80_faithfulness']):>5}  AUC {r['auc_completeness']:.3f} / {r['auc_faithfulness']:.3f}")
        subset = result.data["subset"]
        typer.echo(f"C1 holds: {result.data['c1']['holds']}; distinct subset (k80 attribution "
                   f"{subset['k80_attribution']} vs random {subset['k80_random']}): {subset['holds']}; "
                   f"wrote {run / 'validation.json'}")

    @command(app, "steer", [run_dir, model_opt, SHARED["adapter"], SHARED["device"], SHARED["dtype"],
                            *method_options(SteeringParams)])
    def steer(**values: Any) -> None:
        """Scale the found heads' reading of the image (factor 1 = identity, 0 = knockout) on clean and degraded
        images: accuracy and answer logit per factor for top attribution, top attention and random heads."""
        from ..steering import HeadSteering
        from ..store import read_json

        run = values["run_dir"]
        params = params_from(SteeringParams, values, "steer")
        HeadSteering(None, **params).check()
        if not (run / "config.json").exists():
            fail(f"{run} is not an attribution run directory (no config.json); run 'headflow attribute --out "
                 f"{run}' first.")
        spec = values["model"] or read_json(run / "config.json")["spec"]["model"]
        result = HeadSteering(load_from(values, spec), **params).run(run)
        data = result.data
        typer.echo(f"{data['n_images']} images, k = {data['k']} heads per ranking, factors "
                   f"{', '.join(f'{f:g}' for f in data['factors'])}")
        for condition in data["conditions"]:
            for ranking in data["rankings"]:
                acc = data["curves"][condition][ranking]["accuracy"]
                typer.echo(f"  {condition:<14} {ranking:<12} accuracy " + " ".join(f"{a:.2f}" for a in acc))
        typer.echo(f"wrote {run / 'steering' / 'steering.json'}")

    heads = inspect.Parameter("heads", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Option(
        "all", "--heads", help="all | top:K (needs --from-run) | FILE (.npy/.json/.txt)."))
    from_run = inspect.Parameter("from_run", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                 default=typer.Option(None, "--from-run",
                                                      help="Head-attribution run directory for top:K."))

    @command(app, "flow", _shared(*DATA_OPTIONS, "out", *RUN_OPTIONS)
             + method_options(FlowParams, overrides={"heads": heads}) + [from_run])
    def flow(**values: Any) -> None:
        """Token-level information flow by attention knockout (F9) and object/background tokens (F10)."""
        from ..flow import TokenFlow
        from ..flow.heads import resolve_heads

        params = params_from(FlowParams, values, "flow", skip=("heads",))
        TokenFlow(None, **params).check()
        out = values["out"]
        with _ray_runner(values["ray"], values["workers"], values["gpus_per_worker"]) as runner:
            lm = load_from(values)
            dataset = _data(values)
            params["heads"] = resolve_heads(values["heads"], values["from_run"], lm.n_layers, lm.n_heads)
            result = TokenFlow(lm, **params).run(dataset, out=out, runner=runner)
        s = result.summary
        typer.echo(f"headflow flow: {s['images']['n_kept']}/{s['images']['n_total']} images kept, "
                   f"window {s['resolved']['window_']} → {out}")
        for name, p in s["pairs"].items():
            m = p["mean_layer"]["value"]
            typer.echo(f"  {name:<18} peak layer {p['peak_layer']['value']:>3}   mean layer "
                       f"{'n/a' if m is None else f'{m:.2f}'}")
        typer.echo(f"  C3: {s['c3'].get('verdict')}   C4: {s['c4'].get('verdict')}")
        _problems(getattr(dataset, "problems", None), s.get("unanswerable_labels") or [],
                  len(s["images"].get("unanswerable", [])))

    sem_run = inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Argument(
        ..., help="Run directory with attributions.npy and images.parquet."))
    as_json = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                default=typer.Option(False, "--json", help="Print semantics.json instead of a summary."))

    @command(app, "semantics", [sem_run, *method_options(SemanticParams), as_json])
    def semantics(**values: Any) -> None:
        """Is head selection governed by class or by appearance? Writes semantics.json and figures/ into RUN_DIR."""
        from ..semantics import SemanticAnalysis

        result = SemanticAnalysis(**params_from(SemanticParams, values, "semantics")).run(values["run_dir"])
        if values["as_json"]:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            typer.echo(result.summary())
            typer.echo(f"wrote {values['run_dir'] / 'semantics.json'} and figures to {values['run_dir'] / 'figures'}")

    ask = inspect.Parameter("ask", inspect.Parameter.KEYWORD_ONLY, annotation=list[str], default=typer.Option(
        ..., "--ask", help="A question type and its question, TYPE=QUESTION (repeat: at least 2). Answers: the "
        "labels for 'class', else the dataset's factor of that name."))
    route_sem = method_options(SemanticParams, skip=("factors", "seed"))

    @command(app, "route", [*_shared(*DATA_OPTIONS, "out", "device", "dtype"), ask,
                            *method_options(AttributionParams, skip=("question",)), *route_sem])
    def route(**values: Any) -> None:
        """Does a different question route the same image through different heads? One attribution per question
        type on the same images, then type vs image (the semantics analysis); writes OUT/routing.json."""
        from ..semantics import QuestionRouting
        from ..semantics.routing import answers_for

        questions = {}
        for item in values["ask"]:
            qtype, sep, question = item.partition("=")
            if not sep or not qtype.strip() or not question.strip():
                fail(f"--ask takes TYPE=QUESTION, e.g. --ask 'size=What size is the main object?'. Got {item!r}.")
            questions[qtype.strip()] = question.strip()
        params = {"questions": questions,
                  "attribution": params_from(AttributionParams, values, "route", skip=("question",)),
                  "semantics": params_from(SemanticParams, values, "route", skip=("factors", "seed"))}
        QuestionRouting(None, **params).check()  # bad parameters and questions without answers: one line, before
        data = _data(values)                     # the model loads
        for qtype in questions:
            answers_for(data, qtype, None)
        result = QuestionRouting(load_from(values), **params).run(data, out=values["out"])
        result.plot()
        d = result.to_dict()
        typer.echo(f"{result.n_images} images kept under every question type ({', '.join(result.question_types)}): "
                   f"verdict {result.verdict} (similarity within a question {d['within_question_similarity']:.3f}, "
                   f"within an image {d['within_image_similarity']:.3f}, p = {d['p_question_vs_image']:.3g}; "
                   f"question type read from a map {d['probe_question_type']:.2f}, chance "
                   f"{d['probe_question_type_chance']:.2f})")
        typer.echo(f"wrote {values['out'] / 'routing.json'}, by_question/ and figures/routing/")

    compare_runs = inspect.Parameter("run_dirs", inspect.Parameter.KEYWORD_ONLY, annotation=list[Path],
                                     default=typer.Argument(..., help="Two or more attribution or study run directories."))
    compare_out = inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        Path("compare"), "--out", help="Where compare.json, compare.html and figures/ are written."))

    compare_json = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", help="Print compare.json instead of a summary."))

    @command(app, "compare", [compare_runs, *method_options(CompareParams), compare_out, compare_json])
    def compare(**values: Any) -> None:
        """Head maps across runs and models: depth profiles, concentration, top-k overlap; writes compare.html."""
        from ..compare import CompareRuns

        result = CompareRuns(**params_from(CompareParams, values, "compare")).run(values["run_dirs"], out=values["out"])
        if values["as_json"]:
            typer.echo(json.dumps(result.summary, indent=2, default=str))
            return
        for run in result.summary["runs"]:
            shares = "  ".join(f"top {float(f):.0%} {v:.1%}" for f, v in run["top_share"].items())
            typer.echo(f"{run['name']}: {run['n_layers']}x{run['n_heads']} heads, mass-weighted depth "
                       f"{run['mass_weighted_depth']:.2f}, {shares}")
        for pair in result.summary["pairs"]:
            head = pair["head_level"]
            extra = (f", Spearman {head['spearman']:.3f}, top-{head['top_k']} overlap {head['top_k_overlap']:.0%}"
                     if head else f" ({pair['reason']})")
            typer.echo(f"{pair['runs'][0]} vs {pair['runs'][1]}: profile correlation "
                       f"{pair['profile_correlation']:.3f}{extra}")
        typer.echo(f"wrote {values['out'] / 'compare.html'}")

    quick = inspect.Parameter("quick", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--quick", help="Small sizes (a few minutes on CPU)."))
    masks = inspect.Parameter("masks", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int], default=typer.Option(
        None, "--masks", help="Attribution masks (default: the plan's)."))
    seed = inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        0, "--seed", help="Seed of every analysis (masks, random ranking, bootstrap, permutations)."))
    keep_wrong = inspect.Parameter("keep_wrong", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                   default=typer.Option(False, "--keep-wrong",
                                                        help="Keep images the clean model answers wrongly."))
    batch = [p for p in method_options(AttributionParams) if p.name == "batch_size"]

    @command(app, "study", [*_shared("model", "adapter", "data", "images", "data_seed", "out", "device", "dtype"),
                            quick, masks, seed, keep_wrong, *batch])
    def study(**values: Any) -> None:
        """The whole study: attribution, validation, token flow, semantics, question routing, HTML report."""
        from dataclasses import replace

        from ..study import FULL, QUICK, run_study
        from .options import from_cli

        plan = QUICK if values["quick"] else FULL
        if values["images"] is not None:
            plan = replace(plan, images=values["images"])
        if values["masks"] is not None:
            plan = replace(plan, masks=values["masks"])
        batch_size = from_cli("batch_size", AttributionParams.model_fields["batch_size"], values["batch_size"], "study")
        path = run_study(values["model"], values["data"], values["out"], plan=plan, seed=values["seed"],
                         data_seed=values["data_seed"], batch_size=batch_size, device=values["device"],
                         placement=values["placement"], dtype=values["dtype"], keep_wrong=values["keep_wrong"], log=typer.echo)
        _study_problems(values["out"])
        typer.echo(f"report: {path}")

    demo_out = inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        Path("runs/demo"), "--out", help="Study directory."))
    demo_quick = quick.replace(default=typer.Option(False, "--quick",
                                                    help="Small sizes (about 3 minutes on 2 CPU cores)."))

    @command(app, "demo", [demo_out, demo_quick, SHARED["adapter"], SHARED["device"]])
    def demo(**values: Any) -> None:
        """The study on the embedded default model and data; prints the report path."""
        from ..study import FULL, QUICK, run_study

        path = run_study("default", "default", values["out"], plan=QUICK if values["quick"] else FULL,
                         device=values["device"], placement=values["placement"], log=typer.echo)
        typer.echo(f"report: {path}")


#: the ways ``headflow attribute`` computes head attributions (the first is the default)
ATTRIBUTION_METHODS = ("regression", "patching", "hybrid")


def _only_with(method: str, other: str, values: dict[str, Any], params, skip: tuple[str, ...] = ()) -> None:
    """Refuse an option of ``other`` method's parameters given with another value than its default."""
    from .options import flag_of, from_cli

    for name, info in params.model_fields.items():
        if name in skip or name not in values:
            continue
        default = info.get_default(call_default_factory=True)
        raw = values[name]
        given = from_cli(name, info, raw, "attribute") if isinstance(raw, str) else raw
        if name == "ablation_prob":
            try:
                given = [float(v) for v in str(raw).split(",") if v.strip()]
            except ValueError:
                given = raw
            default = [default]
        if given != default:
            fail(f"{flag_of(name, info)} applies to --method {other} only; drop it with --method {method}.")


def _attribute_patching(values: dict[str, Any]) -> None:
    """``headflow attribute --method patching``: attribution patching into the same run layout."""
    from ..attribution import HeadAttributionPatching

    _only_with("patching", "regression", values, AttributionParams, skip=tuple(PatchingParams.model_fields))
    _only_with("patching", "hybrid", values, HybridParams, skip=(*AttributionParams.model_fields,
                                                                 *PatchingParams.model_fields))
    if any(values[k] is not None for k in ("ray", "workers", "gpus_per_worker")):
        fail("--method patching runs in this process (one forward and backward pass per image); drop --ray/--workers.")
    params = params_from(PatchingParams, values, "attribute")
    HeadAttributionPatching(None, **params).check()
    out = values["out"]
    lm = load_from(values)
    dataset = _data(values)
    result = HeadAttributionPatching(lm, **params).run(dataset, out=out)
    result.plot()
    s = result.summary
    check = s["exact_check"]
    typer.echo(f"{s['n_images']} images, attribution patching (mix {s['mix']}), clean accuracy "
               f"{s['clean_accuracy']:.3f}" + (f", Spearman with exact single-head effects (median of "
                                                f"{check['n_images']}) {check['spearman_median']:.3f}"
                                                if check["spearman_median"] is not None else ""))
    _attribution_tail(result, out)


def _attribute_hybrid(values: dict[str, Any]) -> None:
    """``headflow attribute --method hybrid``: patching screens the heads, the regression fits the screened ones."""
    from ..attribution import HeadAttributionHybrid

    _only_with("hybrid", "patching", values, PatchingParams, skip=tuple(HybridParams.model_fields))
    if any(values[k] is not None for k in ("ray", "workers", "gpus_per_worker")):
        fail("--method hybrid runs in this process; drop --ray/--workers.")
    raw = values["ablation_prob"]
    try:
        value = float(raw)
    except ValueError:
        fail(f"--ablation-prob takes one number with --method hybrid. Got {raw!r} instead.")
    params = params_from(HybridParams, values, "attribute", skip=("ablation_prob",))
    HeadAttributionHybrid(None, ablation_prob=value, **params).check()
    out = values["out"]
    lm = load_from(values)
    dataset = _data(values)
    result = HeadAttributionHybrid(lm, ablation_prob=value, **params).run(dataset, out=out)
    result.plot()
    s = result.summary
    typer.echo(f"{s['n_images']} images, hybrid: {s['screen']['n_screened']} of {s['n_heads_total']} heads screened "
               f"by patching, {s['n_masks']} masks, clean accuracy {s['clean_accuracy']:.3f}, LDS median Pearson "
               f"{s['lds_pearson_median']:.3f} / Spearman {s['lds_spearman_median']:.3f}")
    _attribution_tail(result, out)


def _attribution_tail(result, out: Path) -> None:
    """What every attribution command prints after its headline: the top heads, skipped items, where it wrote."""
    s = result.summary
    typer.echo("top heads (layer, head, attribution): " +
               ", ".join(f"({l},{h},{v:.3f})" for l, h, v in s["top_heads"][:5]))
    labels = s.get("unanswerable_labels") or []
    _problems(s.get("data_problems"), labels, int(result.images["label"].isin(labels).sum()))
    typer.echo(f"wrote {out}")


def _problems(problems: dict | None, unanswerable: list[str] = (), n_unanswerable: int = 0) -> None:
    """Print the skipped-item counts of the data, and the images skipped because the model cannot write their
    label (``unanswerable`` labels, ``n_unanswerable`` images); nothing when there were none."""
    if problems:
        typer.echo("skipped data items: " + ", ".join(f"{reason} {count}" for reason, count in problems.items()))
    if unanswerable:
        typer.echo(f"skipped {n_unanswerable} image(s) whose label the model cannot write: "
                   f"{', '.join(map(repr, unanswerable))} (relabel them with words the tokenizer knows)")


def _study_problems(out: Path) -> None:
    """What a study skipped: the data items and unanswerable labels of its attribution step (every image of the
    study; the flow step analyses the first of them)."""
    from ..store import read_json, read_parquet

    summary = read_json(out / "summary.json")
    labels = summary.get("unanswerable_labels") or []
    n = int(read_parquet(out / "images.parquet")["label"].isin(labels).sum()) if labels else 0
    _problems(summary.get("data_problems"), labels, n)
