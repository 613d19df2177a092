#!/usr/bin/env bash
# Full Split CIFAR-10 protocol on one CUDA GPU (aimed at < 10 minutes on a recent GPU):
# OnPro (full ResNet18, nf=64, 16 rotations, bf16 autocast) and HPCR (reduced ResNet18),
# memory 200 and 1000, seed 0. Prints the table; JSON and markdown go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results}
SEEDS=${SEEDS:-0}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for strategy in hpcr onpro; do
  /usr/bin/time -f "$strategy: %e s wall" "$PY" benchmarks/cifar10_ocl.py --device cuda \
    --strategies "$strategy" --memory 200,1000 --seeds "$SEEDS" --no-track \
    --json "$OUT/gpu_ocl_$strategy.json" --markdown "$OUT/gpu_ocl_$strategy.md"
done
cat "$OUT"/gpu_ocl_*.md
