"""``headflow check | inspect | plan | report | model-card``: exactness checks, a model's groups, the cost of an
attribution before it runs, the report, the default model's card numbers."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..method import DEFAULT_BATCH_SIZE
from .options import SHARED, command, fail, load_from

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6,
          "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """``"16GiB"``, ``"512 MiB"``, ``"2e9"`` as a number of bytes (one-line error otherwise)."""
    import re

    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        fail(f"The '--memory' option of plan must be a size such as 16GiB, 512MiB or 2e9. Got {text!r} instead.")
    return int(float(match.group(1)) * _UNITS[unit])


def register(app: typer.Typer) -> None:
    """Add the tool commands to ``app``."""
    as_json = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                default=typer.Option(False, "--json", help="Print JSON instead of a table."))
    seed = inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                             default=typer.Option(0, "--seed", help="Seed of the random interventions checked."))

    @command(app, "check", [SHARED["model"], SHARED["adapter"], as_json, SHARED["device"], SHARED["dtype"], seed])
    def check(**values: Any) -> None:
        """Run the exactness invariants (a)-(d) on MODEL; each is reported even if another fails or raises; exits 1
        if any fails."""
        from ..intervene.check import run_checks

        lm = load_from(values)
        results = run_checks(lm, seed=values["seed"])
        ok = all(r.passed for r in results)
        path = next((r.paths for r in results if "auto" in r.paths and r.name.startswith("c_")),
                    next((r.paths for r in results if "auto" in r.paths), {}))
        if values["as_json"]:
            typer.echo(json.dumps({"model": lm.describe(), "passed": ok,
                                   "path": {k: path[k] for k in ("auto", "auto_reason", "not_compared") if k in path},
                                   "checks": [r.to_dict() for r in results]}, indent=2))
        else:
            typer.echo(f"headflow check: {lm.name} ({lm.describe()['class']}, {lm.n_layers} layers x {lm.n_heads} "
                       f"heads, {lm.n_kv_heads} kv heads)")
            if path:
                typer.echo(f"  path: auto takes the {path['auto']} path ({path['auto_reason']})")
            for r in results:
                status = "PASS" if r.passed else "ERROR" if r.error else "FAIL"
                diff = "n/a" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
                typer.echo(f"  {status:<5} {r.name:<22} max|dlogit| = {diff:<8}  (tol {r.tolerance:.0e})  "
                           f"{r.description}")
                if not r.passed:
                    typer.echo(f"        why: {r.failure()}")
        raise typer.Exit(code=0 if ok else 1)

    @command(app, "inspect", [SHARED["model"], SHARED["adapter"], SHARED["device"], SHARED["dtype"]])
    def inspect_(**values: Any) -> None:
        """Print the model's family, head counts and the token groups of a sample prompt (positions and tokens)."""
        from ..intervene.check import CHECK_QUESTION, check_image

        lm = load_from(values)
        inputs, groups = lm.encode(check_image(), CHECK_QUESTION)
        ids = inputs["input_ids"][0].tolist()
        pieces = lm.adapter.tokenizer().convert_ids_to_tokens
        tokens = {name: pieces([ids[p] for p in positions]) for name, positions in groups.describe().items()
                  if name != "image"}
        typer.echo(json.dumps({"model": lm.describe(), "groups": groups.describe(), "tokens": tokens,
                               "answer_header": groups.header, "empty_groups": groups.empty()}, indent=2))

    def option(name: str, flag: str, default: Any, annotation: Any, help: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Option(default, flag, help=help))

    plan_options = [
        option("images", "--images", 100, int, "Images the attribution will run on."),
        option("masks", "--masks", None, Optional[int], "Training masks per image (default max(512, 4N))."),
        option("val_masks", "--val-masks", 256, int, "Held-out masks per image."),
        option("batch_size", "--batch-size", DEFAULT_BATCH_SIZE, int, "Rows per forward pass."),
        option("memory", "--memory", None, Optional[str], "Memory to plan for, e.g. 80GiB (default: free now)."),
        option("probe", "--probe/--no-probe", True, bool, "Time one batch of masked rows on a test image."),
    ]

    @command(app, "plan", [SHARED["model"], SHARED["adapter"], SHARED["device"], SHARED["dtype"], *plan_options,
                           as_json])
    def plan(**values: Any) -> None:
        """What a head attribution of MODEL will cost before it runs: memory per batch row and the batch size that
        fits, the fit's memory, the run directory's disk, and (probe) the time per image."""
        from ..plan import format_plan, plan_attribution

        memory = parse_bytes(values["memory"]) if values["memory"] is not None else None
        lm = load_from(values)
        result = plan_attribution(lm, n_images=values["images"], n_masks=values["masks"], n_val=values["val_masks"],
                                  batch_size=values["batch_size"], memory=memory, probe=values["probe"])
        typer.echo(json.dumps(result, indent=2) if values["as_json"] else format_plan(result))

    run_dir = inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Argument(
        ..., help="A study or attribution run directory."))

    @command(app, "report", [run_dir])
    def report(**values: Any) -> None:
        """Write RUN_DIR/report.html: a self-contained page with every figure and number of the run."""
        from ..report import write_report

        typer.echo(f"report: {write_report(values['run_dir'])}")

    card_model = inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=typer.Argument(
        "default", help="Model spec (default: the embedded model)."))
    images = inspect.Parameter("images", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        480, "--images", help="Fresh held-out images."))

    markdown = inspect.Parameter("markdown", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--markdown", help="Print the model card's targets section (Markdown) instead of a table."))

    @command(app, "model-card", [card_model, SHARED["adapter"], images, as_json, markdown, SHARED["device"]])
    def model_card(**values: Any) -> None:
        """Recompute the default model's card targets: accuracy per question type, question and image knockouts, single-head share."""
        from ..zoo.phenomena import measure_phenomena

        result = measure_phenomena(load_from(values), n_images=values["images"])
        if values["as_json"]:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        elif values["markdown"]:
            typer.echo(result.markdown())
        else:
            typer.echo(f"held-out identification accuracy {result.accuracy:.3f} on {result.n_images} images "
                       f"(chance {result.chance:.3f})")
            typer.echo("accuracy per question type: " + ", ".join(f"{t} {a:.3f}" for t, a in result.accuracy_per_type.items()))
            typer.echo(f"mixed question set ({len(result.question_types)} types per image): accuracy {result.accuracy_mixed:.3f}")
            typer.echo(f"question->(role, final) knocked out in all layers: mixed accuracy "
                       f"{result.accuracy_mixed_question_knockout:.3f} (type-guessing ceiling {result.type_guessing_ceiling:.3f})")
            typer.echo(f"image->text knocked out in all layers: mixed accuracy {result.accuracy_mixed_image_knockout:.3f} "
                       f"(no-image ceiling {result.no_image_ceiling:.3f}); identification {result.accuracy_knockout_all_layers:.3f}")
            typer.echo("... in one layer, identification: " + ", ".join(
                f"L{i} {a:.3f}" for i, a in enumerate(result.accuracy_knockout_single_layer)))
            typer.echo("... in one layer, mixed: " + ", ".join(
                f"L{i} {a:.3f}" for i, a in enumerate(result.accuracy_mixed_knockout_single_layer)))
            typer.echo(f"largest single-head share of the all-heads logit drop: {result.max_single_head_share:.3f}")
        if not (values["as_json"] or values["markdown"]):
            for name, ok in result.checks.items():
                typer.echo(f"  {'PASS' if ok else 'FAIL'}  {name}")
        raise typer.Exit(code=0 if all(result.checks.values()) else 1)
