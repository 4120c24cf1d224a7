"""Semantic content vs appearance (docs/method.md F8, claim C2 of arXiv 2509.17588).

Is the choice of heads governed by what the image shows (its class) or by how it looks (style,
palette, ...)? :class:`SemanticAnalysis` compares per-image head-attribution vectors pair by pair,
runs permutation tests and linear probes, and returns a frozen :class:`SemanticResult`.

>>> from headflow.semantics import SemanticAnalysis
>>> SemanticAnalysis(similarity="jaccard:10")
SemanticAnalysis(similarity='jaccard:10', factors=None, n_permutations=1000, top_k=20, seed=0, cv_folds=5, significance_level=0.05)

:class:`QuestionRouting` asks the same images several types of question and runs the same analysis with the
question type in the role of the class and the image in the role of the factor: does a different question route the
same image through different heads?

The command line (``headflow semantics RUN_DIR``) lives in :mod:`headflow.semantics.cli`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# lazy, as the top-level package: `headflow.semantics.cli` (imported by `headflow --help`) needs no scipy/sklearn
_EXPORTS = {"SemanticAnalysis": "analysis", "SemanticParams": "params", "read_run_dir": "analysis", "FactorSummary": "result",
            "SemanticResult": "result", "SimilaritySpec": "similarity", "parse_similarity": "similarity",
            "similarity_matrix": "similarity", "PermutationTest": "stats", "ProbeScore": "stats",
            "QuestionRouting": "routing", "RoutingResult": "routing", "RoutingParams": "params"}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .analysis import SemanticAnalysis, read_run_dir
    from .params import RoutingParams, SemanticParams
    from .routing import QuestionRouting, RoutingResult
    from .result import FactorSummary, SemanticResult
    from .similarity import SimilaritySpec, parse_similarity, similarity_matrix
    from .stats import PermutationTest, ProbeScore
