"""Reranks a first stage's candidates with a cross-encoder, as a reranker is
used (#24): for each query of a BEIR folder, the top `--k` documents of a
TREC run file (`gradcache eval` writes one: `run.trec`) are scored by the
cross-encoder with the query and reordered. Metrics as `gradcache eval`
computes them (src/app/metrics.rs: Top-1/5/20, MRR@10, nDCG@10 with gain
2^g - 1, Recall@100; ties broken by the first stage's order). Latency: the
first `--latency-queries` queries' candidates scored one query at a time
(all its pairs in one batch, `--threads` threads), cold: a cross-encoder
caches nothing across queries. Prints one JSON line, and writes the
reranked run with `--write-run`.

    ./.python benchmarks/heads/st_cross_encoder_rerank.py --model DIR --data BEIR_DIR --split dev --run run.trec
"""
import argparse, json, math, statistics, time

import torch
from sentence_transformers.cross_encoder import CrossEncoder
import os as _os, sys as _sys
_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "common"))  # benchmarks/common/
from peer_common import vm_hwm_mb  # noqa: E402


def metrics(rankings, qrels):
    """Mean Top-1/5/20, MRR@10, nDCG@10, Recall@100 over queries, as src/app/metrics.rs."""
    sums = dict.fromkeys(["top1", "top5", "top20", "mrr10", "ndcg10", "recall100"], 0.0)
    for qid, order in rankings.items():
        rel = qrels[qid]
        first = next((r for r, d in enumerate(order) if rel.get(d, 0) > 0), None)
        if first is not None:
            sums["top1"] += first < 1
            sums["top5"] += first < 5
            sums["top20"] += first < 20
            sums["mrr10"] += 1 / (first + 1) if first < 10 else 0
        dcg = sum((2 ** rel.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(order[:10]))
        ideal = sorted(rel.values(), reverse=True)
        idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal[:10]))
        sums["ndcg10"] += dcg / idcg if idcg > 0 else 0
        relevant = sum(1 for g in rel.values() if g > 0)
        if relevant:
            sums["recall100"] += sum(1 for d in order[:100] if rel.get(d, 0) > 0) / relevant
    return {k: v / len(rankings) for k, v in sums.items()}


p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True, help="BEIR folder")
p.add_argument("--split", default="dev")
p.add_argument("--run", required=True, help="the first stage's TREC run")
p.add_argument("--k", type=int, default=100)
p.add_argument("--batch-size", type=int, default=100)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--latency-queries", type=int, default=20)
p.add_argument("--write-run")
p.add_argument("--tag", default="", help="a label copied into the output line")
p.add_argument("--first-stage-only", action="store_true", help="score the run file itself (checks the metrics against gradcache eval's)")
p.add_argument("--latency-only", action="store_true", help="only the latency queries (no metrics)")
p.add_argument("--wsd-only", action="store_true",
               help="WordNet sets only: WSD accuracy over each query's sense grid (every `LEMMA#synset` document of its gold "
                    "sense's lemma, as gradcache's sense_eval builds it), ties to the first in corpus order; no reranking")
a = p.parse_args()
torch.set_num_threads(a.threads)

docs = {}
for line in open(f"{a.data}/corpus.jsonl"):
    d = json.loads(line)
    docs[d["_id"]] = f"{d['title']}: {d['text']}" if d.get("title") else d["text"]
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{a.data}/queries.jsonl"))}
qrels = {}
for i, line in enumerate(open(f"{a.data}/qrels/{a.split}.tsv")):
    parts = line.rstrip("\n").split("\t")
    if i == 0 and not parts[-1].lstrip("-").isdigit():
        continue
    qrels.setdefault(parts[0], {})[parts[1]] = int(parts[-1])
first = {}
for line in open(a.run):
    qid, _, did, rank, _score, _tag = line.split()
    first.setdefault(qid, []).append((int(rank), did))
first = {q: [d for _, d in sorted(c)][: a.k] for q, c in first.items() if q in qrels}
qids = [q for q in queries if q in first]
if a.wsd_only:
    model = CrossEncoder(a.model, device="cpu")
    model.eval()
    order = list(docs)  # corpus order
    by_lemma = {}
    for d in order:
        by_lemma.setdefault(d.split("#")[0], []).append(d)
    hits = 0
    judged = [q for q in queries if q in qrels]
    for q in judged:
        gold = [d for d, g in qrels[q].items() if g > 0]
        assert len(gold) == 1 and "#" in gold[0], f"not a WordNet sense query: {q}"
        grid = by_lemma[gold[0].split("#")[0]]
        scores = model.predict([(queries[q], docs[d]) for d in grid], batch_size=a.batch_size, show_progress_bar=False)
        best = max(range(len(grid)), key=lambda i: (float(scores[i]), -i))
        hits += grid[best] == gold[0]
    print(json.dumps({"tag": a.tag, "split": a.split, "model": a.model, "queries": len(judged), "wsd_accuracy": hits / len(judged)}))
    raise SystemExit
result = {"tag": a.tag, "split": a.split, "run": a.run, "k": a.k, "queries": len(qids), "first_stage": metrics({q: first[q] for q in qids}, qrels)}
if not a.first_stage_only:
    model = CrossEncoder(a.model, device="cpu")
    model.eval()
    latencies = []
    reranked = {}
    started = time.perf_counter()
    for n, q in enumerate(qids[: a.latency_queries] if a.latency_only else qids):
        t = time.perf_counter()
        scores = model.predict([(queries[q], docs[d]) for d in first[q]], batch_size=a.batch_size, show_progress_bar=False)
        if n < a.latency_queries:
            latencies.append(time.perf_counter() - t)
        order = sorted(range(len(first[q])), key=lambda i: (-float(scores[i]), i))
        reranked[q] = [first[q][i] for i in order]
    result.update({"model": a.model, "reranked": None if a.latency_only else metrics(reranked, qrels), "rerank_s": time.perf_counter() - started,
                   "latency_ms_per_query": 1000 * statistics.median(latencies), "latency_queries": len(latencies),
                   "candidates": a.k, "threads": a.threads, "peak_mb": vm_hwm_mb(), "cached": "nothing (cold)"})
    if a.write_run:
        with open(a.write_run, "w") as f:
            for q in qids:
                for r, d in enumerate(reranked[q]):
                    f.write(f"{q} Q0 {d} {r + 1} {-r} cross-encoder\n")
print(json.dumps(result))
