"""``headflow data`` sub-commands (a typer sub-app; the main CLI mounts it as ``data``)."""

from __future__ import annotations

from pathlib import Path

import typer

from headflow.data import export_folder, load_dataset
from headflow.errors import HeadflowError

data_app = typer.Typer(help="Datasets: export the embedded default set as an image folder.", no_args_is_help=True)


@data_app.callback()
def _data() -> None:
    """Datasets: export the embedded default set as an image folder."""


@data_app.command("export")
def export(
    out: Path = typer.Argument(..., help="Output folder (images/, masks/, manifest.csv)."),
    n: int = typer.Option(64, "--n", min=1, help="Number of examples."),
    seed: int = typer.Option(0, "--seed", min=0, help="Generator seed."),
    spec: str = typer.Option("default", "--spec", help="Dataset spec: 'default' or 'folder:PATH'."),
) -> None:
    """Write N examples of a dataset to OUT as an image folder."""
    try:
        ds = load_dataset(spec, n=n, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--spec") from err
    try:
        path = export_folder(ds, out)
    except HeadflowError as err:  # a file in the way, no space, read-only: one line, exit code 2
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {len(ds)} examples to {path}")


if __name__ == "__main__":  # pragma: no cover
    data_app()
