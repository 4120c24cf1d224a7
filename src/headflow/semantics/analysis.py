"""``SemanticAnalysis``: is the choice of heads governed by what the image shows or by how it looks?

docs/method.md F8 / claim C2 of arXiv 2509.17588. Per-image head-attribution vectors are compared pair by
pair; if same-class pairs (that differ in appearance) are clearly more similar than different-class
pairs that share an appearance factor, head selection follows semantic content (verdict ``"class"``).

The analysis object only stores its parameters; all state lives in the returned
:class:`~headflow.semantics.SemanticResult`. Nothing here touches a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import HeadflowError, param_error
from ..method import Method, check_memory, provenance
from ..store import ensure_config, load_npy, read_json, read_parquet, run_lock
from .params import SemanticParams
from .result import JSON_NAME, FactorSummary, SemanticResult
from .similarity import SimilaritySpec, parse_similarity, similarity_matrix
from .stats import (
    class_head_sets,
    design_pair_means,
    encode,
    permutation_tests,
    probe,
    topk_jaccard,
    verdict,
)

__all__ = ["SemanticAnalysis", "read_run_dir"]

OWNER = "SemanticAnalysis"
RESERVED_REPRESENTATIONS = ("attribution", "chance")


class SemanticAnalysis(Method):
    """Class vs appearance analysis of per-image head attributions (docs/method.md F8, claim C2).

    ``SemanticAnalysis(**params).fit(attributions, labels, factors)`` analyses arrays in memory;
    ``.run(RUN_DIR)`` reads a finished attribution run and saves into it. The parameters and their defaults
    are :class:`~headflow.semantics.params.SemanticParams`: ``similarity`` (``"cosine"`` of head-standardised
    vectors, ``"spearman"`` or ``"jaccard:K"`` of top-``K`` head sets, ``K`` clipped to the number of heads),
    ``factors`` (``None``: every factor that varies within classes; others are listed in
    ``resolved["skipped_factors"]``), ``n_permutations`` (the smallest reachable p-value is
    ``1 / (n_permutations + 1)``), ``top_k``, ``seed`` (permutations, probe folds, t-SNE), ``cv_folds``
    (lowered to the smallest class size) and ``significance_level`` of the verdict.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = [f"c{i % 4}" for i in range(48)]
    >>> styles = [f"s{(i // 4) % 3}" for i in range(48)]
    >>> centres = rng.normal(size=(4, 3, 4))
    >>> a = np.stack([centres[i % 4] for i in range(48)]) + 0.3 * rng.normal(size=(48, 3, 4))
    >>> result = SemanticAnalysis(n_permutations=99).fit(a, labels, {"style": styles})
    >>> result.verdict
    'class'
    """

    Params = SemanticParams
    stage = "semantics"
    needs_model = False

    def _check_params(self) -> tuple[SemanticParams, SimilaritySpec]:
        params = self.check()
        return params, parse_similarity(params.similarity)

    # ------------------------------------------------------------------ public
    def fit(self, attributions: ArrayLike, labels: Sequence[object], factors_table: Mapping[str, Sequence[object]],
            controls: Mapping[str, ArrayLike] | None = None) -> SemanticResult:
        """Analyse attribution vectors against class labels and appearance factors.

        Parameters
        ----------
        attributions : array of shape (n_images, n_layers, n_heads)
            Per-image head attributions (finite floats).
        labels : sequence of length n_images
            Class of each image.
        factors_table : mapping factor name -> sequence of length n_images
            Appearance factors of each image (e.g. ``{"style": [...], "palette": [...]}``).
        controls : mapping name -> array of shape (n_images, d), optional
            Control representations (e.g. ``final_hidden``, ``pixels``) that get the same probes.

        Returns
        -------
        SemanticResult

        Raises
        ------
        HeadflowError
            For a bad parameter, mismatched lengths, missing or non-finite values, a single class,
            or no factor that can be compared with class.
        """
        params, spec = self._check_params()
        a, lab, table, ctrl = _check_inputs(attributions, labels, factors_table, controls)
        return self._fit(params, spec, a, lab, table, ctrl, source=None)

    def run(self, data: "str | Path", *, out: str | Path | None = None, runner: Any = None) -> SemanticResult:
        """Analyse an attribution run and write ``semantics.json``, ``semantics_arrays.npz`` and ``figures/``.

        ``data`` is the run directory (or its :class:`~headflow.attribution.AttributionResult`); ``out``
        defaults to it. Reads ``attributions.npy`` (rows = rows of ``images.parquet`` whose ``used`` is True),
        ``label`` and ``factor_<name>`` columns, and the optional controls ``final_hidden.npy`` and
        ``pixels.npy``. A finished analysis with the same configuration is loaded, not recomputed; another
        configuration is refused with the list of what differs. ``runner`` is accepted for the common
        signature; nothing here runs a model.

        Raises
        ------
        HeadflowError
            If a required file or column is missing or the arrays do not match ``images.parquet``.
        """
        params, spec = self._check_params()
        run_dir = Path(getattr(data, "run_dir", data))
        out = Path(out) if out is not None else run_dir
        if not run_dir.is_dir():
            raise HeadflowError(f"Run directory {run_dir} does not exist; run 'headflow attribute --out {run_dir}' "
                                "first.")
        with run_lock(out):  # one writer per run directory
            return self._run(params, spec, run_dir, out)

    def _run(self, params: SemanticParams, spec: SimilaritySpec, run_dir: Path, out: Path) -> SemanticResult:
        attributions, labels, table, controls = read_run_dir(run_dir)
        run_config = run_dir / "config.json"
        run_hash = read_json(run_config).get("spec_hash") if run_config.is_file() else None
        config = ensure_config(self.config_dir(out), {"method": OWNER, "run": run_hash, "source": str(run_dir.resolve()),
                                                      **params.spec()}, {"params": params.model_dump(mode="json")})
        if (out / JSON_NAME).exists():
            return SemanticResult.load(out)  # finished with this configuration
        a, lab, tab, ctrl = _check_inputs(attributions, labels, table, controls)
        n = len(lab)  # the image x image similarity and its permuted copies, float64
        check_memory(8 * n * n * 4, f"The similarity of {n} x {n} images", "analyse fewer images")
        result = self._fit(params, spec, a, lab, tab, ctrl, source=str(run_dir), spec_hash=config["spec_hash"])
        result.save(out)
        result.plot(out / "figures")
        return result

    # ----------------------------------------------------------------- private
    @staticmethod
    def _resolve_factors(factors: list[str] | None, table: dict[str, list[str]], class_codes: NDArray[np.int64]
                         ) -> tuple[list[str], dict[str, str]]:
        if factors is not None:
            missing = [f for f in factors if f not in table]
            if missing:
                raise param_error("factors", OWNER, f"names of factors in the data ({', '.join(table) or 'none'})",
                                  list(factors))
        requested = list(factors) if factors is not None else list(table)
        chosen, skipped = [], {}
        for name in requested:
            reason = _factor_problem(class_codes, encode(table[name])[0])
            if reason is None:
                chosen.append(name)
            elif factors is not None:
                raise HeadflowError(f"Factor {name!r} cannot be compared with class: {reason}. "
                                    "Drop it from --factors.")
            else:
                skipped[name] = reason
        if not chosen:
            detail = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no factors given"
            raise HeadflowError(f"No appearance factor can be compared with class ({detail}).")
        return chosen, skipped

    def _fit(self, params: SemanticParams, spec: SimilaritySpec, a: NDArray[np.float64], labels: list[str],
             table: dict[str, list[str]], controls: dict[str, NDArray[np.float64]], source: str | None,
             spec_hash: str | None = None) -> SemanticResult:
        n, n_layers, n_heads = a.shape
        vectors = a.reshape(n, -1)
        n_total = vectors.shape[1]
        class_codes, classes = encode(labels)
        factors, skipped = self._resolve_factors(params.factors, table, class_codes)
        overall = "style" if "style" in factors else factors[0]
        codes = {f: encode(table[f])[0] for f in factors}

        resolved_spec = SimilaritySpec(spec.kind, None if spec.k is None else min(spec.k, n_total))
        sim = similarity_matrix(vectors, resolved_spec)
        tests = permutation_tests(sim, class_codes, codes, params.n_permutations, params.seed)
        per_factor = {}
        for f in factors:
            pm = design_pair_means(sim, class_codes, codes[f])
            per_factor[f] = FactorSummary(levels=encode(table[f])[1], mean=pm.mean, n_pairs=pm.n_pairs,
                                          tests=tests[f], verdict=verdict(tests[f]["class_vs_appearance"],
                                                                         params.significance_level))

        representations = {"attribution": vectors, **controls}
        targets = {"class": labels, **{f: table[f] for f in factors}}
        probes = {t: {r: probe(x, y, params.cv_folds, params.seed) for r, x in representations.items()}
                  for t, y in targets.items()}

        top_k = min(params.top_k, n_total)
        jac = topk_jaccard(vectors, top_k, {"class": class_codes, "appearance": codes[overall]})
        class_maps = np.stack([a[class_codes == c].mean(axis=0) for c in range(len(classes))])
        shared, specific = class_head_sets(class_maps, classes, top_k)

        head = per_factor[overall]
        resolved = {"similarity_": str(resolved_spec), "factors_": factors, "skipped_factors": skipped,
                    "overall_factor": overall, "top_k_": top_k, "controls": list(controls)}
        return SemanticResult(
            n_images=n, n_layers=n_layers, n_heads=n_heads, classes=classes, labels=tuple(labels),
            factor_values={f: tuple(table[f]) for f in factors}, overall_factor=overall,
            within_class_similarity=head.mean["within_class"],
            within_appearance_similarity=head.mean["within_appearance"],
            between_similarity=head.mean["between"],
            p_class_vs_appearance=head.tests["class_vs_appearance"].p_value, verdict=head.verdict,
            per_factor=per_factor, probes=probes, topk_jaccard=jac, shared_heads=shared,
            class_specific_heads=specific, parameters=params.model_dump(mode="json"),
            resolved=resolved,
            provenance=provenance(OWNER, params=params.model_dump(mode="json"), resolved=resolved,
                                  data={"source": source}, spec_hash=spec_hash),
            similarity=sim, vectors=vectors.astype(np.float32), class_maps=class_maps,
        )


# ---------------------------------------------------------------------- inputs
def _factor_problem(class_codes: NDArray[np.int64], factor_codes: NDArray[np.int64]) -> str | None:
    """Why a factor cannot be compared with class, or ``None`` if it can."""
    if len(np.unique(factor_codes)) < 2:
        return "it has a single value"
    pm_counts = {
        "same class, different value": np.any((class_codes[:, None] == class_codes[None, :])
                                              & (factor_codes[:, None] != factor_codes[None, :])),
        "different class, same value": np.any((class_codes[:, None] != class_codes[None, :])
                                              & (factor_codes[:, None] == factor_codes[None, :])),
    }
    empty = [k for k, present in pm_counts.items() if not present]
    if empty:
        return f"no image pairs are ({empty[0]}); it is confounded with class"
    return None


def _as_strings(values: Sequence[object], what: str, n: int) -> list[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise param_error(what, f"{OWNER}.fit", f"a sequence with one value per image ({n})", type(values).__name__)
    if len(values) != n:
        raise param_error(what, f"{OWNER}.fit", f"a sequence with one value per image ({n} values)",
                          f"{len(values)} values")
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise HeadflowError(f"The {what!r} parameter of {OWNER}.fit has a missing value at image {i}. "
                                "Fill it in or drop the image.")
        out.append(str(v))
    return out


def _check_inputs(attributions: ArrayLike, labels: Sequence[object], factors_table: Mapping[str, Sequence[object]],
                  controls: Mapping[str, ArrayLike] | None
                  ) -> tuple[NDArray[np.float64], list[str], dict[str, list[str]], dict[str, NDArray[np.float64]]]:
    owner = f"{OWNER}.fit"
    a = np.asarray(attributions)
    if a.ndim != 3 or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise param_error("attributions", owner, "a real array of shape (n_images, n_layers, n_heads)",
                          f"{a.dtype} array of shape {a.shape}")
    a = a.astype(np.float64)
    n = a.shape[0]
    if n < 4 or a.shape[1] * a.shape[2] < 2:
        raise param_error("attributions", owner, "an array with at least 4 images and 2 heads",
                          f"shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a).reshape(n, -1).all(axis=1))
        raise HeadflowError(f"The 'attributions' parameter of {owner} has non-finite values in images "
                            f"{bad[:10].tolist()}. Finish or drop those rows.")
    labels_ = _as_strings(labels, "labels", n)
    if len(set(labels_)) < 2:
        raise param_error("labels", owner, "class names with at least 2 distinct classes", sorted(set(labels_)))
    if not isinstance(factors_table, Mapping) or not factors_table:
        raise param_error("factors_table", owner, "a non-empty dict of factor name -> one value per image",
                          factors_table if not isinstance(factors_table, Mapping) else {})
    table = {str(k): _as_strings(v, f"factors_table[{k!r}]", n) for k, v in factors_table.items()}
    ctrl: dict[str, NDArray[np.float64]] = {}
    for name, x in (controls or {}).items():
        if name in RESERVED_REPRESENTATIONS:
            raise param_error("controls", owner, "named other than 'attribution' and 'chance'", name)
        arr = np.asarray(x)
        if arr.ndim < 2 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.number):
            raise param_error("controls", owner, f"arrays of shape ({n}, d) (one row per image)",
                              f"{name}: {arr.dtype} array of shape {arr.shape}")
        arr = arr.reshape(n, -1).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise HeadflowError(f"The 'controls' parameter of {owner} has non-finite values in {name!r}.")
        ctrl[str(name)] = arr
    return a, labels_, table, ctrl


def read_run_dir(run_dir: Path) -> tuple[NDArray[np.float32], list[object], dict[str, list[object]],
                                          dict[str, NDArray[np.floating]]]:
    """Read attributions, labels, ``factor_<name>`` columns and optional controls from a run directory.

    Returns
    -------
    attributions : ndarray of shape (n_used, n_layers, n_heads)
    labels : list, length n_used
    factors_table : dict[str, list]
    controls : dict[str, ndarray of shape (n_used, d)]
        ``final_hidden`` and ``pixels`` where present.
    """
    if not run_dir.is_dir():
        raise HeadflowError(f"Run directory {run_dir} does not exist.")
    for name in ("attributions.npy", "images.parquet"):
        if not (run_dir / name).is_file():
            raise HeadflowError(f"{run_dir} has no {name}; run the attribution step first.")
    hint = f"headflow attribute --out {run_dir} with the options in {run_dir / 'config.json'}"
    frame = read_parquet(run_dir / "images.parquet", rebuild_hint=hint)
    missing = [c for c in ("used", "label") if c not in frame.columns]
    if missing:
        raise HeadflowError(f"{run_dir / 'images.parquet'} lacks column(s) {', '.join(missing)}; "
                            f"it has {', '.join(map(str, frame.columns))}.")
    used = frame[frame["used"].astype(bool)].reset_index(drop=True)
    attributions = load_npy(run_dir / "attributions.npy", mmap_mode="r", rebuild_hint=hint)
    if attributions.shape[0] != len(used):
        raise HeadflowError(f"{run_dir / 'attributions.npy'} has {attributions.shape[0]} rows but images.parquet "
                            f"marks {len(used)} rows used; the run directory is incomplete or mixed.")
    factor_cols = [c for c in used.columns if str(c).startswith("factor_")]
    if not factor_cols:
        raise HeadflowError(f"{run_dir / 'images.parquet'} has no factor_<name> columns, so appearance "
                            "cannot be compared with class.")
    table = {str(c)[len("factor_"):]: used[c].tolist() for c in factor_cols}
    controls: dict[str, NDArray[np.floating]] = {}
    for name in ("final_hidden", "pixels"):
        path = run_dir / f"{name}.npy"
        if path.is_file():
            arr = load_npy(path, rebuild_hint=hint)
            if arr.shape[0] != len(used):
                raise HeadflowError(f"{path} has {arr.shape[0]} rows but images.parquet marks {len(used)} rows "
                                    "used; the run directory is incomplete or mixed.")
            controls[name] = arr
    return np.asarray(attributions), used["label"].tolist(), table, controls
