"""The ``headflow`` command line.

Layout: :mod:`headflow.cli.options` generates each analysis command's options from the method's parameter
model and holds the options every command shares; :mod:`headflow.cli.analyses` has one command per
analysis; :mod:`headflow.cli.tools` the checks, the report and the model card; ``headflow data`` is
:mod:`headflow.data.cli`. Every command turns a library error into one line and exit code 2
(``headflow --debug COMMAND`` shows the traceback). Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import os

import typer

from . import analyses, tools

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="headflow: which attention heads carry image information into an LVLM's answer.")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")) -> None:
    """headflow: which attention heads carry image information into an LVLM's answer."""
    os.environ["HEADFLOW_DEBUG"] = "1" if debug else "0"


analyses.register(app)
tools.register(app)


def _mount_data() -> None:
    from ..data.cli import data_app

    app.add_typer(data_app, name="data")


_mount_data()


def main() -> None:  # pragma: no cover
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()


__all__ = ["app", "main"]
