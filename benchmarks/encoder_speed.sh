#!/usr/bin/env bash
# The encoder, side by side: gradcache's MiniLM (fused layers; rust-bert's
# layers with and without the allocator fix) and Hugging Face transformers
# (eager and SDPA), each in its own process on the same work. Writes docs/results/encoder_speed.{jsonl,md}.
#
#   benchmarks/encoder_speed.sh [ROUNDS]                 forward+backward
#   PASS=forward benchmarks/encoder_speed.sh [ROUNDS]   forward only (no graph, train mode)
#                                                       → docs/results/encoder_speed_forward.{jsonl,md}
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gradcache.sh setup
cargo build --release --example bench_encoder_speed
rounds="${1:-3}"
if [ "${PASS:-}" = forward ]; then flag=--forward-only; out=docs/results/encoder_speed_forward.jsonl; else flag=; out=docs/results/encoder_speed.jsonl; fi
: > "$out.tmp"
for round in $(seq "$rounds"); do
    # Interleaved, so drift in the machine hits every implementation alike.
    ./target/release/examples/bench_encoder_speed $flag >> "$out.tmp"
    ./target/release/examples/bench_encoder_speed --rust-bert $flag >> "$out.tmp"
    ./target/release/examples/bench_encoder_speed --rust-bert --no-tune-allocator $flag >> "$out.tmp"
    ./.python benchmarks/peers/hf_encoder.py --attn eager $flag 2>/dev/null >> "$out.tmp"
    ./.python benchmarks/peers/hf_encoder.py --attn sdpa $flag 2>/dev/null >> "$out.tmp"
done
mv "$out.tmp" "$out"
./.python - "$out" "$rounds" "${PASS:-}" <<'PY' > "${out%.jsonl}.md"
import json, sys, statistics, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
key = lambda r: r["impl"] + (" + tuned allocator" if r.get("allocator_tuned") else " (glibc defaults)" if "allocator_tuned" in r else "")
groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)
fwd = sys.argv[3] == "forward"
print(f"# Encoder speed: MiniLM {'forward only (no graph)' if fwd else 'forward+backward'}, train mode\n")
print(f"Command: `{'PASS=forward ' if fwd else ''}benchmarks/encoder_speed.sh {sys.argv[2]}` ({sys.argv[2]} interleaved rounds, each a separate process; "
      f"batch 32 x 64 tokens, 2 threads, median of 14 steps after 2 warm-up steps). Machine: {os.cpu_count()} CPUs, {platform.machine()}.\n")
eager = [r["median_s"] for r in groups[[k for k in groups if "eager" in k][0]]]
ref = statistics.median(eager)
# Rows come in rounds, so the k-th row of each implementation ran next to the
# k-th eager row: a paired ratio per round cancels drift of the machine.
print("| implementation | s/step (median of rounds) | min-max over rounds | vs transformers eager | paired ratio per round: median (min-max) | minor page faults / 14 steps | system s / 14 steps |")
print("|---|---|---|---|---|---|---|")
for k, rs in groups.items():
    s = [r["median_s"] for r in rs]
    paired = [a / b for a, b in zip(s, eager)]
    print(f"| {k} | {statistics.median(s):.3f} | {min(s):.3f}-{max(s):.3f} | {statistics.median(s)/ref:.2f}x | "
          f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) | "
          f"{int(statistics.median(r['minor_faults'] for r in rs)):,} | {statistics.median(r['system_s'] for r in rs):.2f} |")
PY
cat "${out%.jsonl}.md"
