#!/usr/bin/env bash
# Everything the GPU tables need, on one CUDA GPU, in three parts (PARTS=syncs,ocl,pcr picks;
# on a lent machine with a per-command time limit, run them one at a time, and cap the
# Split CIFAR-10 runs with MAX_SAMPLES):
#   1. host-device synchronisations per step of every strategy, as the CPU emulation counts
#      them and as CUDA's own sync debug mode reports them (tests/test_syncs.py); a strategy
#      over its budget (none per step) makes the script fail, after the other parts ran;
#   2. Split CIFAR-10 (5 x 2 classes, batch 10, one pass), ER, PCR, HPCR (reduced ResNet18)
#      and OnPro (full ResNet18, nf=64, 16 rotations, bf16 autocast) at memory 200 and 1000:
#      accuracy, samples/s and mean GPU utilisation (nvidia-smi, sampled every 0.5 s);
#   3. with PCR_OFFICIAL=path/to/FelixHuiweiLin-PCR: PCR against the official code, which
#      calls .cuda() itself, side by side (task 1; PCR_TASKS=5 for the whole protocol).
# Environment: PY (python), OUT (results folder), PARTS (default syncs,ocl,pcr), SEEDS
# (default 0), STRATEGIES (default er,pcr,hpcr,onpro), MEMORY (default 200,1000),
# MAX_SAMPLES (default: all 50,000 training samples).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results}
SEEDS=${SEEDS:-0}
STRATEGIES=${STRATEGIES:-er,pcr,hpcr,onpro}
MEMORY=${MEMORY:-200,1000}
PCR_TASKS=${PCR_TASKS:-1}
PARTS=${PARTS:-syncs,ocl,pcr}
for part in ${PARTS//,/ }; do
  case "$part" in
    syncs | ocl | pcr) ;;
    *) echo "unknown part '$part' in PARTS; expected syncs, ocl or pcr" >&2 && exit 2 ;;
  esac
done
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

syncs_rc=0
if [[ ",$PARTS," == *",syncs,"* ]]; then
  echo "== 1. synchronisations per step (emulated on the CPU, then reported by CUDA)"
  # the filter only trims the display; pytest's own exit status is what counts
  "$PY" -m pytest -q -s tests/test_syncs.py -k "budget or real_gpu" -p no:cacheprovider \
    | tee "$OUT/gpu_syncs.txt" | { grep -E "syncs per batch| x |passed|failed" || true; } \
    || syncs_rc=${PIPESTATUS[0]}
  if ((syncs_rc)); then
    echo "== 1. FAILED (pytest exit $syncs_rc): a step synchronises over its budget on this GPU;" \
      "see $OUT/gpu_syncs.txt. The other parts still run; the script exits $syncs_rc." >&2
  fi
fi

# the mean of nvidia-smi's utilisation samples taken while "$@" runs
with_utilisation() {
  local log="$1"
  shift
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 >"$log" &
  local smi=$! rc=0
  "$@" || rc=$?
  kill "$smi" 2>/dev/null || true
  # numeric samples only ("[N/A]" under MIG)
  awk '$1 ~ /^[0-9.]+$/ {s += $1; n++}
       END {if (n) printf "mean GPU utilisation %.0f%% over %d samples\n", s / n, n;
            else print "GPU utilisation not reported"}' "$log"
  return "$rc"
}

if [[ ",$PARTS," == *",ocl,"* ]]; then
  echo "== 2. Split CIFAR-10: accuracy, samples/s, GPU utilisation"
  for strategy in ${STRATEGIES//,/ }; do
    extra=(--no-track)
    if [[ -n "${MAX_SAMPLES:-}" ]]; then extra+=(--max-samples "$MAX_SAMPLES"); fi
    with_utilisation "$OUT/gpu_util_$strategy.log" \
      "$PY" benchmarks/cifar10_ocl.py --device cuda --strategies "$strategy" --memory "$MEMORY" \
      --seeds "$SEEDS" "${extra[@]}" \
      --json "$OUT/gpu_ocl_$strategy.json" --markdown "$OUT/gpu_ocl_$strategy.md" \
      | tee "$OUT/gpu_ocl_$strategy.txt" | tail -n 3
  done
  cat "$OUT"/gpu_ocl_*.md
fi

if [[ ",$PARTS," != *",pcr,"* ]]; then
  :
elif [[ -n "${PCR_OFFICIAL:-}" ]]; then
  echo "== 3. PCR against the official code, $PCR_TASKS task(s), memory 200"
  with_utilisation "$OUT/gpu_util_pcr_side_by_side.log" \
    "$PY" benchmarks/pcr_side_by_side.py --official "$PCR_OFFICIAL" --agents PCR \
    --device cuda --max-tasks "$PCR_TASKS" --json "$OUT/gpu_pcr_side_by_side.json"
else
  echo "== 3. skipped: set PCR_OFFICIAL to a checkout of FelixHuiweiLin/PCR"
fi

if ((syncs_rc)); then
  echo "part 1 failed: synchronisations over budget (pytest exit $syncs_rc, $OUT/gpu_syncs.txt)" >&2
  exit "$syncs_rc"
fi
