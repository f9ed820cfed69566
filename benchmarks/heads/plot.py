#!/usr/bin/env python3
"""Plots dev MRR@10 against training steps from heads/compare.sh runs made
with EXTRA="--eval-every N": one line per configuration (mean over the
seeds that have the curve), from each run's metrics.jsonl.

    ~/.cache/gradcache/venv-torch-2.4.0/bin/python benchmarks/heads/plot.py \
        [--runs runs/heads] [--split dev] [--out docs/results/heads/dev_mrr_vs_steps.png] NAME...

Needs matplotlib (scripts/gradcache.sh setup-bench installs it).
"""
import argparse
import json
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(run):
    points = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "eval" in r:
            points[r["step"]] = r["eval"]["mrr10"]
    return points


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/heads")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--out", default="docs/results/heads/dev_mrr_vs_steps.png")
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in a.names:
        curves = [curve(r) for r in sorted((pathlib.Path(a.runs) / a.split / name).glob("seed-*")) if (r / "metrics.jsonl").exists()]
        curves = [c for c in curves if len(c) > 2]
        if not curves:
            print(f"{name}: no run with intermediate evaluations")
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ys = [statistics.fmean(c[s] for c in curves) for s in steps]
        ax.plot(steps, ys, marker="o", label=f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    ax.set_xlabel("training step (batch 64 queries × 2 passages)")
    ax.set_ylabel(f"{a.split} MRR@10")
    ax.set_title("WordNet usage example → sense, MiniLM, two-cache step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
