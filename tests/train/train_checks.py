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
  errors       bad input (flags out of range, FIFOs, gzip bombs, ...): each a one-line error printed once
               (rank 0) naming no source location, non-zero exit, within 10 s, and no half-written file
               left behind
  kill         kill -9 of one rank mid-run ends the whole job with a non-zero exit within 30 s
  precise      --precise-bn 4 (README "PreciseBN"): each evaluation writes an "eval" (EMA) and an
               "eval-precise" row, the final line reports PreciseBN; 20 + resume + 20 stays bitwise identical
               (losses and both eval rows); bad values and --norm groupnorm are one-line errors
  fuse         --fuse on vs off (fused BN + ReLU + max-pool on the CPU) at np = 2: bitwise identical
               per-step losses with --norm sync and with --norm local --ghost-batch 8 --bn-renorm; a run
               stopped at step 10 with --fuse on and resumed with --fuse off continues the straight run
               bitwise (one checkpoint format); a bad --fuse value is a one-line error
  overlap      the CPU gradient all-reduce overlapping the backward (fp32 gradients) vs after it
               (SBN_GRAD_OVERLAP=0, the former path): bitwise identical per-step losses at np = 2 and 3
               with --norm sync, --norm local, --accum-steps 2 and resnet; the model line says which
"""
import csv
import gzip
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time

from check_common import json_losses, run_mode

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


def gzip_bomb(path, header, zeros_mib):
    """A gzip file inflating to header + zeros_mib MiB of zeros: one member per 16 MiB of zeros, compressed
    once and repeated (~16 KiB each), so 2 GiB take 2 MB on disk and no time to write."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(header))
        for _ in range(zeros_mib // 16):
            fh.write(member)


def make_dataset(d, n_train=64, n_test=16, **bad):
    os.makedirs(d, exist_ok=True)
    if "bomb" in bad:  # the train images: (declared count, MiB of zeros after the header)
        n_decl, mib = bad["bomb"]
        gzip_bomb(os.path.join(d, "train-images-idx3-ubyte.gz"), struct.pack(">IIII", 0x803, n_decl, 28, 28), mib)
    elif "fifo" in bad:  # a FIFO named like the train images: must be refused, not opened (that blocks)
        os.mkfifo(os.path.join(d, "train-images-idx3-ubyte.gz"))
    else:
        idx_images(os.path.join(d, "train-images-idx3-ubyte.gz"), n_train, **bad.get("img", {}))
    idx_labels(os.path.join(d, "train-labels-idx1-ubyte.gz"), bad.get("labels", [i % 10 for i in range(n_train)]))
    idx_images(os.path.join(d, "t10k-images-idx3-ubyte.gz"), n_test)
    idx_labels(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), [i % 10 for i in range(n_test)])
    return d


def kill_session(sid):
    """SIGKILLs what is left of session sid (a job's ranks each get their own process group); returns how
    many processes there were."""
    left = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            if int(fields[3]) == sid and fields[0] != "Z":  # zombies are gone already
                left.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(left)


def run_bad_input(args, bin_, mpiexec, run_dir, timeout=30, max_memory=3 << 30):
    """One bad-input job at np = 2: returns (exit code or None if it hung, output, seconds, processes left
    running after mpiexec ended). The job runs in a session of its own, killed whole afterwards (a rank
    blocked in open() of a FIFO outlives mpiexec), under an address-space limit so that a runaway
    allocation fails at once (std::bad_alloc) instead of taking the machine, and without SBN_DEBUG (which
    adds source locations to errors)."""
    cmd = [mpiexec, "-np", "2", bin_] + args + ["--run-dir", run_dir]
    env = {k: v for k, v in os.environ.items() if k != "SBN_DEBUG"}
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))  # noqa: E731
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         preexec_fn=limit, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        code = p.returncode
    except subprocess.TimeoutExpired:
        kill_session(p.pid)
        out, _ = p.communicate()
        code = None
    dt = time.time() - t0
    return code, out, dt, kill_session(p.pid)


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
        # Bounds of numeric options: each one line naming the flag and the allowed range.
        ("comm-timeout inf", quick + ["--comm-timeout", "inf"], "--comm-timeout must be in [0, 604800] seconds"),
        ("comm-timeout 1e12", quick + ["--comm-timeout", "1e12"], "--comm-timeout must be in [0, 604800] seconds"),
        ("threads 1000000", quick + ["--threads", "1000000"], "--threads must be a positive integer in [1, 1024]"),
        ("weight-decay inf", quick + ["--weight-decay", "inf"], "--weight-decay must be finite and >= 0, got inf"),
        ("bn-eps inf", quick + ["--bn-eps", "inf"], "--bn-eps must be positive and finite, got inf"),
        ("lr nan", quick + ["--lr", "nan"], "--lr must be positive and finite, got nan"),
        ("seed -1", quick + ["--seed", "-1"], "--seed must be an integer in [0, 18446744073709551615], got '-1'"),
        ("epochs 2^62", quick + ["--epochs", str(2**62)], "--epochs must be a positive integer in [1, 1000000]"),
        ("synthetic size x shape overflow", quick + ["--synthetic-train", str(2**62), "--synthetic-shape", "1x64x64"],
         "--synthetic-train must be in [1, 1048576] for --synthetic-shape 1x64x64"),
    ]
    cases += [  # Batch Renormalization: BatchNorm modes only, limits in range
        ("bn-renorm with groupnorm", quick + ["--norm", "groupnorm", "--bn-renorm"],
         "--bn-renorm renormalizes BatchNorm statistics: it needs --norm local, sync or sync:K, not groupnorm"),
        ("bn-renorm with none", quick + ["--norm", "none", "--bn-renorm"], "it needs --norm local, sync or sync:K, not none"),
        ("renorm-rmax 0.5", quick + ["--bn-renorm", "--renorm-rmax", "0.5"], "--renorm-rmax must be a finite number >= 1, got 0.5"),
        ("renorm-rmax inf", quick + ["--bn-renorm", "--renorm-rmax", "inf"], "--renorm-rmax must be a finite number >= 1, got inf"),
        ("renorm-dmax -1", quick + ["--bn-renorm", "--renorm-dmax", "-1"], "--renorm-dmax must be a finite number >= 0, got -1"),
        ("renorm-warmup -1", quick + ["--bn-renorm", "--renorm-warmup", "-1"],
         "--renorm-warmup must be an integer in [0, 1000000000], got -1"),
    ]
    # Paths: checked before use; a FIFO must be refused (opening it for reading blocks), a directory or an
    # unreadable file must be an error, not an empty configuration.
    seed_ini = os.path.join(tmp, "seed.ini")
    with open(seed_ini, "w") as fh:
        fh.write("seed = -1\n")
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    cases += [
        ("config seed -1", quick + ["--config", seed_ini], "--seed must be an integer in [0, 18446744073709551615]"),
        ("config FIFO", quick + ["--config", fifo], "--config " + fifo + ": cannot read the file (is a FIFO"),
        ("config directory", quick + ["--config", tmp], "--config " + tmp + ": cannot read the file (is a directory)"),
        ("resume FIFO", quick + ["--resume", fifo], "--resume " + fifo + ": cannot open the checkpoint (is a FIFO"),
    ]
    if os.path.exists("/proc/self/mem"):  # a regular file whose read fails (EIO), even for root
        cases.append(("config unreadable (read error)", quick + ["--config", "/proc/self/mem"],
                      "--config /proc/self/mem: cannot read the file (Input/output error)"))
    if os.geteuid() != 0:
        secret = os.path.join(tmp, "secret.ini")
        with open(secret, "w") as fh:
            fh.write("lr = 0.1\n")
        os.chmod(secret, 0)
        cases.append(("config unreadable (mode 000)", quick + ["--config", secret], "(Permission denied)"))
    else:
        print("note: running as root, which can read a mode-000 file: that --config case is skipped "
              "(the read-error case stands for it)")
    run_dir_file = os.path.join(tmp, "rd-run-dir_is_a_file")
    with open(run_dir_file, "w") as fh:
        fh.write("not a directory\n")
    cases.append(("run-dir is a file", quick, "--run-dir " + run_dir_file + ": exists and is not a directory"))
    # Data: a gzip bomb (a header declaring 5e6 images, then 2 GiB of zeros in 2 MB), the same behind a
    # valid header, an absurd header, a FIFO named like a data file.
    cases += [
        ("gzip bomb", ["--dataset", "fashion-mnist", "--device", "cpu", "--data-dir",
                       make_dataset(os.path.join(tmp, "bomb"), bomb=(5000000, 2048))],
         "train-images-idx3-ubyte.gz: truncated: header says 5000000 images of 28x28 = 3920000000 bytes"),
        ("gzip bomb after a valid header", ["--dataset", "fashion-mnist", "--device", "cpu", "--data-dir",
                                            make_dataset(os.path.join(tmp, "bomb64"), bomb=(64, 208))],
         "trailing garbage: more than 1048576 bytes after the 64 images of 28x28"),
        ("absurd header", ["--dataset", "fashion-mnist", "--device", "cpu", "--data-dir",
                           make_dataset(os.path.join(tmp, "absurd"), bomb=(2**31, 0))],
         "bad header: 2147483648 images of 28x28 = 1683627180032 bytes, more than a split may hold"),
        ("FIFO as a data file", ["--dataset", "fashion-mnist", "--data-dir",
                                 make_dataset(os.path.join(tmp, "fifo-data"), fifo=True)],
         "train-images-idx3-ubyte.gz: is a FIFO, not a regular file"),
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
        # 3 GiB of address space: plenty for these runs (CUDA libraries mapped included); a reader that
        # inflates a bomb into memory fails fast with std::bad_alloc instead of taking the machine.
        code, out, dt, orphans = run_bad_input(args, a.bin, a.mpiexec, rd)
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        leftovers = [f for f in os.listdir(rd)] if os.path.isdir(rd) else []
        half = [f for f in leftovers if ".tmp." in f]
        # User-facing errors carry no source location such as "(config.cpp:157)" (SBN_DEBUG=1 adds it).
        located = [l for l in errors if re.search(r"\(\w+\.(cpp|cu|h|cuh):\d+\)", l)]
        ok = (code is not None and code != 0 and len(errors) == 1 and expect in errors[0] and dt < 10 and not half and
              "MPI_ABORT" not in out and not located and not orphans)
        failed += not ok
        status = f"exit {code}" if code is not None else "still running (killed)"
        print(f"{'ok' if ok else 'FAIL'}: {name}: {status} in {dt:.1f}s: {errors[0] if errors else out[-500:]}")
        if not ok and half:
            print(f"  half-written files: {half}")
        if not ok and located:
            print("  the error names a source location")
        if orphans:
            print(f"  {orphans} process(es) of the job were still running after mpiexec ended (killed)")
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


def eval_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return [(r["kind"], int(r["step"]), r["loss"], r["acc"]) for r in csv.DictReader(fh)
                if r["kind"].startswith("eval")]


def mode_precise(a, tmp):
    args = BASE[:]
    args[args.index("--max-steps") + 1] = "40"
    args += ["--norm", "sync", "--eval-every", "20", "--precise-bn", "4"]
    straight = os.path.join(tmp, "straight")
    p, _ = run(args, 2, a.bin, a.mpiexec, straight)
    rows = eval_rows(straight)
    if [(k, s) for k, s, _, _ in rows] != [("eval", 20), ("eval-precise", 20), ("eval", 40), ("eval-precise", 40)]:
        sys.exit(f"FAIL: expected eval and eval-precise rows at steps 20 and 40, got {rows}")
    if p.stdout.count("(PreciseBN statistics of 4 batches)") != 2:
        sys.exit("FAIL: expected two PreciseBN eval lines:\n" + p.stdout[-2000:])
    final = re.search(r"final test accuracy ([0-9.]+)% \(loss ([0-9.]+)\) after 40 steps.*PreciseBN", p.stdout)
    if not final or f"{float(final.group(1)) / 100:.6f}" != f"{float(rows[-1][3]):.6f}":
        sys.exit(f"FAIL: the final line should report the PreciseBN evaluation {rows[-1]}:\n" + p.stdout[-1000:])
    print("ok: precise: eval (EMA) / eval-precise (PreciseBN) accuracy " +
          ", ".join(f"step {s}: {rows[i][3]} / {rows[i + 1][3]}" for i, (_, s, _, _) in enumerate(rows) if i % 2 == 0))
    parted = os.path.join(tmp, "parted")
    run(args + ["--stop-after", "20"], 2, a.bin, a.mpiexec, parted)
    run(args + ["--resume", "latest"], 2, a.bin, a.mpiexec, parted)
    if json_losses(straight) != json_losses(parted) or eval_rows(parted)[-2:] != rows[-2:]:
        sys.exit(f"FAIL: --precise-bn: 40 straight vs 20 + resume + 20 differ: {rows} vs {eval_rows(parted)}")
    print("ok: precise: 40 straight == 20 + resume + 20 (losses and both eval rows, bitwise)")
    for bad, why in ((["--precise-bn", "-1"], "--precise-bn must be an integer in [0, 100000]"),
                     (["--precise-bn", "4", "--norm", "groupnorm"], "--precise-bn recomputes BatchNorm statistics")):
        p, _ = run(BASE + bad, 2, a.bin, a.mpiexec, check=False, timeout=60)
        if p.returncode == 0 or p.stdout.count(why) != 1:
            sys.exit(f"FAIL: {bad}: expected one error line with '{why}', exit {p.returncode}:\n{p.stdout[-1000:]}")
    print("ok: precise: bad --precise-bn values are one-line errors")


def mode_fuse(a, tmp):
    def same(name, ref_dir, got_dir):
        ref, got = json_losses(ref_dir), json_losses(got_dir)
        if not ref or ref != got:
            for (s1, l1), (s2, l2) in zip(ref, got):
                print(f"  step {s1}/{s2}: {l1!r} {l2!r}")
            sys.exit(f"FAIL: {name}: per-step losses differ ({len(ref)} vs {len(got)} rows)")
        print(f"ok: fuse: {name}: {len(ref)} per-step losses bitwise identical")

    for label, extra in (("sync", ["--norm", "sync"]),
                         ("local ghost renorm", ["--norm", "local", "--ghost-batch", "8", "--bn-renorm", "true",
                                                 "--renorm-warmup", "5"])):
        dirs = {}
        for fuse in ("on", "off"):
            dirs[fuse] = os.path.join(tmp, f"{label.replace(' ', '-')}-{fuse}")
            run(BASE + extra + ["--fuse", fuse], 2, a.bin, a.mpiexec, dirs[fuse])
        same(f"{label}: --fuse on vs off", dirs["off"], dirs["on"])
        if label == "sync":
            parted = os.path.join(tmp, "parted")
            run(BASE + extra + ["--fuse", "on", "--stop-after", "10"], 2, a.bin, a.mpiexec, parted)
            p, _ = run(BASE + extra + ["--fuse", "off", "--resume", "latest"], 2, a.bin, a.mpiexec, parted)
            if "resumed from" not in p.stdout:
                sys.exit("FAIL: the --fuse off part did not resume:\n" + p.stdout[-2000:])
            same("sync: 10 steps --fuse on + resume with --fuse off vs 20 straight", dirs["on"], parted)
    why = "--fuse must be on or off"
    p, _ = run(BASE + ["--fuse", "yes"], 2, a.bin, a.mpiexec, check=False, timeout=60)
    if p.returncode == 0 or p.stdout.count(why) != 1:
        sys.exit(f"FAIL: --fuse yes: expected one error line with '{why}', exit {p.returncode}:\n{p.stdout[-1000:]}")
    print("ok: fuse: a bad --fuse value is a one-line error")


def mode_overlap(a, tmp):
    fp32 = [x if x != "fp64" else "fp32" for x in BASE]
    cases = [("sync np=2", 2, ["--norm", "sync"]),
             ("sync np=3", 3, ["--norm", "sync"]),
             ("local np=3 accum 2", 3, ["--norm", "local", "--accum-steps", "2"]),
             ("sync resnet np=2", 2, ["--norm", "sync", "--model", "resnet", "--width", "16", "--depth", "1"])]
    for label, np_, extra in cases:
        dirs = {}
        for overlap in ("1", "0"):
            dirs[overlap] = os.path.join(tmp, f"{label.replace(' ', '-')}-{overlap}")
            os.environ["SBN_GRAD_OVERLAP"] = overlap
            try:
                p, _ = run(fp32 + extra, np_, a.bin, a.mpiexec, dirs[overlap])
            finally:
                del os.environ["SBN_GRAD_OVERLAP"]
            said = "overlaps the backward" in p.stdout
            if said != (overlap == "1"):
                sys.exit(f"FAIL: overlap {label}: SBN_GRAD_OVERLAP={overlap} but the model line says "
                         f"{'overlap' if said else 'none'}:\n" + p.stdout[-2000:])
        ref, got = json_losses(dirs["0"]), json_losses(dirs["1"])
        if not ref or ref != got:
            for (s1, l1), (s2, l2) in zip(ref, got):
                print(f"  step {s1}/{s2}: {l1!r} {l2!r}")
            sys.exit(f"FAIL: overlap {label}: per-step losses differ ({len(ref)} vs {len(got)} rows)")
        print(f"ok: overlap: {label}: {len(ref)} per-step losses bitwise identical to the all-reduce after backward")


def main():
    run_mode(__doc__, ["invariance", "local", "resume", "errors", "kill", "precise", "fuse", "overlap"], "sbn-train-",
             globals())


if __name__ == "__main__":
    main()
