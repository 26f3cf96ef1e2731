#!/usr/bin/env bash
# The small-batch study: per-rank ("per-GPU") versus synchronized BatchNorm statistics, and the
# alternatives, at small per-rank batches, as an experiment with seeds and error bars. Two sweeps at a
# fixed world size NP, every cell run with each seed of SEEDS:
#
# 1. Per-rank batch b (BATCHES), one run per mode over the same number of samples (equal epochs), the
#    learning rate by the linear scaling rule (LR_BASE per 64 samples of global batch):
#      local     --norm local, global batch NP*b            BN over b (each rank its own)
#      sync      --norm sync                                 BN over NP*b
#      sync2     --norm sync:2                               BN over 2*b (pairs of ranks)
#      accum     --norm local, global NP*32, --accum-steps 32/b
#                (memory allows b per forward, the recipe wants 32 per rank: optimizer batch 32, BN batch b)
#      groupnorm --norm groupnorm                            no batch statistics
#      renorm    --norm local --bn-renorm                    Batch Renormalization over b (Ioffe 2017)
# 2. Normalization batch at a FIXED global batch NP*NORM_PER_RANK and learning rate (Wu & Johnson 2021
#    separate the two): BN batch 2..NORM_PER_RANK by ghost batches (--norm local --ghost-batch n), then
#    2*NORM_PER_RANK by sync:2 and NP*NORM_PER_RANK by sync.
#
# Every BatchNorm run also evaluates with PreciseBN statistics (--precise-bn over PRECISE_SAMPLES
# training samples) besides the EMA running statistics, from the same weights. Results:
# OUT/study.csv (one row per run, with its seed), OUT/study.md (mean ± std (n) per cell, 95% intervals,
# the findings), OUT/accuracy.png, OUT/norm_batch.png (error bars), OUT/loss_curves.png, OUT/<run>/.
#   launch/study.sh --quick          # NP=4 (oversubscribed here), b in 2 8 32, 3 seeds: ~15 min on 2 cores
#   launch/study.sh --full           # b in 2 4 8 16 32, 3 epochs, 5 seeds; for a real node or cluster (NP=8)
#   NP=8 MPIRUN_EXTRA="--hostfile hosts" launch/study.sh --full
#   launch/study.sh --report-only    # rebuild study.md and the plots from OUT's runs
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

preset=quick
report_only=0
for arg in "$@"; do
  case "$arg" in
    --quick) preset=quick ;;
    --full) preset=full ;;
    --report-only) report_only=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "error: unknown option '$arg' (--quick, --full or --report-only)" >&2; exit 2 ;;
  esac
done
if [ "$preset" = quick ]; then
  : "${NP:=4}"
  : "${BATCHES:=2 8 32}"
  : "${SAMPLES:=12000}"        # training samples per run (a fifth of an epoch of Fashion-MNIST)
  : "${SEEDS:=1 2 3}"
else
  : "${NP:=8}"
  : "${BATCHES:=2 4 8 16 32}"
  : "${SAMPLES:=180000}"       # 3 epochs
  : "${SEEDS:=1 2 3 4 5}"
fi
: "${MODES:=local sync sync2 accum groupnorm renorm}"
: "${NORM_PER_RANK:=16}"       # sweep 2: per-rank batch (the global batch is NP times this)
: "${PRECISE_SAMPLES:=2048}"   # PreciseBN: training samples its statistics are recomputed over
: "${DATASET:=fashion-mnist}"
: "${LR_BASE:=0.05}"           # learning rate per 64 samples of global batch
: "${THREADS:=1}"
: "${BUILD_DIR:=build}"
: "${OUT:=runs/study-$preset}"
: "${MPIRUN:=mpirun}"
: "${MPIRUN_EXTRA:=}"
: "${PYTHON:=/usr/bin/python3}"

report() {
  sbn_run "$PYTHON" launch/study_report.py "$OUT" --world-size "$NP" --samples "$SAMPLES" --dataset "$DATASET"
}
if [ "$report_only" = 1 ]; then
  report
  exit 0
fi

bin="$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
mkdir -p "$OUT"
sbn_mpirun_flags "$NP"
# shellcheck disable=SC2206
[ -n "$MPIRUN_EXTRA" ] && MPIRUN_FLAGS+=($MPIRUN_EXTRA)

# One training run into OUT/<name>-s<seed>: global batch B, then the mode's flags.
run_one() {
  local name=$1 seed=$2 B=$3
  shift 3
  local steps=$(( (SAMPLES + B - 1) / B ))
  local log_every=$(( steps / 40 > 0 ? steps / 40 : 1 ))
  local warmup=$(( steps / 10 ))
  local lr precise=()
  lr=$(awk -v base="$LR_BASE" -v b="$B" 'BEGIN { printf "%.6g", base * b / 64 }')
  case " $* " in
    *" --norm groupnorm "*) ;;
    *) precise=(--precise-bn $(( (PRECISE_SAMPLES + B - 1) / B ))) ;;
  esac
  local dir="$OUT/$name-s$seed"
  rm -rf "$dir"
  sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" --dataset "$DATASET" --seed "$seed" --global-batch "$B" \
    --max-steps "$steps" --log-every "$log_every" --warmup-steps "$warmup" --lr "$lr" --threads "$THREADS" \
    "${precise[@]}" --run-dir "$dir" "$@" >"$dir.log" 2>&1 ||
    { tail -5 "$dir.log"; echo "error: run $dir failed" >&2; exit 1; }
  grep -E "^final" "$dir.log" | sed "s|^|  $name seed $seed: |"
}

start=$(date +%s)
for seed in $SEEDS; do
  # Sweep 1: per-rank batch.
  for b in $BATCHES; do
    for mode in $MODES; do
      B=$((NP * b))
      steps=$(( (SAMPLES + B - 1) / B ))
      case "$mode" in
        local) run_one "local-b$b" "$seed" "$B" --norm local ;;
        sync) run_one "sync-b$b" "$seed" "$B" --norm sync ;;
        sync2) run_one "sync2-b$b" "$seed" "$B" --norm sync:2 ;;
        accum)
          if [ "$b" -ge 32 ] || [ $((32 % b)) -ne 0 ]; then
            echo "# skip accum at b=$b (32/b is not an integer > 1; at b=32 it is the local run)"
            continue
          fi
          run_one "accum-b$b" "$seed" $((NP * 32)) --norm local --accum-steps $((32 / b)) ;;
        groupnorm) run_one "groupnorm-b$b" "$seed" "$B" --norm groupnorm ;;
        # The paper's r_max/d_max warm-up, scaled to the run: relaxed over its first fifth.
        renorm) run_one "renorm-b$b" "$seed" "$B" --norm local --bn-renorm --renorm-warmup $((steps / 5 + 1)) ;;
        *) echo "error: unknown mode '$mode'" >&2; exit 2 ;;
      esac
    done
  done
  # Sweep 2: normalization batch at a fixed global batch and learning rate.
  B=$((NP * NORM_PER_RANK))
  for n in 2 4 8 16 32 64 128 256; do
    if [ "$n" -lt "$NORM_PER_RANK" ]; then
      run_one "norm-n$n" "$seed" "$B" --norm local --ghost-batch "$n"
    fi
  done
  run_one "norm-n$NORM_PER_RANK" "$seed" "$B" --norm local
  if [ "$NP" -gt 2 ] && [ $((NP % 2)) -eq 0 ]; then
    run_one "norm-n$((2 * NORM_PER_RANK))" "$seed" "$B" --norm sync:2
  fi
  run_one "norm-n$B" "$seed" "$B" --norm sync
done
echo "# sweep took $(( $(date +%s) - start )) s"
report
