"""Mask evaluations per second: naive full prompt vs headflow's prefix reuse (issue 9).

Measured in one process, same model, same masks, same image:
  (1) naive     full prompt, one mask per forward (the way other tools do it; vision tower excluded)
  (2) full      full prompt, many masks per batch
  (3) headflow  prefix reuse, many masks per batch (the path `headflow attribute` uses)
  (4) floor     the suffix tokens alone through the same language model, batched the same way
                (no prefix, no cache, no intervention): no implementation can beat it by much.
Prints P1 = rate(3)/rate(1) and P2 = time(3)/time(4) (medians over repeats), after checking that
(1)-(3) give the same targets (<= 1e-4 in fp32). Before timing, (3) with its fused attention kernels is checked
against (3) with the blocks written out (``InterventionEngine(kernel="written")``, the reference) within
``headflow check``'s tolerance for the dtype, and the written-out rate is measured too.

    python benchmarks/speed.py --shape llava15 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import LONG_QUESTION, build_shape  # noqa: E402

from headflow.answers import target_values  # noqa: E402
from headflow.attribution.core import mask_rows, sample_masks  # noqa: E402
from headflow.intervene import Baseline, InterventionEngine  # noqa: E402
from headflow.intervene.check import check_image, tolerance_for  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def floor_forward(lm, prompt, rows: int, batch: int) -> torch.Tensor:
    """(4): the suffix alone, plain SDPA, no cache: position ids as in the real prompt."""
    prefix_length = prompt.prefix_length
    outs = []
    with torch.no_grad():
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            embeds = prompt.embeds[:, prefix_length:].expand(n, -1, -1)
            pos = prompt.position_ids
            pos = (torch.arange(prefix_length, prompt.groups.length, device=embeds.device)[None].expand(n, -1) if pos is None
                   else pos[..., prefix_length:].expand(*pos.shape[:-2], n, -1))
            outs.append(lm.model(inputs_embeds=embeds, position_ids=pos, use_cache=False, logits_to_keep=1).logits)
    return torch.cat(outs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llava15", choices=["default", "llava15", "llava15-7b", "qwen2vl"])
    parser.add_argument("--masks", type=int, default=256, help="masks for (2)-(4)")
    parser.add_argument("--naive-masks", type=int, default=12, help="masks for (1), timed per mask")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-full", action="store_true", help="skip (2) (slow for large shapes)")
    parser.add_argument("--written-masks", type=int, default=None,
                        help="masks for (3) with written-out blocks (default: 4 batches)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    lm = build_shape(args.shape, device=args.device, dtype=dtype)
    n_layers, n_heads = lm.n_layers, lm.n_heads
    engine = InterventionEngine(lm, batch_size=args.batch_size)
    question = LONG_QUESTION if args.shape != "default" else "What is the main object in the image? Answer in one word."
    prompt = engine.prepare(check_image(size=336), question)
    baseline = Baseline.mean([prompt, engine.prepare(check_image(size=336, seed=1), question)])
    masks = sample_masks(args.masks, n_layers * n_heads, 0.1, seed=0)
    rows = mask_rows(masks, n_layers, n_heads)
    answer = int(prompt.clean_logits.argmax())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(path, subset, batch):
        engine.batch_size = batch
        out = engine.run(prompt, subset, baseline=baseline, path=path).logits
        sync()
        return out

    run("prefix", rows[: args.batch_size], args.batch_size)  # warm-up
    floor_forward(lm, prompt, args.batch_size, args.batch_size)
    # the fused kernels against the written-out blocks, on the same rows, before anything is timed
    written = InterventionEngine(lm, batch_size=args.batch_size, kernel="written")
    written_rows = rows[: args.written_masks or 4 * args.batch_size]
    fused_y = run("prefix", written_rows, args.batch_size)
    t_written, written_y = timed(lambda: (written.run(prompt, written_rows, baseline=baseline, path="prefix").logits,
                                          sync())[0], 1)
    t_fused, _ = timed(lambda: run("prefix", written_rows, args.batch_size), 1)
    kernel_diff = float((fused_y - written_y).abs().max())
    kernel_tol = tolerance_for(dtype, float(prompt.clean_logits.abs().max()))
    naive_rows = rows[: args.naive_masks]
    t1, y1 = timed(lambda: run("full", naive_rows, 1), max(1, args.repeats - 1))
    # (3) and (4) alternate within each repeat so that machine drift hits both alike
    times3, times4 = [], []
    for _ in range(args.repeats):
        t, y3 = timed(lambda: run("prefix", rows, args.batch_size), 1)
        times3.append(t)
        times4.append(timed(lambda: (floor_forward(lm, prompt, len(rows), args.batch_size), sync()), 1)[0])
    t3, t4 = statistics.median(times3), statistics.median(times4)
    result = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "n_layers": n_layers,
              "n_heads": n_heads, "n_kv_heads": lm.n_kv_heads, "prompt_tokens": prompt.groups.length,
              "image_tokens": len(prompt.groups.image), "suffix_tokens": prompt.groups.length - prompt.prefix_length,
              "masks": len(rows), "naive_masks": len(naive_rows), "batch_size": args.batch_size,
              "rate_naive": len(naive_rows) / t1, "rate_prefix": len(rows) / t3, "rate_floor": len(rows) / t4}
    target = lambda y: target_values(y, answer, "logit")  # noqa: E731
    diff = float((target(y1) - target(y3[: len(naive_rows)])).abs().max())
    if not args.skip_full:
        t2, y2 = timed(lambda: run("full", rows, args.batch_size), max(1, args.repeats - 1))
        result["rate_full_batched"] = len(rows) / t2
        diff = max(diff, float((target(y2) - target(y3)).abs().max()))
    result.update({"fused_vs_written_max_logit_diff": kernel_diff, "fused_vs_written_tolerance": kernel_tol,
                   "fused_exact": kernel_diff <= kernel_tol, "written_masks": len(written_rows),
                   "fused_over_written_speedup": t_written / t_fused})
    result.update({"max_target_diff": diff, "same_targets": diff <= 1e-4 if dtype == torch.float32 else None,
                   "P1": result["rate_prefix"] / result["rate_naive"], "P2": t3 / t4,
                   "seconds_per_1000_masks_prefix": 1000 * t3 / len(rows),
                   "seconds_per_image_prefix": t3, "seconds_per_image_floor": t4,
                   "seconds_per_image_naive_extrapolated": len(rows) / result["rate_naive"],
                   "machine": f"{platform.machine()} {torch.get_num_threads()} threads"
                              + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
                   "torch": torch.__version__})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value:.4g}" if isinstance(value, float) else f"{key:>30}: {value}")
    return result


if __name__ == "__main__":
    main()
