#!/usr/bin/env python3
"""Faults a cluster user meets, end to end under real mpiexec jobs (registered with ctest).

  fault_checks.py BIN MODE [--mpiexec PATH]

MODE:
  signal    SIGTERM to mpirun mid-run (odls_base_sigkill_timeout raised, as the launch scripts do): the
            ranks agree at a step boundary, save a checkpoint, say so in one line and exit 75; --resume
            latest then finishes with per-step losses bitwise equal to an uninterrupted run. SIGUSR1 to
            mpirun and SIGTERM to one rank only end the same way; Ctrl-C twice ends the process by SIGINT.
  nan       --lr 1e30: one error line naming the step and the parameter, exit 1, no checkpoint of the
            failing step (every checkpoint written before it loads); the job ends within 30 s
  lock      a second job on a running job's --run-dir fails at once naming the run dir and the holder; the
            first job finishes untouched
  disk      the run dir on a full file system (a 24 KiB tmpfs): the failed metrics write becomes one agreed
            error line, exit 1, no hang, no temporary file left behind
  resume    temporary files of an interrupted write are removed; a checkpoint whose position does not fit
            the current dataset is refused with one line
"""
import glob
import os
import signal
import subprocess
import sys
import time

import gzip
import random
import struct

from check_common import json_losses, run_mode

QUICK = ["--dataset", "synthetic", "--synthetic-train", "2048", "--synthetic-test", "64", "--width", "8",
         "--global-batch", "16", "--log-every", "1", "--seed", "3"]
EXIT_STOPPED = 75


def make_dataset(d, n_train, n_test):
    """A small Fashion-MNIST-format dataset of random pixels in directory d."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(n_train)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        with gzip.open(os.path.join(d, f"{prefix}-images-idx3-ubyte.gz"), "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + bytes(rng.randrange(256) for _ in range(n * 784)))
        with gzip.open(os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n)))
    return d


def fail(msg):
    sys.exit("FAIL: " + msg)


def cmd(a, np_, args):
    return [a.mpiexec, "-np", str(np_), a.bin] + args


def run(a, np_, args, timeout=120):
    t0 = time.time()
    p = subprocess.run(cmd(a, np_, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return p, time.time() - t0


def errors(out):
    return [line for line in out.splitlines() if line.startswith("error:")]


def start(a, np_, args, mpi_flags=()):
    c = [a.mpiexec] + list(mpi_flags) + ["-np", str(np_), a.bin] + args
    return subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(p, needle, limit=120):
    """Reads p's output until a line containing needle; returns the lines read."""
    seen, t0 = [], time.time()
    while True:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            fail(f"the job ended before printing '{needle}':\n" + "".join(seen[-30:]))
        seen.append(line)
        if needle in line:
            return seen
        if time.time() - t0 > limit:
            p.kill()
            fail(f"no '{needle}' within {limit} s")


def finish(p, limit):
    try:
        out, _ = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        fail(f"the job was still running {limit} s after the signal")
    return out


def rank_pids(p, bin_):
    """The syncbn-train processes of job p (children of its mpirun)."""
    out = subprocess.run(["pgrep", "-P", str(p.pid)], stdout=subprocess.PIPE, text=True).stdout.split()
    return [int(x) for x in out if os.path.basename(os.readlink(f"/proc/{x}/exe")) == os.path.basename(bin_)]


def stopped_run(a, tmp, name, args, deliver):
    """Starts a 2-rank job, lets it train, delivers a signal via deliver(p); checks the stop."""
    rd = os.path.join(tmp, name)
    # mpirun sends SIGCONT, waits odls_base_sigkill_timeout, sends SIGTERM, waits again, then SIGKILL:
    # the ranks have that long to save (the launch scripts raise it; the default is 1 s).
    p = start(a, 2, args + ["--run-dir", rd], ["--mca", "odls_base_sigkill_timeout", "5"])
    before = wait_for(p, "/100000 loss")  # the first progress line
    t0 = time.time()
    deliver(p)
    out = "".join(before) + finish(p, 60)
    dt = time.time() - t0
    stops = [line for line in out.splitlines() if line.startswith("stopped by")]
    if len(stops) != 1 or "resume with --resume latest" not in stops[0]:
        fail(f"{name}: expected one 'stopped by ...' line, got {stops}:\n{out[-2000:]}")
    ckpts = sorted(glob.glob(os.path.join(rd, "checkpoint-*.ckpt")))
    if not ckpts or os.path.basename(ckpts[-1]) not in stops[0]:
        fail(f"{name}: the stop line does not name the checkpoint written ({ckpts})")
    if glob.glob(os.path.join(rd, "*.tmp.*")):
        fail(f"{name}: temporary files left: {glob.glob(os.path.join(rd, '*.tmp.*'))}")
    if p.returncode == 0:
        fail(f"{name}: mpirun exited 0 after a stop")
    print(f"ok: {name}: exit {p.returncode} {dt:.1f} s after the signal: {stops[0]}")
    return rd, p.returncode


def mode_signal(a, tmp):
    # A schedule far longer than the test (the stop comes first), and few output lines: while mpirun waits
    # out odls_base_sigkill_timeout it forwards no output, and a rank blocked on a full stdout pipe could
    # not reach the step boundary (at 1 ms per step: an epoch of 128 steps, a progress line per 500).
    args = QUICK + ["--max-steps", "100000", "--log-every", "500"]
    rd, _ = stopped_run(a, tmp, "SIGTERM to mpirun", args, lambda p: os.kill(p.pid, signal.SIGTERM))
    stop = max(s for s, _ in json_losses(rd)) if json_losses(rd) else 0
    step = int(sorted(glob.glob(os.path.join(rd, "checkpoint-*.ckpt")))[-1][-13:-5])
    end = str(step + 40)
    p, _ = run(a, 2, args + ["--log-every", "1", "--run-dir", rd, "--resume", "latest", "--stop-after", end], timeout=300)
    if p.returncode != 0 or "resumed from" not in p.stdout:
        fail("--resume latest after SIGTERM:\n" + p.stdout[-2000:])
    straight = os.path.join(tmp, "straight")
    p, _ = run(a, 2, args + ["--log-every", "1", "--run-dir", straight, "--stop-after", end], timeout=300)
    if p.returncode != 0:
        fail("uninterrupted run failed:\n" + p.stdout[-2000:])
    ref = [x for x in json_losses(straight) if x[0] > step]
    got = [x for x in json_losses(rd) if x[0] > step]
    if ref != got or len(ref) != 40:
        fail(f"losses after the resume differ from the uninterrupted run's ({len(ref)} vs {len(got)} rows):\n{ref[:3]}\n{got[:3]}")
    print(f"ok: SIGTERM at step {step} (last logged {stop}) + --resume latest: steps {step + 1}..{end} bitwise equal "
          "to the uninterrupted run")
    _, rc = stopped_run(a, tmp, "SIGUSR1 to mpirun", args, lambda p: os.kill(p.pid, signal.SIGUSR1))
    if rc != EXIT_STOPPED:
        fail(f"SIGUSR1: mpirun exited {rc}, expected {EXIT_STOPPED} (mpirun forwards SIGUSR1 and passes the code on)")

    def one_rank(p):
        pids = rank_pids(p, a.bin)
        if len(pids) != 2:
            fail(f"expected 2 rank processes under mpirun, found {pids}")
        os.kill(pids[-1], signal.SIGTERM)
    _, rc = stopped_run(a, tmp, "SIGTERM to one rank", args, one_rank)
    if rc != EXIT_STOPPED:
        fail(f"SIGTERM to one rank: mpirun exited {rc}, expected {EXIT_STOPPED}")
    ctrl_c_twice(a, tmp)


def ctrl_c_twice(a, tmp):
    """A second SIGINT ends the process at once (default action), without the checkpoint the first one
    asked for: one process (an MPI singleton) with steps of tens of ms (--width 96) gets SIGINT every 2 ms
    (two sent back to back could merge into one pending signal) until it ends."""
    w = QUICK.index("--width")
    args = QUICK[:w + 1] + ["96"] + QUICK[w + 2:] + ["--max-steps", "100000"]
    p = subprocess.Popen([a.bin] + args + ["--run-dir", os.path.join(tmp, "ctrl-c")], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    before = wait_for(p, "step 5/100000 loss")
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 30:
        p.send_signal(signal.SIGINT)
        time.sleep(0.002)
    out = "".join(before) + finish(p, 60)
    if p.returncode != -signal.SIGINT or "stopped by" in out:
        fail(f"Ctrl-C twice: exit {p.returncode} (expected death by SIGINT, shell code 130), output:\n{out[-1500:]}")
    print(f"ok: Ctrl-C twice: the process ended by SIGINT {time.time() - t0:.2f} s after the first, without a checkpoint")


def mode_nan(a, tmp):
    rd = os.path.join(tmp, "nan")
    p, dt = run(a, 2, QUICK + ["--max-steps", "200", "--lr", "1e30", "--save-every", "1", "--run-dir", rd], timeout=60)
    errs = errors(p.stdout)
    if p.returncode != 1 or len(errs) != 1 or "non-finite" not in errs[0] or dt > 30:
        fail(f"--lr 1e30: exit {p.returncode} in {dt:.1f} s, errors {errs}:\n{p.stdout[-2000:]}")
    step = int(errs[0].split("step ")[1].split(":")[0])
    if "gradient of '" not in errs[0] and "loss" not in errs[0]:
        fail(f"the error does not name the parameter or the loss: {errs[0]}")
    ckpts = sorted(glob.glob(os.path.join(rd, "checkpoint-*.ckpt")))
    late = [c for c in ckpts if int(os.path.basename(c)[11:-5]) >= step]
    if late:
        fail(f"checkpoints at or after the failing step {step}: {late}")
    # What was saved before the failure is finite and loads (resume checks every value).
    if ckpts:
        p2, _ = run(a, 2, QUICK + ["--max-steps", str(step - 1), "--lr", "1e30", "--save-every", "1", "--run-dir", rd,
                                   "--resume", "latest"], timeout=60)
        if p2.returncode != 0 or "resumed from" not in p2.stdout:
            fail("the last checkpoint before the failure does not load:\n" + p2.stdout[-2000:])
    print(f"ok: --lr 1e30: exit 1 in {dt:.1f} s: {errs[0]} ({len(ckpts)} earlier checkpoints, all finite)")


def mode_lock(a, tmp):
    rd = os.path.join(tmp, "shared")
    first = start(a, 2, QUICK + ["--max-steps", "400", "--run-dir", rd])
    wait_for(first, "step 5/")
    p, dt = run(a, 2, QUICK + ["--max-steps", "5", "--run-dir", rd], timeout=60)
    errs = errors(p.stdout)
    ok = p.returncode != 0 and len(errs) == 1 and f"--run-dir {rd} is in use by another job (pid" in errs[0] and dt < 10
    if not ok:
        first.kill()
        fail(f"second job: exit {p.returncode} in {dt:.1f} s, errors {errs}:\n{p.stdout[-2000:]}")
    out = finish(first, 300)
    if first.returncode != 0 or "final test accuracy" not in out:
        fail(f"the first job did not finish cleanly after the refused second one (exit {first.returncode}):\n{out[-2000:]}")
    steps = [s for s, _ in json_losses(rd)]
    if steps != list(range(1, 401)):
        fail(f"the first job's metrics were disturbed: {len(steps)} train rows")
    print(f"ok: second job on a busy run dir: exit {p.returncode} in {dt:.1f} s: {errs[0]}; the first job finished")


def mode_disk(a, tmp):
    mnt = os.path.join(tmp, "full")
    os.makedirs(mnt)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", mnt], stderr=subprocess.PIPE, text=True)
    if m.returncode != 0:
        print(f"SKIP: disk: cannot mount a small tmpfs here ({m.stderr.strip()}); needs root")
        sys.exit(77)
    try:
        rd = os.path.join(mnt, "run")
        p, dt = run(a, 2, QUICK + ["--max-steps", "400", "--run-dir", rd], timeout=60)
        errs = errors(p.stdout)
        ok = (p.returncode == 1 and len(errs) == 1 and "No space left on device" in errs[0] and "metrics" in errs[0]
              and dt < 30 and "MPI_ABORT" not in p.stdout)
        left = glob.glob(os.path.join(rd, "*.tmp.*"))
        if not ok or left:
            fail(f"full disk: exit {p.returncode} in {dt:.1f} s, errors {errs}, temporaries {left}:\n{p.stdout[-2000:]}")
        print(f"ok: full disk: exit 1 in {dt:.1f} s: {errs[0]}")
    finally:
        subprocess.run(["umount", "-l", mnt])


def mode_resume(a, tmp):
    data = make_dataset(os.path.join(tmp, "data"), n_train=64, n_test=16)
    args = ["--dataset", "fashion-mnist", "--data-dir", data, "--global-batch", "8", "--width", "8", "--epochs", "2",
            "--log-every", "1"]
    rd = os.path.join(tmp, "rd")
    p, _ = run(a, 2, args + ["--run-dir", rd, "--stop-after", "7"])
    if p.returncode != 0:
        fail("first part failed:\n" + p.stdout[-2000:])
    # An interrupted write left a temporary file; the next job on the run dir removes it.
    stale = os.path.join(rd, "metrics.csv.tmp.999999")
    with open(stale, "w") as fh:
        fh.write("half")
    p, _ = run(a, 2, args + ["--run-dir", rd, "--resume", "latest", "--stop-after", "7"])
    if p.returncode != 0 or os.path.exists(stale) or "removed 1 temporary file" not in p.stdout:
        fail(f"stale temporary file not removed (exit {p.returncode}):\n{p.stdout[-2000:]}")
    print("ok: a temporary file of an interrupted write is removed by the next job")
    # The data shrinks to 4 steps per epoch: step 7 of epoch 1 no longer exists.
    make_dataset(data, n_train=32, n_test=16)
    p, dt = run(a, 2, args + ["--run-dir", rd, "--resume", "latest"])
    errs = errors(p.stdout)
    if p.returncode == 0 or len(errs) != 1 or "does not fit this dataset" not in errs[0] or dt > 10:
        fail(f"resume outside the dataset: exit {p.returncode} in {dt:.1f} s, errors {errs}:\n{p.stdout[-2000:]}")
    print(f"ok: resume position outside the dataset: exit {p.returncode} in {dt:.1f} s: {errs[0]}")


def main():
    run_mode(__doc__, ["signal", "nan", "lock", "disk", "resume"], "sbn-fault-", globals())


if __name__ == "__main__":
    main()
