"""The table of benchmarks/encoders/families.sh from its JSONL rows.

    ./.python benchmarks/encoders/families_report.py ROWS.jsonl ROUNDS
"""
import json, os, platform, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = sys.argv[2]
print("# Encoder speed: XLM-RoBERTa and ModernBERT forward+backward, train mode\n")
print(f"Command: `benchmarks/encoders/families.sh {rounds}` ({rounds} interleaved rounds, each implementation a separate process; "
      "random models of MiniLM's size written by transformers 4.57.1 (384 wide, 6 layers; XLM-R 12 heads and a 1536 MLP, "
      "ModernBERT 6 heads, a gated 2 x 576 MLP, global attention every third layer, a 128-token window); batch 32 x 64 "
      f"random ids, 2 threads, median of 14 steps after 2 warm-ups). Machine: {os.cpu_count()} CPUs, {platform.machine()}.\n")
print("| model | implementation | s/step (median of rounds) | min-max over rounds | vs transformers eager (per-round ratio, geometric mean) |")
print("|---|---|---|---|---|")
for model in dict.fromkeys(r["model"] for r in rows):
    mine = [r for r in rows if r["model"] == model]
    impls = list(dict.fromkeys(r["impl"] for r in mine))
    eager = [r["median_s"] for r in mine if r["impl"] == "transformers (eager)"]
    for impl in impls:
        times = [r["median_s"] for r in mine if r["impl"] == impl]
        ratios = [t / e for t, e in zip(times, eager)]
        geo = statistics.geometric_mean(ratios)
        print(f"| {model} | {impl} | {statistics.median(times):.4f} | {min(times):.4f}-{max(times):.4f} | {geo:.2f}x |")
