"""How close ``headflow plan``'s memory estimate per batch row is to the measured peak (issue 18).

For each batch size, ``plan_attribution`` estimates the engine's memory per batch row from the model's shape
(:func:`headflow.per_image.engine_memory`) and its probe measures the peak of one batch above what was in use
before it (CPU: the resident-set high-water mark, reset first; CUDA: the allocator's peak). Prints JSON.

    python benchmarks/plan_memory.py --shape llava15 --batch-sizes 16 64 128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import LONG_QUESTION, build_shape  # noqa: E402

from headflow.plan import plan_attribution  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llava15", choices=["llava15", "qwen2vl", "llava15-7b"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    lm = build_shape(args.shape, device=args.device)
    out = []
    for batch in args.batch_sizes:
        plan = plan_attribution(lm, n_images=1, n_masks=batch, n_val=0, batch_size=batch, question=LONG_QUESTION)
        mem = plan["memory"]
        estimated, measured = mem["per_batch_row"], mem["measured_per_batch_row"]
        out.append({"shape": args.shape, "batch_size": batch, "path": plan["path"], "prompt_tokens": plan["prompt_tokens"],
                    "estimated_per_row_MiB": estimated / 2**20,
                    "measured_per_row_MiB": None if measured is None else measured / 2**20,
                    "estimate_over_measured": None if not measured else estimated / measured,
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"})
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
