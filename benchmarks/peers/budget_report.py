#!/usr/bin/env python3
"""Table of benchmarks/peers/budget.sh's JSON lines: per batch, each of our
configurations against sentence-transformers' CachedMNRL (median over
rounds), with the issue's targets marked.

    .python benchmarks/peers/budget_report.py RESULTS.jsonl COMMAND > TABLE.md
"""
import json
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
theirs_name = "sentence-transformers CachedMNRL"
med = statistics.median


def r_auto(r):
    return bool(r.get("auto_sizes")) and "query_chunk_items" in (r.get("plan") or {})


def config(r):
    m = r.get("memory") or {"recompute": "all"}
    if m.get("recompute") == "all":
        return "recompute all (default)"
    return f"budget {m['budget_mb']} MB" + (", auto sizes" if r.get("auto_sizes") else ", chunk 16")


print("# The memory budget against sentence-transformers' CachedMNRL\n")
print(f"Command: `{sys.argv[2]}`. MiniLM (all-MiniLM-L6-v2), WordNet (query, positive, hard negative) triples, cosine x 20, "
      "chunk 16, 2 threads; one step = loss + every gradient; median of 3 steps after one warm-up, median over rounds. "
      "Peak = VmHWM of the process. The two budgets are their peak minus our resident set before the step (target: "
      "our time <= 0.80x theirs) and 0.7 x their peak minus it (target: our time <= theirs).\n")
print("| queries | ours | retained (query / passage chunks) | ours s/step | theirs s/step | time ours/theirs | ours peak MB "
      "| theirs peak MB | peak ours/theirs |")
print("|---|---|---|---|---|---|---|---|---|")
for batch in sorted({r["batch"] for r in rows}):
    theirs = [r for r in rows if r["batch"] == batch and r["impl"] == theirs_name]
    tt, tp = med(r["median_s"] for r in theirs), med(r["peak_mb"] for r in theirs)
    ours = [r for r in rows if r["batch"] == batch and r["impl"] != theirs_name]
    for i, name in enumerate(dict.fromkeys(config(r) for r in ours)):
        rs = [r for r in ours if config(r) == name]
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"| {batch} | {name} | – | {rs[0]['error']} | {tt:.3f} | | | {tp:.0f} | |")
            continue
        t, p = med(r["median_s"] for r in ok), med(r["peak_mb"] for r in ok)
        plan = ok[0].get("plan") or {}
        kept = plan.get("retained") or {}
        kept = f"{kept.get('query_chunks', 0)} / {kept.get('passage_chunks', 0)}" + (
            f" (of {plan['query_chunks']} / {plan['passage_chunks']}" + (
                f", chunks of {plan['query_chunk_items']} / {plan['passage_chunk_items']})" if r_auto(ok[0]) else ")") if plan else "")
        print(f"| {batch} | {name} | {kept} | {t:.3f} | {tt:.3f} | {t / tt:.2f}x | {p:.0f} | {tp:.0f} | {p / tp:.2f}x |")
