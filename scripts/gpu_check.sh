#!/usr/bin/env bash
# gpu_check.sh — everything the GPU path has to show on a real GPU machine, in one command and at most
# ~8 minutes, for a machine lent for minutes (1–8 GPUs, one node). docs/GPU.md "Checking on a GPU machine".
#
#   scripts/gpu_check.sh [BUILD] [OUT]
#     BUILD  a build tree (build/) or an unpacked bundle of scripts/gpu_bundle.sh (bin/, lib/, ompi/);
#            a bundle folder holding payload.tar.xz is unpacked next to it first.          (default: build)
#     OUT    the summary directory (summary.md, summary.json, logs/).       (default: gpu-check-<UTC time>)
#   Environment: SBN_LIBS=dir  runtime libraries the machine lacks (default: BUILD/lib when it exists);
#                BUDGET_S=460  every step ends by then (its timeout is cut to what is left; a step with
#                under 10 s left is NOT RUN), so the whole check takes at most ~8 minutes;
#                MAX_NP=8  largest world size.
#
# Steps, each with its own timeout; a step that would start past the budget is NOT RUN (named):
#  1. every gpu-labelled test binary (SBN_REQUIRE_GPU=1: a skip is a failure) at every world size the
#     devices allow (1 … GPUs, at most MAX_NP; the model tests at 1, 2 and GPUs), and the two end-to-end
#     scripts (bench_cuda_check.sh, train_cuda_check.sh) at 1 and 2 ranks;
#  2. the kernel bench at bandwidth-relevant sizes (tensors ≥ 256 MB, and one of more than 2^31 elements),
#     as % of the device's peak memory bandwidth (read from the device attributes) and of a copy;
#  3. each SyncBN exchange's µs beside a bare NCCL all-reduce of the same size (syncbn-bench --layer-only);
#  4. CUDA-graph capture and replay in global capture mode (the layer; a whole training step where the
#     build has such a test);
#  5. 50 training steps on the GPU against the CPU path, fp32, same seed: loss within 1e-4 at every step.
# One rank runs without mpirun (Open MPI singleton, isolated: no orted needed); more ranks need mpirun
# (on PATH, or the bundle's ompi/bin). Without a GPU: prints "no CUDA device: skipped" and exits 0.
# Last line: "VERDICT: PASS ..." (exit 0), "VERDICT: FAIL ..." (a step failed, exit 1) or "VERDICT: INCOMPLETE
# ..." (none failed, some not run: no mpirun, the time budget, no whole-step graph test; exit 2).
set -euo pipefail

BUILD=${1:-build}
OUT=${2:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
: "${BUDGET_S:=460}"
: "${MAX_NP:=8}"
: "${SBN_LIBS:=}"

# ---- devices: decided before anything else, so a machine without one is done in a moment ----
count_gpus() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  local n
  n=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    local v
    v=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
    [ "$v" -lt "$n" ] && n=$v
  fi
  echo "${n:-0}"
}
GPUS=$(count_gpus)
if [ "$GPUS" -eq 0 ]; then
  echo "no CUDA device: skipped"
  exit 0
fi

# ---- the build or bundle ----
if [ -f "$BUILD/payload.tar.xz" ] && [ ! -d "$BUILD/bin" ]; then
  echo "# unpacking $BUILD/payload.tar.xz"
  tar -xJf "$BUILD/payload.tar.xz" -C "$BUILD"
fi
[ -z "$SBN_LIBS" ] && [ -d "$BUILD/lib" ] && SBN_LIBS=$BUILD/lib
find_bin() {  # find_bin NAME: the build tree's or the bundle's binary / check script
  local p
  for p in "$BUILD/src/apps/$1" "$BUILD/tests/gpu/$1" "$BUILD/bin/$1" "$BUILD/tests/$1"; do
    [ -e "$p" ] && { echo "$(cd "$(dirname "$p")" && pwd)/$(basename "$p")"; return; }
  done
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [ -e "$here/tests/gpu/$1" ] && { echo "$here/tests/gpu/$1"; return; }
  echo ""
}
BENCH=$(find_bin syncbn-bench)
TRAIN=$(find_bin syncbn-train)
[ -n "$BENCH" ] || { echo "error: no syncbn-bench under $BUILD (give a finished build or a bundle)"; exit 1; }

# ---- runtime environment: carried libraries, the Python wheels' CUDA libraries, a relocated Open MPI ----
if [ -n "$SBN_LIBS" ]; then
  SBN_LIBS=$(cd "$SBN_LIBS" && pwd)
  export LD_LIBRARY_PATH="$SBN_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if command -v python3 >/dev/null 2>&1; then
  wheel_libs=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(dirs))
EOF
)
  [ -n "$wheel_libs" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$wheel_libs"
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do  # cuBLAS from the toolkit
  if [ -d "$d" ]; then export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"; fi
done
if [ -d "$BUILD/ompi" ]; then
  OPAL_PREFIX=$(cd "$BUILD/ompi" && pwd)
  export OPAL_PREFIX PATH="$OPAL_PREFIX/bin:$PATH"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_ess_singleton_isolated=1
export OMPI_MCA_mpi_yield_when_idle=1 SBN_REQUIRE_GPU=1
MPIRUN=$(command -v mpirun || true)

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
STEPS="$OUT/steps.tsv"
: >"$STEPS"
elapsed() { echo $(($(date +%s) - START)); }

# launcher NP: the command prefix for NP ranks ("" for one rank: singleton), or fails without mpirun.
launcher() {
  if [ "$1" -eq 1 ]; then echo ""; return 0; fi
  [ -n "$MPIRUN" ] || return 1
  echo "$MPIRUN -np $1 --oversubscribe --bind-to none"
}

# step NAME LIMIT CMD...: runs CMD under `timeout LIMIT` into logs/NAME.log, records PASS (exit 0), SKIP (77),
# FAIL (other, "timeout" for 124/137) or NOT_RUN (past the budget), with seconds and the log's last line.
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc status detail
  local left=$((BUDGET_S - $(elapsed)))
  [ "$limit" -gt "$left" ] && limit=$left  # every step ends by BUDGET_S: the whole check stays within it
  if [ "$limit" -lt 10 ]; then
    printf '%s\tNOT_RUN\t0\ttime budget (BUDGET_S=%s) spent\n' "$name" "$BUDGET_S" >>"$STEPS"
    echo "# $name: NOT RUN (time budget)"
    return 0
  fi
  echo "# [$(elapsed)s] $name: $*"
  t0=$(date +%s)
  set +e
  timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  set -e
  case $rc in
    0) status=PASS ;;
    77) status=SKIP ;;
    124 | 137) status=FAIL; echo "timeout after ${limit}s" >>"$OUT/logs/$name.log" ;;
    *) status=FAIL ;;
  esac
  # The last verdict-like line (gtest totals, a check script's OK/FAIL, an error), else the last line.
  detail=$(grep -E '^(error|FAIL|OK|SKIP)|PASSED|FAILED|timeout after|final test|steps, max' "$OUT/logs/$name.log" \
             | tail -n 1 | tr '\t' ' ' | cut -c1-200 || true)
  [ -n "$detail" ] || detail=$(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-200 || true)
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$detail" >>"$STEPS"
  echo "#   $status ($(($(date +%s) - t0)) s): $detail"
}
not_run() { printf '%s\tNOT_RUN\t0\t%s\n' "$1" "$2" >>"$STEPS"; echo "# $1: NOT RUN ($2)"; }

# run_np NAME NP LIMIT BINARY ARGS...: a binary at NP ranks (NOT_RUN without mpirun for NP > 1).
run_np() {
  local name=$1 np=$2 limit=$3
  shift 3
  local pre
  if ! pre=$(launcher "$np"); then not_run "$name" "no mpirun for $np ranks (carry it: scripts/gpu_bundle.sh)"; return 0; fi
  # shellcheck disable=SC2086  # $pre is a command prefix, split on purpose
  step "$name" "$limit" $pre "$@"
}

NP_MAX=$((GPUS < MAX_NP ? GPUS : MAX_NP))
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version,pci.bus_id --format=csv 2>&1 || true; } >"$OUT/logs/devices.csv"
echo "# $GPUS GPU(s), world sizes 1..$NP_MAX, budget ${BUDGET_S}s, summary in $OUT"

# Order: one rank of everything first, then the measurements, then the multi-rank runs, so that a short
# budget still covers every kind of check once.
nps_multi=$(seq 2 "$NP_MAX")
nps_model=$(printf '%s\n' 2 "$NP_MAX" | awk -v m="$NP_MAX" '$1 <= m' | sort -nu)
TEST_GPU=$(find_bin test_gpu)
TEST_TRAIN=$(find_bin test_gpu_train)
BENCH_CHECK=$(find_bin bench_cuda_check.sh)
TRAIN_CHECK=$(find_bin train_cuda_check.sh)
# test_binary NAME NP LIMIT: a gpu test binary at NP ranks (NOT RUN when this build lacks it).
test_binary() {
  local b
  b=$(find_bin "$1")
  if [ -z "$b" ]; then not_run "$1_np$2" "no $1 in $BUILD"; return 0; fi
  run_np "$1_np$2" "$2" "$3" "$b"
}
# check_scripts NP: the end-to-end --device cuda scripts at NP ranks.
check_scripts() {
  local pre
  if ! pre=$(launcher "$1"); then
    not_run "bench_cuda_check_np$1" "no mpirun"
    not_run "train_cuda_check_np$1" "no mpirun"
    return 0
  fi
  # shellcheck disable=SC2086  # $pre is a command prefix, split on purpose
  step "bench_cuda_check_np$1" 150 "$BENCH_CHECK" $pre "$BENCH"
  if [ -n "$TRAIN" ]; then
    # shellcheck disable=SC2086
    step "train_cuda_check_np$1" 240 "$TRAIN_CHECK" $pre "$TRAIN"
  fi
}

# ---- 1. every gpu test at one rank ----
for t in test_gpu_emulation test_device_select test_step_status test_gpu test_gpu_train test_staged_comm; do
  test_binary $t 1 180
done
check_scripts 1

# ---- 2. kernel bandwidth: tensors >= 256 MB (bf16 128x256x64x64 = 268 MB), and > 2^31 elements ----
step kernels_256mb 180 "$BENCH" --device cuda --kernels-only --shapes 128x256x64x64 --layout both --reps 10 \
  --warmup 2 --json "$OUT/kernels_256mb.jsonl"
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -d ' ' || true)
if [ "${mem_mib:-0}" -ge 32000 ]; then
  # 66x512x256x256 = 2.21e9 elements (> 2^31), bf16: 4.4 GB per tensor, five on the device.
  step kernels_2g_elements 240 "$BENCH" --device cuda --kernels-only --shapes 66x512x256x256 --layout nhwc \
    --dtypes bf16 --reps 5 --warmup 1 --json "$OUT/kernels_2g.jsonl"
else
  not_run kernels_2g_elements "device memory ${mem_mib:-?} MiB < 32000 MiB"
fi

# ---- 3. each SyncBN exchange beside a bare all-reduce of the same size, at the largest world size ----
layer_shapes=32x64x56x56,32x256x28x28,32x512x14x14,32x2048x7x7
run_np "layer_nccl_np$NP_MAX" "$NP_MAX" 150 "$BENCH" --device cuda --layer-only --shapes "$layer_shapes" --reps 20 \
  --warmup 3 --json "$OUT/layer_nccl.jsonl"

# ---- 4. CUDA graphs in global capture mode: the layer, and a whole training step where a test exists ----
if [ -n "$TEST_GPU" ]; then run_np graph_layer_np1 1 120 "$TEST_GPU" --gtest_filter='*GraphReplay*'; fi
step_graph=0
if [ -n "$TEST_TRAIN" ]; then step_graph=$("$TEST_TRAIN" --gtest_list_tests 2>/dev/null | grep -i -c graph || true); fi
if [ "${step_graph:-0}" -gt 0 ]; then
  run_np graph_train_step_np1 1 180 "$TEST_TRAIN" --gtest_filter='*Graph*'
else
  not_run graph_train_step_np1 "this build has no whole-training-step graph test (docs/GPU.md: Known limitations)"
fi

# ---- 5. 50 GPU training steps against the CPU path, fp32, same seed and data ----
train_common=(--dataset synthetic --synthetic-shape 3x32x32 --synthetic-train 2048 --synthetic-test 64
              --global-batch 32 --max-steps 50 --log-every 1 --warmup-steps 5 --model resnet --width 8 --depth 1
              --seed 1 --precision fp32)
if [ -n "$TRAIN" ]; then
  step train50_cpu 120 "$TRAIN" --device cpu "${train_common[@]}" --run-dir "$OUT/train_cpu"
  step train50_gpu 120 "$TRAIN" --device cuda "${train_common[@]}" --run-dir "$OUT/train_gpu"
  step train50_compare 30 python3 - "$OUT/train_cpu/metrics.csv" "$OUT/train_gpu/metrics.csv" <<'PY'
import csv, sys
def losses(p):
    return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(p)) if r["kind"] == "train"}
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
steps = sorted(set(cpu) & set(gpu))
assert len(steps) >= 50, f"only {len(steps)} common steps (cpu {len(cpu)}, gpu {len(gpu)})"
worst = max(steps, key=lambda s: abs(cpu[s] - gpu[s]))
bad = [s for s in steps if abs(cpu[s] - gpu[s]) > 1e-4]
print(f"{len(steps)} steps, max |loss_gpu - loss_cpu| = {abs(cpu[worst] - gpu[worst]):.3g} at step {worst}"
      + (f"; first step over 1e-4: {bad[0]} (cpu {cpu[bad[0]]:.8f}, gpu {gpu[bad[0]]:.8f})" if bad else ""))
sys.exit(1 if bad else 0)
PY
else
  not_run train50_gpu "no syncbn-train in $BUILD"
fi

# ---- 6. every gpu test at every other world size the devices allow (2 … GPUs; the model tests at 2, GPUs) ----
for np in $nps_multi; do test_binary test_gpu "$np" 180; done
for np in $nps_model; do test_binary test_gpu_train "$np" 240; done
if [ "$NP_MAX" -ge 2 ]; then test_binary test_staged_comm 2 120; fi
check_scripts 2  # on one GPU the clean "would share one CUDA device" refusal is their SKIP
if [ "$NP_MAX" -ge 2 ]; then
  run_np "layer_staged_np$NP_MAX" "$NP_MAX" 150 "$BENCH" --device cuda --comm mpi --layer-only --shapes "$layer_shapes" \
    --reps 10 --warmup 2 --json "$OUT/layer_staged.jsonl"
  run_np "graph_layer_np$NP_MAX" "$NP_MAX" 120 "$TEST_GPU" --gtest_filter='*GraphReplay*'
fi

# ---- summary: summary.md, summary.json, and the verdict line ----
export GPUS NP_MAX BUDGET_S
ELAPSED=$(elapsed)
export ELAPSED
python3 - "$OUT" <<'PY' || echo "# (python3 failed: summary.md / summary.json not written; steps.tsv is complete)"
import json, os, sys
out = sys.argv[1]
steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, status, secs, detail = (line.rstrip("\n").split("\t") + ["", "", "", ""])[:4]
    steps.append({"name": name, "status": status, "seconds": int(secs or 0), "detail": detail})
def jsonl(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
kernels = jsonl("kernels_256mb.jsonl") + jsonl("kernels_2g.jsonl")
exchanges = jsonl("layer_nccl.jsonl") + jsonl("layer_staged.jsonl")
devices = open(os.path.join(out, "logs", "devices.csv")).read().strip()
summary = {"gpus": int(os.environ["GPUS"]), "world_sizes": f"1..{os.environ['NP_MAX']}",
           "elapsed_s": int(os.environ["ELAPSED"]), "devices": devices, "steps": steps,
           "kernels": [k for k in kernels if k.get("kind") == "kernel"],
           "exchanges": [e for e in exchanges if e.get("kind") == "exchange"]}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
md = ["# scripts/gpu_check.sh summary", "", f"{summary['gpus']} GPU(s), world sizes {summary['world_sizes']}, "
      f"{summary['elapsed_s']} s", "", "```", devices, "```", "", "| step | status | s | last line |",
      "| --- | --- | --- | --- |"]
md += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail'].replace('|', '/')} |" for s in steps]
if summary["kernels"]:
    md += ["", "Kernels: GB/s and % of the device's peak memory bandwidth (copy = device-to-device copy)", "",
           "| shape | dtype | elements | stats | normalize | bwd_reduce | bwd_elemt | copy | peak GB/s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k in summary["kernels"]:
        cell = lambda n: f"{k[n + '_gbs']:.0f} ({k[n + '_pct_peak']:.0f}%)"
        md.append(f"| {k['shape']} | {k['dtype']} | {k['elements']} | {cell('stats')} | {cell('normalize')} | "
                  f"{cell('bwd_reduce')} | {cell('bwd_elemt')} | {cell('copy')} | {k['peak_gbs']:.0f} |")
if summary["exchanges"]:
    md += ["", "SyncBN exchange (layer comm / 2) beside a bare all-reduce of the same message", "",
           "| comm | ranks | C | bytes | exchange µs | bare all-reduce µs | slowest rank µs |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {e['comm']} | {e['world_size']} | {e['channels']} | {e['bytes']} | {e['exchange_us']:.1f} | "
           f"{e['bare_allreduce_us']:.1f} | {e['bare_allreduce_max_us']:.1f} |" for e in summary["exchanges"]]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
PY
fails=$(awk -F'\t' '$2 == "FAIL" {print $1}' "$STEPS" | paste -sd, -)
not_run=$(awk -F'\t' '$2 == "NOT_RUN" {print $1}' "$STEPS" | paste -sd, -)
skipped=$(awk -F'\t' '$2 == "SKIP" {print $1}' "$STEPS" | paste -sd, -)
gaps=$(awk -F'\t' '$2 == "NOT_RUN" || $2 == "SKIP" {print $1}' "$STEPS" | paste -sd, -)
passed=$(awk -F'\t' '$2 == "PASS"' "$STEPS" | wc -l)
echo "# summary: $OUT/summary.md, $OUT/summary.json, logs in $OUT/logs ($(elapsed) s)"
if [ -n "$fails" ]; then
  echo "VERDICT: FAIL ($passed passed; failed: $fails${gaps:+; not run or skipped: $gaps})"
  exit 1
fi
if [ -n "$not_run" ] || [ "$passed" -eq 0 ]; then
  echo "VERDICT: INCOMPLETE ($passed steps passed, none failed; not run: ${not_run:-everything}${skipped:+; skipped: $skipped})"
  exit 2
fi
echo "VERDICT: PASS ($passed steps passed on $GPUS GPU(s)${skipped:+; skipped: $skipped})"
