"""Parameters of HeadAttribution, HeadAttributionPatching, HeadAttributionHybrid and Validation: the only table of
their constraints and defaults (what the attribution methods share is :class:`HeadParams`, :class:`MaskParams` and
:class:`MixParams`, written once)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from ..answers import TARGETS
from ..errors import HeadflowError
from ..method import BatchParams, EngineParams, field

#: What an ablated head's text queries see at image positions (``headflow.per_image.image_baseline``).
BASELINES = ("mean", "zero", "blank", "resample", "knockout")

FITS = ("ols", "ridge", "lasso")

Baseline = Literal[BASELINES]  # type: ignore[valid-type]
Target = Literal[TARGETS]  # type: ignore[valid-type]


#: How attribution patching mixes a head's clean and ablated reading of the image (``InterventionEngine.mixed``).
MIXES = ("output", "kv")


class HeadParams(EngineParams):
    """What every head-attribution method shares: what an ablated head sees, and what is read from the answer."""

    baseline: Baseline = field("mean", "What an ablated head's text queries see at image positions: "
                               "mean | zero | blank | resample | knockout.")
    target: Target = field("logit", "The scalar read from the answer: logit | logprob | margin | prob | sequence "
                           "(the whole answer word's summed log-probability, teacher-forced).")


class MaskParams(HeadParams):
    """What every regression over random head-ablation masks shares (the regression and the hybrid)."""

    ablation_prob: float = field(0.1, "Bernoulli probability that a head is ablated in a mask.", gt=0.0, lt=1.0)
    fit: Literal[FITS] = field("ols", "The linear fit: ols | ridge | lasso.")
    penalty: float = field(1.0, "Regularisation strength of ridge and lasso.", gt=0.0)
    n_val: int = field(256, "Held-out masks for the linear datamodeling score (LDS).", flag="--val-masks", ge=8)
    seed: int = field(0, "Seed of the mask design.")
    n_masks: int | None = field(None, "Training masks (default max(512, 4N) for N heads; with --method hybrid "
                                "max(64, 4M) for the M screened heads).", flag="--masks", ge=8)


class AttributionParams(MaskParams):
    """What defines an attribution run (``n_masks=None`` resolves to ``max(512, 4N)`` for ``N`` heads)."""


class MixParams(HeadParams):
    """How attribution patching mixes a head's clean and ablated reading of the image (patching and hybrid)."""

    mix: Literal[MIXES] = field("output", "How the coefficient between a head's clean (0) and ablated (1) reading "  # type: ignore[valid-type]
                                "of the image mixes: output (the head's output; its attention change exact, "
                                "AtP*) | kv (the image keys/values it reads; plain AtP, not with --baseline "
                                "knockout).")

    @model_validator(mode="after")
    def _kv_needs_keys(self) -> "MixParams":
        if self.mix == "kv" and self.baseline == "knockout":
            raise HeadflowError("mix='kv' (--mix kv) interpolates image keys/values towards the baseline's, and the "
                                "knockout baseline has none; use mix='output' or another baseline.")
        return self


class PatchingParams(MixParams):
    """What defines an attribution-patching run (one forward and one backward pass per image)."""

    n_check: int = field(4, "Images (the first used ones) on which the estimate is checked against the exact "
                         "single-head ablation effects (Spearman per image, in summary.json); 0 skips.", ge=0)


class HybridParams(MaskParams, MixParams):
    """What defines a hybrid run: attribution patching screens the heads, the regression fits the screened ones
    (``n_masks=None`` resolves to ``max(64, 4M)`` for ``M`` screened heads)."""

    screen_coverage: float = field(0.99, "Keep the fewest heads whose patching estimate (mean |attribution| over "
                                   "images) covers this fraction of the total; 1 keeps every head.", gt=0.0, le=1.0)
    screen_heads: int | None = field(None, "Keep this many top heads of the patching estimate instead "
                                     "(overrides --screen-coverage).", ge=1)


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
