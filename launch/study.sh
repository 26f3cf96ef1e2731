#!/usr/bin/env bash
# The small-batch study: per-rank ("per-GPU") versus synchronized BatchNorm statistics, and the
# alternatives, at small per-rank batches. At a fixed world size NP and seed, for each per-rank batch b
# and each mode, one training run over the same number of samples (equal epochs):
#   local     --norm local, global batch NP*b           BN over b (each rank its own)
#   sync      --norm sync                                BN over NP*b
#   sync2     --norm sync:2                              BN over 2*b (pairs of ranks)
#   accum     --norm local, global batch NP*32, --accum-steps 32/b
#             (what one does when memory allows only b per forward but the recipe wants 32 per rank:
#              the optimizer batch of b = 32, BN statistics of b)
#   groupnorm --norm groupnorm                           no batch statistics
# The learning rate follows the linear scaling rule (LR_BASE per 64 samples of global batch). Results:
# OUT/study.csv, OUT/study.md (table), OUT/accuracy.png, OUT/loss_curves.png, OUT/<run>/metrics.*.
#   launch/study.sh --quick          # NP=4 (oversubscribed here), b in 2 8 32, half an epoch: ~8 min on 2 cores
#   launch/study.sh --full           # b in 2 4 8 16 32, 3 epochs; for a real node or cluster (NP=8)
#   NP=8 MPIRUN_EXTRA="--hostfile hosts" launch/study.sh --full
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

preset=quick
for arg in "$@"; do
  case "$arg" in
    --quick) preset=quick ;;
    --full) preset=full ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown option '$arg' (--quick or --full)" >&2; exit 2 ;;
  esac
done
if [ "$preset" = quick ]; then
  : "${NP:=4}"
  : "${BATCHES:=2 8 32}"
  : "${SAMPLES:=30000}"        # training samples per run (half an epoch of Fashion-MNIST)
else
  : "${NP:=8}"
  : "${BATCHES:=2 4 8 16 32}"
  : "${SAMPLES:=180000}"       # 3 epochs
fi
: "${MODES:=local sync sync2 accum groupnorm}"
: "${DATASET:=fashion-mnist}"
: "${SEED:=1}"
: "${LR_BASE:=0.05}"           # learning rate per 64 samples of global batch
: "${THREADS:=1}"
: "${BUILD_DIR:=build}"
: "${OUT:=runs/study-$preset}"
: "${MPIRUN:=mpirun}"
: "${MPIRUN_EXTRA:=}"
: "${PYTHON:=/usr/bin/python3}"

bin="$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
mkdir -p "$OUT"
sbn_mpirun_flags "$NP"
# shellcheck disable=SC2206
[ -n "$MPIRUN_EXTRA" ] && MPIRUN_FLAGS+=($MPIRUN_EXTRA)
start=$(date +%s)
for b in $BATCHES; do
  for mode in $MODES; do
    B=$((NP * b))
    extra=()
    case "$mode" in
      local) extra=(--norm local) ;;
      sync) extra=(--norm sync) ;;
      sync2) extra=(--norm sync:2) ;;
      accum)
        if [ "$b" -gt 32 ] || [ $((32 % b)) -ne 0 ]; then
          echo "# skip accum at b=$b (32/b not an integer)"
          continue
        fi
        B=$((NP * 32))
        extra=(--norm local --accum-steps $((32 / b))) ;;
      groupnorm) extra=(--norm groupnorm) ;;
      *) echo "error: unknown mode '$mode'" >&2; exit 2 ;;
    esac
    steps=$(( (SAMPLES + B - 1) / B ))
    log_every=$(( steps / 40 > 0 ? steps / 40 : 1 ))
    warmup=$(( steps / 10 ))
    lr=$(awk -v base="$LR_BASE" -v b="$B" 'BEGIN { printf "%.6g", base * b / 64 }')
    dir="$OUT/$mode-b$b"
    rm -rf "$dir"
    sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" --dataset "$DATASET" --seed "$SEED" --global-batch "$B" \
      --max-steps "$steps" --log-every "$log_every" --warmup-steps "$warmup" --lr "$lr" --threads "$THREADS" \
      --run-dir "$dir" "${extra[@]}" >"$dir.log" 2>&1 || { tail -5 "$dir.log"; echo "error: run $dir failed" >&2; exit 1; }
    grep -E "^final" "$dir.log" | sed "s|^|  $mode b=$b: |"
  done
done
echo "# sweep took $(( $(date +%s) - start )) s"
sbn_run "$PYTHON" launch/study_report.py "$OUT" --world-size "$NP" --samples "$SAMPLES" --dataset "$DATASET"
