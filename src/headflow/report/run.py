"""Read a study directory into one plain view for the report: its JSON files, its figures, what is missing.

Nothing here computes a result. The view only holds what the run wrote (``summary.json``,
``config.json``, ``validation.json``, ``flow/flow.json``, ``semantics.json``, ``study.json``) and
the PNG figures found under ``figures/`` and ``flow/figures/``. A part that is absent, or whose JSON
cannot be read, is recorded in :attr:`RunView.missing` / :attr:`RunView.errors` so the report can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HeadflowError

#: part name → JSON file (relative to the run directory) that marks it as done.
PART_FILES: dict[str, str] = {
    "attribution": "summary.json",
    "config": "config.json",
    "validation": "validation.json",
    "flow": "flow/flow.json",
    "semantics": "semantics.json",
    "study": "study.json",
}

#: section → (figure name, path relative to the run directory), in display order.
FIGURES: dict[str, tuple[tuple[str, str], ...]] = {
    "attribution": (("attribution_heatmap", "figures/attribution_heatmap.png"),),
    "lds": (("lds_hist", "figures/lds_hist.png"),),
    "validation": (("validation_curves", "figures/validation_curves.png"),),
    "attention": (("attribution_vs_attention", "figures/attribution_vs_attention.png"),),
    "flow": (("flow_curves", "flow/figures/flow_curves.png"),),
    "objects": (("flow_objects", "flow/figures/flow_objects.png"),
                ("flow_token_maps", "flow/figures/flow_token_maps.png")),
    "semantics": (("similarity_matrix", "figures/similarity_matrix.png"), ("embedding", "figures/embedding.png"),
                  ("class_heatmaps", "figures/class_heatmaps.png")),
}

FIGURE_DIRS = ("figures", "flow/figures")


@dataclass(frozen=True)
class RunView:
    """What a study directory holds, read once.

    Attributes
    ----------
    run_dir : Path
    parts : dict[str, dict]
        Parsed JSON per part name of :data:`PART_FILES` that exists and parses.
    missing : tuple of str
        Part names whose file is absent.
    errors : dict[str, str]
        Part name → why its file could not be read.
    figures : dict[str, Path]
        Relative path (``figures/lds_hist.png``) → absolute path, for every PNG in :data:`FIGURE_DIRS`.
    model_card : str or None
        Text of the embedded default model's ``MODEL_CARD.md`` when the run used that model.
    """

    run_dir: Path
    parts: dict[str, dict[str, Any]]
    missing: tuple[str, ...]
    errors: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    model_card: str | None = None

    def get(self, part: str) -> dict[str, Any] | None:
        return self.parts.get(part)

    def has(self, part: str) -> bool:
        return part in self.parts

    def figure(self, relative: str) -> Path | None:
        return self.figures.get(relative)

    @property
    def extra_figures(self) -> list[str]:
        """Figures present in the run directory that no section shows (relative paths, sorted)."""
        known = {rel for figs in FIGURES.values() for _, rel in figs}
        return sorted(rel for rel in self.figures if rel not in known)


def read_run(run_dir: str | Path) -> RunView:
    """Read ``run_dir``; raise :class:`HeadflowError` where it is not an attribution run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadflowError(f"{str(run_dir)!r} is not a directory. Pass a run directory written by "
                            "`headflow study --out DIR` or `headflow attribute --out DIR`.")
    if not (run_dir / PART_FILES["attribution"]).is_file():
        raise HeadflowError(f"{str(run_dir)!r} holds no summary.json, so it is not a finished attribution run. "
                            f"Run `headflow study --out {run_dir}` first.")
    parts: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    errors: dict[str, str] = {}
    for part, rel in PART_FILES.items():
        path = run_dir / rel
        if not path.is_file():
            missing.append(part)
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            errors[part] = f"{rel}: {exc}"
            continue
        if not isinstance(data, dict):
            errors[part] = f"{rel}: expected a JSON object, got {type(data).__name__}"
            continue
        parts[part] = data
    if "attribution" not in parts:
        raise HeadflowError(f"Cannot read {run_dir / PART_FILES['attribution']}: {errors.get('attribution')}.")
    figures = {}
    for sub in FIGURE_DIRS:
        directory = run_dir / sub
        if directory.is_dir():
            for path in sorted(directory.glob("*.png")):
                if path.is_file() and not path.name.startswith("."):
                    figures[f"{sub}/{path.name}"] = path
    return RunView(run_dir, parts, tuple(missing), errors, figures, _model_card(parts))


def model_card_path() -> Path:
    """Where the embedded default model's card lives (``headflow/zoo/default/MODEL_CARD.md``)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "default" / "MODEL_CARD.md"


def _model_card(parts: dict[str, dict[str, Any]]) -> str | None:
    """The embedded default model's card, where the run used ``--model default`` and the card exists."""
    names = {str(parts.get("study", {}).get("model", "")),
             str(parts.get("config", {}).get("spec", {}).get("model", ""))}
    from ..zoo import DEFAULT_MODEL_NAME

    if DEFAULT_MODEL_NAME not in names:
        return None
    card = model_card_path()
    try:
        return card.read_text() if card.is_file() else None
    except OSError:
        return None
