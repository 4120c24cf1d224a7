"""The ``headflow`` command line."""

from __future__ import annotations

import json
import os
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="headflow: which attention heads carry image information into an LVLM's answer.")


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


def main() -> None:  # pragma: no cover
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
