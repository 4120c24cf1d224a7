"""Read a study directory into one plain view for the report: its result files, its figures, what is missing.

Nothing here computes a result. :data:`SOURCES` lists the result files the report can read (one entry per
file: name, path, whether the report needs it, which command writes it); :func:`read_run` reads every one
that exists into a :class:`~headflow.report.doc.Doc` and finds the PNG figures under :data:`FIGURE_DIRS`
(``figures/``, ``flow/figures/``, ``steering/figures/``, ``routing/figures/routing/``). A file that is absent, or
whose JSON cannot be read, is recorded in
:attr:`RunView.missing` / :attr:`RunView.errors` so the report can say so; only ``summary.json`` is required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HeadflowError
from .doc import Doc

__all__ = ["Source", "SOURCES", "SOURCE_BY_NAME", "RunView", "read_run", "model_card_path"]


@dataclass(frozen=True)
class Source:
    """One result file the report reads.

    Attributes
    ----------
    name : str
        What sections call it (``"validation"``).
    file : str
        Path relative to the run directory (``"validation.json"``).
    command : str
        The command that writes it, quoted where a section that needs it is not in the run.
    required : bool
        ``True`` only for ``summary.json``: without it the directory is not a run and :func:`read_run` raises.
        Every other source is optional at the run level; a section that needs an absent one is marked missing.
    """

    name: str
    file: str
    command: str
    required: bool = False


#: Every result file the report reads, in reading order.
SOURCES: tuple[Source, ...] = (
    Source("attribution", "summary.json", "headflow attribute --out DIR", required=True),
    Source("config", "config.json", "headflow attribute --out DIR"),
    Source("validation", "validation.json", "headflow validate DIR"),
    Source("flow", "flow/flow.json", "headflow flow --out DIR/flow"),
    Source("semantics", "semantics.json", "headflow semantics DIR"),
    Source("steering", "steering/steering.json", "headflow steer DIR"),
    Source("routing", "routing/routing.json", "headflow route --ask TYPE=QUESTION --ask ... --out DIR/routing"),
    Source("study", "study.json", "headflow study --out DIR"),
)
SOURCE_BY_NAME: dict[str, Source] = {s.name: s for s in SOURCES}

FIGURE_DIRS = ("figures", "flow/figures", "steering/figures", "routing/figures/routing")


@dataclass(frozen=True)
class RunView:
    """What a study directory holds, read once.

    Attributes
    ----------
    run_dir : Path
    docs : dict[str, Doc]
        Parsed JSON per source name of :data:`SOURCES` that exists and parses.
    missing : tuple of str
        Source names whose file is absent.
    errors : dict[str, str]
        Source name → why its file could not be read.
    figures : dict[str, Path]
        Relative path (``figures/lds_hist.png``) → absolute path, for every PNG in :data:`FIGURE_DIRS`.
    model_card : str or None
        Text of the embedded default model's ``MODEL_CARD.md`` when the run used that model.
    """

    run_dir: Path
    docs: dict[str, Doc]
    missing: tuple[str, ...]
    errors: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    model_card: str | None = None

    def has(self, source: str) -> bool:
        """Whether ``source`` was found and parsed."""
        return source in self.docs

    def doc(self, source: str) -> Doc:
        """The parsed file of ``source``; :class:`HeadflowError` where it is not in the run."""
        if source not in self.docs:
            raise HeadflowError(f"{SOURCE_BY_NAME[source].file} is not in {self.run_dir}.")
        return self.docs[source]

    def optional(self, source: str) -> Doc | None:
        """The parsed file of ``source``, or ``None`` where it is absent or unreadable."""
        if source not in SOURCE_BY_NAME:
            raise KeyError(f"unknown report source {source!r}; known: {', '.join(SOURCE_BY_NAME)}")
        return self.docs.get(source)

    def figure(self, relative: str) -> Path | None:
        return self.figures.get(relative)


def read_run(run_dir: str | Path) -> RunView:
    """Read ``run_dir``; raise :class:`HeadflowError` where it is not an attribution run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadflowError(f"{str(run_dir)!r} is not a directory. Pass a run directory written by "
                            "`headflow study --out DIR` or `headflow attribute --out DIR`.")
    for source in SOURCES:
        if source.required and not (run_dir / source.file).is_file():
            raise HeadflowError(f"{str(run_dir)!r} holds no {source.file}, so it is not a finished attribution run. "
                                f"Run `headflow study --out {run_dir}` first.")
    docs: dict[str, Doc] = {}
    missing: list[str] = []
    errors: dict[str, str] = {}
    for source in SOURCES:
        path = run_dir / source.file
        if not path.is_file():
            missing.append(source.name)
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            errors[source.name] = f"{source.file}: {exc}"
            continue
        if not isinstance(data, dict):
            errors[source.name] = f"{source.file}: expected a JSON object, got {type(data).__name__}"
            continue
        docs[source.name] = Doc(data, source.file)
    for source in SOURCES:
        if source.required and source.name not in docs:
            raise HeadflowError(f"Cannot read {run_dir / source.file}: {errors.get(source.name)}.")
    figures = {}
    for sub in FIGURE_DIRS:
        directory = run_dir / sub
        if directory.is_dir():
            for path in sorted(directory.glob("*.png")):
                if path.is_file() and not path.name.startswith("."):
                    figures[f"{sub}/{path.name}"] = path
    return RunView(run_dir, docs, tuple(missing), errors, figures, _model_card(docs))


def model_card_path() -> Path:
    """Where the embedded default model's card lives (``headflow/zoo/default/MODEL_CARD.md``)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "default" / "MODEL_CARD.md"


def _model_card(docs: dict[str, Doc]) -> str | None:
    """The embedded default model's card, where the run used ``--model default`` and the card exists."""
    from ..zoo import DEFAULT_MODEL_NAME

    names: set[Any] = set()
    if "study" in docs:
        names.add(docs["study"]["model"])
    if "config" in docs:
        names.add(docs["config"]["spec"]["model"])
    if DEFAULT_MODEL_NAME not in names:
        return None
    card = model_card_path()
    try:
        return card.read_text() if card.is_file() else None
    except OSError:
        return None
