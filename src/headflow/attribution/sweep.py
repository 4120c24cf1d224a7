"""Choosing the ablation probability α: one attribution run per α, compared by held-out LDS."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import HeadflowError
from ..store import write_json
from .core import HeadAttribution


def alpha_sweep(model, dataset, out: str | Path, alphas: Sequence[float], *, data_spec: str | None = None,
                data_seed: int = 0, **params) -> dict:
    """Run :class:`HeadAttribution` for each α into ``out/alpha-<α>/`` and write ``out/alpha_sweep.json``.

    Each run resumes like any other. The summary lists the median held-out Pearson and Spearman LDS per
    α and the α with the highest median Pearson LDS (``best_alpha``).
    """
    if not alphas:
        raise HeadflowError("An α sweep needs at least one ablation probability, e.g. --ablation-prob 0.05,0.1,0.2.")
    out = Path(out)
    rows = []
    for alpha in alphas:
        result = HeadAttribution(model, ablation_prob=alpha, **params).run(
            dataset, out / f"alpha-{alpha:g}", data_spec=data_spec, data_seed=data_seed)
        s = result.summary
        rows.append({"ablation_prob": alpha, "run_dir": str(result.run_dir), "lds_pearson_median": s["lds_pearson_median"],
                     "lds_spearman_median": s["lds_spearman_median"], "n_images": s["n_images"],
                     "n_masks": s["n_masks"]})
    best = max(rows, key=lambda r: r["lds_pearson_median"] if r["lds_pearson_median"] == r["lds_pearson_median"]
               else float("-inf"))
    summary = {"sweep": rows, "best_alpha": best["ablation_prob"], "criterion": "highest median held-out Pearson LDS"}
    write_json(out / "alpha_sweep.json", summary)
    return summary
