#!/usr/bin/env bash
# The study pipeline end to end on a toy budget: launch/study.sh runs every mode of both sweeps with two
# seeds (a few steps each), and study_report.py turns them into a CSV with one row per run and its seed,
# and a study.md whose cells are mean ± std over the seeds, with PreciseBN and EMA rows.
#   tests/train/study_check.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: study_check.sh BUILD_DIR}
cd "$(dirname "$0")/../.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

NP=2 BATCHES="2 4" SEEDS="1 2" SAMPLES=64 NORM_PER_RANK=4 PRECISE_SAMPLES=32 BUILD_DIR="$build" OUT="$out/study" \
  launch/study.sh --quick >"$out/log" 2>&1 || { tail -20 "$out/log"; fail "launch/study.sh exited non-zero"; }
csv="$out/study/study.csv"
md="$out/study/study.md"
if [ ! -f "$csv" ] || [ ! -f "$md" ]; then fail "no study.csv / study.md"; fi
head -1 "$csv" | grep -q ",seed," || fail "study.csv has no seed column: $(head -1 "$csv")"
# Sweep 1: 6 modes × 2 batches (accum at b=2 and 4) × 2 seeds = 24 runs; sweep 2 (NP=2, per-rank 4):
# ghost 2, local 4, sync 8 × 2 seeds = 6 runs.
rows=$(($(wc -l <"$csv") - 1))
[ "$rows" -eq 30 ] || fail "expected 30 runs in study.csv, got $rows"
for mode in local sync sync2 accum groupnorm renorm norm; do
  [ "$(grep -c ",$mode," "$csv")" -ge 2 ] || fail "no runs of mode $mode"
done
grep -q "± .* (2)" "$md" || fail "study.md has no 'mean ± std (2)' cells"
grep -q "PreciseBN" "$md" || fail "study.md has no PreciseBN rows"
grep -q "## Normalization batch at a fixed global batch" "$md" || fail "study.md lacks the second sweep"
# Every BatchNorm run evaluated both ways; GroupNorm has no PreciseBN column value.
awk -F, 'NR > 1 && $2 != "groupnorm" && $10 == "" { bad = 1 } END { exit bad }' "$csv" ||
  fail "a BatchNorm run has no PreciseBN accuracy"
echo "study pipeline OK: $rows runs"
