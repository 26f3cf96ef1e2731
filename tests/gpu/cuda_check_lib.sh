# shellcheck shell=bash
# cuda_check_lib.sh: sourced by the end-to-end --device cuda checks (bench_cuda_check.sh,
# train_cuda_check.sh). Gives them $out (a temporary file for the last run's output, removed on exit),
# $rc (its exit code), run_logged, fail, check_no_device_error and skip_if_shared_device_refusal.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0

# run_logged LIMIT CMD...: echoes CMD, runs it under `timeout LIMIT` into $out, shows the output and the exit
# code, sets $rc. A run killed by the timeout is a hang: FAIL at once.
run_logged() {
  local limit=$1
  shift
  echo "# $*"
  timeout --kill-after=5 "$limit" "$@" >"$out" 2>&1
  rc=$?
  cat "$out"
  echo "# exit code $rc"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "FAIL: hang"; exit 1; fi
}

fail() { echo "FAIL: $*"; exit 1; }

# check_no_device_error: the failed run in $out ended as a missing device must: exactly one "error:" line
# (every rank agrees, rank 0 reports), saying "no CUDA device", and no MPI abort.
check_no_device_error() {
  local errors
  errors=$(grep -c "^error:" "$out")
  [ "$errors" -eq 1 ] || fail "expected exactly one 'error:' line, got $errors"
  grep -Eq "^error: .*no CUDA device" "$out" || fail "the error does not say 'no CUDA device'"
  if grep -q "MPI_ABORT" "$out"; then fail "the job was aborted instead of failing cleanly"; fi
}

# skip_if_shared_device_refusal: if the failed run in $out is the clean refusal to put two ranks of one NCCL
# communicator on one GPU (more ranks on a node than devices, include/syncbn/cuda/device_select.h):
# exactly one "error:" line with that message and no MPI abort, then SKIP (exit 77, ctest
# SKIP_RETURN_CODE): the machine has too few devices for this many ranks. Otherwise returns.
skip_if_shared_device_refusal() {
  grep -q "would share one CUDA device in one NCCL communicator" "$out" || return 0
  [ "$(grep -c "^error:" "$out")" -eq 1 ] || fail "expected exactly one 'error:' line for the device refusal"
  grep -Eq "^error: .*ranks [0-9]+ and [0-9]+ .*would share one CUDA device" "$out" \
    || fail "the device refusal does not name both ranks"
  if grep -q "MPI_ABORT" "$out"; then fail "the job was aborted instead of refusing cleanly"; fi
  echo "SKIP: too few CUDA devices for this many ranks (two ranks would share one device; clear refusal, exit $rc)"
  exit 77
}
