"""The hybrid (patching screen + regression over the screened heads) vs the full regression, side by side in one
process (issue 17): same model, same images, same baseline and target, and the same held-out masks (over all
heads), so the held-out LDS is compared on the same masks. Reports per method the number of training masks, the
screened heads, the median held-out LDS (Pearson, Spearman), the mean-map Spearman with the regression, and time;
plus the regression over all heads with as few masks as the first hybrid (is the screen what makes few masks enough?).

    python benchmarks/hybrid.py --images 32 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from headflow.attribution import HeadAttribution, HeadAttributionHybrid
from headflow.data import load_dataset
from headflow.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--coverage", type=float, nargs="+", default=[0.99, 0.9])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lm = load_model(args.model)
    data = load_dataset("default", n=args.images)
    out = Path(tempfile.mkdtemp(prefix="headflow-bench-hybrid-"))
    methods = [("regression", HeadAttribution(lm))]
    methods += [(f"hybrid_{c:g}", HeadAttributionHybrid(lm, screen_coverage=c)) for c in args.coverage]
    report: dict = {"model": args.model, "n_images": len(data), "n_heads": lm.n_layers * lm.n_heads,
                    "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    reference = None
    for name, method in methods + [("regression_few_masks", None)]:
        if method is None:  # the regression with the first hybrid's number of masks
            method = HeadAttribution(lm, n_masks=report[methods[1][0]]["n_masks"])
        start = time.perf_counter()
        result = method.run(data, out=out / name)
        seconds = time.perf_counter() - start
        s = result.summary
        reference = result.attributions if reference is None else reference
        report[name] = {"n_masks": s["n_masks"], "n_val": s["n_val"], "n_used": s["n_images"],
                        "n_screened": s.get("screen", {}).get("n_screened", s["n_heads_total"]),
                        "screen_coverage": s.get("screen", {}).get("coverage"),
                        "lds_pearson_median": s["lds_pearson_median"], "lds_spearman_median": s["lds_spearman_median"],
                        "mean_map_spearman_vs_regression": float(spearmanr(
                            result.attributions.mean(0).ravel(), reference.mean(0).ravel()).statistic),
                        "per_image_spearman_vs_regression_median": float(np.nanmedian(
                            [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(result.attributions,
                                                                                         reference)])),
                        "seconds": round(seconds, 1)}
    print(json.dumps(report, indent=2) if args.json else report)


if __name__ == "__main__":
    main()
