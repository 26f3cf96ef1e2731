# shellcheck shell=bash
# cuda_check_lib.sh: sourced by the end-to-end --device cuda checks (bench_cuda_check.sh,
# train_cuda_check.sh). Gives them $out (a temporary file for the last run's output, removed on exit),
# $rc (its exit code), run_logged, fail and check_no_device_error.
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
