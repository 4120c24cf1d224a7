"""Parameters of HeadAttribution and Validation: the only table of their constraints and defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from ..answers import TARGETS
from ..method import BatchParams, EngineParams, field

#: What an ablated head's text queries see at image positions (``headflow.per_image.image_baseline``).
BASELINES = ("mean", "zero", "blank", "resample", "knockout")

FITS = ("ols", "ridge", "lasso")

Baseline = Literal[BASELINES]  # type: ignore[valid-type]
Target = Literal[TARGETS]  # type: ignore[valid-type]


class AttributionParams(EngineParams):
    """What defines an attribution run (``n_masks=None`` resolves to ``max(512, 4N)`` for ``N`` heads)."""

    n_masks: int | None = field(None, "Training masks (default max(512, 4N) for N heads).", flag="--masks", ge=8)
    ablation_prob: float = field(0.1, "Bernoulli probability that a head is ablated in a mask.", gt=0.0, lt=1.0)
    baseline: Baseline = field("mean", "What an ablated head's text queries see at image positions: "
                               "mean | zero | blank | resample | knockout.")
    target: Target = field("logit", "The scalar read from the answer: logit | logprob | margin | prob | sequence "
                           "(the whole answer word's summed log-probability, teacher-forced).")
    fit: Literal[FITS] = field("ols", "The linear fit: ols | ridge | lasso.")
    penalty: float = field(1.0, "Regularisation strength of ridge and lasso.", gt=0.0)
    n_val: int = field(256, "Held-out masks for the linear datamodeling score (LDS).", flag="--val-masks", ge=8)
    seed: int = field(0, "Seed of the mask design.")


class ValidationParams(BatchParams):
    """What defines a validation of an attribution run (its masks, baseline and target are the run's)."""

    k_grid: list[int] | None = field(None, "Numbers of top heads k to evaluate (default: every k for small "
                                     "models, ~33 points otherwise).")
    seed: int = field(0, "Seed of the random ranking.")
    max_images: int | None = field(None, "Validate on the first used images only (default: all).", ge=1)

    @field_validator("k_grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else [getattr(k, "item", lambda: k)() for k in value]
