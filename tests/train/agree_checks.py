#!/usr/bin/env python3
"""Start-up agreement of syncbn-train's ranks (include/syncbn/agreement.h), under real MPMD launches.

  agree_checks.py BIN [--mpiexec PATH]

Each mismatch case launches `mpiexec -np 1 BIN args0 : -np 1 BIN args1 ...` (2, 3, 5 and 9 ranks) where the
ranks differ in options or in their copy of the data, and requires: a non-zero exit within 10 s, exactly
one `error:` line (printed once, by rank 0) naming the option or file and the ranks that differ, no
MPI_ABORT (every rank agreed on the error), and the --run-dir still absent (nothing written). The allowed
differences (--threads, --data-dir holding the same files) must still train and exit 0.
"""
import argparse
import gzip
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

QUICK = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64", "--max-steps", "2",
         "--global-batch", "32"]
# Ranks oversubscribe the 2 cores of a CI machine: they must yield, or a waiting rank starves the others.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_mpi_yield_when_idle="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_hwloc_base_binding_policy="none")


def mpmd(a, per_rank):
    """per_rank: a list of argument lists, one per rank (consecutive equal lists become one -np N context)."""
    cmd = [a.mpiexec, "--oversubscribe", "--bind-to", "none"]
    groups = []
    for args in per_rank:
        if groups and groups[-1][1] == args:
            groups[-1][0] += 1
        else:
            groups.append([1, args])
    for i, (n, args) in enumerate(groups):
        cmd += ([":"] if i else []) + ["-np", str(n), a.bin] + args
    return cmd


def launch(cmd, timeout=60):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=ENV)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    return rc, out, time.time() - t0


def idx_images(path, pixels, n, rows=28, cols=28):
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, n, rows, cols) + pixels)


def idx_labels(path, labels):
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">II", 0x801, len(labels)) + bytes(labels))


def make_dataset(d, n_train=128, n_test=32, flip_train_pixel=None, flip_test_label=None):
    """Small Fashion-MNIST-format files with varied pixels; optionally one byte changed."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(5)
    train = bytearray(rng.randrange(256) for _ in range(n_train * 784))
    test = bytes(rng.randrange(256) for _ in range(n_test * 784))
    if flip_train_pixel is not None:
        train[flip_train_pixel] ^= 1
    test_labels = [i % 10 for i in range(n_test)]
    if flip_test_label is not None:
        test_labels[flip_test_label] = (test_labels[flip_test_label] + 1) % 10
    idx_images(os.path.join(d, "train-images-idx3-ubyte.gz"), bytes(train), n_train)
    idx_labels(os.path.join(d, "train-labels-idx1-ubyte.gz"), [i % 10 for i in range(n_train)])
    idx_images(os.path.join(d, "t10k-images-idx3-ubyte.gz"), test, n_test)
    idx_labels(os.path.join(d, "t10k-labels-idx1-ubyte.gz"), test_labels)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin")
    ap.add_argument("--mpiexec", default="mpiexec")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sbn-agree-")
    try:
        failed = run_cases(a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(f"FAIL: {failed} agreement case(s)")


def run_cases(a, tmp):
    same = make_dataset(os.path.join(tmp, "data-a"))
    copy = make_dataset(os.path.join(tmp, "data-copy"))  # the same content in another directory
    bad_train = make_dataset(os.path.join(tmp, "data-b"), flip_train_pixel=1000)
    bad_test = make_dataset(os.path.join(tmp, "data-c"), flip_test_label=3)
    fm = ["--dataset", "fashion-mnist", "--max-steps", "2", "--global-batch", "32", "--data-dir"]

    def lr(v):
        return QUICK + ["--lr", v]

    # (name, per-rank args, substrings the one error line must contain)
    bad = [
        ("MPMD --seed 1 : --seed 2", [QUICK + ["--seed", "1"], QUICK + ["--seed", "2"]],
         ["--seed (rank 0: 1; rank 1: 2)"]),
        ("--lr on rank 2 of 3", [QUICK, QUICK, QUICK + ["--lr", "0.1"]],
         ["--lr (rank 0: 0.05; rank 2: 0.1)"]),
        ("--lr on ranks 1-3 of 5", [QUICK, QUICK + ["--lr", "0.1"], QUICK + ["--lr", "0.1"], QUICK + ["--lr", "0.1"], QUICK],
         ["--lr (rank 0: 0.05; ranks 1-3: 0.1)"]),
        ("--lr below %g's 6 digits", [QUICK, QUICK + ["--lr", "0.0500000001"]],
         ["--lr (rank 0: 0.05; rank 1: 0.0500000001)"]),
        ("three options, two values", [QUICK, QUICK + ["--momentum", "0.8", "--seed", "3"],
                                       QUICK + ["--momentum", "0.7", "--epochs", "5", "--seed", "3"]],
         ["--epochs (rank 0: 3; rank 2: 5)", "--momentum (rank 0: 0.9; rank 1: 0.8; rank 2: 0.7)",
          "--seed (rank 0: 1; ranks 1, 2: 3)"]),
        ("--device auto : --device cpu", [QUICK + ["--device", "cpu"], QUICK + ["--device", "auto"]],
         ["--device (rank 0: cpu; rank 1: auto)"]),
        ("--lr: two values on 9 ranks", [QUICK, lr("0.1"), QUICK, lr("0.2"), lr("0.2"), lr("0.2"), lr("0.2"), QUICK, lr("0.1")],
         ["--lr (rank 0: 0.05; ranks 1, 8: 0.1; ranks 3-6: 0.2)"]),
        ("--lr: four values on 5 ranks", [QUICK, lr("0.1"), lr("0.2"), lr("0.3"), lr("0.4")],
         ["--lr (rank 0: 0.05; rank 1: 0.1; rank 2: 0.2; rank 3: 0.3; 1 other value on rank 4)"]),
        ("eight options (and --threads, allowed)", [QUICK, QUICK + ["--lr", "0.1", "--seed", "2", "--momentum", "0.5", "--epochs", "4",
                                                     "--width", "16", "--depth", "3", "--nesterov", "false", "--bn-eps",
                                                     "1e-3", "--threads", "2"]],
         ["--width (rank 0: 32; rank 1: 16), --depth (rank 0: 2; rank 1: 3), --bn-eps (rank 0: 1e-05; rank 1: 0.001), "
          "--epochs (rank 0: 3; rank 1: 4) and 4 more: --lr, --momentum, --nesterov, --seed —"]),
        # The data: the split and the file each rank read.
        ("another copy of the train images on rank 1 of 3", [fm + [same], fm + [bad_train], fm + [same]],
         ["train images (", "train-images-idx3-ubyte", "): rank 1 differs from rank 0 —"]),
        ("another copy of the test labels on ranks 1, 2 of 3", [fm + [same], fm + [bad_test], fm + [bad_test]],
         ["test labels (", "t10k-labels-idx1-ubyte", "): ranks 1, 2 differ from rank 0 —"]),
    ]
    failed = 0
    for i, (name, per_rank, expect) in enumerate(bad):
        rd = os.path.join(tmp, f"run-{i}")
        cmd = mpmd(a, [args + ["--run-dir", rd] for args in per_rank])
        rc, out, dt = launch(cmd)
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        # An expectation is a substring, or a tuple of alternatives.
        missing = [e for e in expect if not errors or not any(x in errors[0] for x in (e if isinstance(e, tuple) else (e,)))]
        ok = (rc not in (0, "timeout") and len(errors) == 1 and not missing and dt < 10 and
              "MPI_ABORT" not in out and not os.path.exists(rd))
        failed += not ok
        print(f"{'ok' if ok else 'FAIL'}: {name}: exit {rc} in {dt:.1f}s: {errors[0] if len(errors) == 1 else out[-800:]}")
        if not ok:
            print(f"  command: {' '.join(cmd)}")
            if missing:
                print(f"  expected in the error line: {missing}")
            if os.path.exists(rd):
                print(f"  the run dir was created: {rd} holds {os.listdir(rd)}")

    # An environment switch that changes the collectives: SBN_GRAD_OVERLAP=0 on one rank only. The model is
    # built by all ranks together, so every rank refuses in one line before its first step.
    rd = os.path.join(tmp, "run-overlap")
    cmd = [a.mpiexec, "--oversubscribe", "--bind-to", "none", "-np", "1", "env", "SBN_GRAD_OVERLAP=0", a.bin] + QUICK + \
        ["--run-dir", rd, ":", "-np", "1", a.bin] + QUICK + ["--run-dir", rd]
    rc, out, dt = launch(cmd)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    ok = (rc not in (0, "timeout") and len(errors) >= 1 and dt < 10 and "MPI_ABORT" not in out and
          all("SBN_GRAD_OVERLAP differs across ranks" in e for e in errors))
    failed += not ok
    print(f"{'ok' if ok else 'FAIL'}: SBN_GRAD_OVERLAP=0 on rank 0 only: exit {rc} in {dt:.1f}s: "
          f"{errors[0] if errors else out[-800:]}")

    good = [
        ("--threads 1 : --threads 2", [QUICK + ["--threads", "1"], QUICK + ["--threads", "2"]]),
        ("the same files in two --data-dir", [fm + [same], fm + [copy], fm + [same]]),
    ]
    for name, per_rank in good:
        rc, out, dt = launch(mpmd(a, per_rank))
        ok = rc == 0 and not any(l.startswith("error:") for l in out.splitlines()) and dt < 60
        failed += not ok
        print(f"{'ok' if ok else 'FAIL'}: allowed difference {name}: exit {rc} in {dt:.1f}s"
              + ("" if ok else "\n" + out[-1500:]))
    return failed


if __name__ == "__main__":
    main()
