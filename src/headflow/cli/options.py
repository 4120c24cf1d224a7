"""Command-line options generated from the methods' parameter models, and the options every command shares.

A method's options are never written by hand: :func:`params_command` reads its parameter model (each field's
default, help line, flag and type) and builds the typer options, so a default lives only in the model. The
options that are not a method's parameters — which model, which data, where to write, on which device, Ray —
are :data:`SHARED`, defined here once.

The shared ``--adapter FILE`` option (repeatable) is handled here once, for every command that takes it:
:func:`command` imports each file before the command runs (so its ``@register_adapter`` families are known
when the model loads) and names them in the environment variable ``HEADFLOW_ADAPTERS`` for the command's
duration, which Ray workers inherit (see :mod:`headflow.models.adapter`).

Where state lives: nothing here keeps state; the ``--debug`` flag is read from the environment variable
``HEADFLOW_DEBUG`` that the app's callback sets.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Union

import typer

from ..errors import HeadflowError
from ..method import Params, field_extra

DATA_HELP = "default | folder:PATH | coco:INSTANCES_JSON:IMAGES_DIR | hf:NAME_OR_PATH[:split]"
MODEL_HELP = "default | tiny:<family> | local path | hub id"
ADAPTER_HELP = ("A Python file defining a @register_adapter FamilyAdapter subclass (a family headflow does not "
                "ship); imported before the model loads. Repeat for several files.")
DEVICE_MAP_HELP = ("One model over several devices (needs accelerate): auto | balanced | balanced_low_0 | sequential, or "
                   "a JSON file {module name: device} (device: cuda:1, 1, cpu or disk). Replaces --device.")
MAX_MEMORY_HELP = "With --device-map: memory cap per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB."
RAY_HELP = ("Shard the per-image work over Ray workers: 'auto' (this machine's cluster), HOST:PORT (a head node) "
            "or 'local' (start one here). Off by default.")


def _option(default: Any, flag: str, help: str, annotation: Any, kind: str = "option") -> inspect.Parameter:
    name = flag.lstrip("-").split("/")[0].replace("-", "_")
    info = typer.Argument(default, help=help) if kind == "argument" else typer.Option(default, *flag.split(" "),
                                                                                       help=help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


#: Options shared by the commands (name -> parameter); each command picks the ones it takes.
SHARED: dict[str, inspect.Parameter] = {p.name: p for p in [
    _option("default", "--model", MODEL_HELP, str),
    _option(None, "--adapter", ADAPTER_HELP, Optional[list[Path]]),
    _option("default", "--data", DATA_HELP, str),
    _option(None, "--images", "Number of images (default: the dataset's).", Optional[int]),
    _option(0, "--data-seed", "Seed of the dataset (generator or subsample).", int),
    _option(..., "--out", "Run directory (created; re-running resumes).", Path),
    _option("cpu", "--device", "Device: cpu, cuda, cuda:1, mps, ...", str),
    _option(None, "--device-map", DEVICE_MAP_HELP, Optional[str]),
    _option(None, "--max-memory", MAX_MEMORY_HELP, Optional[str]),
    _option(None, "--offload-folder", "With --device-map: where weights mapped to 'disk' are kept.", Optional[Path]),
    _option(None, "--dtype", "Model dtype: float32, bfloat16, float16 (default: the model's).", Optional[str]),
    _option(None, "--ray", RAY_HELP, Optional[str]),
    _option(None, "--workers", "Ray workers (default: one per GPU group of the cluster, else one per CPU).",
            Optional[int]),
    _option(None, "--gpus-per-worker", "Ray: GPUs per worker; a worker with several splits its model replica over "
            "them (device map auto). Default 1 on a GPU cluster.", Optional[float]),
    _option(None, "--image-column", "hf: image column (default image).", Optional[str]),
    _option(None, "--label-column", "hf: label column (default label).", Optional[str]),
    _option(None, "--mask-column", "hf: optional object-mask column.", Optional[str]),
]}


def flag_of(name: str, info: Any) -> str:
    """The command-line flag of a parameter: its model's ``flag`` or ``--name-with-dashes``."""
    return field_extra(info, "flag") or "--" + name.replace("_", "-")


def _cli_type(annotation: Any) -> Any:
    """The type typer parses (lists, literals, unions and 'auto' come in as strings and are converted here)."""
    if annotation in (int, float, str, bool):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if _is_union(annotation) and len(args) == 1 and args[0] in (int, float, str):
        return Optional[args[0]]
    return Optional[str]


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def from_cli(name: str, info: Any, raw: Any, owner: str) -> Any:
    """Convert a command-line string to the parameter's Python value (pydantic checks it afterwards)."""
    if not isinstance(raw, str):
        return raw
    annotation = info.annotation
    args = typing.get_args(annotation)
    options = [a for a in args if a is not type(None)]
    if raw == "" and type(None) in args:
        return None
    if any(typing.get_origin(a) is list for a in options) or typing.get_origin(annotation) is list:
        item = next(typing.get_args(a)[0] for a in (*options, annotation) if typing.get_origin(a) is list)
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        try:
            return [item(p) for p in parts]
        except ValueError:
            raise HeadflowError(f"The '{flag_of(name, info)}' option of {owner} must be a comma-separated list of "
                                f"{item.__name__}s. Got {raw!r} instead.") from None
    literals = [v for a in options if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    if bool in options and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw in literals:
        return raw
    for number in (int, float):
        if number in options or any(typing.get_args(a)[:1] == (number,) for a in options):
            try:
                return number(raw)
            except ValueError:
                pass
    return raw


def method_options(params: type[Params], *, skip: tuple[str, ...] = (),
                   overrides: dict[str, inspect.Parameter] | None = None) -> list[inspect.Parameter]:
    """typer parameters for every field of ``params`` (defaults, help and flags from the model)."""
    out = []
    for name, info in params.model_fields.items():
        if name in skip:
            continue
        if overrides and name in overrides:
            out.append(overrides[name])
            continue
        default = info.get_default(call_default_factory=True)
        annotation = _cli_type(info.annotation)
        flag = flag_of(name, info)
        if annotation is bool:
            flag = f"{flag}/--no-{flag[2:]}" if default else flag
        elif annotation is Optional[str] and default is not None and not isinstance(default, str):
            default = _to_cli_text(default)
        help = info.description or ""
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                     default=typer.Option(default, *flag.split("/") if "/" in flag else [flag],
                                                          help=help)))
    return out


def _to_cli_text(value: Any) -> str:
    """A default as it would be typed: pairs as ``a:b,c:d``, lists comma-separated."""
    if isinstance(value, (list, tuple)):
        return ",".join(":".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in value)
    return str(value)


def params_from(params: type[Params], values: dict[str, Any], owner: str,
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The method's keyword arguments from the command line's values."""
    return {name: from_cli(name, info, values[name], owner) for name, info in params.model_fields.items()
            if name not in skip and name in values}


def command(app: typer.Typer, name: str, parameters: list[inspect.Parameter],
            help: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(**values)`` as command ``name`` with the given typer parameters.

    Every library error (:class:`HeadflowError`, and the ``OSError`` of a file the user named) becomes one
    line on stderr and exit code 2; ``headflow --debug`` shows the traceback instead. A command that takes
    :data:`SHARED` ``["adapter"]`` gets its files loaded first (:func:`user_adapters`); ``fn`` never sees it.
    A command that takes ``--device`` also takes ``--device-map``, ``--max-memory`` and ``--offload-folder``;
    ``fn`` sees them as one value, ``values["placement"]`` (:func:`placement`), which :func:`load_from` reads.
    """
    if SHARED["device"] in parameters:
        parameters = [*parameters, *(SHARED[n] for n in PLACEMENT_OPTIONS)]

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        def wrapper(**values: Any) -> None:
            with one_line_errors(), user_adapters(values.pop("adapter", None)):
                if "device" in values:
                    values["placement"] = placement(*(values.pop(n) for n in PLACEMENT_OPTIONS))
                fn(**values)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        ordered = sorted(parameters, key=lambda p: p.default is not inspect.Parameter.empty and
                         not isinstance(p.default, typer.models.ArgumentInfo))
        wrapper.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in ordered])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
        app.command(name, help=help or fn.__doc__)(wrapper)
        return fn

    return register


PLACEMENT_OPTIONS = ("device_map", "max_memory", "offload_folder")


def placement(device_map: str | None, max_memory: str | None, offload_folder: Path | None) -> dict[str, Any]:
    """The ``--device-map``/``--max-memory``/``--offload-folder`` options as :func:`~headflow.models.load_model`
    keyword arguments (a JSON file for the map is read here). Bad values are one line."""
    import json

    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise HeadflowError("--max-memory and --offload-folder place a model over devices; they need --device-map "
                                "(e.g. --device-map auto).")
        return {}
    mapping: Any = device_map
    if device_map.endswith(".json") or Path(device_map).expanduser().is_file():
        path = Path(device_map).expanduser()
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HeadflowError(f"Device map file {device_map!r} does not exist. Give a JSON file or one of auto, "
                                "balanced, balanced_low_0, sequential.") from None
        except json.JSONDecodeError as exc:
            raise HeadflowError(f"Device map file {device_map!r} is not valid JSON ({exc.msg} at line {exc.lineno}). "
                                'Write it as {"model.language_model.layers.0": "cuda:0", ...}.') from None
    memory = None
    if max_memory is not None:
        memory = {}
        for part in filter(None, (x.strip() for x in max_memory.split(","))):
            where, _, amount = part.partition("=")
            if not amount:
                raise HeadflowError(f"--max-memory must be DEVICE=AMOUNT pairs such as 0=70GiB,cpu=200GiB. Got "
                                    f"{max_memory!r} instead.")
            memory[int(where) if where.strip().isdigit() else where.strip()] = amount.strip()
    return {"device_map": mapping, "max_memory": memory,
            "offload_folder": str(offload_folder) if offload_folder is not None else None}


def load_from(values: dict[str, Any], spec: Any = None) -> Any:
    """Load the model a command's options name: ``--model`` (or ``spec``), ``--device`` or ``--device-map``,
    ``--dtype``."""
    from ..models import load_model

    return load_model(values["model"] if spec is None else spec, device=values["device"], dtype=values.get("dtype"),
                      **values.get("placement", {}))


@contextlib.contextmanager
def user_adapters(paths: list[Path] | None) -> Iterator[None]:
    """Import the ``--adapter`` files (their families join the registry) and name them in ``HEADFLOW_ADAPTERS``
    until the command ends, so that Ray workers load them too. Bad files are one line (see
    :func:`headflow.models.adapter.load_adapter_file`)."""
    if not paths:
        yield
        return
    from ..models.adapter import ADAPTERS_ENV, adapter_paths_from_env, load_adapter_file

    for path in paths:
        load_adapter_file(path)
    previous = os.environ.get(ADAPTERS_ENV)
    named = adapter_paths_from_env() + [str(Path(p).expanduser().resolve()) for p in paths]
    os.environ[ADAPTERS_ENV] = os.pathsep.join(dict.fromkeys(named))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ADAPTERS_ENV, None)
        else:
            os.environ[ADAPTERS_ENV] = previous


class one_line_errors:
    """Turn a library error into ``error: <message>`` and exit code 2 (the traceback with --debug)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit)):
            return False
        if os.environ.get("HEADFLOW_DEBUG") == "1":
            return False
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (HeadflowError, FileNotFoundError, PermissionError, IsADirectoryError,
                            NotADirectoryError)):
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2)
        # a bug, not bad input: still one line, with the way to the traceback
        typer.echo(f"error: unexpected {type(exc).__name__}: {message} (run 'headflow --debug ...' for the "
                   "traceback, and please report it)", err=True)
        raise typer.Exit(code=1)


def fail(message: str) -> None:
    """Stop the command with one line and exit code 2."""
    raise HeadflowError(message)
