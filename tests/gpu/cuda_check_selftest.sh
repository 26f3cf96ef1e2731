#!/usr/bin/env bash
# cuda_check_selftest.sh : the verdicts of the end-to-end checks (bench_cuda_check.sh, train_cuda_check.sh)
# on the outcomes a GPU machine can produce, with stand-in binaries that print them (ctest
# cuda_check_selftest; no GPU, no MPI). Issue 11 item 8: on a one-GPU machine the two-rank runs end with the
# clean "would share one CUDA device" refusal, which must be a SKIP (77) — with or without SBN_REQUIRE_GPU —
# and never a failure; the no-device error passes (fails under SBN_REQUIRE_GPU=1); anything else fails.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# stand_in NAME LINE RC: a "binary" that prints LINE (and a device table line when RC is 0) and exits RC.
stand_in() {
  cat >"$tmp/$1" <<STUB
#!/bin/sh
echo "$2"
exit $3
STUB
  chmod +x "$tmp/$1"
}
refusal="error: ranks 0 and 1 on gpu1 would share one CUDA device in one NCCL communicator (GPU-0f; 2 ranks on the node): start at most one rank per visible device"
stand_in refusal "$refusal" 1
stand_in nodevice "error: --device cuda: no CUDA device visible on gpu1 (cudaGetDeviceCount: no CUDA-capable device is detected)" 1
stand_in other "error: NCCL error: unhandled system error" 1

# expect SCRIPT STAND_IN REQUIRE RC
expect() {
  local rc
  SBN_REQUIRE_GPU=$3 "$here/$1" "$tmp/$2" >"$tmp/log" 2>&1
  rc=$?
  [ "$rc" -eq "$4" ] || { cat "$tmp/log"; fail "$1 with '$2' (SBN_REQUIRE_GPU=$3): exit $rc, expected $4"; }
  echo "ok: $1 / $2 / SBN_REQUIRE_GPU=$3 -> $rc"
}
for s in bench_cuda_check.sh train_cuda_check.sh; do
  expect "$s" refusal 0 77
  expect "$s" refusal 1 77
  expect "$s" nodevice 1 1
  expect "$s" other 0 1
done
expect bench_cuda_check.sh nodevice 0 0
echo "OK: the shared-device refusal is a SKIP, the no-device error passes (fails when a GPU is required), others fail"
