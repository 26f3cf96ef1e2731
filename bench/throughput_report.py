#!/usr/bin/env python3
"""The summary of one bench/train_throughput.sh run: per-round figures, then every ratio formed within a
round and reported as its median over rounds beside the per-round values, against the issue's targets.
Writes OUT_DIR/summary.md and OUT_DIR/summary.json and prints the markdown.

  bench/throughput_report.py OUT_DIR ROUNDS BF16(0|1)
"""
import csv
import json
import statistics
import sys


def ours(out, name, r):
    """Medians over the logged training windows of one syncbn-train run (the first window is warm-up)."""
    rows = [x for x in csv.DictReader(open(f"{out}/{name}.{r}/metrics.csv")) if x["kind"] == "train"][1:]
    med = lambda key: statistics.median(float(x[key]) for x in rows)
    return {"ips": med("images_per_s"), "step_ms": med("step_ms"), "comm_ms": med("comm_ms"),
            "grad_ms": med("grad_comm_ms")}


def torch(out, name, r):
    return json.load(open(f"{out}/{name}.{r}.json"))["images_per_s"]


def main():
    out, rounds, bf16 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    runs = {"np1": [], "np2": [], "local": [], "bf16": []}
    th = {"nchw": [], "nhwc": [], "bf16-nchw": [], "bf16-nhwc": []}
    for r in range(1, rounds + 1):
        runs["np1"].append(ours(out, "np1-sync", r))
        runs["np2"].append(ours(out, "np2-sync", r))
        runs["local"].append(ours(out, "np2-local", r))
        th["nchw"].append(torch(out, "torch-nchw", r))
        th["nhwc"].append(torch(out, "torch-nhwc", r))
        if bf16:
            runs["bf16"].append(ours(out, "np1-bf16", r))
            th["bf16-nchw"].append(torch(out, "torch-bf16-nchw", r))
            th["bf16-nhwc"].append(torch(out, "torch-bf16-nhwc", r))

    ips = lambda key: [x["ips"] for x in runs[key]]
    # (label, per-round values, format, target text, target test)
    rows = [
        ("syncbn np=1 fp32, images/s", ips("np1"), "{:.0f}", "", None),
        ("syncbn np=2 --norm sync, images/s", ips("np2"), "{:.0f}", "", None),
        ("syncbn np=2 --norm local, images/s", ips("local"), "{:.0f}", "", None),
        ("PyTorch 1.13 fp32 NCHW, images/s", th["nchw"], "{:.0f}", "", None),
        ("PyTorch 1.13 fp32 channels-last, images/s", th["nhwc"], "{:.0f}", "", None),
    ]
    if bf16:
        rows += [("syncbn np=1 bf16, images/s", ips("bf16"), "{:.0f}", "", None),
                 ("PyTorch 1.13 bf16 autocast NCHW, images/s", th["bf16-nchw"], "{:.0f}", "", None),
                 ("PyTorch 1.13 bf16 autocast channels-last, images/s", th["bf16-nhwc"], "{:.0f}", "", None)]
    ratio = lambda a, b: [x / y for x, y in zip(a, b)]
    best = lambda a, b: [max(x, y) for x, y in zip(a, b)]
    rows += [
        ("syncbn np=1 fp32 / best PyTorch fp32", ratio(ips("np1"), best(th["nchw"], th["nhwc"])), "{:.2f}x", ">= 2.0x",
         lambda m: m >= 2.0),
        ("scaling np=2 / np=1", ratio(ips("np2"), ips("np1")), "{:.2f}x", ">= 1.85x", lambda m: m >= 1.85),
        ("step time sync / local at np=2", ratio(ips("local"), ips("np2")), "{:.3f}x", "<= 1.05x", lambda m: m <= 1.05),
    ]
    if bf16:
        rows += [("syncbn np=1 bf16 / best PyTorch bf16 autocast", ratio(ips("bf16"), best(th["bf16-nchw"], th["bf16-nhwc"])),
                  "{:.2f}x", ">= 2.0x", lambda m: m >= 2.0),
                 ("syncbn np=1 bf16 / syncbn np=1 fp32", ratio(ips("bf16"), ips("np1")), "{:.2f}x", ">= 1.5x",
                  lambda m: m >= 1.5)]
    comm = statistics.median(x["comm_ms"] for x in runs["np2"])
    grad = statistics.median(x["grad_ms"] for x in runs["np2"])
    step = statistics.median(x["step_ms"] for x in runs["np2"])

    md = [f"{rounds} rounds; every ratio is formed within a round, the median is over rounds.", "",
          "| measurement | median | per round | target |", "|---|---|---|---|"]
    js = {"rounds": rounds, "rows": []}
    for label, vals, fmt, target, ok in rows:
        m = statistics.median(vals)
        mark = "" if ok is None else (" (met)" if ok(m) else " (missed)")
        md.append(f"| {label} | {fmt.format(m)} | {' '.join(fmt.format(v) for v in vals)} | {target}{mark} |")
        js["rows"].append({"label": label, "median": m, "per_round": vals, "target": target,
                           "met": None if ok is None else ok(m)})
    md += ["", f"At np=2 --norm sync: step {step:.1f} ms, SyncBN communication {comm:.2f} ms, gradient all-reduce "
           f"{grad:.2f} ms (medians)."]
    js.update({"np2_step_ms": step, "np2_syncbn_comm_ms": comm, "np2_grad_comm_ms": grad})
    text = "\n".join(md) + "\n"
    open(f"{out}/summary.md", "w").write(text)
    with open(f"{out}/summary.json", "w") as fh:
        json.dump(js, fh, indent=1)
    print(text)


if __name__ == "__main__":
    main()
