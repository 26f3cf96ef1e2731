#!/usr/bin/env bash
# Two ways to train with global batch B when one process can only hold B/NP samples at a time:
#   (a) SyncBN over NP ranks: each rank holds B/NP samples, BN statistics over all B;
#   (b) gradient accumulation on NP_ACCUM < NP ranks: each rank runs NP/NP_ACCUM micro-batches of B/NP
#       per step (the same memory per forward as (a)), BN statistics over each micro-batch only.
# Both take the same optimizer step on the same global batch; they differ in hardware (ranks), step
# time, and the batch BN normalizes over. This runs both side by side (short runs by default) and
# prints what each cost.
#   launch/grad_accum.sh                              # B=64: 2 ranks SyncBN vs 1 rank accumulating 2x32
#   NP=4 NP_ACCUM=1 B=128 STEPS=300 launch/grad_accum.sh --dataset synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=launch/common.sh
. launch/common.sh

: "${NP:=2}"              # ranks of the SyncBN run
: "${NP_ACCUM:=1}"        # ranks of the accumulation run (must divide NP)
: "${B:=64}"              # global batch of both
: "${STEPS:=200}"         # optimizer steps of each run
: "${THREADS:=1}"
: "${BUILD_DIR:=build}"
: "${OUT:=runs/grad-accum}"
: "${MPIRUN:=mpirun}"
: "${PYTHON:=python3}"

[ $((NP % NP_ACCUM)) -eq 0 ] || { echo "error: NP_ACCUM=$NP_ACCUM must divide NP=$NP" >&2; exit 2; }
[ $((B % NP)) -eq 0 ] || { echo "error: NP=$NP must divide B=$B (per-rank batch B/NP)" >&2; exit 2; }
K=$((NP / NP_ACCUM))
bin="$BUILD_DIR/src/apps/syncbn-train"
sbn_require_binary "$bin"
common=(--global-batch "$B" --max-steps "$STEPS" --log-every 25 --threads "$THREADS")

echo "# (a) SyncBN: $NP ranks x $((B / NP)) samples, BN over $B"
sbn_mpirun_flags "$NP"
sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" "${common[@]}" --norm sync --run-dir "$OUT/syncbn" "$@"
echo
echo "# (b) accumulation: $NP_ACCUM rank(s) x $K micro-batches of $((B / NP)), BN over each micro-batch"
sbn_mpirun_flags "$NP_ACCUM"
sbn_run_mpi "$MPIRUN" "${MPIRUN_FLAGS[@]}" "$bin" "${common[@]}" --norm sync --accum-steps "$K" \
  --run-dir "$OUT/accum" "$@"

"$PYTHON" - "$OUT" "$NP" "$NP_ACCUM" "$B" "$K" <<'PY'
import csv, statistics, sys
out, np_, npa, b, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def summary(d):
    rows = list(csv.DictReader(open(f"{out}/{d}/metrics.csv")))
    train = [r for r in rows if r["kind"] == "train"][1:] or [r for r in rows if r["kind"] == "train"]
    ev = [r for r in rows if r["kind"] == "eval"][-1]
    return (statistics.median(float(r["step_ms"]) for r in train), statistics.median(float(r["images_per_s"]) for r in train),
            float(ev["acc"]), float(train[-1]["loss"]))
a, c = summary("syncbn"), summary("accum")
print(f"\n| | ranks | samples per forward | BN batch | global batch | step ms | images/s | images/s per rank | test acc |")
print(f"|---|---|---|---|---|---|---|---|---|")
print(f"| (a) SyncBN | {np_} | {b // np_} | {b} | {b} | {a[0]:.1f} | {a[1]:.0f} | {a[1] / np_:.0f} | {100 * a[2]:.2f}% |")
print(f"| (b) accumulation | {npa} | {b // np_} | {b // np_ * npa} | {b} | {c[0]:.1f} | {c[1]:.0f} | {c[1] / npa:.0f} | {100 * c[2]:.2f}% |")
print(f"\n# (b) needs {np_ // npa}x fewer ranks and takes {c[0] / a[0]:.2f}x the step time; its BN normalizes over "
      f"{b // np_ * npa} samples instead of {b}.")
PY
