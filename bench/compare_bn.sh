#!/usr/bin/env bash
# SyncBN kernels against memory bandwidth and against PyTorch, single thread, fp32, in one sitting:
#   1. syncbn-bench --kernels-only: forward/backward of the CPU kernels beside a STREAM triad over arrays
#      of the same size, interleaved repetitions (bytes that must move ÷ median time);
#   2. bench/torch_bn.py: PyTorch 1.13 BatchNorm and our layer in the same process, alternating blocks,
#      with an output cross-check.
#   bench/compare_bn.sh                       # default shapes, NCHW and NHWC
#   LAYOUT=nchw SHAPES=32x64x28x28 bench/compare_bn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BUILD_DIR:=build}"
: "${LAYOUT:=both}"
: "${SHAPES:=32x64x28x28,8x64x28x28,256x256}"
: "${REPS:=50}"
: "${PYTHON:=/usr/bin/python3}"
: "${OUT_DIR:=$BUILD_DIR/bench-bn}"
bench="$BUILD_DIR/src/apps/syncbn-bench"
lib="$BUILD_DIR/src/apps/libsyncbn_bench.so"
if [ ! -x "$bench" ] || [ ! -f "$lib" ]; then echo "error: $bench or $lib missing; build first (scripts/build.sh)" >&2; exit 1; fi
mkdir -p "$OUT_DIR"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
cmd=("$bench" --kernels-only --shapes "$SHAPES" --layout "$LAYOUT" --reps "$REPS" --json "$OUT_DIR/kernels.jsonl")
echo "+ ${cmd[*]}"
"${cmd[@]}"
echo
cmd=("$PYTHON" bench/torch_bn.py --shapes "$SHAPES" --layout "$LAYOUT" --lib "$lib" --json "$OUT_DIR/torch.jsonl")
echo "+ ${cmd[*]}"
"${cmd[@]}"
