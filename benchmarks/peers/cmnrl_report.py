"""Markdown table of benchmarks/peers/cmnrl.sh's JSON lines: per batch, the
median over rounds of each side's step time and peak memory, and ours over
theirs. Usage: peers/cmnrl_report.py RESULTS.jsonl "COMMAND"."""
import json, os, platform, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1])]
theirs = "sentence-transformers CachedMNRL"
med = lambda rs, k: statistics.median(r[k] for r in rs)
print("# gradcache vs sentence-transformers CachedMultipleNegativesRankingLoss\n")
print(f"Command: `{sys.argv[2]}`. MiniLM (all-MiniLM-L6-v2), WordNet (query, positive, hard negative) triples, "
      f"cosine x 20, 2 threads, train mode; one step = loss + every gradient, no optimizer; median of 3 steps after "
      f"one warm-up, then the median over rounds (each a fresh process). Peak = VmHWM of the process; growth = peak "
      f"minus VmHWM just before the first step. Machine: {os.cpu_count()} CPUs, {platform.machine()}.\n")
print("| ours | precision | queries | chunk | ours s/step | theirs s/step | time ours/theirs | ours peak MB | theirs peak MB | peak ours/theirs "
      "| ours growth MB | theirs growth MB | growth ours/theirs | time ours/theirs per round (min-max) | first loss ours / theirs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
# Our rows name their BERT layers; rows from before that field existed ran
# rust-bert's (then the default).
layers = lambda r: r.get("layers", "rust-bert")
# Each side in its own precision; rows from before the field ran f32.
precision = lambda r: r.get("precision", "f32")
for ours, prec, batch in sorted({(layers(r), precision(r), r["batch"]) for r in rows if r["impl"] != theirs}):
    a = [r for r in rows if r["batch"] == batch and r["impl"] != theirs and layers(r) == ours and precision(r) == prec]
    b = [r for r in rows if r["batch"] == batch and r["impl"] == theirs and precision(r) == prec]
    if not a or not b:
        continue
    ta, tb = med(a, "median_s"), med(b, "median_s")
    pa, pb = med(a, "peak_mb"), med(b, "peak_mb")
    ga = statistics.median(r["peak_mb"] - r["before_step_mb"] for r in a)
    gb = statistics.median(r["peak_mb"] - r["before_step_mb"] for r in b)
    # Rows come in rounds, so the k-th of each side ran next to each other.
    paired = [x["median_s"] / y["median_s"] for x, y in zip(a, b)]
    print(f"| {ours} layers | {prec} | {batch} | {a[0]['chunk']} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f}x | {pa:.0f} | {pb:.0f} | {pa / pb:.2f}x "
          f"| {ga:.0f} | {gb:.0f} | {ga / max(gb, 1e-9):.2f}x | {min(paired):.2f}-{max(paired):.2f}x | {med(a, 'first_loss'):.3f} / {med(b, 'first_loss'):.3f} |")
