#!/usr/bin/env bash
# Runs syncbn-bench's kernel table and PyTorch's BatchNorm (bench/torch_bn.py) on the same shapes in one
# sitting, three rounds interleaved, and prints the per-round and median speed-ups. Single thread, fp32.
#   bench/compare_bn.sh                       # default shapes, NCHW and NHWC
#   ROUNDS=5 LAYOUT=nchw bench/compare_bn.sh
set -euo pipefail
: "${BUILD_DIR:=build}"
: "${ROUNDS:=3}"
: "${LAYOUT:=both}"
: "${SHAPES:=32x64x28x28,8x64x28x28,256x256}"
: "${OUT_DIR:=${BUILD_DIR}/bench-compare}"
: "${PYTHON:=/usr/bin/python3}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bench="${BUILD_DIR}/src/apps/syncbn-bench"
[ -x "$bench" ] || { echo "error: $bench not found; build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$OUT_DIR"
for r in $(seq 1 "$ROUNDS"); do
  cmd=("$bench" --kernels-only --shapes "$SHAPES" --layout "$LAYOUT" --json "$OUT_DIR/syncbn.$r.jsonl")
  echo "# round $r: ${cmd[*]}"
  OMP_NUM_THREADS=1 "${cmd[@]}"
  cmd=("$PYTHON" bench/torch_bn.py --shapes "$SHAPES" --layout "$LAYOUT" --json "$OUT_DIR/torch.$r.jsonl")
  echo "# round $r: ${cmd[*]}"
  "${cmd[@]}"
done
"$PYTHON" - "$OUT_DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for r in range(1, rounds + 1):
    for line in open(f"{out}/syncbn.{r}.jsonl"):
        j = json.loads(line)
        rows.setdefault(j["shape"], {}).setdefault("ours", []).append(j)
    for line in open(f"{out}/torch.{r}.jsonl"):
        j = json.loads(line)
        rows.setdefault(j["shape"], {}).setdefault("torch", []).append(j)
print(f"\n{'#shape':<20} {'ours_fb_ms':>10} {'torch_fb_ms':>11} {'speedup':>8} {'(per round)':<24} {'fb/triad':>8}")
for shape, d in rows.items():
    ours = [j["fwdbwd_ms"] for j in d["ours"]]
    tor = [j["fwdbwd_ms"] for j in d["torch"]]
    sp = [t / o for o, t in zip(ours, tor)]
    tri = statistics.median(j["fwdbwd_over_triad"] for j in d["ours"])
    print(f"{shape:<20} {statistics.median(ours):10.3f} {statistics.median(tor):11.3f} {statistics.median(sp):7.2f}x "
          f"{' '.join(f'{s:.2f}' for s in sp):<24} {100 * tri:7.0f}%")
PY
