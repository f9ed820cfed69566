"""The table of benchmarks/encoders/speed.sh from its JSONL rows.

    ./.python benchmarks/encoders/speed_report.py ROWS.jsonl ROUNDS [forward]
"""
import json, os, platform, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
rounds, forward = sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "forward"


def key(r):
    if "allocator_tuned" not in r:
        return r["impl"]
    return r["impl"] + (" + tuned allocator" if r["allocator_tuned"] else " (glibc defaults)")


groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)
eager = [r["median_s"] for r in groups[next(k for k in groups if "eager" in k)]]
sdpa = [r["median_s"] for r in groups[next(k for k in groups if "sdpa" in k)]]
ref = statistics.median(eager)
print(f"# Encoder speed: MiniLM {'forward only (no graph)' if forward else 'forward+backward'}, train mode\n")
print(f"Command: `{'PASS=forward ' if forward else ''}benchmarks/encoders/speed.sh {rounds}` ({rounds} interleaved rounds, "
      "each a separate process; batch 32 x 64 tokens, 2 threads, median of 14 steps after 2 warm-up steps). "
      f"Machine: {os.cpu_count()} CPUs, {platform.machine()}.\n")
# Rows come in rounds, so the k-th row of each implementation ran next to the
# k-th eager row: a ratio per round cancels the machine's drift; their
# geometric mean is the summary (ratios multiply).
print("| implementation | s/step (median of rounds) | min-max over rounds | vs transformers eager | "
      "paired ratio per round: geometric mean, median (min-max) | paired ratio to transformers SDPA (its default): geometric mean | "
      "minor page faults / 14 steps | system s / 14 steps |")
print("|---|---|---|---|---|---|---|---|")
for k, rs in groups.items():
    s = [r["median_s"] for r in rs]
    paired = [a / b for a, b in zip(s, eager)]
    to_sdpa = statistics.geometric_mean([a / b for a, b in zip(s, sdpa)])
    print(f"| {k} | {statistics.median(s):.3f} | {min(s):.3f}-{max(s):.3f} | {statistics.median(s) / ref:.2f}x | "
          f"{statistics.geometric_mean(paired):.3f}x, {statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) | {to_sdpa:.3f}x | "
          f"{int(statistics.median(r['minor_faults'] for r in rs)):,} | {statistics.median(r['system_s'] for r in rs):.2f} |")
