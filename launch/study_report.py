#!/usr/bin/env python3
"""Collects the small-batch study's runs (launch/study.sh; OUT/<cell>-s<seed>/metrics.csv) into
study.csv (one row per run), study.md (mean ± std (n) per cell with 95% confidence intervals, the
findings, the GroupNorm paper's figures beside ours) and three plots with error bars: accuracy.png (test
accuracy vs per-rank batch: ours, and the GroupNorm paper's ImageNet error curve), norm_batch.png (sweep
2: accuracy vs normalization batch at a fixed global batch) and loss_curves.png (first seed).

A difference is called a difference only when the 95% intervals say so: two cells differ when their
intervals are disjoint; EMA vs PreciseBN evaluation of the same runs is a paired comparison (the 95%
interval of the per-seed differences excludes 0)."""
import argparse
import csv
import math
import os
import re
import statistics
import sys

MODES = ["local", "sync", "sync2", "accum", "groupnorm", "renorm"]
LABELS = {"local": "local BN (per rank)", "sync": "SyncBN (all ranks)", "sync2": "SyncBN groups of 2",
          "accum": "grad. accumulation to 32/rank (local BN)", "groupnorm": "GroupNorm",
          "renorm": "Batch Renorm (local)"}
# Wu & He, "Group Normalization" (ECCV 2018), Figure 1 / Table 2: ResNet-50 on ImageNet, top-1 validation
# error (%) vs images per GPU, BN not synchronized across GPUs; GN is flat at about 24.1.
GN_PAPER_BN_ERROR = {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7}
GN_PAPER_GN_ERROR = 24.1
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
KEYS = ["sweep", "mode", "per_rank_batch", "bn_batch", "global_batch", "world_size", "seed", "steps", "test_acc",
        "test_acc_precise", "test_loss", "test_loss_precise", "final_train_loss", "step_ms", "syncbn_comm_ms",
        "images_per_s"]


class Cell:
    """Mean, sample std, n and the 95% confidence interval of a list of values."""

    def __init__(self, values):
        self.values = list(values)
        self.n = len(self.values)
        self.mean = statistics.mean(self.values) if self.values else float("nan")
        self.std = statistics.stdev(self.values) if self.n > 1 else 0.0
        t = T975[min(self.n - 2, len(T975) - 1)] if self.n > 1 else float("inf")
        self.half = t * self.std / math.sqrt(self.n) if self.n > 1 else float("inf")

    def lo(self):
        return self.mean - self.half

    def hi(self):
        return self.mean + self.half

    def text(self, scale=100, digits=2):
        if not self.n:
            return "—"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.std:.{digits}f} ({self.n})"

    def differs(self, other):
        return self.n > 1 and other.n > 1 and (self.hi() < other.lo() or other.hi() < self.lo())


def parse_run(out, name):
    m = re.fullmatch(r"(?:([a-z0-9]+)-b(\d+)|norm-n(\d+))-s(\d+)", name)
    path = os.path.join(out, name, "metrics.csv")
    if not m or not os.path.exists(path):
        return None
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["kind"] == "train"]
    ema = [r for r in rows if r["kind"] == "eval"]
    precise = [r for r in rows if r["kind"].startswith("eval") and "precise" in r["kind"]]
    if not train or not ema:
        return None
    steady = train[1:] or train
    run = {
        "sweep": "batch" if m.group(1) else "norm", "mode": m.group(1) or "norm",
        "per_rank_batch": int(m.group(2) or int(train[0]["global_batch"]) // int(train[0]["world_size"])),
        "bn_batch": int(m.group(3) or train[0]["bn_batch"]), "global_batch": int(train[0]["global_batch"]),
        "world_size": int(train[0]["world_size"]), "seed": int(m.group(4)), "steps": int(ema[-1]["step"]),
        "test_acc": float(ema[-1]["acc"]), "test_loss": float(ema[-1]["loss"]),
        "test_acc_precise": float(precise[-1]["acc"]) if precise else "",
        "test_loss_precise": float(precise[-1]["loss"]) if precise else "",
        "final_train_loss": statistics.mean(float(r["loss"]) for r in train[-5:]),
        "step_ms": statistics.median(float(r["step_ms"]) for r in steady),
        "syncbn_comm_ms": statistics.median(float(r["comm_ms"]) for r in steady),
        "images_per_s": statistics.median(float(r["images_per_s"]) for r in steady),
        "curve": [(int(r["step"]) * int(r["global_batch"]), float(r["loss"])) for r in train],
    }
    return run


def write_atomic(path, text):
    with open(path + ".tmp", "w", newline="") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def write_csv(out, runs):
    lines = [",".join(KEYS)]
    order = {m: i for i, m in enumerate(MODES + ["norm"])}
    for r in sorted(runs, key=lambda r: (r["sweep"], r["per_rank_batch"], r["bn_batch"], order[r["mode"]], r["seed"])):
        lines.append(",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in KEYS))
    write_atomic(os.path.join(out, "study.csv"), "\n".join(lines) + "\n")


def cells(runs, key, value="test_acc"):
    groups = {}
    for r in runs:
        if r[value] != "":
            groups.setdefault(key(r), []).append(r[value])
    return {k: Cell(v) for k, v in groups.items()}


def sweep1_table(runs, seeds_text):
    ema = cells(runs, lambda r: (r["mode"], r["per_rank_batch"]))
    pre = cells(runs, lambda r: (r["mode"], r["per_rank_batch"]), "test_acc_precise")
    batches = sorted({r["per_rank_batch"] for r in runs})
    modes = [m for m in MODES if any(k[0] == m for k in ema)]
    lines = [f"Test accuracy (%), mean ± std (n seeds: {seeds_text}); EMA: running statistics, PreciseBN: "
             "statistics recomputed exactly before the evaluation.", "",
             "| mode | " + " | ".join(f"b = {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for m in modes:
        lines.append(f"| {LABELS[m]} | " + " | ".join(ema[(m, b)].text() if (m, b) in ema else "—" for b in batches) + " |")
        if any((m, b) in pre for b in batches):
            lines.append(f"| {LABELS[m]}, PreciseBN | " +
                         " | ".join(pre[(m, b)].text() if (m, b) in pre else "—" for b in batches) + " |")
    cost = cells(runs, lambda r: (r["mode"], r["per_rank_batch"]), "step_ms")
    comm = cells(runs, lambda r: (r["mode"], r["per_rank_batch"]), "syncbn_comm_ms")
    lines += ["", "Cost per optimizer step, median over the run, mean over seeds: step time / time in SyncBN "
              "all-reduces (ms).", "", "| mode | " + " | ".join(f"b = {b}" for b in batches) + " |",
              "|---|" + "---|" * len(batches)]
    for m in modes:
        lines.append(f"| {LABELS[m]} | " + " | ".join(
            f"{cost[(m, b)].mean:.1f} / {comm[(m, b)].mean:.2f}" if (m, b) in cost else "—" for b in batches) + " |")
    return lines, ema, pre, batches, modes


def findings(runs, ema, batches, modes):
    out = []
    for b in batches:
        base = ema.get(("local", b))
        if base is None:
            continue
        for m in modes:
            if m == "local" or (m, b) not in ema:
                continue
            c = ema[(m, b)]
            verdict = ("higher" if c.mean > base.mean else "lower") if c.differs(base) else "no difference shown"
            out.append(f"- b = {b}: {LABELS[m]} {c.text()} vs local BN {base.text()}: {verdict} "
                       "(95% intervals " + ("disjoint" if c.differs(base) else "overlap") + ")")
    by_cell = {}
    for r in runs:
        if r["test_acc_precise"] != "":
            by_cell.setdefault((r["sweep"], r["mode"], r["per_rank_batch"], r["bn_batch"]), []).append(r)
    for key, rs in sorted(by_cell.items(), key=lambda kv: (kv[0][0], MODES.index(kv[0][1]) if kv[0][1] in MODES else 9,
                                                            kv[0][2], kv[0][3])):
        d = Cell([r["test_acc_precise"] - r["test_acc"] for r in rs])
        if d.n > 1 and (d.lo() > 0 or d.hi() < 0):
            where = f"b = {key[2]}" if key[0] == "batch" else f"BN batch {key[3]}"
            what = LABELS.get(key[1], "local BN / sync") if key[0] == "batch" else "normalization sweep"
            out.append(f"- PreciseBN vs EMA, {what}, {where}: {100 * d.mean:+.2f} points "
                       f"(95% interval {100 * d.lo():+.2f} to {100 * d.hi():+.2f}, paired over {d.n} seeds)")
    return out


def sweep2_table(runs, seeds_text):
    ema = cells(runs, lambda r: r["bn_batch"])
    pre = cells(runs, lambda r: r["bn_batch"], "test_acc_precise")
    ns = sorted(ema)
    if not ns:
        return [], ema, pre, ns
    g = runs[0]["global_batch"]
    how = {n: ("sync" if n == g else "sync:2" if n == 2 * runs[0]["per_rank_batch"] else
               "local" if n == runs[0]["per_rank_batch"] else f"ghost {n}") for n in ns}
    lines = [f"Normalization batch at a fixed global batch {g} and learning rate: test accuracy (%), mean ± std "
             f"(n seeds: {seeds_text}).", "", "| BN batch | how | EMA | PreciseBN |", "|---|---|---|---|"]
    for n in ns:
        lines.append(f"| {n} | {how[n]} | {ema[n].text()} | {pre[n].text() if n in pre else '—'} |")
    best = max(ns, key=lambda n: ema[n].mean)
    worse = [n for n in ns if ema[n].differs(ema[best]) and ema[n].mean < ema[best].mean]
    lines += ["", f"Best BN batch {best} ({ema[best].text()}); BN batches whose interval lies below it: "
              + (", ".join(str(n) for n in worse) if worse else "none") + "."]
    return lines, ema, pre, ns


def paper_table(ema, batches):
    lines = ["Beside the GroupNorm paper (Wu & He 2018, ResNet-50 / ImageNet, BN not synced, top-1 error %): "
             "error at each per-rank batch minus the error at the largest batch, theirs and ours (local BN, "
             "EMA).", "", "| per-rank batch | paper BN error | paper Δ | our local BN error | our Δ | our GroupNorm error |",
             "|---|---|---|---|---|---|"]
    ref_b = max(b for b in batches if ("local", b) in ema) if any(("local", b) in ema for b in batches) else None
    for b in sorted(set(batches) | set(GN_PAPER_BN_ERROR), reverse=True):
        pe = GN_PAPER_BN_ERROR.get(b)
        ours = ema.get(("local", b))
        gn = ema.get(("groupnorm", b))
        pd = f"{pe - GN_PAPER_BN_ERROR[32]:+.1f}" if pe is not None else "—"
        od = (f"{100 * (ema[('local', ref_b)].mean - ours.mean):+.2f}" if ours and ref_b else "—")
        lines.append(f"| {b} | {pe if pe is not None else '—'} | {pd} | "
                     f"{f'{100 * (1 - ours.mean):.2f}' if ours else '—'} | {od} | "
                     f"{f'{100 * (1 - gn.mean):.2f}' if gn else '—'} |")
    lines.append(f"\n(The paper's GroupNorm error is flat at about {GN_PAPER_GN_ERROR}.)")
    return lines


def log2_axes(ax, ticks, xlabel, ylabel, title, legend_size):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def error_bars(ax, cells_by_x, xs, **style):
    xs = [x for x in xs if x in cells_by_x]
    if xs:
        ax.errorbar(xs, [100 * cells_by_x[x].mean for x in xs], yerr=[100 * cells_by_x[x].std for x in xs], capsize=3,
                    **style)


def plots(out, a, runs, ema, pre, batches, modes, ema2, pre2, ns):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib missing (scripts/setup.sh --bench installs python3-matplotlib): no plots")
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in modes:
        error_bars(ax, {b: ema[(m, b)] for b in batches if (m, b) in ema}, batches, marker="o", label=LABELS[m])
        if m in ("local", "renorm"):
            error_bars(ax, {b: pre[(m, b)] for b in batches if (m, b) in pre}, batches, marker="x", ls="--",
                       label=LABELS[m] + ", PreciseBN")
    log2_axes(ax, batches, "per-rank batch", "test accuracy (%)  (error bars: ±1 std over seeds)",
              f"ours: {a.dataset}, {a.world_size} ranks, {a.samples} samples per run", 7)
    pb = sorted(GN_PAPER_BN_ERROR)
    ax2.plot(pb, [GN_PAPER_BN_ERROR[b] for b in pb], marker="o", label="BN (not synced)")
    ax2.plot(pb, [GN_PAPER_GN_ERROR] * len(pb), marker="s", label="GroupNorm")
    ax2.invert_yaxis()
    log2_axes(ax2, pb, "images per GPU", "top-1 error (%), axis inverted",
              "Wu & He 2018: ResNet-50, ImageNet (their figures)", 8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=110)
    if ns:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        error_bars(ax, ema2, ns, marker="o", label="EMA statistics")
        error_bars(ax, pre2, ns, marker="x", ls="--", label="PreciseBN statistics")
        log2_axes(ax, ns, "BN (normalization) batch", "test accuracy (%)  (±1 std over seeds)",
                  f"fixed global batch {runs[0]['global_batch']}, {a.world_size} ranks", 8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "norm_batch.png"), dpi=110)
    first = min(r["seed"] for r in runs)
    sweep1 = [r for r in runs if r["sweep"] == "batch" and r["seed"] == first]
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6), sharey=True, squeeze=False)
    window = 5  # a logged loss is one step's batch: smooth over 5 logged steps to show the trend
    for ax, b in zip(axes[0], batches):
        for r in sorted((r for r in sweep1 if r["per_rank_batch"] == b), key=lambda r: MODES.index(r["mode"])):
            c = r["curve"]
            ys = [statistics.mean(p[1] for p in c[max(0, i - window + 1):i + 1]) for i in range(len(c))]
            ax.plot([p[0] for p in c], ys, label=LABELS[r["mode"]], lw=1)
        ax.set_title(f"per-rank batch {b} (seed {first})")
        ax.set_xlabel("training samples seen")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"training loss (mean of {window} logged steps)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--dataset", default="fashion-mnist")
    a = ap.parse_args()
    runs = [r for r in (parse_run(a.out, n) for n in sorted(os.listdir(a.out))) if r]
    if not runs:
        sys.exit(f"error: no finished runs in {a.out}")
    write_csv(a.out, runs)
    seeds = sorted({r["seed"] for r in runs})
    seeds_text = ", ".join(str(s) for s in seeds)
    s1 = [r for r in runs if r["sweep"] == "batch"]
    s2 = [r for r in runs if r["sweep"] == "norm"]
    lines = [f"Small-batch study: {a.dataset}, {a.world_size} ranks, {a.samples} training samples per run "
             f"(equal epochs), seeds {seeds_text}.", ""]
    ema, pre, batches, modes, ema2, pre2, ns = {}, {}, [], [], {}, {}, []
    if s1:
        t, ema, pre, batches, modes = sweep1_table(s1, seeds_text)
        lines += ["## Findings (95% intervals)", ""] + findings(runs, ema, batches, modes) + ["", "## Per-rank batch", ""]
        lines += t + ["", "## Against the GroupNorm paper", ""] + paper_table(ema, batches)
    if s2:
        t, ema2, pre2, ns = sweep2_table(s2, seeds_text)
        lines += ["", "## Normalization batch at a fixed global batch", ""] + t
    md = "\n".join(lines) + "\n"
    write_atomic(os.path.join(a.out, "study.md"), md)
    print(md)
    drawn = plots(a.out, a, runs, ema, pre, batches, modes, ema2, pre2, ns)
    print(f"# wrote {a.out}/study.csv, study.md" + (", accuracy.png, norm_batch.png, loss_curves.png" if drawn else ""))


if __name__ == "__main__":
    main()
