"""Parameters of HeadAttribution: one declarative table, checked at the top of ``run()``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import HeadflowError

DEFAULT_QUESTION = "What is the main object in the image? Answer in one word."


class AttributionParams(BaseModel):
    """What defines an attribution run's results (``n_masks=None`` resolves to ``max(512, 4N)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_masks: int | None = Field(None, ge=8)
    ablation_prob: float = Field(0.1, gt=0.0, lt=1.0)
    baseline: Literal["mean", "zero", "blank", "resample", "knockout"] = "mean"
    target: Literal["logit", "logprob", "margin", "prob"] = "logit"
    fit: Literal["ols", "ridge", "lasso"] = "ols"
    fit_alpha: float = Field(1.0, gt=0.0)
    n_val: int = Field(256, ge=8)
    seed: int = 0
    keep_wrong: bool = False
    question: str = DEFAULT_QUESTION


def validate_params(owner: str, **params) -> AttributionParams:
    """Build the parameters, turning pydantic's report into headflow's one-line error."""
    try:
        return AttributionParams(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        raise HeadflowError(f"The {name!r} parameter of {owner} is invalid: {err['msg']}. "
                            f"Got {err.get('input')!r} instead.") from None
