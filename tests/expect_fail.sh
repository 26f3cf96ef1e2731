#!/usr/bin/env bash
# expect_fail.sh MAX_SECONDS REGEX -- COMMAND...
# Passes iff COMMAND exits non-zero, within MAX_SECONDS, and its combined output matches REGEX
# (grep -E). Used for "bad input gives a clear error, a non-zero exit and no hang" tests.
set -uo pipefail
max=$1 regex=$2
shift 2
[ "${1:-}" = "--" ] && shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s.%N)
timeout --kill-after=5 "$max" "$@" >"$out" 2>&1
rc=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
cat "$out"
echo "# exit code $rc after ${elapsed}s"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "FAIL: still running after ${max}s (hang)"; exit 1; fi
if [ "$rc" -eq 0 ]; then echo "FAIL: exit code 0, expected a failure"; exit 1; fi
if ! grep -Eq -- "$regex" "$out"; then echo "FAIL: output does not match /$regex/"; exit 1; fi
echo "OK: failed as expected"
