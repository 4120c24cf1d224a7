"""headflow: which attention heads carry image information into an LVLM's answer.

Implements arXiv 2509.17588 inside Hugging Face transformers' own attention. Importing headflow
defines names only; nothing is registered or patched until an analysis runs.
"""

from .errors import HeadflowError
from .intervene import Baseline, HeadRef, Intervention, InterventionEngine, Knockout, PreparedPrompt
from .models import FamilyAdapter, LoadedModel, TokenGroups, load_model, register_adapter

__version__ = "0.1.0"

__all__ = ["Baseline", "FamilyAdapter", "HeadRef", "HeadflowError", "Intervention", "InterventionEngine", "Knockout",
           "LoadedModel", "PreparedPrompt", "TokenGroups", "__version__", "load_model", "register_adapter"]
