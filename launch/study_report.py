#!/usr/bin/env python3
"""Collects the small-batch study's runs (launch/study.sh) into study.csv, study.md and two plots:
accuracy.png (final test accuracy vs per-rank batch, one line per mode) and loss_curves.png (training
loss vs samples seen, one panel per per-rank batch)."""
import argparse
import csv
import os
import re
import statistics
import sys

MODES = ["local", "sync", "sync2", "accum", "groupnorm"]
LABELS = {"local": "local BN (per rank)", "sync": "SyncBN (all ranks)", "sync2": "SyncBN groups of 2",
          "accum": "grad. accumulation to 32/rank (local BN)", "groupnorm": "GroupNorm"}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    a = ap.parse_args()
    runs = []
    for name in sorted(os.listdir(a.out)):
        m = re.fullmatch(r"([a-z0-9]+)-b(\d+)", name)
        if not m or not os.path.exists(os.path.join(a.out, name, "metrics.csv")):
            continue
        rows = list(csv.DictReader(open(os.path.join(a.out, name, "metrics.csv"))))
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        if not train or not evals:
            continue
        steady = train[1:] or train
        runs.append({
            "mode": m.group(1), "per_rank_batch": int(m.group(2)), "world_size": int(train[0]["world_size"]),
            "global_batch": int(train[0]["global_batch"]), "bn_batch": int(train[0]["bn_batch"]),
            "steps": int(evals[-1]["step"]), "test_acc": float(evals[-1]["acc"]), "test_loss": float(evals[-1]["loss"]),
            "final_train_loss": statistics.mean(float(r["loss"]) for r in train[-5:]),
            "step_ms": statistics.median(float(r["step_ms"]) for r in steady),
            "syncbn_comm_ms": statistics.median(float(r["comm_ms"]) for r in steady),
            "images_per_s": statistics.median(float(r["images_per_s"]) for r in steady),
            "curve": [(int(r["step"]) * int(r["global_batch"]), float(r["loss"])) for r in train],
        })
    if not runs:
        sys.exit(f"error: no finished runs in {a.out}")
    keys = ["mode", "per_rank_batch", "world_size", "global_batch", "bn_batch", "steps", "test_acc", "test_loss",
            "final_train_loss", "step_ms", "syncbn_comm_ms", "images_per_s"]
    tmp = os.path.join(a.out, "study.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in sorted(runs, key=lambda r: (r["per_rank_batch"], MODES.index(r["mode"]))):
            w.writerow(r)
    os.replace(tmp, os.path.join(a.out, "study.csv"))

    batches = sorted({r["per_rank_batch"] for r in runs})
    by = {(r["mode"], r["per_rank_batch"]): r for r in runs}
    lines = [f"Small-batch study: {a.dataset}, {a.world_size} ranks, {a.samples} training samples per run "
             f"(equal epochs), same seed. Test accuracy (step time / SyncBN communication per step):", "",
             "| per-rank batch | " + " | ".join(LABELS[m] for m in MODES if any(k[0] == m for k in by)) + " |",
             "|---|" + "---|" * len([m for m in MODES if any(k[0] == m for k in by)])]
    for b in batches:
        cells = []
        for m in MODES:
            if not any(k[0] == m for k in by):
                continue
            r = by.get((m, b))
            bn = f"BN batch {r['bn_batch']}, " if r["bn_batch"] else ""
            cells.append("—" if r is None else f"**{100 * r['test_acc']:.2f}%** ({r['step_ms']:.1f} ms / {r['syncbn_comm_ms']:.2f} ms)"
                         f"<br>{bn}global {r['global_batch']}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "study.md.tmp"), "w") as fh:
        fh.write(md)
    os.replace(os.path.join(a.out, "study.md.tmp"), os.path.join(a.out, "study.md"))
    print(md)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib missing (scripts/setup.sh --bench installs python3-matplotlib): no plots")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in MODES:
        pts = sorted((b, by[(m, b)]["test_acc"]) for b in batches if (m, b) in by)
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=LABELS[m])
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.set_xlabel("per-rank batch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{a.dataset}, {a.world_size} ranks, {a.samples} samples per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "accuracy.png"), dpi=110)
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6), sharey=True, squeeze=False)
    window = 5  # a logged loss is one step's batch: smooth over 5 logged steps to show the trend
    for ax, b in zip(axes[0], batches):
        for m in MODES:
            if (m, b) in by:
                c = by[(m, b)]["curve"]
                ys = [statistics.mean(p[1] for p in c[max(0, i - window + 1):i + 1]) for i in range(len(c))]
                ax.plot([p[0] for p in c], ys, label=LABELS[m], lw=1)
        ax.set_title(f"per-rank batch {b}")
        ax.set_xlabel("training samples seen")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"training loss (mean of {window} logged steps)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "loss_curves.png"), dpi=110)
    print(f"# wrote {a.out}/study.csv, study.md, accuracy.png, loss_curves.png")


if __name__ == "__main__":
    main()
