#!/usr/bin/env bash
# bench_cuda_check.sh MPIEXEC... : runs `syncbn-bench --device cuda` on small shapes (ctest gpu_bench_*).
# With a usable device the run must succeed and print its tables; without one it must fail fast with
# exactly one "error: ... no CUDA device" line (every rank agrees; rank 0 reports) and no MPI abort.
# SBN_REQUIRE_GPU=1: the no-device outcome is a failure.
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cmd=("$@" --device cuda --shapes "4x32x8x8,16x64" --layout both --reps 3 --warmup 1)
echo "# ${cmd[*]}"
timeout --kill-after=5 120 "${cmd[@]}" >"$out" 2>&1
rc=$?
cat "$out"
echo "# exit code $rc"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "FAIL: hang"; exit 1; fi
if [ "$rc" -eq 0 ]; then
  grep -q "bwd_elemt" "$out" && grep -q "median_us" "$out" && grep -q "compute_ms" "$out" \
    && { echo "OK: benchmark ran on a device"; exit 0; }
  echo "FAIL: exit 0 but the kernel / all-reduce / layer tables are missing"; exit 1
fi
if [ "${SBN_REQUIRE_GPU:-0}" = "1" ]; then echo "FAIL: SBN_REQUIRE_GPU=1 and the benchmark failed"; exit 1; fi
errors=$(grep -c "^error:" "$out")
if [ "$errors" -ne 1 ]; then echo "FAIL: expected exactly one 'error:' line, got $errors"; exit 1; fi
if ! grep -Eq "^error: .*no CUDA device" "$out"; then echo "FAIL: the error does not say 'no CUDA device'"; exit 1; fi
if grep -q "MPI_ABORT" "$out"; then echo "FAIL: the job was aborted instead of failing cleanly"; exit 1; fi
echo "OK: no device -> one clear error line, exit $rc"
