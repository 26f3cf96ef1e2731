#!/usr/bin/env python3
"""syncbn's BatchNorm layer against PyTorch's, timed side by side in one process.

For each shape, one syncbn SyncBatchNorm (local statistics, the CPU kernels, loaded from
libsyncbn_bench.so through ctypes) and one torch.nn.BatchNorm1d/2d (training mode, affine, running
stats) get the same input. Blocks of --block repetitions alternate between the two (--blocks blocks
each), so each runs in its steady state (its own data warm in cache, as in a training loop) while both
are sampled over the same minutes of a shared, noisy machine; the first repetition of every block is
discarded. (Alternating single repetitions would instead let each evict the other's data, penalising
whichever is memory-bound.) One thread each (torch.set_num_threads(1); syncbn's kernels are
single-threaded). Reports medians, the speed-up (ratio of medians, and its range over blocks) and, as a
cross-check, the largest difference between the two layers' y and dx.

Without --lib (or if the library is missing) only PyTorch is timed.
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("error: PyTorch is not importable; install Debian's python3-torch and run with /usr/bin/python3")


def parse_shapes(text, layout):
    out = []
    for item in text.split(","):
        try:
            dims = tuple(int(d) for d in item.split("x"))
        except ValueError:
            sys.exit(f"error: --shapes: bad shape '{item}'")
        if len(dims) not in (2, 4) or min(dims) <= 0:
            sys.exit(f"error: --shapes: '{item}' must be NxC or NxCxHxW with positive sizes")
        if len(dims) == 4:
            out += [(dims, l.upper()) for l in ("nchw", "nhwc") if layout in (l, "both")]
        else:
            out.append((dims, ""))
    return out


class SyncbnLayer:
    def __init__(self, lib, dims, layout, relu):
        n, c = dims[0], dims[1]
        h, w = (dims[2], dims[3]) if len(dims) == 4 else (0, 0)
        self.lib, self.numel = lib, n * c * max(h, 1) * max(w, 1)
        self.h = lib.sbn_bench_create(n, c, h, w, int(layout == "NHWC"), int(relu))
        if not self.h:
            sys.exit(f"error: syncbn could not create a layer for {dims}")

    def buffer(self, which):
        ptr = self.lib.sbn_bench_buffer(self.h, which)
        return torch.frombuffer((ctypes.c_float * self.numel).from_address(ptr), dtype=torch.float32)

    def step(self, fn):
        if fn(self.h) != 0:
            sys.exit("error: syncbn: " + self.lib.sbn_bench_error(self.h).decode())


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.sbn_bench_create.restype = ctypes.c_void_p
    lib.sbn_bench_create.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
    lib.sbn_bench_buffer.restype = ctypes.c_void_p
    lib.sbn_bench_buffer.argtypes = [ctypes.c_void_p, ctypes.c_int]
    for f in ("sbn_bench_forward", "sbn_bench_backward"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.sbn_bench_error.restype = ctypes.c_char_p
    lib.sbn_bench_error.argtypes = [ctypes.c_void_p]
    return lib


def memory_image(t, layout):
    """The tensor's bytes in the order syncbn stores them (NHWC: channels last)."""
    return (t.permute(0, 2, 3, 1) if layout == "NHWC" else t).contiguous().reshape(-1)


def run(dims, layout, a, lib):
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    bn = (torch.nn.BatchNorm2d if len(dims) == 4 else torch.nn.BatchNorm1d)(dims[1])
    x0 = torch.randn(*dims) * 2 + 0.5
    dy0 = torch.randn(*dims)
    x = x0.contiguous(memory_format=fmt).requires_grad_(True)
    dy = dy0.contiguous(memory_format=fmt)
    act = torch.relu if a.relu else (lambda t: t)
    ours = None
    if lib:
        ours = SyncbnLayer(lib, dims, layout, a.relu)
        ours.buffer(0).copy_(memory_image(x0, layout))
        ours.buffer(1).copy_(memory_image(dy0, layout))
    t = {"ours_fwd": [], "ours_bwd": [], "torch_fwd": [], "torch_fb": []}
    block_ratio = []
    for b in range(a.blocks):
        ours_fb, torch_fb = [], []
        for r in range(a.block + 1 if ours else 0):
            t0 = time.perf_counter()
            ours.step(lib.sbn_bench_forward)
            t1 = time.perf_counter()
            ours.step(lib.sbn_bench_backward)
            t2 = time.perf_counter()
            if r > 0:
                t["ours_fwd"].append(t1 - t0)
                t["ours_bwd"].append(t2 - t1)
                ours_fb.append(t2 - t0)
        for r in range(a.block + 1):
            t3 = time.perf_counter()
            with torch.no_grad():
                act(bn(x))
            t4 = time.perf_counter()
            y = act(bn(x))
            x.grad = None
            y.backward(dy)
            t5 = time.perf_counter()
            if r > 0:
                t["torch_fwd"].append(t4 - t3)
                t["torch_fb"].append(t5 - t4)
                torch_fb.append(t5 - t4)
        if ours:
            block_ratio.append(statistics.median(torch_fb) / statistics.median(ours_fb))
    res = {k: statistics.median(v) for k, v in t.items() if v}
    if ours:
        res["ratio"] = res["torch_fb"] / (statistics.median([f + b for f, b in zip(t["ours_fwd"], t["ours_bwd"])]))
        res["ratio_min"], res["ratio_max"] = min(block_ratio), max(block_ratio)
    if ours:  # cross-check: same input, same layer → same y and dx up to rounding
        ours.step(lib.sbn_bench_forward)
        ours.step(lib.sbn_bench_backward)
        y = act(bn(x))
        x.grad = None
        y.backward(dy)
        res["max_dy"] = float((ours.buffer(2) - memory_image(y.detach(), layout)).abs().max())
        res["max_ddx"] = float((ours.buffer(3) - memory_image(x.grad, layout)).abs().max())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="32x64x28x28,8x64x28x28,256x256")
    ap.add_argument("--layout", default="nchw", choices=["nchw", "nhwc", "both"])
    ap.add_argument("--blocks", type=int, default=6, help="alternating blocks per library")
    ap.add_argument("--block", type=int, default=10, help="timed repetitions per block")
    ap.add_argument("--relu", action="store_true", help="BN followed by ReLU (fused in syncbn)")
    ap.add_argument("--lib", default="build/src/apps/libsyncbn_bench.so", help="syncbn's bench library")
    ap.add_argument("--json", default="", help="write JSON lines here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    lib = load_lib(a.lib) if a.lib and os.path.exists(a.lib) else None
    print(f"# syncbn vs PyTorch {torch.__version__} BatchNorm, 1 thread each, fp32, training forward+backward, "
          f"alternating blocks ({a.blocks} x {a.block} reps each), medians; relu {'on' if a.relu else 'off'}"
          + ("" if lib else f"; syncbn library {a.lib} not found: PyTorch only"))
    print(f"{'#shape':<18} {'ours_fwd':>8} {'ours_fb':>8} {'torch_fwd':>9} {'torch_fb':>8} {'speedup':>7} "
          f"{'(blocks)':>11} {'max|dy|':>8} {'max|ddx|':>8}")
    lines = []
    for dims, layout in parse_shapes(a.shapes, a.layout):
        r = run(dims, layout, a, lib)
        name = "x".join(map(str, dims)) + (" " + layout if layout else "")
        ofb = r.get("ours_fwd", 0) + r.get("ours_bwd", 0)
        rng = f"{r.get('ratio_min', 0):.2f}-{r.get('ratio_max', 0):.2f}"
        print(f"{name:<18} {r.get('ours_fwd', 0) * 1e3:8.3f} {ofb * 1e3:8.3f} {r['torch_fwd'] * 1e3:9.3f} "
              f"{r['torch_fb'] * 1e3:8.3f} {r.get('ratio', 0):6.2f}x {rng:>11} {r.get('max_dy', 0):8.1e} "
              f"{r.get('max_ddx', 0):8.1e}")
        lines.append(json.dumps({"kind": "bn_vs_torch", "shape": name, "relu": a.relu,
                                 "blocks": a.blocks, "block": a.block,
                                 "ours_fwd_ms": round(r.get("ours_fwd", 0) * 1e3, 4),
                                 "ours_fwdbwd_ms": round(ofb * 1e3, 4),
                                 "torch_fwd_ms": round(r["torch_fwd"] * 1e3, 4),
                                 "torch_fwdbwd_ms": round(r["torch_fb"] * 1e3, 4),
                                 "speedup": round(r.get("ratio", 0), 3),
                                 "speedup_block_min": round(r.get("ratio_min", 0), 3),
                                 "speedup_block_max": round(r.get("ratio_max", 0), 3), "torch": torch.__version__}))
    if a.json:
        with open(a.json + ".tmp", "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
