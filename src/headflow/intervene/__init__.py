"""The intervention engine: the only place headflow changes attention."""

from .attention import attention_scope
from .engine import Baseline, InterventionEngine, PreparedPrompt, RunOutput
from .spec import HeadRef, Intervention, Knockout

__all__ = ["Baseline", "HeadRef", "Intervention", "InterventionEngine", "Knockout", "PreparedPrompt", "RunOutput",
           "attention_scope"]
