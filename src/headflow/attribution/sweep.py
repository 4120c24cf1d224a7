"""Choosing the ablation probability: one attribution run per value, compared by held-out LDS."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import HeadflowError
from ..store import write_json
from .core import HeadAttribution


def ablation_prob_sweep(model, dataset, out: str | Path, ablation_probs: Sequence[float], **params) -> dict:
    """Run :class:`HeadAttribution` for each ablation probability into ``out/ablation_prob-<p>/`` and write
    ``out/ablation_prob_sweep.json``.

    Each run resumes like any other; every value is checked before the first run starts. The summary lists
    the median held-out Pearson and Spearman LDS per value and the value with the highest median Pearson LDS
    (``best_ablation_prob``).
    """
    if not ablation_probs:
        raise HeadflowError("A sweep needs at least one ablation probability, e.g. --ablation-prob 0.05,0.1,0.2.")
    methods = [HeadAttribution(model, ablation_prob=p, **params) for p in ablation_probs]
    for method in methods:
        method.check()  # a bad value late in the list is refused before the first run
    out = Path(out)
    rows = []
    for p, method in zip(ablation_probs, methods):
        result = method.run(dataset, out=out / f"ablation_prob-{p:g}")
        s = result.summary
        rows.append({"ablation_prob": p, "run_dir": str(result.run_dir), "lds_pearson_median": s["lds_pearson_median"],
                     "lds_spearman_median": s["lds_spearman_median"], "n_images": s["n_images"],
                     "n_masks": s["n_masks"]})
    best = max(rows, key=lambda r: r["lds_pearson_median"] if r["lds_pearson_median"] == r["lds_pearson_median"]
               else float("-inf"))
    summary = {"sweep": rows, "best_ablation_prob": best["ablation_prob"],
               "criterion": "highest median held-out Pearson LDS"}
    write_json(out / "ablation_prob_sweep.json", summary)
    return summary
