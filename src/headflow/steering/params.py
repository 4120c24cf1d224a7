"""Parameters of HeadSteering: the only table of its constraints and defaults."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..errors import HeadflowError
from ..method import BatchParams, field

#: image corruptions and what their parameter is (``noise:0.1``, ``blur:2``, ``occlude:mask``)
CORRUPTIONS = {"noise": "the std of Gaussian pixel noise on the [0, 1] scale, in (0, 1]",
               "blur": "the radius in pixels of a Gaussian blur, > 0",
               "occlude": "mask (the object's pixels) or box (its bounding box), filled with the image's mean colour"}


def parse_corruption(text: str) -> tuple[str, float | str]:
    """``"noise:0.1"`` → ``("noise", 0.1)``; one-line error for anything else."""
    kind, _, raw = str(text).partition(":")
    kind = kind.strip()
    expected = "; ".join(f"{k}:X with X {v}" for k, v in CORRUPTIONS.items())
    if kind not in CORRUPTIONS or not raw:
        raise HeadflowError(f"A corruption must be KIND:PARAM with {expected}. Got {text!r} instead.")
    if kind == "occlude":
        if raw not in ("mask", "box"):
            raise HeadflowError(f"occlude takes mask or box (occlude:mask). Got {text!r} instead.")
        return kind, raw
    try:
        value = float(raw)
    except ValueError:
        raise HeadflowError(f"A corruption must be KIND:PARAM with {expected}. Got {text!r} instead.") from None
    if not (value > 0 and value < float("inf")) or (kind == "noise" and value > 1):
        raise HeadflowError(f"The parameter of {kind} must be {CORRUPTIONS[kind]}. Got {text!r} instead.")
    return kind, value


class SteeringParams(BatchParams):
    """What defines a steering sweep over an attribution run (its question, baseline-free: factor 0 hides the
    image from the steered heads, the knockout ablation)."""

    factors: list[float] = field([0.0, 0.5, 1.0, 1.5, 2.0], "Steering factors: each steered head's attention "
                                 "weights on the image are multiplied by the factor and renormalised (1 = identity, "
                                 "0 = knockout ablation).", expected="a non-empty list of floats >= 0")
    corrupt: list[str] = field(["noise:0.1", "blur:2"], "Degraded images, besides the clean ones: noise:STD, "
                               "blur:RADIUS, occlude:mask|box (the object's mask or box filled with the mean colour).",
                               expected="a list of corruptions such as noise:0.1,blur:2,occlude:mask")
    k: int = field(5, "Number of heads steered per ranking (top-k attribution, top-k attention weight, k random).",
                   ge=1)
    seed: int = field(0, "Seed of the random heads and of the noise.")
    max_images: int | None = field(None, "Steer on the first used images only (default: all).", ge=1)

    @field_validator("factors", mode="before")
    @classmethod
    def _factors(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < float("inf")
                                    for f in value):
                raise ValueError("factors must be finite numbers >= 0")
            return [float(f) for f in value]
        return value

    @field_validator("corrupt", mode="before")
    @classmethod
    def _corrupt(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            out = []
            for text in value:
                kind, param = parse_corruption(text)
                out.append(f"{kind}:{param:g}" if isinstance(param, float) else f"{kind}:{param}")
            if len(set(out)) != len(out):
                raise HeadflowError(f"The corruption {next(c for c in out if out.count(c) > 1)!r} is given twice.")
            return out
        return value
