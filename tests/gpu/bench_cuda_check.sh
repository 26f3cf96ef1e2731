#!/usr/bin/env bash
# bench_cuda_check.sh MPIEXEC... : runs `syncbn-bench --device cuda` on small shapes (ctest gpu_bench_*).
# With a usable device the run must succeed and print its tables (kernels with % of peak, all-reduce,
# layer, exchanges), also with --comm mpi; without one it must fail fast with
# exactly one "error: ... no CUDA device" line (every rank agrees; rank 0 reports) and no MPI abort.
# More ranks on a node than devices (np2 on a one-GPU machine): the clean "would share one CUDA device"
# refusal is a SKIP (exit 77), with or without SBN_REQUIRE_GPU. SBN_REQUIRE_GPU=1: the no-device outcome is
# a failure.
set -uo pipefail
# shellcheck source=SCRIPTDIR/cuda_check_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/cuda_check_lib.sh"
run_logged 120 "$@" --device cuda --shapes "4x32x8x8,16x64" --layout both --reps 3 --warmup 1
if [ "$rc" -eq 0 ]; then
  for col in bwd_elemt stpk median_us compute_ms exchange_us; do
    grep -q "$col" "$out" || fail "exit 0 but the kernel / all-reduce / layer / exchange tables are missing ($col)"
  done
  # The staged communicator (--comm mpi) on the same ranks: the all-reduce, layer and exchange tables.
  run_logged 120 "$@" --device cuda --comm mpi --layer-only --shapes "4x32x8x8" --reps 3 --warmup 1
  if [ "$rc" -ne 0 ] || ! grep -q "staged (MPI)" "$out" || ! grep -q "exchange_us" "$out"; then
    fail "--comm mpi failed"
  fi
  echo "OK: benchmark ran on a device (NCCL and the staged communicator)"
  exit 0
fi
skip_if_shared_device_refusal
if [ "${SBN_REQUIRE_GPU:-0}" = "1" ]; then echo "FAIL: SBN_REQUIRE_GPU=1 and the benchmark failed"; exit 1; fi
check_no_device_error
echo "OK: no device -> one clear error line, exit $rc"
