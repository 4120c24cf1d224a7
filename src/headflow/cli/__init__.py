"""The ``headflow`` command line.

Layout: :mod:`headflow.cli.options` generates each analysis command's options from the method's parameter
model and holds the options every command shares; :mod:`headflow.cli.analyses` has one command per
analysis; :mod:`headflow.cli.tools` the checks, the report and the model card; ``headflow data`` is
:mod:`headflow.data.cli`. Every command turns a library error into one line and exit code 2
(``headflow --debug COMMAND`` shows the traceback). Nothing here imports torch until a command runs.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from . import analyses, tools


class OneLineErrors(TyperGroup):
    """The command group: a usage error (an unknown option, a value of the wrong type) is one line on stderr
    and exit code 2, like every library error (see :func:`headflow.cli.options.one_line_errors`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # typer's usage errors (its own copy of click's)
            if type(exc).__name__ == "NoArgsIsHelpError":  # `headflow` alone: the help page
                exc.show()
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            command = f"headflow {ctx.command_path.split(' ', 1)[-1]} --help" if ctx is not None and ctx.parent \
                else "headflow --help"
            typer.echo(f"error: {exc.format_message()} (see '{command}')", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="headflow: which attention heads carry image information into an LVLM's answer.")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")) -> None:
    """headflow: which attention heads carry image information into an LVLM's answer."""
    os.environ["HEADFLOW_DEBUG"] = "1" if debug else "0"
    _one_line_warnings()


def _one_line_warnings() -> None:
    """headflow's warnings as ``warning: <message>`` lines on stderr (not Python's file:line format)."""
    import warnings

    from ..errors import HeadflowWarning

    plain = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, HeadflowWarning):
            return f"warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


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
