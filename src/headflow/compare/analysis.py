"""``CompareRuns``: are the heads that carry the image the same across runs, seeds, baselines and models?

Each run is summarised by its mean attribution map ``A[layer, head]`` (positive part = the mass a head carries):

* the **depth-normalised layer profile**: layer ``l`` of ``L`` spans depths ``[l/L, (l+1)/L]`` and its share of
  the mass is spread evenly over that span, then summed into ``depth_bins`` bins — so models of different depth
  line up;
* the **concentration**: the share of the mass in the top 1 / 5 / 10 % of heads, and the mass-weighted depth;

and every pair of runs by the correlation and total-variation distance of their profiles; where two runs are of
the same model (same model spec and head layout), also by the Spearman correlation of their maps and the overlap
of their top-k head sets. Runs of different models are never compared head by head (the pair records why).

Where state lives: nothing is kept on the method object; everything is in the returned
:class:`ComparisonResult`, which saves ``compare.json``, ``compare.npz``, figures and ``compare.html``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import HeadflowError, MissingFileError
from ..method import Method, Result, provenance
from ..store import atomic_write, read_json, save_npz, write_json
from .params import CompareParams

__all__ = ["CompareRuns", "ComparisonResult", "depth_profile", "top_share"]

JSON_NAME = "compare.json"
ARRAYS_NAME = "compare.npz"
HTML_NAME = "compare.html"


def depth_profile(mean_map: np.ndarray, bins: int) -> np.ndarray:
    """Share of the positive attribution mass per depth bin (sums to 1; NaN where a map carries no mass)."""
    mass = np.clip(np.asarray(mean_map, dtype=np.float64), 0, None).sum(-1)  # per layer
    total = mass.sum()
    if not total > 0:
        return np.full(bins, np.nan)
    n_layers = len(mass)
    # cumulative share at the layer boundaries, linear in between (a layer's share spread over its depth span)
    cdf = np.interp(np.linspace(0, 1, bins + 1), np.arange(n_layers + 1) / n_layers,
                    np.concatenate([[0.0], np.cumsum(mass / total)]))
    return np.diff(cdf)


def top_share(mean_map: np.ndarray, fraction: float) -> float:
    """Share of the positive attribution mass held by the top ``fraction`` of heads (at least one head)."""
    mass = np.sort(np.clip(np.asarray(mean_map, dtype=np.float64).ravel(), 0, None))[::-1]
    total = mass.sum()
    if not total > 0:
        return float("nan")
    return float(mass[:max(1, math.ceil(fraction * mass.size))].sum() / total)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a.ravel(), b.ravel()).statistic
    return float(value) if np.isfinite(value) else float("nan")


@dataclass(frozen=True)
class ComparisonResult(Result):
    """A comparison of several runs.

    Attributes
    ----------
    summary : dict
        ``runs`` (name, run_dir, model, n_layers, n_heads, n_images, mass-weighted depth, top shares),
        ``pairs`` (profile correlation and distance; same-model pairs also Spearman and top-k overlap, others
        ``head_level: null`` with a ``reason``), parameters and provenance.
    profiles : Float[ndarray, "run bin"]
        Depth-normalised layer profiles.
    maps : list of Float[ndarray, "layer head"]
        Each run's mean attribution map.
    """

    summary: dict[str, Any]
    profiles: np.ndarray
    maps: list[np.ndarray]

    @property
    def names(self) -> list[str]:
        return [run["name"] for run in self.summary["runs"]]

    def save(self, out: str | Path) -> Path:
        """Write ``compare.json``, ``compare.npz``, the figures and ``compare.html`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_npz(out / ARRAYS_NAME, profiles=self.profiles, **{f"map_{i}": m for i, m in enumerate(self.maps)})
        write_json(out / JSON_NAME, self.summary)
        self.plot(out / "figures")
        from .page import render_page

        atomic_write(out / HTML_NAME, lambda tmp: Path(tmp).write_text(render_page(self, out), encoding="utf-8"))
        return out

    @classmethod
    def load(cls, out: str | Path) -> "ComparisonResult":
        out = Path(out)
        if not (out / JSON_NAME).exists():
            raise HeadflowError(f"{out} holds no {JSON_NAME}; run 'headflow compare RUN_DIR RUN_DIR --out {out}' first.")
        summary = read_json(out / JSON_NAME)
        arrays = np.load(out / ARRAYS_NAME)
        return cls(summary, arrays["profiles"], [arrays[f"map_{i}"] for i in range(len(summary["runs"]))])

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        """Layer profiles, concentration and the maps side by side (PNG + SVG); returns the paths."""
        from .plots import plot_comparison

        return plot_comparison(self, Path(figures_dir) if figures_dir is not None else Path("figures"))


class CompareRuns(Method):
    """Compare the head maps of two or more finished attribution runs (of one model or of several).

    ``CompareRuns(**params).run([RUN_A, RUN_B, ...], out=DIR)``; the parameters and their defaults are
    :class:`~headflow.compare.params.CompareParams`. Runs are read, never changed.

    Examples
    --------
    >>> import numpy as np
    >>> depth_profile(np.array([[1.0, 0.0], [3.0, -1.0]]), 4).round(3).tolist()  # layer 1 holds 3/4
    [0.125, 0.125, 0.375, 0.375]
    >>> top_share(np.array([[4.0, 1.0], [0.0, 0.0]]), 0.25)
    0.8
    """

    Params = CompareParams
    needs_model = False

    def run(self, data: Sequence[str | Path], *, out: str | Path | None = None, runner: Any = None
            ) -> ComparisonResult:
        """Compare the runs in ``data`` (run directories); with ``out``, save the result and ``compare.html``."""
        params = self.check()
        from ..attribution import AttributionResult

        dirs = [Path(d) for d in data]
        if len(dirs) < 2:
            raise HeadflowError(f"headflow compare needs at least two run directories; got {len(dirs)}. "
                                "Pass two or more attribution or study run directories.")
        resolved = [d.resolve() for d in dirs]
        twice = sorted({str(d) for d in dirs if resolved.count(d.resolve()) > 1})
        if twice:
            raise HeadflowError(f"The run directory {twice[0]} is given twice; pass each run once.")
        missing = [d for d in dirs if not d.is_dir()]
        if missing:
            raise MissingFileError(f"The run directory {missing[0]} does not exist; pass directories written by "
                                   "'headflow attribute --out DIR' or 'headflow study --out DIR'.")
        results = [AttributionResult.load(d) for d in dirs]
        names = _names(dirs)
        maps = [r.mean_attribution.astype(np.float64) for r in results]
        profiles = np.stack([depth_profile(m, params.depth_bins) for m in maps])
        empty = [n for n, p in zip(names, profiles) if not np.isfinite(p).all()]
        if empty:
            raise HeadflowError(f"The run {empty[0]!r} has no positive attribution mass, so its heads cannot be placed "
                                "on the depth axis; compare runs whose attributions are not all zero or negative.")
        runs = [self._describe(name, d, r, m, params) for name, d, r, m in zip(names, dirs, results, maps)]
        pairs = [self._pair(i, j, runs, maps, profiles, params) for i in range(len(runs))
                 for j in range(i + 1, len(runs))]
        summary = {"method": "CompareRuns", "runs": runs, "pairs": pairs,
                   "depth_bin_edges": np.linspace(0, 1, params.depth_bins + 1).round(6).tolist(),
                   "params": params.model_dump(mode="json"),
                   "provenance": provenance("CompareRuns", params=params.model_dump(mode="json"), resolved={},
                                            model=None, data={"runs": [str(d.resolve()) for d in dirs]},
                                            spec_hash=None)}
        result = ComparisonResult(summary, profiles, maps)
        if out is not None:
            result.save(out)
        return result

    @staticmethod
    def _describe(name: str, run_dir: Path, result, mean_map: np.ndarray, params: CompareParams) -> dict[str, Any]:
        n_layers, n_heads = mean_map.shape
        mass = np.clip(mean_map, 0, None).sum(-1)
        depth = float(((np.arange(n_layers) + 0.5) / n_layers * mass).sum() / mass.sum())
        spec = result.config.get("spec", {})
        return {"name": name, "run_dir": str(run_dir.resolve()), "model": spec.get("model"),
                "model_class": spec.get("model_class"), "n_layers": int(n_layers), "n_heads": int(n_heads),
                "n_images": int(result.attributions.shape[0]), "baseline": spec.get("baseline"),
                "seed": spec.get("seed"), "mass_weighted_depth": depth,
                "top_share": {f"{f:g}": top_share(mean_map, f) for f in params.top_fractions},
                "top_heads": [[int(i // n_heads), int(i % n_heads)]
                              for i in np.argsort(-mean_map.ravel(), kind="stable")[:params.top_k]]}

    @staticmethod
    def _pair(i: int, j: int, runs: list[dict], maps: list[np.ndarray], profiles: np.ndarray,
              params: CompareParams) -> dict[str, Any]:
        a, b = runs[i], runs[j]
        pair: dict[str, Any] = {
            "runs": [a["name"], b["name"]],
            "profile_correlation": float(np.corrcoef(profiles[i], profiles[j])[0, 1])
            if profiles[i].std() > 0 and profiles[j].std() > 0 else float("nan"),
            "profile_distance": float(np.abs(profiles[i] - profiles[j]).sum() / 2),  # total variation
        }
        if maps[i].shape != maps[j].shape:
            reason = (f"different head layouts ({a['n_layers']}x{a['n_heads']} vs {b['n_layers']}x{b['n_heads']}): "
                      "compared by depth only")
        elif (a["model"], a["model_class"]) != (b["model"], b["model_class"]):
            reason = f"different models ({a['model']} vs {b['model']}): compared by depth only"
        else:
            reason = None
        if reason is not None:
            return {**pair, "head_level": None, "reason": reason}
        k = min(params.top_k, maps[i].size)
        top_a = set(map(tuple, a["top_heads"][:k]))
        top_b = set(map(tuple, b["top_heads"][:k]))
        return {**pair, "head_level": {"spearman": _spearman(maps[i], maps[j]), "top_k": k,
                                       "top_k_overlap": len(top_a & top_b) / k,
                                       "top_k_jaccard": len(top_a & top_b) / len(top_a | top_b)}}


def _names(dirs: list[Path]) -> list[str]:
    """Short names of the runs: the directory name, or more of its path where names repeat."""
    for depth in range(1, 8):
        names = ["/".join(d.resolve().parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            return names
    return [str(d.resolve()) for d in dirs]
