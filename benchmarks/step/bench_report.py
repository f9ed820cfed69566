"""Turns step_bench.jsonl into a CSV and a markdown report with the two
targets of the benchmark issue, as ratios from the same run."""
import csv, json, sys
from collections import defaultdict

path, command = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path)]
with open(path.replace(".jsonl", ".csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)

by = {(r["head"], r["method"], r["batch"]): r for r in rows}
heads = sorted({r["head"] for r in rows}, key=["dot", "mlp", "max_sim", "interaction"].index)
batches = sorted({r["batch"] for r in rows})
methods = ["Full", "Accumulation", "RepCache", "TwoCache"]
out = [f"# Step time and peak memory\n\nCommand: `{command}`. Small BERT (2 layers, width 128, 4 heads, fresh weights), "
       "16 tokens per text, 2 passages per query, encoder chunks of 16, head blocks of 16 × 64, 2 threads; "
       "each configuration in its own process; time = median of the steps after one warm-up step; "
       "memory = the process's peak resident set (VmHWM), weights and libtorch included.\n"]
for head in heads:
    out.append(f"\n## {head}\n\n| queries | " + " | ".join(f"{m} s" for m in methods) + " | " + " | ".join(f"{m} MB" for m in methods) + " |")
    out.append("|---|" + "---|" * (2 * len(methods)))
    for b in batches:
        cells = [f"{by[(head, m, b)]['median_s']:.3f}" if (head, m, b) in by else "–" for m in methods]
        cells += [f"{by[(head, m, b)]['peak_mb']:.0f}" if (head, m, b) in by else "–" for m in methods]
        out.append(f"| {b} | " + " | ".join(cells) + " |")
out.append("\n## Targets (ratios within this run)\n")
out.append("| head | two-cache / full time, largest batch both ran | two-cache peak memory, 512 vs 32 queries | full-batch peak memory, largest vs 32 |")
out.append("|---|---|---|---|")
for head in heads:
    common = [b for b in batches if (head, "Full", b) in by and (head, "TwoCache", b) in by]
    t = f"{by[(head, 'TwoCache', common[-1])]['median_s'] / by[(head, 'Full', common[-1])]['median_s']:.2f}× at {common[-1]}" if common else "–"
    m = (f"{by[(head, 'TwoCache', 512)]['peak_mb'] / by[(head, 'TwoCache', 32)]['peak_mb']:.2f}×"
         if (head, "TwoCache", 512) in by and (head, "TwoCache", 32) in by else "–")
    fulls = [b for b in batches if (head, "Full", b) in by]
    g = (f"{by[(head, 'Full', fulls[-1])]['peak_mb'] / by[(head, 'Full', 32)]['peak_mb']:.2f}× at {fulls[-1]}"
         if fulls and (head, "Full", 32) in by else "–")
    out.append(f"| {head} | {t} | {m} | {g} |")
open(path.replace(".jsonl", ".md"), "w").write("\n".join(out) + "\n")
print("\n".join(out))

# PNG plots beside the table: peak memory and step time against batch size,
# one panel per head (matplotlib, installed by scripts/gradcache.sh setup-bench).
try:
    import matplotlib
except ImportError:
    print("step_bench plots not written: matplotlib missing (scripts/gradcache.sh setup-bench)", file=sys.stderr)
    sys.exit(0)
matplotlib.use("Agg")
import matplotlib.pyplot as plt

labels = {"Full": "full batch", "Accumulation": "gradient accumulation", "RepCache": "representation cache only (§3)",
          "TwoCache": "two-cache (§5)"}
for key, unit, scale, name in [("peak_mb", "peak resident memory (GiB)", 1 / 1024, "memory"), ("median_s", "seconds per step", 1, "time")]:
    fig, axes = plt.subplots(1, len(heads), figsize=(4 * len(heads), 3.6), squeeze=False)
    for ax, head in zip(axes[0], heads):
        for m in methods:
            pts = [(b, by[(head, m, b)][key] * scale) for b in batches if (head, m, b) in by]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[m])
        ax.set_xscale("log", base=2)
        if key == "median_s":
            ax.set_yscale("log")
        ax.set_title(f"{head} head")
        ax.set_xlabel("queries per batch")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Step {name} per method (command: {command})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path.replace(".jsonl", f"_{name}.png"), dpi=110)
