#!/usr/bin/env python3
"""End-to-end checks of syncbn-train under real mpiexec jobs (registered with ctest, see CMakeLists.txt).

  train_checks.py BIN MODE [--mpiexec PATH]

MODE:
  invariance   same seed, B = 32, 20 steps, --norm sync: the per-step losses at np = 2, 3 (11/11/10) and 4
               equal those of np = 1 within 1e-4 relative (DESIGN.md §4)
  local        --norm local at np = 4, B = 32 == np = 1 --ghost-batch 8 == np = 1 --accum-steps 4 (same
               samples in every BN batch): per-step losses within 1e-4 relative
  resume       40 steps straight vs 20 + --resume + 20: bitwise identical per-step losses (np = 2), and the
               metrics of the resumed run continue the interrupted one
  errors       bad input: each a one-line error printed once (rank 0), non-zero exit, within 10 s, and no
               half-written file left behind
  kill         kill -9 of one rank mid-run ends the whole job with a non-zero exit within 30 s
"""
import argparse
import csv
import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

FASHION = "/usr/share/datasets/fashion-mnist"


def run(args, np_, bin_, mpiexec, run_dir=None, timeout=300, check=True):
    cmd = [mpiexec, "-np", str(np_), bin_] + args + (["--run-dir", run_dir] if run_dir else [])
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    dt = time.time() - t0
    if check and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}")
    return p, dt


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return [(int(r["step"]), float(r["loss"]), r) for r in csv.DictReader(fh) if r["kind"] == "train"]


def compare(name, ref, got, rtol):
    if [s for s, _, _ in ref] != [s for s, _, _ in got]:
        sys.exit(f"FAIL {name}: logged steps differ: {[s for s, _, _ in ref]} vs {[s for s, _, _ in got]}")
    worst = max(abs(a - b) / abs(a) for (_, a, _), (_, b, _) in zip(ref, got))
    status = "ok" if worst <= rtol else "FAIL"
    print(f"{status}: {name}: {len(ref)} steps, max relative loss difference {worst:.2e} (bound {rtol:g})")
    if worst > rtol:
        for (s, a, _), (_, b, _) in zip(ref, got):
            print(f"  step {s}: {a:.8f} {b:.8f}")
        sys.exit(1)
    return worst


# --grad-accum fp64: float gradient sums round differently for different sample splits, and BN networks
# amplify those 1e-7 differences chaotically (README "World-size invariance"); accumulated in double, runs
# at different world sizes differ only by double rounding, which the cast to float removes.
BASE = ["--dataset", "fashion-mnist", "--global-batch", "32", "--max-steps", "20", "--log-every", "1",
        "--seed", "7", "--grad-accum", "fp64"]


def mode_invariance(a, tmp):
    ref_dir = os.path.join(tmp, "np1")
    run(BASE + ["--norm", "sync"], 1, a.bin, a.mpiexec, ref_dir)
    ref = losses(ref_dir)
    # For the record (not a pass/fail criterion): the same check with float gradient accumulation.
    fp32 = [x if x != "fp64" else "fp32" for x in BASE]
    d32a, d32b = os.path.join(tmp, "fp32-np1"), os.path.join(tmp, "fp32-np2")
    run(fp32 + ["--norm", "sync"], 1, a.bin, a.mpiexec, d32a)
    run(fp32 + ["--norm", "sync"], 2, a.bin, a.mpiexec, d32b)
    diffs = [abs(x - y) / abs(x) for (_, x, _), (_, y, _) in zip(losses(d32a), losses(d32b))]
    print("info: --grad-accum fp32, np=2 vs np=1, relative loss difference per step: " +
          " ".join(f"{d:.0e}" for d in diffs))
    for np_ in (2, 3, 4):
        d = os.path.join(tmp, f"np{np_}")
        p, _ = run(BASE + ["--norm", "sync"], np_, a.bin, a.mpiexec, d)
        got = losses(d)
        assert all(int(r["world_size"]) == np_ for _, _, r in got), "world_size column"
        if np_ == 3:
            assert "rank 2 takes 10" in p.stdout or "takes 11" in p.stdout, "uneven split 11/11/10 expected"
        compare(f"sync np={np_} vs np=1", ref, got, 1e-4)


def mode_local(a, tmp):
    d4 = os.path.join(tmp, "local4")
    run(BASE + ["--norm", "local"], 4, a.bin, a.mpiexec, d4)
    dg = os.path.join(tmp, "ghost")
    run(BASE + ["--norm", "local", "--ghost-batch", "8"], 1, a.bin, a.mpiexec, dg)
    da = os.path.join(tmp, "accum")
    run(BASE + ["--norm", "local", "--accum-steps", "4"], 1, a.bin, a.mpiexec, da)
    ref = losses(d4)
    compare("local np=4 vs np=1 --ghost-batch 8", ref, losses(dg), 1e-4)
    compare("local np=4 vs np=1 --accum-steps 4", ref, losses(da), 1e-4)
    # And the negative control: sync BN at B = 32 is a different computation (BN batch 32, not 8).
    ds = os.path.join(tmp, "sync1")
    run(BASE + ["--norm", "sync"], 1, a.bin, a.mpiexec, ds)
    worst = max(abs(x - y) / abs(x) for (_, x, _), (_, y, _) in zip(ref, losses(ds)))
    if worst < 1e-3:
        sys.exit(f"FAIL: local np=4 and sync np=1 should differ, max relative difference only {worst:.1e}")
    print(f"ok: control: local (BN batch 8) differs from sync (BN batch 32) by up to {worst:.1e}")


def json_losses(run_dir):
    import json
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [(j["step"], j["loss"]) for j in map(json.loads, fh) if j["kind"] == "train"]


def mode_resume(a, tmp):
    args = BASE[:]
    args[args.index("--max-steps") + 1] = "40"
    args += ["--norm", "sync"]
    straight = os.path.join(tmp, "straight")
    run(args, 2, a.bin, a.mpiexec, straight)
    parted = os.path.join(tmp, "parted")
    p, _ = run(args + ["--stop-after", "20"], 2, a.bin, a.mpiexec, parted)  # a preempted job
    if "stopped at step 20 of 40" not in p.stdout:
        sys.exit("FAIL: --stop-after 20 did not stop at step 20:\n" + p.stdout[-2000:])
    p, _ = run(args + ["--resume", "latest"], 2, a.bin, a.mpiexec, parted)
    if "resumed from" not in p.stdout:
        sys.exit("FAIL: the second part did not resume:\n" + p.stdout[-2000:])
    ref, got = json_losses(straight), json_losses(parted)
    if ref != got:
        for (s1, l1), (s2, l2) in zip(ref, got):
            print(f"  step {s1}/{s2}: {l1!r} {l2!r}")
        sys.exit(f"FAIL: 40 straight vs 20 + resume + 20 differ ({len(ref)} vs {len(got)} rows)")
    print(f"ok: resume: {len(ref)} per-step losses bitwise identical (straight vs 20 + resume + 20, np = 2)")


def idx_images(path, n, rows=28, cols=28, magic=0x803, truncate=0):
    data = struct.pack(">IIII", magic, n, rows, cols) + bytes(n * rows * cols)
    with gzip.open(path, "wb") as fh:
        fh.write(data[:len(data) - truncate] if truncate else data)


def idx_labels(path, labels, magic=0x801):
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">II", magic, len(labels)) + bytes(labels))


def make_dataset(d, n_train=64, n_test=16, **bad):
    os.makedirs(d, exist_ok=True)
    idx_images(os.path.join(d, "train-images-idx3-ubyte.gz"), n_train, **bad.get("img", {}))
    idx_labels(os.path.join(d, "train-labels-idx1-ubyte.gz"), bad.get("labels", [i % 10 for i in range(n_train)]))
    idx_images(os.path.join(d, "t10k-images-idx3-ubyte.gz"), n_test)
    idx_labels(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), [i % 10 for i in range(n_test)])
    return d


def mode_errors(a, tmp):
    quick = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64", "--max-steps", "2"]
    cases = []  # (name, args, expected substring)
    cases.append(("missing data dir", ["--dataset", "fashion-mnist", "--data-dir", os.path.join(tmp, "nope")], "nope"))
    cases.append(("truncated IDX", ["--dataset", "fashion-mnist", "--data-dir",
                                    make_dataset(os.path.join(tmp, "trunc"), img={"truncate": 100})], "truncated"))
    cases.append(("wrong magic", ["--dataset", "fashion-mnist", "--data-dir",
                                  make_dataset(os.path.join(tmp, "magic"), img={"magic": 0x802})], "magic"))
    cases.append(("label >= classes", ["--dataset", "fashion-mnist", "--data-dir",
                                       make_dataset(os.path.join(tmp, "label"), labels=[3] * 63 + [12])], "label"))
    cases.append(("image/label count mismatch", ["--dataset", "fashion-mnist", "--data-dir",
                                                 make_dataset(os.path.join(tmp, "count"), labels=[1] * 60)], "count"))
    cases += [
        ("zero lr", quick + ["--lr", "0"], "--lr must be positive"),
        ("negative lr", quick + ["--lr", "-0.1"], "--lr must be positive"),
        ("zero batch", quick + ["--global-batch", "0"], "--global-batch must be a positive integer"),
        ("negative batch", quick + ["--global-batch", "-4"], "--global-batch must be a positive integer"),
        ("zero epochs", quick + ["--epochs", "0"], "--epochs must be a positive integer"),
        ("negative epochs", quick + ["--epochs", "-1"], "--epochs must be a positive integer"),
        ("accum 0", quick + ["--accum-steps", "0"], "--accum-steps must be a positive integer"),
        ("accum not dividing", quick + ["--accum-steps", "5"], "does not divide --global-batch"),
        ("unknown option", quick + ["--learning-rate", "0.1"], "unrecognised option '--learning-rate'"),
        ("unknown norm", quick + ["--norm", "batchnorm"], "unknown --norm 'batchnorm'"),
        ("sync:K not dividing", quick + ["--norm", "sync:3"], "does not divide the world size 2"),
        ("bad value", quick + ["--lr", "fast"], "lr"),
        ("unreadable checkpoint", quick + ["--resume", os.path.join(tmp, "missing.ckpt")], "cannot open the checkpoint"),
    ]
    garbage = os.path.join(tmp, "garbage.ckpt")
    with open(garbage, "wb") as fh:
        fh.write(b"not a checkpoint at all")
    cases.append(("garbage checkpoint", quick + ["--resume", garbage], "not a syncbn checkpoint"))
    # A real checkpoint of another model (resnet), then loaded by a convnet run.
    other = os.path.join(tmp, "other")
    run(quick + ["--model", "resnet", "--width", "8", "--depth", "1"], 2, a.bin, a.mpiexec, other)
    ckpt = sorted(f for f in os.listdir(other) if f.endswith(".ckpt"))[-1]
    cases.append(("checkpoint of another model", quick + ["--resume", os.path.join(other, ckpt)], "written for another model"))
    cases.append(("checkpoint of another config", quick + ["--model", "resnet", "--width", "8", "--depth", "1",
                                                           "--norm", "local", "--resume", os.path.join(other, ckpt)],
                  "another"))
    failed = 0
    for name, args, expect in cases:
        rd = os.path.join(tmp, "rd-" + name.replace(" ", "_").replace("/", "_"))
        p, dt = run(args, 2, a.bin, a.mpiexec, rd, timeout=60, check=False)
        errors = [l for l in p.stdout.splitlines() if l.startswith("error:")]
        leftovers = [f for f in os.listdir(rd)] if os.path.isdir(rd) else []
        half = [f for f in leftovers if ".tmp." in f]
        ok = (p.returncode != 0 and len(errors) == 1 and expect in errors[0] and dt < 10 and not half and
              "MPI_ABORT" not in p.stdout)
        failed += not ok
        print(f"{'ok' if ok else 'FAIL'}: {name}: exit {p.returncode} in {dt:.1f}s: {errors[0] if errors else p.stdout[-500:]}")
        if not ok and half:
            print(f"  half-written files: {half}")
    if failed:
        sys.exit(f"FAIL: {failed} of {len(cases)} bad-input cases")


def mode_kill(a, tmp):
    cmd = [a.mpiexec, "-np", "2", a.bin, "--dataset", "synthetic", "--max-steps", "100000", "--log-every", "10"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until training runs, then kill one rank (not mpiexec) with SIGKILL.
    t0 = time.time()
    line = ""
    while "step 10/" not in line:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            sys.exit("FAIL: the job ended before it could be killed")
        if time.time() - t0 > 120:
            p.kill()
            sys.exit("FAIL: no progress line within 120 s")
    ranks = subprocess.run(["pgrep", "-f", "-P", str(p.pid), os.path.basename(a.bin)], stdout=subprocess.PIPE,
                           text=True).stdout.split()
    if not ranks:
        ranks = subprocess.run(["pgrep", "-f", a.bin + " --dataset synthetic"], stdout=subprocess.PIPE, text=True).stdout.split()
    victim = int(ranks[-1])
    os.kill(victim, signal.SIGKILL)
    t1 = time.time()
    try:
        p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        sys.exit("FAIL: the job was still running 30 s after kill -9 of a rank")
    dt = time.time() - t1
    if p.returncode == 0:
        sys.exit("FAIL: the job exited 0 after a rank was killed")
    print(f"ok: kill -9 of rank pid {victim}: the job ended with exit {p.returncode} after {dt:.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin")
    ap.add_argument("mode", choices=["invariance", "local", "resume", "errors", "kill"])
    ap.add_argument("--mpiexec", default="mpiexec")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sbn-train-")
    try:
        globals()["mode_" + a.mode](a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
