"""A gradcache MaxSim bundle exported with `gradcache export --format pylate`,
used by PyLate: exact MaxSim over a BEIR folder's whole corpus
(`pylate.rank.rerank`) and retrieval from a PLAID index, each scored by
MRR@10 on the folder's dev qrels (docs/models.md).

    python examples/pylate/evaluate.py EXPORTED_FOLDER BEIR_FOLDER [INDEX_FOLDER]

Needs a full `pip install pylate` (PLAID's fast-plaid). Texts are stripped
as sentence-transformers 5.3, which pylate pins, strips them.
"""
import json, sys, time
from pylate import indexes, models, rank, retrieve

folder, beir = sys.argv[1], sys.argv[2]
corpus = [json.loads(l) for l in open(f"{beir}/corpus.jsonl")]
queries = {q["_id"]: q["text"] for q in map(json.loads, open(f"{beir}/queries.jsonl"))}
qrels = {}
for line in list(open(f"{beir}/qrels/dev.tsv"))[1:]:
    q, d, s = line.split("\t")
    if int(s) > 0:
        qrels.setdefault(q, set()).add(d)
qids = [q for q in queries if q in qrels]
model = models.ColBERT(folder, device="cpu")
docs = model.encode([d["text"].strip() for d in corpus], is_query=False, batch_size=32)
qs = model.encode([queries[q].strip() for q in qids], is_query=True, batch_size=32)
ids = [d["_id"] for d in corpus]

def mrr10(ranked):
    total = 0.0
    for q, hits in zip(qids, ranked):
        for r, h in enumerate(hits[:10]):
            if h["id"] in qrels[q]:
                total += 1 / (r + 1)
                break
    return total / len(qids)

exact = rank.rerank(documents_ids=[ids] * len(qids), queries_embeddings=qs, documents_embeddings=[docs] * len(qids))
print(f"PyLate exact MaxSim over {len(ids)} documents: MRR@10 {mrr10(exact):.3f} ({len(qids)} queries)")
index = indexes.PLAID(index_folder="sys.argv[3] if len(sys.argv) > 3 else "pylate-index"", index_name="pydoc", override=True)
index.add_documents(documents_ids=ids, documents_embeddings=docs)
found = retrieve.ColBERT(index=index).retrieve(queries_embeddings=qs, k=10)
print(f"PyLate PLAID index, top 10: MRR@10 {mrr10(found):.3f}")
