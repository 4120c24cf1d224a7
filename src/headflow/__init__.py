"""headflow: which attention heads carry image information into an LVLM's answer.

Implements arXiv 2509.17588 inside Hugging Face transformers' own attention. Importing headflow
defines names only (lazily: torch and transformers load on first use); nothing is registered or
patched until an analysis runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

from .version import __version__

_EXPORTS = {
    "HeadflowError": "errors",
    "Baseline": "intervene", "HeadRef": "intervene", "Intervention": "intervene",
    "InterventionEngine": "intervene", "Knockout": "intervene", "PreparedPrompt": "intervene",
    "FamilyAdapter": "models", "LoadedModel": "models", "TokenGroups": "models", "load_model": "models",
    "register_adapter": "models", "load_adapter_file": "models",
    "HeadAttribution": "attribution", "HeadAttributionPatching": "attribution", "HeadAttributionHybrid": "attribution",
    "AttributionResult": "attribution", "Validation": "attribution",
    "ValidationResult": "attribution",
    "TokenFlow": "flow", "FlowResult": "flow",
    "SemanticAnalysis": "semantics", "SemanticResult": "semantics",
    "load_dataset": "data",
    "run_study": "study",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra=["__version__"])


if TYPE_CHECKING:  # pragma: no cover
    from .attribution import (AttributionResult, HeadAttribution, HeadAttributionHybrid, HeadAttributionPatching, Validation,
                              ValidationResult)
    from .data import load_dataset
    from .errors import HeadflowError
    from .flow import FlowResult, TokenFlow
    from .intervene import Baseline, HeadRef, Intervention, InterventionEngine, Knockout, PreparedPrompt
    from .models import FamilyAdapter, LoadedModel, TokenGroups, load_adapter_file, load_model, register_adapter
    from .report import write_report
    from .semantics import SemanticAnalysis, SemanticResult
    from .study import run_study
