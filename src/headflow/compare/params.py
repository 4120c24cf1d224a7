"""Parameters of CompareRuns: the only table of its constraints and defaults."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..method import Params, field


class CompareParams(Params):
    """What defines a comparison of head maps across runs."""

    top_fractions: list[float] = field([0.01, 0.05, 0.1], "Fractions of heads whose share of the attribution mass "
                                       "is reported (the top 1 %, 5 %, 10 % of heads).",
                                       expected="a non-empty list of fractions in (0, 1]")
    top_k: int = field(10, "Size of the top-k head sets compared between runs of the same model.", ge=1)
    depth_bins: int = field(10, "Bins of the depth-normalised layer profile (layer l of L spans depths "
                            "[l/L, (l+1)/L]).", ge=2, le=1000)

    @field_validator("top_fractions", mode="before")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and (not value or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in value)):
            raise ValueError("top_fractions must be fractions in (0, 1]")
        return [float(f) for f in value] if isinstance(value, (list, tuple)) else value
