#!/usr/bin/env bash
# GPU checks, one section per feature; each prints its table and PASS/FAIL lines, and a summary table of the
# sections (PASS/FAIL, seconds) ends the run. Needs CUDA (planned to take about 8 minutes on an H200).
#   bash benchmarks/gpu_check.sh [--dry-run | --print] [section ...]   (default: every section)
# Sections: precision table3 real_scale attack.
# --dry-run runs every command at tiny size on the CPU: the same scripts and options with small values (the small
#   UNet, 2 steps, 1 repeat, 1 sample per class; bf16/fp16 emulated or, in the jobs, fp32 where the CPU has no kernels
#   for them; no torch.compile, minutes on a CPU; real_scale parses its full-size fit commands instead of building
#   the models), so a broken command fails here, not on the GPU.
# --print prints the full-size commands without running them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
MODE=run
sections=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE=dry ;;
    --print) MODE=print ;;
    precision|table3|real_scale|attack) sections+=("$arg") ;;
    *) echo "gpu_check.sh: unknown argument '$arg'; allowed: precision table3 real_scale attack, --dry-run, --print" >&2
       exit 2 ;;
  esac
done
[ ${#sections[@]} -eq 0 ] && sections=(precision table3 real_scale attack)

# The sizes: the GPU run's, or --dry-run's (tiny, CPU).
if [ "$MODE" = dry ]; then
  DEV=cpu N=2 JOB_N=2 REPEATS=1 T3_REPEATS=1 OPT=1 PER_CLASS=1 SWEEP_PER_CLASS=1 SWEEP_OPT=1 BATCH=2 THREADS=1
  PIXEL=small-unet LATENT_UNET=small-unet LATENT=small-unet LOW=+emulated COMPILE= CHECK=--check-only
  CPU_PRECISIONS=$("$PY" -c "from lit_sdo.sampling import supported_precisions as s; print(*s('cpu'))")
else
  DEV=cuda N=50 JOB_N=30 REPEATS=3 T3_REPEATS=2 OPT=30 PER_CLASS=10 SWEEP_PER_CLASS=2 SWEEP_OPT=10 BATCH=30 THREADS=8
  PIXEL=ddpm-256 LATENT_UNET=sd15-unet LATENT=sd15 LOW= COMPILE=+compile CHECK=
fi
[ "$MODE" = print ] || mkdir -p "$OUT"

failed=0
run() {  # run a command (a failure marks its section failed, the section goes on), or print it under --print
  if [ "$MODE" = print ]; then printf '%q ' "$@"; echo; else "$@" || failed=1; fi
}

job_precision() {  # the precision a CLI job runs: --dry-run falls back to fp32 where the CPU has no kernels for it
  if [ "$MODE" != dry ] || [[ " $CPU_PRECISIONS " == *" $1 "* ]]; then echo "$1"; else echo fp32; fi
}

precision() {
  # Mixed-precision SDO: no-grad skip calls in bf16/fp16 (autocast, weight copy, compile), graph step in fp32.
  # Target: sdo@<low> at N=50 <= 0.75x fp32 plain sampling, cosine >= 0.99 to the fp32 SDO gradient.
  run "$PY" benchmarks/gradient_cost.py --device "$DEV" --model "$LATENT_UNET" --batch 1 --steps "$N" \
    --repeats "$REPEATS" --wrt latent --no-exact --json "$OUT/precision_sd15.json" --policies "none,sdo,none@bf16$LOW,"\
"sdo@bf16$LOW,sdo@bf16+copy$LOW,none@fp16$LOW,sdo@fp16$LOW,sdo@fp16+cl$LOW,sdo@bf16$COMPILE$LOW"
  run "$PY" benchmarks/gradient_cost.py --device "$DEV" --model digits-ddpm --batch "$BATCH" --steps "$N" \
    --repeats "$REPEATS" --wrt latent --json "$OUT/precision_digits.json" \
    --policies "none,sdo,none@bf16$LOW,sdo@bf16$LOW,sdo@fp16$LOW,sdo@bf16+copy$LOW"
  # The attack and the aesthetic job (their CLI runs) at each precision of the sampler's no-grad calls: what the
  # found δ achieves, scored in float32, and the time per optimisation step, one table per precision.
  for p in fp32 bf16 fp16; do
    q=$(job_precision $p)
    run "$PY" benchmarks/attack_policies.py --device "$DEV" --policies sdo --per-class "$PER_CLASS" --steps "$OPT" \
      --override=--model.init_args.sampler.num_steps="$JOB_N" --override=--model.init_args.sampler.precision="$q" \
      --results "$OUT/precision_attack_$p.md"
    run "$PY" benchmarks/guided_policies.py --device "$DEV" --tasks aesthetic --policies sdo --samples 10 \
      --opt-steps "$OPT" --num-steps "$JOB_N" --xhat-scales --override=--model.init_args.sampler.precision="$q" \
      --results "$OUT/precision_aesthetic_$p.md"
  done
}

table3() {
  # Paper Table 3 (one gradient w.r.t. x_N at N = 50): the pixel row (256² DDPM) and the latent row (SD1.5 UNet +
  # VAE decode): fp32 SDO, SDO with bf16 no-grad calls, and the paper's baselines AdjointDPM and DOODL.
  # full backprop runs on the pixel model only (50 SD1.5 graphs do not fit one GPU).
  run "$PY" benchmarks/gradient_cost.py --device "$DEV" --model "$PIXEL" --batch 1 --steps "$N" \
    --repeats "$T3_REPEATS" --wrt latent --no-exact --json "$OUT/table3_ddpm256.json" \
    --policies "none,sdo,sdo@bf16$LOW,full,adjoint,doodl"
  run "$PY" benchmarks/gradient_cost.py --device "$DEV" --model "$LATENT" --batch 1 --steps "$N" \
    --repeats "$T3_REPEATS" --wrt latent --no-exact --json "$OUT/table3_sd15.json" \
    --policies "none,sdo,sdo@bf16$LOW,adjoint,doodl"
}

real_scale() {
  # Every paper config at full size (random weights in the released layout; the models are built first, on the
  # CPU), 4 sampling steps, 2 optimisation steps, on the GPU; then one SD1.5 reward step, SDO vs AlignProp's
  # random truncation with its gradient checkpointing (one draw of K; K graphs of SD1.5 would not fit), at N = 50.
  run "$PY" benchmarks/real_scale.py --device "$DEV" --threads "$THREADS" --sampling-steps 4 --opt-steps 2 \
    --cache "$OUT/real_scale/models" --out "$OUT/real_scale/out" --reward-cost --reward-steps "$N" \
    --reward-policies sdo-random,random_truncation-recompute=true $CHECK
}

attack() {
  # The digits attack with each gradient policy on the same samples (paper Table 5), at reduced size.
  run "$PY" benchmarks/attack_policies.py --device "$DEV" --per-class "$SWEEP_PER_CLASS" --steps "$SWEEP_OPT" \
    --override=--model.init_args.sampler.num_steps="$JOB_N" --policies sdo full checkpoint last_k=1 \
    --results "$OUT/attack_policies.md"
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
if [ "$MODE" != print ]; then
  echo
  echo "| section | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${summary[@]}"
fi
exit $status
