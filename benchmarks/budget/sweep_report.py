#!/usr/bin/env python3
"""Table and plot of benchmarks/budget/sweep.sh's JSONL: per head and batch,
step time and peak memory growth of each configuration, as ratios to the
default (recompute all) and to the full-batch step, and each budget's
estimate against the measured growth.

    .python benchmarks/budget/sweep_report.py RESULTS.jsonl COMMAND PLOT.png > TABLE.md
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(line) for line in open(sys.argv[1])]
command, plot = sys.argv[2], sys.argv[3]


def name(r):
    if r.get("method") == "Full":
        return "full batch"
    m = r["memory"]
    if m.get("recompute") == "all":
        return "recompute all (default)"
    if m.get("recompute") == "none":
        return "recompute none (one chunk per side)"
    if "retain" in m:
        return "retain every chunk and block"
    return f"budget {m['budget_mb']} MB"


def growth(r):
    return r["peak_mb"] - r["before_step_mb"]


print("# The memory budget's trade-off\n")
print(f"Command: `{command}`. Small BERT (2 layers, width 128, 16 tokens), 2 passages per query, chunks of 16, "
      "blocks of 16 x 64, 2 threads; median step time after one warm-up step. Growth = peak resident set (VmHWM) "
      "minus the resident set before the first step: what the step itself added, parameter gradients included. "
      "Estimate = the plan's estimated peak (`Plan::estimate_peak`), which the budget bounds.\n")
print("| head | queries | configuration | retained (query / passage chunks, blocks) | s/step | x recompute all | x full batch "
      "| growth MB | estimate MB | growth / budget |")
print("|---|---|---|---|---|---|---|---|---|---|")
groups = {}
for r in rows:
    groups.setdefault((r["head"], r["batch"]), []).append(r)
for (head, batch), rs in groups.items():
    base = next((r for r in rs if "error" not in r and name(r) == "recompute all (default)"), None)
    full = next((r for r in rs if "error" not in r and name(r) == "full batch"), None)
    for r in rs:
        if "error" in r:
            print(f"| {head} | {batch} | {name(r)} | – | {r['error']} | | | | | |")
            continue
        k = r["retained"]
        kept = f"{k['query_chunks']} / {k['passage_chunks']}, {k['head_blocks']}"
        vs_base = f"{r['median_s'] / base['median_s']:.2f}" if base else "–"
        vs_full = f"{r['median_s'] / full['median_s']:.2f}" if full else "not run"
        est = k.get("estimate_mb")
        budget = r["memory"].get("budget_mb")
        print(f"| {head} | {batch} | {name(r)} | {kept} | {r['median_s']:.3f} | {vs_base} | {vs_full} | {growth(r):.0f} "
              f"| {'' if est is None else f'{est:.0f}'} | {'' if budget is None else f'{growth(r) / budget:.2f}'} |")

heads = list(dict.fromkeys(h for h, _ in groups))
fig, axes = plt.subplots(1, len(heads), figsize=(5 * len(heads), 4), squeeze=False)
for ax, head in zip(axes[0], heads):
    for (h, batch), rs in groups.items():
        if h != head:
            continue
        two = sorted((r for r in rs if "error" not in r and r.get("method") != "Full"), key=growth)
        ax.plot([growth(r) for r in two], [r["median_s"] for r in two], "o-", label=f"{batch} queries, two-cache")
        for r in rs:
            if "error" not in r and r.get("method") == "Full":
                ax.plot([growth(r)], [r["median_s"]], "k*", markersize=12)
                ax.annotate(f"full batch ({batch})", (growth(r), r["median_s"]), fontsize=8)
    ax.set_title(f"{head} head")
    ax.set_xlabel("peak memory growth (MB)")
    ax.set_ylabel("s / step")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(plot, dpi=110)
