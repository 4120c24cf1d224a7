"""Statistics for class vs appearance (docs/method.md F8): pair means, permutation tests, probes, head sets.

Pure functions on arrays; randomness only through explicit seeds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest

from .similarity import jaccard_matrix, top_k_membership

__all__ = [
    "COMPARISONS",
    "PairMeans",
    "PermutationTest",
    "ProbeScore",
    "class_head_sets",
    "design_pair_means",
    "encode",
    "permutation_tests",
    "probe",
    "topk_jaccard",
]

#: (test name, first pair kind, second pair kind) for every permutation test.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("class_vs_appearance", "within_class", "within_appearance"),
    ("class_vs_between", "within_class", "between"),
    ("appearance_vs_between", "within_appearance", "between"),
)
PAIR_KINDS: tuple[str, ...] = ("within_class", "within_appearance", "between", "same_both")


def encode(values: list[str]) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Integer codes for string values, with the sorted distinct values they index."""
    levels = tuple(sorted(set(values)))
    index = {v: i for i, v in enumerate(levels)}
    return np.array([index[v] for v in values], dtype=np.int64), levels


def _same(codes: NDArray[np.int64]) -> NDArray[np.bool_]:
    mask = codes[:, None] == codes[None, :]
    np.fill_diagonal(mask, False)
    return mask


def _kind_masks(class_codes: NDArray[np.int64], factor_codes: NDArray[np.int64]) -> dict[str, NDArray[np.bool_]]:
    """Off-diagonal ``(n, n)`` masks of the four pair kinds for one appearance factor."""
    same_c, same_f = _same(class_codes), _same(factor_codes)
    off = ~np.eye(len(class_codes), dtype=bool)
    return {
        "within_class": same_c & ~same_f,  # same class, different appearance
        "within_appearance": ~same_c & same_f,  # different class, same appearance
        "between": off & ~same_c & ~same_f,  # different both
        "same_both": same_c & same_f,
    }


@dataclass(frozen=True)
class PairMeans:
    """Mean similarity and number of (unordered) image pairs of each kind, for one appearance factor.

    Attributes
    ----------
    mean : dict[str, float]
        Keys ``within_class`` (same class, different appearance), ``within_appearance`` (different
        class, same appearance), ``between`` (different both), ``same_both``; NaN where no pair exists.
    n_pairs : dict[str, int]
        Unordered pair counts per kind.
    sd : dict[str, float]
        Standard deviation of the pair similarities per kind (for standardised effects).
    """

    mean: dict[str, float]
    n_pairs: dict[str, int]
    sd: dict[str, float]


def design_pair_means(similarity: NDArray[np.float64], class_codes: NDArray[np.int64],
                      factor_codes: NDArray[np.int64]) -> PairMeans:
    """Mean, SD and count of the similarities of each pair kind (see :class:`PairMeans`)."""
    iu = np.triu(np.ones(similarity.shape, dtype=bool), k=1)
    mean, n_pairs, sd = {}, {}, {}
    for kind, mask in _kind_masks(class_codes, factor_codes).items():
        vals = similarity[mask & iu]
        n_pairs[kind] = int(vals.size)
        mean[kind] = float(vals.mean()) if vals.size else float("nan")
        sd[kind] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
    return PairMeans(mean=mean, n_pairs=n_pairs, sd=sd)


@dataclass(frozen=True)
class PermutationTest:
    """One two-sided permutation test of a difference of mean pair similarities.

    Attributes
    ----------
    difference : float
        Observed ``mean(first kind) - mean(second kind)``.
    z : float
        Standardised effect against the permutation null: ``(difference - mean(null)) / sd(null)``.
    cohens_d : float
        ``difference`` over the pooled SD of the two kinds' pair similarities.
    p_value : float
        ``(1 + #{|null| >= |difference|}) / (1 + n_permutations)``.
    n_permutations : int
    """

    difference: float
    z: float
    cohens_d: float
    p_value: float
    n_permutations: int


def _pooled_sd(pm: PairMeans, a: str, b: str) -> float:
    na, nb = pm.n_pairs[a], pm.n_pairs[b]
    if na < 2 or nb < 2:
        return float("nan")
    return float(np.sqrt(((na - 1) * pm.sd[a] ** 2 + (nb - 1) * pm.sd[b] ** 2) / (na + nb - 2)))


def _random_permutations(n: int, n_permutations: int, seed: int) -> NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)


def permutation_tests(similarity: NDArray[np.float64], class_codes: NDArray[np.int64],
                      factor_codes: dict[str, NDArray[np.int64]], n_permutations: int,
                      seed: int) -> dict[str, dict[str, PermutationTest]]:
    """Permutation tests of :data:`COMPARISONS` for every appearance factor.

    The null keeps the design (each image's ``(class, factor)`` label tuple moves as one) and
    shuffles which image carries which tuple, i.e. it permutes the rows and columns of the
    similarity matrix together. The same seeded permutations serve every factor.

    Parameters
    ----------
    similarity : ndarray of shape (n_images, n_images)
    class_codes : ndarray of shape (n_images,)
    factor_codes : dict[str, ndarray of shape (n_images,)]
    n_permutations : int
    seed : int

    Returns
    -------
    dict[str, dict[str, PermutationTest]]
        ``{factor: {test name: PermutationTest}}``.
    """
    n = similarity.shape[0]
    s0 = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(s0, 0.0)
    names = list(factor_codes)
    masks = [_kind_masks(class_codes, factor_codes[f]) for f in names]
    kinds = ("within_class", "within_appearance", "between")
    flat = np.stack([m[k].ravel() for m in masks for k in kinds], axis=1).astype(np.float64)  # (n*n, F*3)
    counts = flat.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (s0.ravel() @ flat) / counts
    perms = _random_permutations(n, n_permutations, seed)
    null = np.empty((n_permutations, flat.shape[1]))
    chunk = max(1, min(n_permutations, int(5e6 // max(n * n, 1))))
    for start in range(0, n_permutations, chunk):
        p = perms[start:start + chunk]
        sp = s0[p[:, :, None], p[:, None, :]].reshape(len(p), n * n)
        with np.errstate(invalid="ignore", divide="ignore"):
            null[start:start + len(p)] = (sp @ flat) / counts
    out: dict[str, dict[str, PermutationTest]] = {}
    for fi, name in enumerate(names):
        col = {k: fi * 3 + ki for ki, k in enumerate(kinds)}
        pm = design_pair_means(similarity, class_codes, factor_codes[name])
        tests = {}
        for test, a, b in COMPARISONS:
            diff = float(observed[col[a]] - observed[col[b]])
            dnull = null[:, col[a]] - null[:, col[b]]
            tol = 1e-12 * max(1.0, abs(diff))
            p_value = float((1 + np.sum(np.abs(dnull) >= abs(diff) - tol)) / (1 + n_permutations))
            sd_null = float(dnull.std(ddof=1)) if n_permutations > 1 else float("nan")
            z = (diff - float(dnull.mean())) / sd_null if sd_null > 0 else float("nan")
            pooled = _pooled_sd(pm, a, b)
            d = diff / pooled if pooled > 0 else float("nan")
            tests[test] = PermutationTest(difference=diff, z=float(z), cohens_d=float(d), p_value=p_value,
                                          n_permutations=n_permutations)
        out[name] = tests
    return out


@dataclass(frozen=True)
class ProbeScore:
    """Cross-validated accuracy of a linear probe for one target on one representation.

    Attributes
    ----------
    accuracy : float or None
        Fraction of images whose held-out prediction is right; ``None`` when the probe could not run.
    chance : float
        Majority-class frequency of the target.
    p_value : float or None
        One-sided binomial test of ``accuracy > chance``.
    n_folds : int
        Folds used (the requested number, lowered to the smallest class size).
    note : str
        Why the probe did not run, or ``""``.
    """

    accuracy: float | None
    chance: float
    p_value: float | None
    n_folds: int
    note: str = ""


def probe(features: NDArray[np.floating], target: list[str], cv_folds: int, seed: int) -> ProbeScore:
    """Stratified K-fold logistic-regression probe (``StandardScaler`` + ``LogisticRegression``).

    Parameters
    ----------
    features : ndarray of shape (n_images, d)
    target : list of str, length n_images
    cv_folds : int
        Requested folds; lowered to the smallest class size (at least 2, else the probe is skipped).
    seed : int
        Shuffles the folds.

    Returns
    -------
    ProbeScore
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    codes, levels = encode(target)
    counts = np.bincount(codes)
    chance = float(counts.max() / counts.sum())
    folds = int(min(cv_folds, counts.min()))
    if len(levels) < 2:
        return ProbeScore(None, chance, None, 0, "target has a single value")
    if folds < 2:
        return ProbeScore(None, chance, None, folds, "a target value occurs only once")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # Small problems: one BLAS thread is much faster than several competing for busy cores. Scoped.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds; accuracy is what we report
        pred = cross_val_predict(model, np.asarray(features, dtype=np.float64), codes, cv=cv)
    correct = int(np.sum(pred == codes))
    p_value = float(binomtest(correct, len(codes), chance, alternative="greater").pvalue)
    return ProbeScore(correct / len(codes), chance, p_value, folds)


def topk_jaccard(vectors: NDArray[np.floating], k: int, groups: dict[str, NDArray[np.int64]]) -> dict[str, float]:
    """Mean Jaccard index of per-image top-``k`` head sets for pairs within vs across each grouping.

    Parameters
    ----------
    vectors : ndarray of shape (n_images, n_heads_total)
    k : int
    groups : dict[str, ndarray of shape (n_images,)]
        E.g. ``{"class": class_codes, "appearance": style_codes}``.

    Returns
    -------
    dict[str, float]
        ``within_<group>`` and ``across_<group>`` for each group (NaN where no pair exists).
    """
    jac = jaccard_matrix(top_k_membership(vectors, k))
    off = ~np.eye(len(jac), dtype=bool)
    out = {}
    for name, codes in groups.items():
        same = _same(codes)
        across = off & ~same
        out[f"within_{name}"] = float(jac[same].mean()) if same.any() else float("nan")
        out[f"across_{name}"] = float(jac[across].mean()) if across.any() else float("nan")
    return out


def class_head_sets(class_maps: NDArray[np.floating], classes: tuple[str, ...],
                    k: int) -> tuple[tuple[tuple[int, int], ...], dict[str, tuple[tuple[int, int], ...]]]:
    """Heads in every class's top-``k`` (shared) and heads in exactly one class's top-``k`` (specific).

    Parameters
    ----------
    class_maps : ndarray of shape (n_classes, n_layers, n_heads)
        Mean attribution per class.
    classes : tuple of str, length n_classes
    k : int

    Returns
    -------
    shared : tuple of (layer, head)
    specific : dict[str, tuple of (layer, head)]
        For each class, its heads that no other class has in its top-``k``.
    """
    n_cls, _, n_heads = class_maps.shape
    member = top_k_membership(class_maps.reshape(n_cls, -1), k)
    n_in = member.sum(axis=0)

    def heads(mask: NDArray[np.bool_]) -> tuple[tuple[int, int], ...]:
        return tuple((int(i // n_heads), int(i % n_heads)) for i in np.flatnonzero(mask))

    shared = heads(n_in == n_cls)
    specific = {c: heads(member[ci] & (n_in == 1)) for ci, c in enumerate(classes)}
    return shared, specific


def verdict(test: PermutationTest, significance_level: float) -> str:
    """``"class"`` / ``"appearance"`` when the class-vs-appearance difference is significant, else ``"neither"``."""
    if not np.isfinite(test.p_value) or test.p_value >= significance_level or test.difference == 0:
        return "neither"
    return "class" if test.difference > 0 else "appearance"
