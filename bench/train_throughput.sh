#!/usr/bin/env bash
# Training throughput of the default convnet on Fashion-MNIST, measured side by side in one sitting:
#   syncbn-train np=1, np=2 --norm sync, np=2 --norm local, and PyTorch 1.13 (bench/torch_train.py, NCHW
#   and channels-last), one thread per process, ROUNDS interleaved rounds; medians and the ratios the
#   README reports (np=2/np=1 scaling, sync/local step time, syncbn/PyTorch images/s).
#   bench/train_throughput.sh                 # 3 rounds of 300 steps
#   ROUNDS=5 STEPS=500 bench/train_throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BUILD_DIR:=build}"
: "${ROUNDS:=3}"
: "${STEPS:=300}"
: "${BATCH:=64}"
: "${PYTHON:=/usr/bin/python3}"
: "${OUT_DIR:=$BUILD_DIR/bench-train}"
bin="$BUILD_DIR/src/apps/syncbn-train"
[ -x "$bin" ] || { echo "error: $bin not found; build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$OUT_DIR"
mpi=(mpirun --allow-run-as-root -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] || mpi=(mpirun -x OMP_NUM_THREADS=1)
common=(--dataset fashion-mnist --global-batch "$BATCH" --max-steps "$STEPS" --log-every 50 --threads 1)

ours() {  # name np args...
  local name=$1 np=$2
  shift 2
  local dir="$OUT_DIR/$name.$r"
  rm -rf "$dir"
  local cmd=("${mpi[@]}" -np "$np" "$bin" "${common[@]}" --run-dir "$dir" "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}" >"$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
}
torch() {  # name args...
  local name=$1
  shift
  local cmd=("$PYTHON" bench/torch_train.py --global-batch "$BATCH" --steps "$STEPS" --warmup 50 --threads 1 "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}" >"$OUT_DIR/$name.$r.json"
}
for r in $(seq 1 "$ROUNDS"); do
  ours np1-sync 1 --norm sync
  ours np2-sync 2 --norm sync
  ours np2-local 2 --norm local
  torch torch-nchw
  torch torch-nhwc --channels-last
done

"$PYTHON" - "$OUT_DIR" "$ROUNDS" <<'PY'
import csv, json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def ours(name, r):
    rows = [x for x in csv.DictReader(open(f"{out}/{name}.{r}/metrics.csv")) if x["kind"] == "train"][1:]  # skip warm-up window
    return (statistics.median(float(x["images_per_s"]) for x in rows), statistics.median(float(x["step_ms"]) for x in rows),
            statistics.median(float(x["comm_ms"]) for x in rows), statistics.median(float(x["grad_comm_ms"]) for x in rows))
def torch(name, r):
    return json.load(open(f"{out}/{name}.{r}.json"))["images_per_s"]
res = {k: [] for k in ["np1", "np2", "local", "tn", "tc", "comm", "grad"]}
for r in range(1, rounds + 1):
    a, b, c = ours("np1-sync", r), ours("np2-sync", r), ours("np2-local", r)
    res["np1"].append(a[0]); res["np2"].append(b[0]); res["local"].append(c[0]); res["comm"].append(b[2]); res["grad"].append(b[3])
    res["tn"].append(torch("torch-nchw", r)); res["tc"].append(torch("torch-nhwc", r))
    print(f"# round {r}: np1 {a[0]:.0f} img/s, np2 sync {b[0]:.0f} ({b[1]:.1f} ms/step, syncbn comm {b[2]:.2f} ms, grad comm {b[3]:.2f} ms), "
          f"np2 local {c[0]:.0f} ({c[1]:.1f} ms/step), torch NCHW {res['tn'][-1]:.0f}, torch NHWC {res['tc'][-1]:.0f}")
m = {k: statistics.median(v) for k, v in res.items()}
sc = [b / a for a, b in zip(res["np1"], res["np2"])]
sl = [l / s for s, l in zip(res["np2"], res["local"])]
tt = [a / max(t1, t2) for a, t1, t2 in zip(res["np1"], res["tn"], res["tc"])]
print(f"\n| measurement | median | per round |\n|---|---|---|")
print(f"| syncbn np=1, images/s | {m['np1']:.0f} | {' '.join(f'{x:.0f}' for x in res['np1'])} |")
print(f"| syncbn np=2 --norm sync, images/s | {m['np2']:.0f} | {' '.join(f'{x:.0f}' for x in res['np2'])} |")
print(f"| syncbn np=2 --norm local, images/s | {m['local']:.0f} | {' '.join(f'{x:.0f}' for x in res['local'])} |")
print(f"| PyTorch 1.13, 1 thread, NCHW / channels-last, images/s | {m['tn']:.0f} / {m['tc']:.0f} | |")
print(f"| scaling np=2 / np=1 (target >= 1.8) | {statistics.median(sc):.2f}x | {' '.join(f'{x:.2f}' for x in sc)} |")
print(f"| step time sync / local at np=2 (target <= 1.05) | {statistics.median(sl):.3f}x | {' '.join(f'{x:.3f}' for x in sl)} |")
print(f"| syncbn np=1 / best PyTorch (target >= 1.5) | {statistics.median(tt):.2f}x | {' '.join(f'{x:.2f}' for x in tt)} |")
print(f"| SyncBN communication per step at np=2 | {m['comm']:.2f} ms | |")
print(f"| gradient all-reduce per step at np=2 | {m['grad']:.2f} ms | |")
PY
