#!/usr/bin/env bash
# GPU checks, one section per feature; each prints its table and PASS/FAIL lines. Needs CUDA.
#   bash benchmarks/gpu_check.sh [section ...]     (default: every section)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(precision)

precision() {
  # Mixed-precision SDO: no-grad skip calls in bf16/fp16 (autocast, weight copy, compile), graph step in fp32.
  # Target: sdo@<low> at N=50 <= 0.75x fp32 plain sampling, cosine >= 0.99 to the fp32 SDO gradient.
  "$PY" benchmarks/gradient_cost.py --device cuda --model sd15-unet --batch 1 --steps 50 --repeats 3 \
    --wrt latent --no-exact --json "$OUT/precision_sd15.json" \
    --policies none,sdo,none@bf16,sdo@bf16,sdo@bf16+copy,none@fp16,sdo@fp16,sdo@fp16+cl,sdo@bf16+compile
  "$PY" benchmarks/gradient_cost.py --device cuda --model digits-ddpm --steps 50 --repeats 3 --wrt latent \
    --json "$OUT/precision_digits.json" --policies none,sdo,none@bf16,sdo@bf16,sdo@fp16,sdo@bf16+copy
  "$PY" benchmarks/precision_side_by_side.py --device cuda --precisions fp32,bf16,fp16 --samples 50 \
    --attack-steps 30 --guided-steps 30 --sampling-steps 30 --seed-sets 0,1000 --json "$OUT/precision_jobs.json"
}

for s in "${sections[@]}"; do
  echo "== $s"
  "$s"
done
