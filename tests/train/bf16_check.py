"""End-to-end check of --precision bf16 on the CPU: a short training at 2 ranks in bf16 and in fp32 from the
same seed (the same batches); the bf16 loss decreases and stays within a few percent of fp32's step by
step, the model line says bf16; no NHWC activation is reordered (converted) by oneDNN in a bf16 step
(ONEDNN_VERBOSE: the convolutions read and write the bf16 activations of the fused BN+pool passes);
--precision fp16 on the CPU, and bf16 on a CPU without AVX-512 (oneDNN limited to AVX2 by
ONEDNN_MAX_CPU_ISA), are refused with one clear error.

Usage: bf16_check.py BIN [--mpiexec PATH]
"""
import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile

STEPS = 30
# The two runs see the same batches; only rounding separates them, and it compounds over the steps
# (measured at step 30: 0.5%). A 5-step mean within 5%, every step within 10%.
MEAN_RTOL, STEP_RTOL = 0.05, 0.10


def run(a, precision, run_dir, np_=2, check=True, env=(), steps=STEPS):
    cmd = [a.mpiexec, "-np", str(np_)] + [x for e in env for x in ("-x", e)]
    cmd += [a.bin, "--device", "cpu", "--norm", "sync", "--max-steps", str(steps), "--log-every", "1",
            "--precision", precision, "--run-dir", run_dir]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    if check and p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}")
    return p


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh) if r["kind"] == "train"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin")
    ap.add_argument("--mpiexec", default="mpiexec")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sbn-bf16-")
    failures = []
    try:
        out = {p: run(a, p, os.path.join(tmp, p)).stdout for p in ("fp32", "bf16")}
        if "bf16 conv/linear compute" not in out["bf16"]:
            failures.append("the bf16 run's model line does not say bf16")
        f32, b16 = losses(os.path.join(tmp, "fp32")), losses(os.path.join(tmp, "bf16"))
        if [s for s, _ in f32] != [s for s, _ in b16] or len(b16) != STEPS:
            sys.exit(f"FAIL: logged steps differ or are not 1..{STEPS}: {[s for s, _ in f32]} vs {[s for s, _ in b16]}")
        lf, lb = [x for _, x in f32], [x for _, x in b16]
        first, last = sum(lb[:5]) / 5, sum(lb[-5:]) / 5
        print(f"# bf16 loss: first 5 steps {first:.4f}, last 5 steps {last:.4f} (fp32 {sum(lf[-5:]) / 5:.4f})")
        if not last < 0.75 * first:
            failures.append(f"bf16 loss did not decrease: {first:.4f} -> {last:.4f}")
        worst_step = max(abs(b - f) / f for f, b in zip(lf, lb))
        worst_mean = max(abs(sum(lb[i:i + 5]) - sum(lf[i:i + 5])) / sum(lf[i:i + 5]) for i in range(STEPS - 4))
        print(f"# bf16 vs fp32: worst step {worst_step:.2%} (bound {STEP_RTOL:.0%}), "
              f"worst 5-step mean {worst_mean:.2%} (bound {MEAN_RTOL:.0%})")
        if worst_step > STEP_RTOL or worst_mean > MEAN_RTOL:
            failures.append("bf16 loss too far from fp32's:\n" +
                            "\n".join(f"  step {s}: fp32 {f:.6f} bf16 {b:.6f}" for (s, f), b in zip(f32, lb)))
        # oneDNN's log of every primitive run: an NHWC tensor (format acdb) in a reorder is an activation
        # converted on the way into or out of a convolution (weights are oihw; linear inputs are 2-D).
        p = run(a, "bf16", os.path.join(tmp, "verbose"), np_=1, env=("ONEDNN_VERBOSE=1",), steps=3)
        execs = [l for l in p.stdout.splitlines() if "_verbose,exec," in l]
        nhwc = [l for l in execs if ",reorder," in l and "acdb" in l]
        print(f"# bf16 step, ONEDNN_VERBOSE: {len(execs)} primitives run, {len(nhwc)} NHWC reorders")
        if not execs:
            failures.append("ONEDNN_VERBOSE=1 logged no primitive runs")
        if nhwc:
            failures.append(f"{len(nhwc)} NHWC activation reorders in a bf16 run, e.g.\n  " + "\n  ".join(nhwc[:3]))
        p = run(a, "fp16", os.path.join(tmp, "fp16"), np_=1, check=False)
        if p.returncode == 0 or "--precision fp16 needs --device cuda" not in p.stdout:
            failures.append(f"--precision fp16 on the CPU was not refused clearly (exit {p.returncode}):\n"
                            + p.stdout[-2000:])
        # A CPU without AVX-512 (oneDNN limited to AVX2): one clear error, not oneDNN's own.
        p = run(a, "bf16", os.path.join(tmp, "avx2"), np_=1, check=False, env=("ONEDNN_MAX_CPU_ISA=AVX2",))
        if p.returncode == 0 or "--precision bf16 has no optimized oneDNN" not in p.stdout:
            failures.append(f"bf16 without AVX-512 was not refused clearly (exit {p.returncode}):\n" + p.stdout[-2000:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL: " + f)
    if failures:
        sys.exit(1)
    print("ok: bf16 trains like fp32")


if __name__ == "__main__":
    main()
