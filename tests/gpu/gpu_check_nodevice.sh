#!/usr/bin/env bash
# gpu_check_nodevice.sh REPO BUILD : scripts/gpu_check.sh on a machine without a GPU (ctest gpu_check_nodevice).
#  1. No GPU: the only output is "no CUDA device: skipped", exit 0, within 10 s, and no summary directory.
#  2. Its bookkeeping without running anything: a stub nvidia-smi reporting one GPU and BUDGET_S=0, so every
#     step is NOT RUN; it must still write summary.md and summary.json, list the steps, and end with
#     "VERDICT: INCOMPLETE" (exit 2) — never PASS when nothing passed.
# A machine WITH a GPU: SKIP (77); run scripts/gpu_check.sh itself there.
set -uo pipefail
repo=$1 build=$2
check=$repo/scripts/gpu_check.sh
fail() { echo "FAIL: $*"; exit 1; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "SKIP: this machine has a GPU: run scripts/gpu_check.sh $build"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. no device
t0=$(date +%s%N)
out=$(cd "$tmp" && timeout 30 "$check" "$build" "$tmp/summary1" 2>&1)
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
echo "# no device: exit $rc after $ms ms, output: $out"
[ "$rc" -eq 0 ] || fail "exit code $rc, expected 0"
[ "$out" = "no CUDA device: skipped" ] || fail "output is not exactly 'no CUDA device: skipped'"
[ "$ms" -lt 10000 ] || fail "took $ms ms (more than 10 s)"
[ ! -e "$tmp/summary1" ] || fail "wrote a summary directory without a device"

# 2. one (stub) device, no time: every step NOT RUN, summary written, verdict INCOMPLETE
mkdir -p "$tmp/bin"
cat >"$tmp/bin/nvidia-smi" <<'STUB'
#!/bin/sh
case "$*" in
  -L) echo "GPU 0: stub (UUID: GPU-stub)" ;;
  *noheader*) echo 81559 ;;
  *) echo "index, name"; echo "0, stub" ;;
esac
STUB
chmod +x "$tmp/bin/nvidia-smi"
out=$(PATH="$tmp/bin:$PATH" BUDGET_S=0 timeout 60 "$check" "$build" "$tmp/summary2" 2>&1)
rc=$?
echo "$out" | tail -n 3
[ "$rc" -eq 2 ] || fail "stub device, no budget: exit $rc, expected 2 (INCOMPLETE)"
echo "$out" | tail -n 1 | grep -q '^VERDICT: INCOMPLETE (0 steps passed' || fail "the last line is not 'VERDICT: INCOMPLETE (0 steps passed ...'"
for f in summary.md summary.json steps.tsv; do [ -s "$tmp/summary2/$f" ] || fail "no $f"; done
for s in test_gpu_np1 test_gpu_train_np1 kernels_256mb kernels_2g_elements layer_nccl_np1 graph_layer_np1 train50_gpu; do
  grep -q "| $s | NOT_RUN |" "$tmp/summary2/summary.md" || fail "summary.md does not list step $s as NOT_RUN"
done
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['gpus']==1 and len(d['steps'])>=10, d" \
  "$tmp/summary2/summary.json" || fail "summary.json is not the expected JSON"
echo "OK: no device -> 'no CUDA device: skipped', exit 0 in $ms ms; stub device without budget -> INCOMPLETE with a summary"
