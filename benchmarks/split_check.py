"""One model over two devices, checked on a GPU machine (issue 18): every other language-model layer on
``cuda:0`` and the rest on the CPU, so recorded keys/values, baselines, batches and masks cross devices at every
layer. ``headflow check``'s invariants must hold on the split model and its ablation logits must equal the same
model on ``cuda:0`` alone (within the dtype's tolerance). Prints JSON; exits 1 on a failure.

    python benchmarks/split_check.py            (needs CUDA and accelerate)
"""

from __future__ import annotations

import json
import sys

import torch

from headflow import Baseline, InterventionEngine, load_model
from headflow.intervene.check import CHECK_QUESTION, check_image, random_rows, run_checks, tolerance_for


def split_map(lm) -> dict[str, str]:
    """Language-model layers alternately on cuda:0 and the CPU; every other module on cuda:0."""
    names = {module: name for name, module in lm.model.named_modules()}
    layers = lm.adapter.language_model().layers
    mapping = {names[layer]: ("cuda:0" if i % 2 == 0 else "cpu") for i, layer in enumerate(layers)}
    for name, _ in lm.model.named_parameters(remove_duplicate=False):
        if not any(name.startswith(prefix + ".") for prefix in mapping):
            mapping[name.rsplit(".", 1)[0]] = "cuda:0"
    for name, _ in lm.model.named_buffers(remove_duplicate=False):
        if not any(name.startswith(prefix + ".") for prefix in mapping):
            mapping[name.rsplit(".", 1)[0]] = "cuda:0"
    return mapping


def main() -> int:
    report, ok = {}, True
    for family in ("llava", "qwen2_vl", "gemma3"):
        whole = load_model(f"tiny:{family}", device="cuda:0")
        split = load_model(f"tiny:{family}", device_map=split_map(load_model(f"tiny:{family}")))
        results = run_checks(split)
        engines = [InterventionEngine(m) for m in (whole, split)]
        prompts = [e.prepare(check_image(), CHECK_QUESTION) for e in engines]
        rows = random_rows(whole.n_layers, whole.n_heads, 8, seed=0, knockouts=True)
        logits = [e.run(p, rows, baseline=Baseline.mean([p])).logits.cpu() for e, p in zip(engines, prompts)]
        diff = float((logits[0] - logits[1]).abs().max())
        tol = tolerance_for(whole.dtype, float(prompts[0].clean_logits.abs().max()))
        passed = all(r.passed for r in results) and diff <= tol
        ok &= passed
        report[family] = {"devices": sorted(set(split.device_map.values())), "passed": passed,
                          "split_vs_whole_max_logit_diff": diff, "tolerance": tol,
                          "checks": {r.name: (r.passed, r.max_abs_diff) for r in results}}
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("split_check.py needs a CUDA device.")
    sys.exit(main())
