"""Bootstrap intervals over images and the paired tests of the flow claims (C3, C4).

All resampling is over images, with indices from ``numpy.random.default_rng(seed)``: the same seed
gives the same intervals. Layer summaries use window starts.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``Int[ndarray, "boot image"]``: resampled image indices (with replacement), seeded."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), int)


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(samples, alpha, axis=0), np.nanquantile(samples, 1 - alpha, axis=0)


def _f(x: Any) -> float | None:
    """JSON-safe float (NaN → None)."""
    x = float(x)
    return x if np.isfinite(x) else None


def mean_ci(values: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """Mean over images (NaN ignored) with a percentile bootstrap interval; ``values`` is ``(image,)``."""
    values = np.asarray(values, dtype=float)
    boot = _nanmean(values[idx], axis=1) if len(values) else np.full(len(idx), np.nan)
    lo, hi = _interval(boot, level)
    return {"mean": _f(_nanmean(values)) if len(values) else None, "lo": _f(lo), "hi": _f(hi),
            "n": int(np.isfinite(values).sum())}


def weighted_mean_layer(effects: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Effect-weighted mean window start, weights ``max(0, -effect)``; NaN where no window hurts.

    ``effects`` is ``(..., window)``; returns ``(...)``.
    """
    weights = np.clip(-np.asarray(effects, dtype=float), 0.0, None)
    weights = np.nan_to_num(weights, nan=0.0)
    total = weights.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * starts).sum(-1) / np.where(total > 0, total, 1.0), np.nan)


def peak_layer(curve: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Window start of the most negative effect; ``curve`` is ``(..., window)``."""
    curve = np.nan_to_num(np.asarray(curve, dtype=float), nan=np.inf)
    return np.asarray(starts)[curve.argmin(-1)]


def curve_summary(effects: np.ndarray, starts: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """Mean effect curve with pointwise intervals, peak layer and effect-weighted mean layer (both of the
    mean curve) with bootstrap intervals. ``effects`` is ``Float[ndarray, "image window"]``."""
    effects = np.asarray(effects, dtype=float)
    starts = np.asarray(starts)
    mean = _nanmean(effects)
    boot = np.stack([_nanmean(effects[i]) for i in idx]) if len(effects) else np.full((len(idx), len(starts)), np.nan)
    lo, hi = _interval(boot, level)
    peak_boot = peak_layer(boot, starts).astype(float)
    mean_boot = weighted_mean_layer(boot, starts)
    p_lo, p_hi = _interval(peak_boot, level)
    m_lo, m_hi = _interval(mean_boot, level)
    return {
        "window_starts": [int(s) for s in starts],
        "curve": [_f(v) for v in mean], "curve_lo": [_f(v) for v in lo], "curve_hi": [_f(v) for v in hi],
        "peak_layer": {"value": int(peak_layer(mean, starts)), "lo": _f(p_lo), "hi": _f(p_hi)},
        "mean_layer": {"value": _f(weighted_mean_layer(mean, starts)), "lo": _f(m_lo), "hi": _f(m_hi)},
    }


def paired_later_test(later: np.ndarray, earlier: np.ndarray, idx: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """Is ``later`` larger than ``earlier``, paired over images? Differences ``later - earlier``: mean with a
    bootstrap interval, one-sided Wilcoxon signed-rank and sign-test p-values (H1: difference > 0).

    Verdict: ``supported`` if the interval lies above 0, ``contradicted`` if below, else ``inconclusive``.
    """
    diff = np.asarray(later, dtype=float) - np.asarray(earlier, dtype=float)
    summary = mean_ci(diff, idx, level)
    valid = diff[np.isfinite(diff)]
    nonzero = valid[valid != 0]
    p_wilcoxon = p_sign = None
    if len(nonzero):
        p_sign = float(sps.binomtest(int((nonzero > 0).sum()), len(nonzero), 0.5, alternative="greater").pvalue)
        if len(nonzero) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_wilcoxon = _f(sps.wilcoxon(nonzero, alternative="greater").pvalue)
    lo, hi = summary["lo"], summary["hi"]
    verdict = "inconclusive"
    if lo is not None and lo > 0:
        verdict = "supported"
    elif hi is not None and hi < 0:
        verdict = "contradicted"
    return {**summary, "p_wilcoxon": p_wilcoxon, "p_sign": p_sign, "verdict": verdict}


MIN_EFFECT = 0.01  # our choice: a knockout "hurts" if it lowers the answer probability by at least 1 % (relative)


def hurts_somewhere(curves: list[dict[str, Any]], min_effect: float = MIN_EFFECT) -> bool:
    """Whether some window of some :func:`curve_summary` lowers the answer probability by at least
    ``min_effect`` on average, with its bootstrap interval below 0. Where a group of knockouts never
    hurts, the layer at which it "hurts" is noise, so a comparison of layers (C3) has nothing to compare."""
    for curve in curves:
        for mean, hi in zip(curve["curve"], curve["curve_hi"]):
            if mean is not None and hi is not None and mean <= -min_effect and hi < 0:
                return True
    return False


def excludes_zero(summary: dict[str, Any]) -> bool:
    """Whether a :func:`mean_ci` interval lies strictly on one side of 0."""
    lo, hi = summary.get("lo"), summary.get("hi")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)
