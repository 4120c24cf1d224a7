"""``headflow semantics RUN_DIR``: class vs appearance analysis of a finished attribution run.

The lead mounts :func:`semantics_command` on the main app, e.g.
``app.command("semantics")(semantics_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["semantics_command"]


def semantics(
    run_dir: Path = typer.Argument(..., help="Run directory with attributions.npy and images.parquet."),
    factors: Optional[str] = typer.Option(
        None, "--factors", help="Comma-separated appearance factors, e.g. style,palette (default: all that vary)."),
    similarity: str = typer.Option("cosine", "--similarity", help="cosine | spearman | jaccard:K"),
    n_permutations: int = typer.Option(1000, "--n-permutations", help="Permutations per test."),
    top_k: int = typer.Option(20, "--top-k", help="Size of the top-k head sets."),
    cv_folds: int = typer.Option(5, "--cv-folds", help="Stratified folds of the linear probes."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the verdict."),
    seed: int = typer.Option(0, "--seed", help="Seed of permutations, folds and t-SNE."),
    as_json: bool = typer.Option(False, "--json", help="Print semantics.json instead of a summary."),
) -> None:
    """Is head selection governed by class or by appearance? Writes semantics.json and figures/ into RUN_DIR."""
    from headflow.errors import HeadflowError

    from .analysis import SemanticAnalysis

    names = None if factors is None else [f.strip() for f in factors.split(",") if f.strip()]
    try:
        result = SemanticAnalysis(similarity=similarity, factors=names, n_permutations=n_permutations,
                                  top_k=top_k, seed=seed, cv_folds=cv_folds, alpha=alpha).run(run_dir)
    except HeadflowError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(result.summary())
        typer.echo(f"wrote {run_dir / 'semantics.json'} and figures to {run_dir / 'figures'}")


semantics_command = semantics
