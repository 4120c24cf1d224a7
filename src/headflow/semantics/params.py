"""Parameters of SemanticAnalysis: the only table of its constraints and defaults."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..method import Params, field

SIMILARITY_CHOICES = "cosine, spearman, jaccard:K"


class SemanticParams(Params):
    """What defines a semantics analysis."""

    similarity: str = field("cosine", "cosine (of head-standardised vectors) | spearman | jaccard:K (of top-K "
                            "head sets).", expected=f"one of {SIMILARITY_CHOICES}")
    factors: list[str] | None = field(None, "Appearance factors to test (default: every factor that varies within "
                                      "classes).", expected="None or a non-empty list of distinct factor names")
    n_permutations: int = field(1000, "Permutations per test.", ge=1)
    top_k: int = field(20, "Size of the top-k head sets.", ge=1)
    seed: int = field(0, "Seed of the permutations, the probe folds and the t-SNE figure.", ge=0)
    cv_folds: int = field(5, "Stratified folds of the linear probes.", ge=2)
    significance_level: float = field(0.05, "Significance level of the verdict.", gt=0.0, lt=1.0)

    @field_validator("similarity")
    @classmethod
    def _similarity(cls, value: str) -> str:
        from .similarity import parse_similarity

        if parse_similarity(value) is None:
            raise ValueError("unknown similarity")
        return value

    @field_validator("factors")
    @classmethod
    def _factors(cls, value: Any) -> Any:
        if value is not None and (not value or not all(value) or len(set(value)) != len(value)):
            raise ValueError("factors must be distinct, non-empty names")
        return value
