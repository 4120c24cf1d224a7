"""What an analysis is in headflow: a parameter model, a method object and a result.

Every analysis (:class:`~headflow.attribution.HeadAttribution`, :class:`~headflow.attribution.Validation`,
:class:`~headflow.flow.TokenFlow`, :class:`~headflow.semantics.SemanticAnalysis`, and what comes later) has
the same three parts, in the manner of scikit-learn estimators and captum's one class per method:

* **A parameter model** (a subclass of :class:`Params`, a frozen pydantic model). It is the *only* table of
  the method's constraints and the *only* home of its defaults: the method's ``__init__`` signature, its
  ``run()`` checks, the run directory's recorded configuration and the command line (``headflow.cli``) are
  all derived from it. Fields marked ``runtime=True`` (batch size, progress bars) say *how* a run computes,
  not *what*: they are recorded but do not define the run's configuration.
* **A method object** (a subclass of :class:`Method`). ``__init__`` only stores the model and the requested
  parameters (unknown names are refused at once; values are checked at the top of ``run()``).
  ``run(data, *, out=None, runner=None) -> Result`` checks the parameters, checks the configuration against
  an existing run directory (a resume with a different configuration is refused with the list of what
  differs; a finished run with the same configuration is loaded, not recomputed), then computes. Requested
  values (``batch_size="auto"``) and resolved ones (the batch size used) are kept apart and both recorded.
* **A result** (a subclass of :class:`Result`): ``save(out)``, ``load(out)``, ``plot(figures_dir)``, and one
  provenance block of one shape (:func:`provenance`).

Where state lives: a method object holds the requested parameters and the model (or its spec) and nothing
else; everything a run computes lives in its result and, with ``out``, in its run directory.
"""

from __future__ import annotations

import inspect
import platform
import types
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Annotated

from .errors import HeadflowError
from .version import __version__

PAPER = "arXiv:2509.17588"

#: The question asked about every image unless a method is told otherwise (the paper's task).
DEFAULT_QUESTION = "What is the main object in the image? Answer in one word."

#: Rows per forward pass of the intervention engine.
DEFAULT_BATCH_SIZE = 64

BatchSize = Union[Annotated[int, Field(ge=1)], Literal["auto"]]


def field(default: Any, description: str, *, flag: str | None = None, runtime: bool = False,
          expected: str | None = None, **constraints: Any) -> Any:
    """A parameter: its default, its one-line help, and its constraints (pydantic ``Field`` keywords).

    ``flag`` names the command-line option when it is not ``--<name-with-dashes>``; ``runtime=True`` marks a
    parameter that changes how a run computes but not its results (excluded from the configuration check);
    ``expected`` says what a valid value is where the type and constraints do not (used in the error).
    """
    extra: dict[str, Any] = {}
    if flag is not None:
        extra["flag"] = flag
    if runtime:
        extra["runtime"] = True
    if expected is not None:
        extra["expected"] = expected
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


def field_extra(info: Any, key: str, default: Any = None) -> Any:
    """A field's headflow metadata (``flag``, ``runtime``, ``expected``)."""
    extra = info.json_schema_extra
    return extra.get(key, default) if isinstance(extra, dict) else default


def expected_value(info: Any) -> str:
    """What a valid value of a field is, in words: "an int in [1, inf)", "one of ols, ridge, lasso", ..."""
    import annotated_types as at
    import typing

    explicit = field_extra(info, "expected")
    if explicit:
        return explicit
    low = high = None
    low_open = high_open = False
    for m in info.metadata:
        if isinstance(m, at.Ge):
            low = m.ge
        elif isinstance(m, at.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, at.Le):
            high = m.le
        elif isinstance(m, at.Lt):
            high, high_open = m.lt, True
        elif isinstance(m, at.MinLen) and m.min_length >= 1:
            return "a non-empty str"

    def words(tp: Any) -> str:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            return "one of " + ", ".join(str(a) for a in args)
        if origin in (Union, types.UnionType):
            return " or ".join("None" if a is type(None) else words(a) for a in args)
        if origin is Annotated:
            return words(args[0])
        if tp is bool:
            return "a bool"
        if tp in (int, float):
            name = tp.__name__
            if low is None and high is None:
                return f"an {name}" if name == "int" else f"a {name}"
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            bracket = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
            return f"{'an' if name == 'int' else 'a'} {name} in {bracket}"
        if tp is str:
            return "a str"
        if origin in (list, tuple):
            item = args[0] if args else None
            return f"a list of {item.__name__}s" if isinstance(item, type) else "a list"
        return getattr(tp, "__name__", str(tp))

    return words(info.annotation)


class Params(BaseModel):
    """Base of every method's parameter model: frozen, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def runtime_fields(cls) -> tuple[str, ...]:
        return tuple(name for name, info in cls.model_fields.items() if field_extra(info, "runtime"))

    def spec(self) -> dict[str, Any]:
        """The parameters that define the results, JSON-safe (what a run directory's configuration holds)."""
        runtime = set(self.runtime_fields())
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in runtime}


class BatchParams(Params):
    """The batch size of a method that runs the model (how it computes, not what)."""

    batch_size: BatchSize = field(DEFAULT_BATCH_SIZE, "Rows per forward pass, or 'auto' (on a GPU: the largest "
                                  "that fits; on a CPU: the fastest of a few).", runtime=True,
                                  expected="an int in [1, inf) or 'auto'")


class EngineParams(BatchParams):
    """Parameters shared by every method that asks the model about images through the intervention engine."""

    question: str = field(DEFAULT_QUESTION, "The question asked about every image.", min_length=1)
    keep_wrong: bool = field(False, "Keep images the clean model answers wrongly (dropped by default).")
    aliases: bool = field(True, "Count a label's aliases (COCO's full names, 'television' for 'tv') as correct "
                          "answers; the target token is always the label's own.")


def check_params(model: type[Params], owner: str, values: dict[str, Any]) -> Params:
    """Build ``model`` from ``values``, turning pydantic's report into headflow's one-line error:

    "The 'n_masks' parameter of HeadAttribution must be None or an int in [8, inf). Got 0 instead."
    """
    plain = {k: v.item() if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 else v
             for k, v in values.items()}  # numpy scalars count as the Python numbers they hold
    try:
        return model(**plain)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, HeadflowError):  # a validator's own message says it best
            raise HeadflowError(str(cause)) from None
        if name not in model.model_fields:
            raise HeadflowError(f"{owner} has no parameter {name!r}. Its parameters: "
                                f"{', '.join(model.model_fields)}.") from None
        raise HeadflowError(f"The {name!r} parameter of {owner} must be {expected_value(model.model_fields[name])}. "
                            f"Got {values.get(name, err.get('input'))!r} instead.") from None


def versions() -> dict[str, str]:
    """Versions of headflow and of the libraries that compute its numbers."""
    import numpy

    out = {"headflow": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("torch", "transformers", "scipy", "sklearn"):
        module = __import__("sys").modules.get(name)
        if module is not None:
            out["scikit_learn" if name == "sklearn" else name] = getattr(module, "__version__", "?")
    return out


def available_memory() -> int | None:
    """Bytes of memory this machine has free now (``sysconf``), or ``None`` where it cannot be read."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit up to GiB that keeps it at least 1 (``1.5 GiB``, ``12.0 KiB``)."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_memory(needed: int, what: str, fix: str) -> None:
    """Refuse, before any work, a computation that needs more memory than this machine has free.

    ``needed`` bytes for ``what`` (e.g. "512 masks x 48 heads x 96 images for the fit"); ``fix`` says what to
    make smaller. Where the free memory cannot be read (:func:`available_memory` is ``None``), nothing is refused.

    Raises
    ------
    HeadflowError
        "{what} needs about 1.2 GiB but 512.0 MiB is free; {fix}."
    """
    available = available_memory()
    if available is not None and needed > available:
        raise HeadflowError(f"{what} needs about {format_bytes(needed)} but {format_bytes(available)} is free; "
                            f"{fix}.")


def provenance(method: str, *, params: dict[str, Any], resolved: dict[str, Any], model: dict | None = None,
               data: dict | None = None, spec_hash: str | None = None,
               timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The one provenance block every result carries (same keys for every method)."""
    return {"method": method, "paper": PAPER, "params": params, "resolved": resolved, "model": model,
            "data": data, "spec_hash": spec_hash, "versions": versions(), "timings": timings or {}}


class Result:
    """Base of every analysis result: it saves, loads and plots itself and carries :func:`provenance`."""

    def save(self, out: str | Path) -> Path:  # pragma: no cover - every result overrides
        raise NotImplementedError

    @classmethod
    def load(cls, out: str | Path) -> "Result":  # pragma: no cover - every result overrides
        raise NotImplementedError

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:  # pragma: no cover
        raise NotImplementedError


class Method:
    """Base of every analysis: ``Method(model, **params).run(data, *, out=None, runner=None) -> Result``.

    Subclasses set ``Params`` (their parameter model) and ``stage`` (the sub-directory of ``out`` that holds
    their configuration, ``""`` for the run directory itself) and implement ``run``.
    """

    Params: ClassVar[type[Params]]
    #: sub-directory of the run directory holding this method's ``config.json`` ("" = the directory itself)
    stage: ClassVar[str] = ""
    #: whether run() needs a model (SemanticAnalysis reads a finished run and needs none)
    needs_model: ClassVar[bool] = True

    def __init__(self, model: Any = None, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.Params.model_fields))
        if unknown:
            raise HeadflowError(f"{type(self).__name__} has no parameter {unknown[0]!r}. Its parameters: "
                                f"{', '.join(self.Params.model_fields)}.")
        self.model = model
        self.requested = dict(params)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__ and "__init__" not in cls.__dict__:
            cls.__init__ = _init_with_signature(cls)  # type: ignore[method-assign]

    def check(self) -> Params:
        """The checked parameters (one clear error for the first bad value)."""
        return check_params(self.Params, type(self).__name__, self.requested)

    def get_params(self) -> dict[str, Any]:
        """The parameters, requested values over defaults, JSON-safe."""
        return self.check().model_dump(mode="json")

    def __repr__(self) -> str:
        fields = self.Params.model_fields
        shown = {name: self.requested.get(name, info.get_default(call_default_factory=True))
                 for name, info in fields.items() if not field_extra(info, "runtime")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def config_dir(self, out: str | Path) -> Path:
        return Path(out) / self.stage if self.stage else Path(out)

    def run(self, data: Any, *, out: str | Path | None = None, runner: Any = None) -> Result:  # pragma: no cover
        raise NotImplementedError


def _init_with_signature(cls: type[Method]):
    """An ``__init__`` whose signature lists the parameter model's fields with their defaults (for help())."""

    def __init__(self, model: Any = None, **params: Any) -> None:
        Method.__init__(self, model, **params)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = [self_param]
    if cls.needs_model:
        parameters.append(inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
    for name, info in cls.Params.model_fields.items():
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info.get_default(
            call_default_factory=True), annotation=info.annotation))
    __init__.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    __init__.__doc__ = f"Store the model and the parameters of {cls.__name__} (see {cls.Params.__name__})."
    __init__.__qualname__ = f"{cls.__name__}.__init__"
    return __init__
