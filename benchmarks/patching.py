"""Attribution patching vs the regression, side by side in one process (issue 17): same model, same images,
same baseline and target. Reports the median per-image Spearman between the two attribution maps, and images/s
of each (whole runs: clean pass included), plus the patching estimate's Spearman with exact single-head effects.

    python benchmarks/patching.py --images 32 --json
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

from headflow.attribution import HeadAttribution, HeadAttributionPatching
from headflow.data import load_dataset
from headflow.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lm = load_model(args.model)
    data = load_dataset("default", n=args.images)
    out = Path(tempfile.mkdtemp(prefix="headflow-bench-patching-"))
    rows = {}
    for name, method in (("patching_output", HeadAttributionPatching(lm, n_check=0)),
                         ("patching_kv", HeadAttributionPatching(lm, n_check=0, mix="kv")),
                         ("regression", HeadAttribution(lm))):
        start = time.perf_counter()
        result = method.run(data, out=out / name)
        seconds = time.perf_counter() - start
        rows[name] = {"seconds": seconds, "images_per_s": len(data) / seconds,
                      "n_used": int(result.attributions.shape[0]), "attributions": result.attributions}
    reg = rows["regression"]["attributions"]
    report = {"model": args.model, "n_images": len(data), "n_used": rows["regression"]["n_used"],
              "n_masks": int(HeadAttribution(lm).check().n_masks or max(512, 4 * lm.n_layers * lm.n_heads)),
              "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"}
    for name in ("patching_output", "patching_kv"):
        est = rows[name]["attributions"]
        rho = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(est, reg)]
        report[name] = {"spearman_median": float(np.nanmedian(rho)),
                        "spearman_quartiles": [float(q) for q in np.nanpercentile(rho, [25, 75])],
                        "mean_map_spearman": float(spearmanr(est.mean(0).ravel(), reg.mean(0).ravel()).statistic),
                        "images_per_s": rows[name]["images_per_s"],
                        "speed_ratio_vs_regression": rows[name]["images_per_s"] / rows["regression"]["images_per_s"]}
    report["regression"] = {"images_per_s": rows["regression"]["images_per_s"]}
    # Why the two disagree per image: each against the exact effect of ablating one head alone
    exact = single_head_effects(lm, data, out / "regression")
    report["vs_single_head_effects"] = {
        name: float(np.nanmedian([spearmanr(a.ravel(), e).statistic for a, e in zip(rows[name]["attributions"], exact)]))
        for name in ("patching_output", "patching_kv", "regression")}
    top = max(1, exact.shape[1] // 5)  # the heads that matter: the top fifth by exact effect, per image
    report["vs_single_head_effects_top_fifth"] = {
        name: float(np.nanmedian([spearmanr(a.ravel()[np.argsort(-e)[:top]], e[np.argsort(-e)[:top]]).statistic
                                  for a, e in zip(rows[name]["attributions"], exact)]))
        for name in ("patching_output", "patching_kv", "regression")}
    print(json.dumps(report, indent=2) if args.json else report)


def single_head_effects(lm, data, run_dir: Path) -> np.ndarray:
    """``y_clean − y(head h ablated alone)`` per used image of the regression run and head, ``[image, head]``."""
    from headflow.attribution import AttributionResult
    from headflow.intervene import Intervention, InterventionEngine
    from headflow.per_image import image_baseline, image_job, image_targets, load_baseline

    result = AttributionResult.load(run_dir)
    params = result.config["params"]
    table = result.images
    baseline = load_baseline(run_dir / "baseline.safetensors")
    engine = InterventionEngine(lm)
    n = lm.n_layers * lm.n_heads
    rows = [Intervention(ablate=torch.eye(n, dtype=torch.bool)[c].view(lm.n_layers, lm.n_heads)) for c in range(n)]
    out = []
    for idx in table.index[table["used"]]:
        job = image_job(data, table, idx, params["baseline"])
        prompt = engine.prepare(job.image, params["question"])
        base = image_baseline(engine, prompt, baseline, params["baseline"], params["question"], job.partner)
        targets, _ = image_targets(engine, prompt, rows, base, job.answer_ids, params["target"])
        out.append(float(table.at[idx, "clean_target"]) - targets.cpu().numpy())
    return np.stack(out)


if __name__ == "__main__":
    main()
