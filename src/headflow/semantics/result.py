"""The frozen result of :class:`~headflow.semantics.SemanticAnalysis` and its on-disk form.

On disk a result is two files in one directory, both written atomically (temporary file, then
``os.replace``): ``semantics.json`` (every number, human-readable) and ``semantics_arrays.npz``
(similarity matrix, attribution vectors, per-class maps, labels and factor values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import HeadflowError
from ..method import Result
from ..store import read_json, save_npz, verify_file, write_json
from .stats import PermutationTest, ProbeScore

__all__ = ["FactorSummary", "SemanticResult", "JSON_NAME", "ARRAYS_NAME"]

JSON_NAME = "semantics.json"
ARRAYS_NAME = "semantics_arrays.npz"
SCHEMA_VERSION = 1

Head = tuple[int, int]


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN/inf become ``null``."""
    return None if x is None or not math.isfinite(x) else float(x)


def _unnum(x: float | None) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class FactorSummary:
    """Pair similarities and permutation tests for one appearance factor.

    Attributes
    ----------
    levels : tuple of str
        Distinct values of the factor.
    mean : dict[str, float]
        Mean similarity of ``within_class`` (same class, different value of this factor),
        ``within_appearance`` (different class, same value), ``between`` (different both) and
        ``same_both`` pairs.
    n_pairs : dict[str, int]
        Unordered pair counts per kind.
    tests : dict[str, PermutationTest]
        ``class_vs_appearance``, ``class_vs_between``, ``appearance_vs_between``.
    verdict : str
        ``"class"``, ``"appearance"`` or ``"neither"`` for this factor.
    """

    levels: tuple[str, ...]
    mean: dict[str, float]
    n_pairs: dict[str, int]
    tests: dict[str, PermutationTest]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "mean_similarity": {k: _num(v) for k, v in self.mean.items()},
            "n_pairs": dict(self.n_pairs),
            "tests": {name: {"difference": _num(t.difference), "z": _num(t.z), "cohens_d": _num(t.cohens_d),
                             "p_value": _num(t.p_value), "n_permutations": t.n_permutations}
                      for name, t in self.tests.items()},
            "verdict": self.verdict,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FactorSummary":
        tests = {name: PermutationTest(difference=_unnum(t["difference"]), z=_unnum(t["z"]),
                                       cohens_d=_unnum(t["cohens_d"]), p_value=_unnum(t["p_value"]),
                                       n_permutations=int(t["n_permutations"]))
                 for name, t in d["tests"].items()}
        return cls(levels=tuple(d["levels"]), mean={k: _unnum(v) for k, v in d["mean_similarity"].items()},
                   n_pairs={k: int(v) for k, v in d["n_pairs"].items()}, tests=tests, verdict=d["verdict"])


@dataclass(frozen=True, eq=False)
class SemanticResult(Result):
    """Class vs appearance analysis of per-image head attributions (arXiv 2509.17588, docs/method.md F8).

    Attributes
    ----------
    n_images, n_layers, n_heads : int
    classes : tuple of str
        Distinct class names (sorted).
    labels : tuple of str, length n_images
        Class of each image.
    factor_values : dict[str, tuple of str]
        Value of each analysed appearance factor per image.
    overall_factor : str
        The factor behind the headline numbers (``style`` if analysed, else the first factor).
    within_class_similarity : float
        Mean similarity of same-class pairs that differ in ``overall_factor``.
    within_appearance_similarity : float
        Mean similarity of different-class pairs that share ``overall_factor``.
    between_similarity : float
        Mean similarity of pairs that differ in both.
    p_class_vs_appearance : float
        Two-sided permutation p-value of ``within_class - within_appearance`` (overall factor).
    verdict : str
        Claim C2: ``"class"``, ``"appearance"`` or ``"neither"`` (overall factor, at ``significance_level``).
    per_factor : dict[str, FactorSummary]
    probes : dict[str, dict[str, ProbeScore]]
        ``{target: {representation: ProbeScore}}``; targets are ``class`` and each factor,
        representations ``attribution`` and each control.
    topk_jaccard : dict[str, float]
        Mean Jaccard of per-image top-k head sets: ``within_class``, ``across_class``,
        ``within_appearance``, ``across_appearance``.
    shared_heads : tuple of (layer, head)
        Heads in every class's top-k (of the class-mean map).
    class_specific_heads : dict[str, tuple of (layer, head)]
        Per class, heads in its top-k and in no other class's.
    parameters : dict
        Requested parameters.
    resolved : dict
        Resolved parameters (``factors_``, ``top_k_``, ``similarity_``, skipped factors, ...).
    provenance : dict
        Method, schema version, library versions, source directory.
    similarity : ndarray of shape (n_images, n_images)
    vectors : ndarray of shape (n_images, n_layers * n_heads)
        Raw attribution vectors, flattened layer-major.
    class_maps : ndarray of shape (n_classes, n_layers, n_heads)
        Mean attribution per class, in the order of ``classes``.
    """

    n_images: int
    n_layers: int
    n_heads: int
    classes: tuple[str, ...]
    labels: tuple[str, ...]
    factor_values: dict[str, tuple[str, ...]]
    overall_factor: str
    within_class_similarity: float
    within_appearance_similarity: float
    between_similarity: float
    p_class_vs_appearance: float
    verdict: str
    per_factor: dict[str, FactorSummary]
    probes: dict[str, dict[str, ProbeScore]]
    topk_jaccard: dict[str, float]
    shared_heads: tuple[Head, ...]
    class_specific_heads: dict[str, tuple[Head, ...]]
    parameters: dict[str, Any]
    resolved: dict[str, Any]
    provenance: dict[str, Any]
    similarity: NDArray[np.float64]
    vectors: NDArray[np.float32]
    class_maps: NDArray[np.float64]

    # ------------------------------------------------------------------ views
    @property
    def probe_accuracy(self) -> dict[str, dict[str, float | None]]:
        """``{target: {"attribution": acc, "chance": c, "<control>": acc, ...}}``."""
        out: dict[str, dict[str, float | None]] = {}
        for target, reps in self.probes.items():
            first = reps["attribution"]
            out[target] = {"attribution": first.accuracy, "chance": first.chance,
                           **{rep: s.accuracy for rep, s in reps.items() if rep != "attribution"}}
        return out

    def summary(self) -> str:
        """A few human-readable lines: headline similarities, p-value, verdict and probes."""
        test = self.per_factor[self.overall_factor].tests["class_vs_appearance"]
        lines = [
            f"headflow semantics: {self.n_images} images, {len(self.classes)} classes, "
            f"factors {', '.join(self.factor_values)} (overall: {self.overall_factor})",
            f"  similarity ({self.resolved['similarity_']}): same class {self.within_class_similarity:+.3f}  "
            f"same {self.overall_factor} {self.within_appearance_similarity:+.3f}  "
            f"different both {self.between_similarity:+.3f}",
            f"  class vs {self.overall_factor}: diff {test.difference:+.3f}, z {test.z:+.2f}, "
            f"p {self.p_class_vs_appearance:.4f}  ->  verdict: {self.verdict}",
        ]
        for target, row in self.probe_accuracy.items():
            reps = "  ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in row.items())
            lines.append(f"  probe {target}: {reps}")
        return "\n".join(lines)

    # ------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        """The JSON document written as ``semantics.json``."""
        overall = self.per_factor[self.overall_factor]

        def heads(hs: tuple[Head, ...]) -> list[list[int]]:
            return [[int(layer), int(head)] for layer, head in hs]

        return {
            "schema_version": SCHEMA_VERSION,
            "n_images": self.n_images,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "classes": list(self.classes),
            "factors": list(self.factor_values),
            "overall_factor": self.overall_factor,
            "within_class_similarity": _num(self.within_class_similarity),
            "within_appearance_similarity": _num(self.within_appearance_similarity),
            "between_similarity": _num(self.between_similarity),
            "p_class_vs_appearance": _num(self.p_class_vs_appearance),
            "effects": overall.to_dict()["tests"],
            "verdict": self.verdict,
            "per_factor": {f: s.to_dict() for f, s in self.per_factor.items()},
            "probe_accuracy": {t: {k: _num(v) for k, v in row.items()} for t, row in self.probe_accuracy.items()},
            "probe_p_value": {t: {r: _num(s.p_value) for r, s in reps.items()} for t, reps in self.probes.items()},
            "probe_details": {t: {r: {"n_folds": s.n_folds, "note": s.note} for r, s in reps.items()}
                              for t, reps in self.probes.items()},
            "topk_jaccard": {k: _num(v) for k, v in self.topk_jaccard.items()},
            "shared_heads": heads(self.shared_heads),
            "class_specific_heads": {c: heads(hs) for c, hs in self.class_specific_heads.items()},
            "parameters": dict(self.parameters),
            "resolved_parameters": dict(self.resolved),
            "provenance": dict(self.provenance),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``semantics.json`` and ``semantics_arrays.npz`` into ``directory`` (atomically).

        Returns
        -------
        Path
            The path of ``semantics.json``.
        """
        directory = Path(directory)
        doc = self.to_dict()

        arrays = {
            "similarity": np.asarray(self.similarity, dtype=np.float64),
            "vectors": np.asarray(self.vectors, dtype=np.float32),
            "class_maps": np.asarray(self.class_maps, dtype=np.float64),
            "labels": np.array(self.labels, dtype=str),
            **{f"factor_{f}": np.array(v, dtype=str) for f, v in self.factor_values.items()},
        }

        save_npz(directory / ARRAYS_NAME, **arrays)
        write_json(directory / JSON_NAME, doc, allow_nan=False)  # last: its presence marks a saved result
        return directory / JSON_NAME

    @classmethod
    def load(cls, directory: str | Path) -> "SemanticResult":
        """Read a result written by :meth:`save`.

        Raises
        ------
        HeadflowError
            If either file is missing or was written by a newer schema.
        """
        directory = Path(directory)
        json_path, npz_path = directory / JSON_NAME, directory / ARRAYS_NAME
        for path in (json_path, npz_path):
            if not path.is_file():
                raise HeadflowError(f"No semantics result in {directory}: {path.name} is missing. "
                                    "Run `headflow semantics` on the run directory first.")
        hint = f"headflow semantics {directory}"
        verify_file(npz_path, rebuild_hint=hint)
        d = read_json(json_path, rebuild_hint=hint)
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise HeadflowError(f"{json_path} has schema version {d['schema_version']}; this headflow reads "
                                f"up to {SCHEMA_VERSION}. Upgrade headflow.")
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        probes = {t: {r: ProbeScore(accuracy=d["probe_accuracy"][t][r], chance=_unnum(d["probe_accuracy"][t]["chance"]),
                                    p_value=p, n_folds=int(d["probe_details"][t][r]["n_folds"]),
                                    note=d["probe_details"][t][r]["note"])
                      for r, p in reps.items()}
                  for t, reps in d["probe_p_value"].items()}
        return cls(
            n_images=int(d["n_images"]), n_layers=int(d["n_layers"]), n_heads=int(d["n_heads"]),
            classes=tuple(d["classes"]), labels=tuple(str(x) for x in arrays["labels"]),
            factor_values={f: tuple(str(x) for x in arrays[f"factor_{f}"]) for f in d["factors"]},
            overall_factor=d["overall_factor"],
            within_class_similarity=_unnum(d["within_class_similarity"]),
            within_appearance_similarity=_unnum(d["within_appearance_similarity"]),
            between_similarity=_unnum(d["between_similarity"]),
            p_class_vs_appearance=_unnum(d["p_class_vs_appearance"]), verdict=d["verdict"],
            per_factor={f: FactorSummary.from_dict(s) for f, s in d["per_factor"].items()},
            probes=probes, topk_jaccard={k: _unnum(v) for k, v in d["topk_jaccard"].items()},
            shared_heads=tuple((int(a), int(b)) for a, b in d["shared_heads"]),
            class_specific_heads={c: tuple((int(a), int(b)) for a, b in hs)
                                  for c, hs in d["class_specific_heads"].items()},
            parameters=d["parameters"], resolved=d["resolved_parameters"], provenance=d["provenance"],
            similarity=arrays["similarity"], vectors=arrays["vectors"], class_maps=arrays["class_maps"],
        )

    def plot(self, directory: str | Path) -> list[Path]:
        """Write the figures (PNG and SVG each) into ``directory``; see :func:`.plots.plot_result`."""
        from .plots import plot_result

        return plot_result(self, Path(directory))
