"""Head attribution (F3/F4: regression, attribution patching, and their hybrid) and its validation (F5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# lazy, as the top-level package: the CLI reads the parameter models without loading torch
_EXPORTS = {"AttributionParams": "params", "ValidationParams": "params", "AttributionResult": "core",
            "HeadAttribution": "core", "HeadAttributionPatching": "patching", "PatchingParams": "params",
            "HeadAttributionHybrid": "hybrid", "HybridParams": "params",
            "sample_masks": "core", "Validation": "validate",
            "ValidationResult": "validate", "ablation_prob_sweep": "sweep"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .core import AttributionResult, HeadAttribution, sample_masks
    from .hybrid import HeadAttributionHybrid
    from .params import AttributionParams, HybridParams, PatchingParams, ValidationParams
    from .patching import HeadAttributionPatching
    from .sweep import ablation_prob_sweep
    from .validate import Validation, ValidationResult
