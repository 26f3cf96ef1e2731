"""Helpers shared by the end-to-end check scripts of this directory (train_checks.py, fault_checks.py).

They are run as `python3 tests/train/<script>.py ...` (CMakeLists.txt), so this directory is on sys.path.
"""
import argparse
import json
import os
import shutil
import tempfile


def json_losses(run_dir):
    """The (step, loss) pairs of the training rows of run_dir/metrics.jsonl, in file order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [(j["step"], j["loss"]) for j in map(json.loads, fh) if j["kind"] == "train"]


def run_mode(doc, modes, tmp_prefix, namespace):
    """The scripts' command line `BIN MODE [--mpiexec PATH]`: runs namespace["mode_" + MODE](args, tmp) in a
    fresh temporary directory (prefix tmp_prefix) that is removed afterwards whatever happens."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin")
    ap.add_argument("mode", choices=modes)
    ap.add_argument("--mpiexec", default="mpiexec")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix=tmp_prefix)
    try:
        namespace["mode_" + a.mode](a, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
