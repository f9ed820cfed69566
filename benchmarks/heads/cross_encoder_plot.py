#!/usr/bin/env python3
"""Dev MRR@10 against rerank latency per query (100 candidates, 2 threads),
one point per model: gradcache's heads (quality from
docs/results/heads/dev.jsonl, the heads/compare.sh runs; latency with the
passages cached, from docs/results/cross_encoder/latency.jsonl) and the
cross-encoder (quality reranking the fine-tuned bi-encoder's top 100, from
docs/results/cross_encoder/rerank.jsonl; latency cold). Error bars: the sd
over seeds, the range over latency rounds.

    ./.python benchmarks/heads/cross_encoder_plot.py [--out docs/results/cross_encoder/mrr_vs_latency.png]

Needs matplotlib (scripts/gradcache.sh setup-bench installs it).
"""
import argparse, json, math, statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ce_tags import at_100_steps  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--out", default="docs/results/cross_encoder/mrr_vs_latency.png")
a = p.parse_args()
heads = {r["name"]: r for r in map(json.loads, open("docs/results/heads/dev.jsonl"))}
latency = [json.loads(l) for l in open("docs/results/cross_encoder/latency.jsonl")]
rerank = [json.loads(l) for l in open("docs/results/cross_encoder/rerank.jsonl")]

points = []  # (label, latency median, (lo, hi), mrr mean, mrr sd, seeds)
for name, label in [("cosine", "fine-tuned cosine"), ("max_sim", "fine-tuned MaxSim"),
                    ("mlp_residual_gate300", "default head (residual MLP)"), ("interaction_layer", "interaction block")]:
    ms = [l["cached_ms_per_query"] for l in latency if l.get("model", "").endswith(f"/{name}.json")]
    if name in heads and ms:
        sd = heads[name]["sd"]["mrr10"] if heads[name]["seeds"] > 1 else 0.0
        points.append((label, statistics.median(ms), (min(ms), max(ms)), heads[name]["mean"]["mrr10"], sd, heads[name]["seeds"]))
ce_ms = [l["latency_ms_per_query"] for l in latency if "latency_ms_per_query" in l]
# The 100-step runs, as the heads' points.
ce = [r["reranked"]["mrr10"] for r in rerank
      if r["split"] == "dev" and at_100_steps(r["tag"]) and r["tag"].split()[-1].startswith("cosine") and r.get("reranked")]
if ce and ce_ms:
    points.append(("cross-encoder (reranking the fine-tuned cosine top 100)", statistics.median(ce_ms), (min(ce_ms), max(ce_ms)),
                   statistics.mean(ce), statistics.stdev(ce) if len(ce) > 1 else 0.0, len(ce)))

fig, ax = plt.subplots(figsize=(7, 4.5))
for label, x, (lo, hi), y, sd, seeds in points:
    ax.errorbar([x], [y], xerr=[[x - lo], [hi - x]], yerr=[[sd], [sd]], fmt="o", capsize=3, label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
ax.set_xscale("log")
ax.set_xlabel("rerank latency per query, 100 candidates, 2 CPU threads (ms, log scale)\n"
              "gradcache heads: passages' vectors cached; cross-encoder: nothing to cache")
ax.set_ylabel("dev MRR@10")
ax.set_title("Quality against rerank latency at the main job's budget")
ax.legend(fontsize=8, loc="lower left")
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(a.out, dpi=120)
print(f"wrote {a.out}: " + "; ".join(f"{l} {x:.1f} ms, {y:.3f}" for l, x, _, y, _, _ in points))
