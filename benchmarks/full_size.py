"""Full-size shapes on CPU: build each family's 2-layer full-size model in bf16, run ``headflow check`` and a short
attribution, and print one JSON line per family (parameters, bf16 parameter memory, peak RSS, seconds, the largest
difference of each check invariant against its tolerance).

    PYTHONPATH=src python benchmarks/full_size.py llava qwen2_vl ...   # one process per family keeps RSS honest
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def measure(family: str, *, n_layers: int = 2, vision_layers: int = 1, n_masks: int = 8, n_val: int = 8) -> dict:
    from headflow.attribution import HeadAttribution
    from headflow.data import load_dataset
    from headflow.intervene.check import check_image, run_checks
    from headflow.method import DEFAULT_QUESTION
    from headflow.models.full_size import FULL_SIZE, build_full_size

    row: dict = {"family": family, "checkpoint": FULL_SIZE[family].checkpoint, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    lm = build_full_size(family, n_layers=n_layers, vision_layers=vision_layers)
    row["build_s"] = round(time.perf_counter() - t0, 1)
    params = list(lm.model.parameters())
    row["params"] = sum(p.numel() for p in params)
    row["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
    row["dtypes"] = sorted({str(p.dtype) for p in params})
    text = lm.model.config.text_config
    row["hidden"], row["heads"], row["kv_heads"], row["vocab"] = (
        text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.vocab_size)
    row["image_tokens"] = len(lm.encode(check_image(), DEFAULT_QUESTION)[1].image)
    t0 = time.perf_counter()
    results = run_checks(lm)
    row["check_s"] = round(time.perf_counter() - t0, 1)
    row["check"] = {r.name: {"max_abs_diff": r.max_abs_diff, "tolerance": r.tolerance, "passed": r.passed,
                             "error": r.error} for r in results}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = HeadAttribution(lm, n_masks=n_masks, n_val=n_val, keep_wrong=True, batch_size=n_masks).run(
            load_dataset("default", n=2), out=Path(tmp) / "run")
    row["attribution_s"] = round(time.perf_counter() - t0, 1)
    row["attribution_shape"] = list(result.attributions.shape)
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(json.dumps(measure(name)), flush=True)
