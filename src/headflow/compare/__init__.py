"""Head maps across runs and models: ``CompareRuns().run([RUN_A, RUN_B, ...], out=DIR)`` → ``compare.html``."""

from .analysis import CompareRuns, ComparisonResult
from .params import CompareParams

__all__ = ["CompareParams", "CompareRuns", "ComparisonResult"]
