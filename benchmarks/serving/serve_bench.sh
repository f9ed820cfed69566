#!/usr/bin/env bash
# `gradcache serve` under load: /rerank with 100 candidates (the WordNet
# dev set's texts) at 1, 8 and 64 connections, measured by wrk (Debian's
# package, a well-kept load generator), beside the same requests answered
# in process by Scorer::rerank (the ceiling), and with dynamic batching
# limited to one pair per batch and to one request's pairs per batch.
# Each configuration runs in its own server process; the server listens on
# 127.0.0.1 only. Writes docs/results/serve_bench.{jsonl,md}.
#
#   benchmarks/serving/serve_bench.sh [BUNDLE]   (default runs/train_reranker/model;
#                                         SECONDS=20 per configuration)
#
# PRECISIONS="f32 bf16" serves with dynamic batching once per precision
# (`--precision P`) instead of the three batching modes, into
# OUT=docs/results/serve_bench_precision (the in-process ceiling row is f32).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup
command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }
model="${1:-runs/train_reranker/model}"; seconds="${SECONDS_PER_RUN:-20}"
[ -f "$model/gradcache.json" ] || { echo "no bundle at $model: run scripts/gradcache.sh train first" >&2; exit 1; }
cargo build --release --quiet --bin gradcache --example serving_inprocess
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# One request: a dev query and 100 candidate senses.
./target/release/gradcache prepare-wordnet --beir "$work/beir" --queries 100 >/dev/null
./.python - "$work/beir/dev" "$work/body.json" <<'PY'
import json, sys
d, out = sys.argv[1], sys.argv[2]
query = json.loads(open(f"{d}/queries.jsonl").readline())["text"]
texts = [json.loads(l)["text"] for l in open(f"{d}/corpus.jsonl")][:100]
json.dump({"query": query, "texts": texts}, open(out, "w"))
PY
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
LUA
name="${OUT:-docs/results/serve_bench}"
out="$name.jsonl"
: > "$out.tmp"
./target/release/examples/serving_inprocess --model "$model" --body "$work/body.json" --seconds "$seconds" >> "$out.tmp"
serve() { # $1: label, then extra flags
    local label="$1"; shift
    # Room for 64 requests of 100 texts in flight (TEI counts each text).
    ./target/release/gradcache serve --model "$model" --port 0 --max-client-batch-size 128 --max-concurrent-requests 10000 "$@" > "$work/addr" &
    local pid=$!
    for _ in $(seq 600); do grep -q listening "$work/addr" 2>/dev/null && break; sleep 0.1; done
    local url; url=$(sed -n 's/^listening on //p' "$work/addr")
    for _ in $(seq 600); do curl -sf "$url/health" >/dev/null && break; sleep 0.1; done
    for c in 1 8 64; do
        echo "[serve_bench] $label, $c connections" >&2
        wrk -t "$(( c < 2 ? c : 2 ))" -c "$c" -d "${seconds}s" --timeout 60s --latency -s "$work/post.lua" "$url/rerank" > "$work/wrk.txt"
        ./.python - "$work/wrk.txt" "$label" "$c" >> "$out.tmp" <<'PY'
import json, re, sys
text, label, c = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[u]
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
requests, seconds = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text).groups()[:2]
seconds = float(seconds) / (1000.0 if re.search(r"requests in [\d.]+ms", text) else 1.0)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = int(errors.group(1)) if errors else 0
ok = int(requests) - errors
# Only answered requests count: a refused one is no work done.
print(json.dumps({"mode": label, "concurrency": c, "requests": int(requests), "seconds": seconds, "requests_per_s": ok / seconds,
                  "pairs_per_s": 100 * ok / seconds, "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]), "non_2xx": errors}))
PY
    done
    kill -TERM "$pid"; wait "$pid" || true
}
if [ -n "${PRECISIONS:-}" ]; then
    for p in $PRECISIONS; do serve "served, dynamic batching, $p" --precision "$p"; done
else
    serve "served, dynamic batching (defaults)"
    serve "served, one request's pairs per batch" --max-batch-requests 100
    serve "served, one pair per batch" --max-batch-requests 1
fi
mv "$out.tmp" "$out"
./.python - "$out" "$name.md" "$model" "$seconds" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ceiling = rows[0]["pairs_per_s"]
lines = [f"# gradcache serve: /rerank with 100 candidates ({sys.argv[3]}, {sys.argv[4]} s per row)", "",
         "Command: `benchmarks/serving/serve_bench.sh` (wrk with 2 threads, 1 for 1 connection; one server process per mode; 127.0.0.1).", "",
         "| mode | connections | pairs/s | × in process | p50 ms | p99 ms | non-2xx |", "|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['mode']} | {r['concurrency']} | {r['pairs_per_s']:.0f} | {r['pairs_per_s'] / ceiling:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r.get('non_2xx', 0)} |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
