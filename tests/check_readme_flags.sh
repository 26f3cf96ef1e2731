#!/usr/bin/env bash
# check_readme_flags.sh SYNCBN_TRAIN README.md
# Passes iff the flag table between <!-- flags:begin --> and <!-- flags:end --> in README.md is exactly
# what `syncbn-train --help-markdown` prints (so the README cannot drift from the parser).
set -euo pipefail
bin=$1 readme=$2
expected=$(mktemp) actual=$(mktemp)
trap 'rm -f "$expected" "$actual"' EXIT
"$bin" --help-markdown >"$expected"
awk '/<!-- flags:end -->/{p=0} p{print} /<!-- flags:begin -->/{p=1}' "$readme" >"$actual"
if ! diff -u "$actual" "$expected"; then
  echo "FAIL: README.md's flag table differs from syncbn-train --help-markdown (diff above: - README, + --help)"
  echo "      regenerate it with: build/src/apps/syncbn-train --help-markdown"
  exit 1
fi
echo "OK: README flag table matches --help ($(grep -c '^| `--' "$expected") flags)"
