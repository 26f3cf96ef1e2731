#!/usr/bin/env python3
"""The syncbn-train default convnet trained by PyTorch (Debian's python3-torch 1.13, CPU), for a
side-by-side throughput comparison with syncbn-train (bench/train_throughput.sh runs both).

Same model (conv3x3-BN-ReLU-maxpool x3 with widths w, 2w, 4w; fc 8w-BN-ReLU; fc 10; no conv biases),
same data (Fashion-MNIST IDX files, normalized with the training set's mean/std), same global batch,
SGD with Nesterov momentum 0.9 and weight decay 5e-4 on weights, one process, --threads threads.
--bf16 runs the forward under PyTorch's CPU bf16 autocast (the mixed-precision recipe of PyTorch 1.13).
Reports images/s over the timed steps (after --warmup steps) as a JSON line.
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn as nn
except ImportError:
    sys.exit("error: PyTorch is not importable; install Debian's python3-torch and run with /usr/bin/python3")


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        magic, = struct.unpack(">I", fh.read(4))
        dims = struct.unpack(">" + "I" * (magic & 0xFF), fh.read(4 * (magic & 0xFF)))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(dims)


def convnet(width, channels, classes, hw):
    layers, c = [], channels
    for i in range(3):
        out = width << i
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c = out
    s = hw // 8
    layers += [nn.Flatten(), nn.Linear(c * s * s, 8 * width, bias=False), nn.BatchNorm1d(8 * width),
               nn.ReLU(inplace=True), nn.Linear(8 * width, classes)]
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true", help="NHWC activations (PyTorch's faster CPU layout)")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast (torch.autocast('cpu', torch.bfloat16): bf16 convolutions and GEMMs, fp32 weights)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x = read_idx(os.path.join(a.data_dir, "train-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = read_idx(os.path.join(a.data_dir, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    x = (x - x.mean()) / x.std()
    images = torch.from_numpy(x).unsqueeze(1)
    labels = torch.from_numpy(y)
    model = convnet(a.width, 1, 10, 28)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=a.lr, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)
    perm = torch.randperm(len(labels), generator=gen)
    model.train()
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            t0 = time.perf_counter()
        idx = perm[(step * a.global_batch) % (len(perm) - a.global_batch):][:a.global_batch]
        xb = images[idx].contiguous(memory_format=fmt)
        yb = labels[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    ips = a.steps * a.global_batch / dt
    print(json.dumps({"kind": "torch_train", "images_per_s": round(ips, 1), "step_ms": round(1e3 * dt / a.steps, 3),
                      "global_batch": a.global_batch, "threads": a.threads, "channels_last": a.channels_last,
                      "bf16_autocast": a.bf16,
                      "steps": a.steps, "final_loss": round(float(loss), 4), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
