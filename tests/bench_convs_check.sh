#!/usr/bin/env bash
# bench_convs_check.sh SYNCBN_BENCH: `syncbn-bench --convs` (the convolution table behind the README's
# "Training throughput" explanation) measures both convolutions in both layouts, with a time per direction,
# a GFLOP/s figure and the oneDNN kernels named, and writes one JSON line per row.
set -euo pipefail
bin=$1
json=$(mktemp)
trap 'rm -f "$json"' EXIT
out=$("$bin" --convs --reps 2 --warmup 1 --conv-batch 4 --json "$json")
echo "$out"
num='[0-9]+\.[0-9]+'
for conv in '32->64@14x14' '64->128@7x7'; do
  for layout in nhwc any; do
    echo "$out" | grep -Eq "^$conv +$layout +$num +$num +$num +$num +$num +[a-z].* / .* / " ||
      { echo "FAIL: no measured row for $conv $layout"; exit 1; }
  done
done
[ "$(grep -c '"kind":"conv"' "$json")" -eq 4 ] || { echo "FAIL: expected 4 JSON lines in $json"; exit 1; }
echo "OK: 4 rows, 4 JSON lines"
