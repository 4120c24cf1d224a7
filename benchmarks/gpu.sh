#!/usr/bin/env bash
# One-shot GPU benchmark (<= 8 minutes, no downloads):
# 1. a tiny model split over cuda:0 and the CPU (every other layer) passes `headflow check` and equals the unsplit
#    model (benchmarks/split_check.py);
# 2. a LLaVA-1.5-7B-shaped language model with random weights in bf16 (1024 heads), 4096 masks on one image: the
#    fused attention kernels are checked against the written-out blocks first, then seconds per image for the
#    prefix path (3) and the suffix floor (4), and the naive full-prompt path (1) on a subset of masks (P1/P2);
# 3. `headflow check` on the embedded default model on cuda.
# Usage (repo root, on the GPU machine):  bash benchmarks/gpu.sh [OUT_DIR]
# Offline, `pip install -e .` cannot build (no setuptools to fetch), so src/ goes on PYTHONPATH. What headflow
# needs and the machine lacks (pydantic; the transformers tested here, 5.25, with its hub client) travels as
# wheels, installed with `pip install --no-index --no-deps --target /tmp/site`, /tmp/site first on PYTHONPATH.
set -euo pipefail
out="${1:-${OUT:-.}}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/split_check.py | tee "$out/gpu_split_check.json" || echo "split check FAILED (see above)"
python3 benchmarks/speed.py --shape llava15-7b --device cuda --dtype bfloat16 --masks 4096 --naive-masks 16 \
    --batch-size 256 --repeats 2 --skip-full --json | tee "$out/gpu_llava15_7b.json"
python3 -c "import sys; sys.argv = ['headflow', 'check', '--model', 'default', '--device', 'cuda']
from headflow.cli import main; main()"
