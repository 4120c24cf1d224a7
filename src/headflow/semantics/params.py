"""Parameters of SemanticAnalysis: the only table of its constraints and defaults."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from ..errors import HeadflowError
from ..method import Params, check_params, field

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


class RoutingParams(Params):
    """What defines a question-routing run (:class:`~headflow.semantics.routing.QuestionRouting`)."""

    questions: dict[str, str] = field(..., "Question types and the question of each, e.g. {'class': 'What is the "
                                      "main object in the image?', 'colour': 'What colour is the main object?'}.",
                                      expected="a dict of at least 2 question types to non-empty questions")
    attribution: dict[str, Any] = field({}, "HeadAttribution parameters for every question type (its defaults "
                                        "otherwise; each type's question is set from 'questions').")
    semantics: dict[str, Any] = field({}, "SemanticAnalysis parameters (its defaults otherwise; the factor is "
                                      "always the image).")

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        if len(value) < 2 or not all(str(k).strip() and str(q).strip() for k, q in value.items()):
            raise HeadflowError(f"The 'questions' parameter of QuestionRouting must map at least 2 question types to "
                                f"non-empty questions. Got {value!r} instead.")
        return value

    @field_validator("attribution")
    @classmethod
    def _attribution(cls, value: Any) -> Any:
        from ..attribution.params import AttributionParams

        return _passed_on(value, "attribution", "HeadAttribution", AttributionParams, "question", "set per type")

    @field_validator("semantics")
    @classmethod
    def _semantics(cls, value: Any) -> Any:
        return _passed_on(value, "semantics", "SemanticAnalysis", SemanticParams, "factors", "always the image")


def _passed_on(value: dict[str, Any], name: str, method: str, params: type[Params], fixed: str, why: str) -> dict:
    """``value`` if it holds only ``method``'s parameters other than ``fixed`` (else one line naming the strays)."""
    unknown = sorted((set(value) - set(params.model_fields)) | ({fixed} & set(value)))
    if unknown:
        raise HeadflowError(f"The {name!r} parameter of QuestionRouting takes {method}'s parameters except {fixed} "
                            f"({why}); {', '.join(map(repr, unknown))} is not one. Use: "
                            f"{', '.join(f for f in params.model_fields if f != fixed)}.")
    check_params(params, method, dict(value))  # and their values: one line naming the method's parameter
    return value
