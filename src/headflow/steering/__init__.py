"""Head steering: scale the found heads' reading of the image (issue 17)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"HeadSteering": "analysis", "SteeringResult": "analysis", "corrupt_image": "analysis",
            "SteeringParams": "params"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import HeadSteering, SteeringResult, corrupt_image
    from .params import SteeringParams
