#!/usr/bin/env bash
# GPU checks, one section per feature; each prints its table and PASS/FAIL lines, and a summary table of the
# sections (PASS/FAIL, seconds) ends the run. Needs CUDA (planned to take about 8 minutes on an H200).
#   bash benchmarks/gpu_check.sh [--dry-run] [section ...]   (default: every section)
# Sections: precision table3 real_scale attack. --dry-run prints the commands without running them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
DRY=0
sections=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    precision|table3|real_scale|attack) sections+=("$arg") ;;
    *) echo "gpu_check.sh: unknown section '$arg'; allowed: precision table3 real_scale attack (or --dry-run)" >&2
       exit 2 ;;
  esac
done
[ ${#sections[@]} -eq 0 ] && sections=(precision table3 real_scale attack)
[ "$DRY" = 1 ] || mkdir -p "$OUT"

failed=0
run() {  # run a command (a failure marks its section failed, the section goes on), or print it under --dry-run
  if [ "$DRY" = 1 ]; then printf '%q ' "$@"; echo; else "$@" || failed=1; fi
}

precision() {
  # Mixed-precision SDO: no-grad skip calls in bf16/fp16 (autocast, weight copy, compile), graph step in fp32.
  # Target: sdo@<low> at N=50 <= 0.75x fp32 plain sampling, cosine >= 0.99 to the fp32 SDO gradient.
  run "$PY" benchmarks/gradient_cost.py --device cuda --model sd15-unet --batch 1 --steps 50 --repeats 3 \
    --wrt latent --no-exact --json "$OUT/precision_sd15.json" \
    --policies none,sdo,none@bf16,sdo@bf16,sdo@bf16+copy,none@fp16,sdo@fp16,sdo@fp16+cl,sdo@bf16+compile
  run "$PY" benchmarks/gradient_cost.py --device cuda --model digits-ddpm --steps 50 --repeats 3 --wrt latent \
    --json "$OUT/precision_digits.json" --policies none,sdo,none@bf16,sdo@bf16,sdo@fp16,sdo@bf16+copy
  run "$PY" benchmarks/precision_side_by_side.py --device cuda --precisions fp32,bf16,fp16 --samples 50 \
    --attack-steps 30 --guided-steps 30 --sampling-steps 30 --seed-sets 0,1000 --json "$OUT/precision_jobs.json"
}

table3() {
  # Paper Table 3 (one gradient w.r.t. x_N at N = 50): the pixel row (256² DDPM) and the latent row (SD1.5 UNet +
  # VAE decode): fp32 SDO, SDO with bf16 no-grad calls, and the paper's baselines AdjointDPM and DOODL.
  # full backprop runs on the pixel model only (50 SD1.5 graphs do not fit one GPU).
  run "$PY" benchmarks/gradient_cost.py --device cuda --model ddpm-256 --batch 1 --steps 50 --repeats 2 \
    --wrt latent --no-exact --json "$OUT/table3_ddpm256.json" --policies none,sdo,sdo@bf16,full,adjoint,doodl
  run "$PY" benchmarks/gradient_cost.py --device cuda --model sd15 --batch 1 --steps 50 --repeats 2 \
    --wrt latent --no-exact --json "$OUT/table3_sd15.json" --policies none,sdo,sdo@bf16,adjoint,doodl
}

real_scale() {
  # Every paper config at full size (random weights in the released layout; the models are built first, on the
  # CPU), 4 sampling steps, 2 optimisation steps, on the GPU; then one SD1.5 reward step, SDO vs AlignProp's
  # random truncation with its gradient checkpointing (one draw of K; K graphs of SD1.5 would not fit), at N = 50.
  run "$PY" benchmarks/real_scale.py --device cuda --threads 8 --sampling-steps 4 --opt-steps 2 \
    --cache "$OUT/real_scale/models" --out "$OUT/real_scale/out" --reward-cost --reward-steps 50 \
    --reward-policies sdo-random,random_truncation-recompute=true
}

attack() {
  # The digits attack with each gradient policy on the same samples (paper Table 5), at reduced size.
  run "$PY" benchmarks/attack_policies.py --device cuda --per-class 2 --steps 10 \
    --policies sdo full checkpoint last_k=1 --results "$OUT/attack_policies.md"
}

summary=()
status=0
for s in "${sections[@]}"; do
  echo "== $s"
  start=$SECONDS
  failed=0
  "$s"
  [ $failed -ne 0 ] && status=1
  summary+=("| $s | $([ $failed -eq 0 ] && echo PASS || echo FAIL) | $((SECONDS - start)) |")
done
if [ "$DRY" = 0 ]; then
  echo
  echo "| section | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${summary[@]}"
fi
exit $status
