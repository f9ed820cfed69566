"""Peak memory against batch size, one line per method, from a CSV with
columns method,batch,peak_mb (written by examples/reproduce_extension.rs).

    ./.python benchmarks/step/plot_memory.py memory.csv memory.png "TITLE"
"""
import csv, sys, textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
labels = {"Full": "full batch", "Accumulation": "gradient accumulation", "RepCache": "representation cache only (§3)",
          "TwoCache": "two-cache (§5)"}
fig, ax = plt.subplots(figsize=(7, 4.5))
for method, label in labels.items():
    pts = sorted((int(r["batch"]), float(r["peak_mb"])) for r in rows if r["method"] == method)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] / 1024 for p in pts], marker="o", label=label)
ax.set_xscale("log", base=2)
ax.set_xlabel("queries per batch (2 passages each)")
ax.set_ylabel("peak resident memory (GiB)")
ax.set_title(textwrap.fill(sys.argv[3] if len(sys.argv) > 3 else "Peak memory per step", 90), fontsize=8)
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
