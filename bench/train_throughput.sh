#!/usr/bin/env bash
# Training throughput of the default convnet on Fashion-MNIST, measured side by side in one sitting:
#   syncbn-train np=1 (fp32 and --precision bf16), np=2 --norm sync, np=2 --norm local, and PyTorch 1.13
#   (bench/torch_train.py: NCHW and channels-last, fp32 and bf16 autocast), one thread per process, ROUNDS
#   interleaved rounds. Every ratio is formed within a round and reported as the median over rounds with
#   the per-round figures (the README's table); the summary also lands in $OUT_DIR/summary.{md,json}.
#   bench/train_throughput.sh                 # 3 rounds of 300 steps
#   ROUNDS=5 bench/train_throughput.sh        # the README's reported run
#   BF16=0 bench/train_throughput.sh          # without the bf16 rows
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BUILD_DIR:=build}"
: "${ROUNDS:=3}"
: "${STEPS:=300}"
: "${BATCH:=64}"
: "${PYTHON:=/usr/bin/python3}"
: "${OUT_DIR:=$BUILD_DIR/bench-train}"
: "${BF16:=1}"
bin="$BUILD_DIR/src/apps/syncbn-train"
[ -x "$bin" ] || { echo "error: $bin not found; build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$OUT_DIR"
mpi=(mpirun --allow-run-as-root -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] || mpi=(mpirun -x OMP_NUM_THREADS=1)
common=(--dataset fashion-mnist --global-batch "$BATCH" --max-steps "$STEPS" --log-every 50 --threads 1)

ours() {  # name np args...
  local name=$1 np=$2
  shift 2
  local dir="$OUT_DIR/$name.$r"
  rm -rf "$dir"
  local cmd=("${mpi[@]}" -np "$np" "$bin" "${common[@]}" --run-dir "$dir" "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
}
torch() {  # name args...
  local name=$1
  shift
  local cmd=("$PYTHON" bench/torch_train.py --global-batch "$BATCH" --steps "$STEPS" --warmup 50 --threads 1 "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}" >"$OUT_DIR/$name.$r.json"
}
for r in $(seq 1 "$ROUNDS"); do
  ours np1-sync 1 --norm sync
  if [ "$BF16" = 1 ]; then ours np1-bf16 1 --norm sync --precision bf16; fi
  ours np2-sync 2 --norm sync
  ours np2-local 2 --norm local
  torch torch-nchw
  torch torch-nhwc --channels-last
  if [ "$BF16" = 1 ]; then
    torch torch-bf16-nchw --bf16
    torch torch-bf16-nhwc --bf16 --channels-last
  fi
done

"$PYTHON" bench/throughput_report.py "$OUT_DIR" "$ROUNDS" "$BF16"
