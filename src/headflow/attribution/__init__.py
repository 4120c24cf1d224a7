"""Head attribution (F3/F4) and its validation (F5)."""

from .answers import resolve_answer_id, target_values
from .core import AttributionResult, HeadAttribution, sample_masks
from .validate import Validation, ValidationResult

__all__ = ["AttributionResult", "HeadAttribution", "Validation", "ValidationResult", "resolve_answer_id",
           "sample_masks", "target_values"]
