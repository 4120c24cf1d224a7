"""The ``headflow`` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="headflow: which attention heads carry image information into an LVLM's answer.")


DATA_HELP = "default | folder:PATH | coco:INSTANCES_JSON:IMAGES_DIR | hf:NAME_OR_PATH[:split]"


def _batch(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        _fail(f"--batch-size must be a positive integer or 'auto'. Got {value!r} instead.")


# -- [ray] --ray / --workers (headflow.distributed) ------------------------------------------------
RAY_HELP = ("Shard the per-image work over Ray workers: 'auto' (this machine's cluster), HOST:PORT (a head node) "
            "or 'local' (start one here). Off by default.")
WORKERS_HELP = "Ray workers (default: one per GPU of the cluster, else one per CPU)."


def _ray_runner(address: str | None, workers: int | None):
    """A connected RayRunner for --ray (None when --ray is not given); connects first so errors come early."""
    if address is None:
        if workers is not None:
            _fail("--workers needs --ray (e.g. --ray local).")
        return None
    from .distributed import RayRunner

    runner = RayRunner(address, num_workers=workers)
    runner.connect()
    return runner


def _alphas(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        _fail(f"--ablation-prob must be a number or a comma-separated list like 0.05,0.1,0.2. Got {value!r} instead.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def check(
    model: str = typer.Option("default", "--model", help="default | tiny:<family> | local path | hub id"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: str = typer.Option("cpu", "--device"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the exactness invariants (a)-(d) on MODEL; exits 1 if any fails."""
    from .errors import HeadflowError
    from .intervene.check import run_checks
    from .models import load_model

    try:
        lm = load_model(model, device=device)
        results = run_checks(lm, seed=seed)
    except HeadflowError as exc:
        _fail(str(exc))
    ok = all(r.passed for r in results)
    if as_json:
        typer.echo(json.dumps({"model": lm.describe(), "passed": ok, "checks": [r.to_dict() for r in results]},
                              indent=2))
    else:
        typer.echo(f"headflow check: {lm.name} ({lm.describe()['class']}, {lm.n_layers} layers x {lm.n_heads} heads, "
                   f"{lm.n_kv_heads} kv heads)")
        for r in results:
            typer.echo(f"  {'PASS' if r.passed else 'FAIL'}  {r.name:<22} max|dlogit| = {r.max_abs_diff:.2e}"
                       f"  (tol {r.tolerance:.0e})  {r.description}")
    raise typer.Exit(code=0 if ok else 1)


@app.command()
def inspect(model: str = typer.Option("default", "--model")) -> None:
    """Print the model's family, head counts and the token groups of a sample prompt."""
    from .errors import HeadflowError
    from .intervene.check import CHECK_QUESTION, check_image
    from .models import load_model

    try:
        lm = load_model(model)
        _, groups = lm.encode(check_image(), CHECK_QUESTION)
    except HeadflowError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"model": lm.describe(), "groups": groups.describe()}, indent=2))


def _load_data(spec: str, n: int | None, seed: int, **columns):
    from .data import load_dataset

    try:
        return load_dataset(spec, n=n, seed=seed, **{k: v for k, v in columns.items() if v is not None})
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command()
def attribute(
    model: str = typer.Option("default", "--model", help="default | tiny:<family> | local path | hub id"),
    data: str = typer.Option("default", "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Run directory (created; re-running resumes)."),
    images: Optional[int] = typer.Option(None, "--images", help="Number of images (default: the dataset's)."),
    masks: Optional[int] = typer.Option(None, "--masks", help="Training masks n (default max(512, 4N))."),
    ablation_prob: str = typer.Option("0.1", "--ablation-prob",
                                      help="Bernoulli probability alpha; a list (0.05,0.1,0.2) runs a sweep."),
    baseline: str = typer.Option("mean", "--baseline", help="mean | zero | blank | resample | knockout"),
    target: str = typer.Option("logit", "--target", help="logit | logprob | margin | prob"),
    fit: str = typer.Option("ols", "--fit", help="ols | ridge | lasso"),
    n_val: int = typer.Option(256, "--val-masks", help="Held-out masks for the LDS."),
    seed: int = typer.Option(0, "--seed"),
    data_seed: int = typer.Option(0, "--data-seed"),
    keep_wrong: bool = typer.Option(False, "--keep-wrong", help="Keep images the clean model answers wrongly."),
    batch_size: str = typer.Option("64", "--batch-size", help="Rows per forward pass, or 'auto'."),
    device: str = typer.Option("cpu", "--device"),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="hf: image column (default image)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="hf: label column (default label)."),
    mask_column: Optional[str] = typer.Option(None, "--mask-column", help="hf: optional object-mask column."),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),  # [ray]
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),  # [ray]
) -> None:
    """Head attribution: random head ablations -> linear fit -> per-head attribution (resumable)."""
    from .attribution import HeadAttribution
    from .errors import HeadflowError
    from .models import load_model

    runner = None  # [ray]
    try:
        runner = _ray_runner(ray, workers)  # [ray]
        lm = load_model(model, device=device)
        dataset = _load_data(data, images, data_seed, image_column=image_column, label_column=label_column,
                             mask_column=mask_column)
        alphas = _alphas(ablation_prob)
        if len(alphas) > 1:
            from .attribution.sweep import alpha_sweep

            sweep = alpha_sweep(lm, dataset, out, alphas, data_spec=data, data_seed=data_seed, n_masks=masks,
                                baseline=baseline, target=target, fit=fit, n_val=n_val, seed=seed,
                                keep_wrong=keep_wrong, batch_size=_batch(batch_size))
            for row in sweep["sweep"]:
                typer.echo(f"alpha {row['ablation_prob']:<6g} LDS median Pearson {row['lds_pearson_median']:.3f} / "
                           f"Spearman {row['lds_spearman_median']:.3f}  ({row['run_dir']})")
            typer.echo(f"best alpha {sweep['best_alpha']:g}; wrote {out / 'alpha_sweep.json'}")
            return
        result = HeadAttribution(lm, n_masks=masks, ablation_prob=alphas[0], baseline=baseline, target=target,
                                 fit=fit, n_val=n_val, seed=seed, keep_wrong=keep_wrong,
                                 batch_size=_batch(batch_size)).run(dataset, out, data_spec=data,
                                                                    data_seed=data_seed, runner=runner)
        result.plot()
    except HeadflowError as exc:
        _fail(str(exc))
    finally:
        if runner is not None:  # [ray]
            runner.close()
    s = result.summary
    typer.echo(f"{s['n_images']} images x {s['n_masks']} masks, clean accuracy {s['clean_accuracy']:.3f}, "
               f"LDS median Pearson {s['lds_pearson_median']:.3f} / Spearman {s['lds_spearman_median']:.3f}")
    typer.echo("top heads (layer, head, attribution): " +
               ", ".join(f"({l},{h},{v:.3f})" for l, h, v in s["top_heads"][:5]))
    typer.echo(f"wrote {out}")


@app.command()
def validate(
    run_dir: Path = typer.Argument(..., help="An attribution run directory."),
    model: Optional[str] = typer.Option(None, "--model", help="Defaults to the run's model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random ranking."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),  # [ray]
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),  # [ray]
) -> None:
    """Rankings (attribution, single-head, attention weight, random) and completeness/faithfulness curves."""
    from .attribution import Validation
    from .errors import HeadflowError
    from .models import load_model

    runner = None  # [ray]
    try:
        runner = _ray_runner(ray, workers)  # [ray]
        lm = load_model(model, device=device) if model else None
        if lm is None:
            from .store import read_json

            if not (run_dir / "config.json").exists():
                _fail(f"{run_dir} is not an attribution run directory (no config.json).")
            lm = load_model(read_json(run_dir / "config.json")["spec"]["model"], device=device)
        result = Validation(lm, seed=seed, batch_size=batch_size).run(run_dir, runner=runner)
    except HeadflowError as exc:
        _fail(str(exc))
    finally:
        if runner is not None:  # [ray]
            runner.close()
    for name, r in result.data["rankings"].items():
        typer.echo(f"  {name:<22} k80 completeness {str(r['k80_completeness']):>5}  k80 faithfulness "
                   f"{str(r['k80_faithfulness']):>5}  AUC {r['auc_completeness']:.3f} / {r['auc_faithfulness']:.3f}")
    subset = result.data.get("subset", {})
    typer.echo(f"C1 holds: {result.data['c1']['holds']}; distinct subset (k80 attribution "
               f"{subset.get('k80_attribution')} vs random {subset.get('k80_random')}): {subset.get('holds')}; "
               f"wrote {run_dir / 'validation.json'}")


@app.command()
def study(
    model: str = typer.Option("default", "--model", help="default | tiny:<family> | local path | hub id"),
    data: str = typer.Option("default", "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Study directory (re-running resumes)."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes (a few minutes on CPU)."),
    images: Optional[int] = typer.Option(None, "--images", help="Images for attribution and semantics."),
    masks: Optional[int] = typer.Option(None, "--masks", help="Attribution masks (default max(512, 4N))."),
    seed: int = typer.Option(0, "--seed"),
    keep_wrong: bool = typer.Option(False, "--keep-wrong"),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """The whole study: attribution, validation, token flow, semantics, HTML report."""
    from dataclasses import replace

    from .errors import HeadflowError
    from .study import FULL, QUICK, run_study

    plan = QUICK if quick else FULL
    if images is not None:
        plan = replace(plan, images=images)
    if masks is not None:
        plan = replace(plan, masks=masks)
    try:
        path = run_study(model, data, out, plan=plan, seed=seed, batch_size=batch_size, device=device,
                         keep_wrong=keep_wrong, log=typer.echo)
    except HeadflowError as exc:
        _fail(str(exc))
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Study directory."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes (about 3 minutes on 2 CPU cores)."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """The study on the embedded default model and data; prints the report path."""
    from .errors import HeadflowError
    from .study import FULL, QUICK, run_study

    try:
        path = run_study("default", "default", out, plan=QUICK if quick else FULL, device=device, log=typer.echo)
    except HeadflowError as exc:
        _fail(str(exc))
    typer.echo(f"report: {path}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A study or attribution run directory.")) -> None:
    """Write RUN_DIR/report.html: a self-contained page with every figure and number of the run."""
    from .errors import HeadflowError
    from .report import write_report

    try:
        path = write_report(run_dir)
    except HeadflowError as exc:
        _fail(str(exc))
    typer.echo(f"report: {path}")


@app.command("model-card")
def model_card(
    model: str = typer.Argument("default", help="Model spec (default: the embedded model)."),
    images: int = typer.Option(480, "--images", help="Fresh held-out images."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recompute the default model's phenomenon numbers (accuracy, knockouts, single-head share)."""
    from .errors import HeadflowError
    from .models import load_model
    from .zoo.phenomena import measure_phenomena

    try:
        result = measure_phenomena(load_model(model), n_images=images)
    except HeadflowError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(f"held-out accuracy {result.accuracy:.3f} on {result.n_images} images (chance {result.chance:.3f})")
        typer.echo(f"image->text knocked out in all layers: accuracy {result.accuracy_knockout_all_layers:.3f}")
        typer.echo("... in one layer: " + ", ".join(f"L{i} {a:.3f}" for i, a in
                                                   enumerate(result.accuracy_knockout_single_layer)))
        typer.echo(f"largest single-head share of the all-heads logit drop: {result.max_single_head_share:.3f}")
        for name, ok in result.checks.items():
            typer.echo(f"  {'PASS' if ok else 'FAIL'}  {name}")
    raise typer.Exit(code=0 if all(result.checks.values()) else 1)


def _mount_subcommands() -> None:
    from .data.cli import data_app
    from .flow.cli import flow_command
    from .semantics.cli import semantics_command

    app.add_typer(data_app, name="data")
    app.command("flow")(flow_command)
    app.command("semantics")(semantics_command)


_mount_subcommands()


def main() -> None:  # pragma: no cover
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
