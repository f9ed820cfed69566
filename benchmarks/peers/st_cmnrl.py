"""sentence-transformers' CachedMultipleNegativesRankingLoss on the work of
benchmarks/peer_cmnrl.rs: the same MiniLM folder, the same triples (written
by it as JSONL), batch, mini-batch size and thread count; cosine x 20,
cross-entropy over every passage in the batch. One step = zeroed gradients,
the loss and its backward (which runs the cached mini-batch backward); no
optimizer. Prints one JSON line like the Rust side.

    ./.python benchmarks/peers/st_cmnrl.py --triples FILE [--chunk 16] [--steps 3]
"""
import argparse, json, resource, time
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
from peer_common import vm_hwm_mb


p = argparse.ArgumentParser()
p.add_argument("--model", default=".models/all-MiniLM-L6-v2")
p.add_argument("--triples", required=True)
p.add_argument("--chunk", type=int, default=16)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--max-len", type=int, default=128)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
triples = [json.loads(l) for l in open(a.triples)]
# Transformer + mean pooling, no normalisation module: cos_sim normalises.
word = Transformer(a.model, max_seq_length=a.max_len)
model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
model.train()
loss_fn = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=a.chunk)
features = [model.preprocess([t[k] for t in triples]) for k in ("query", "positive", "negative")]
before = vm_hwm_mb()
times, losses = [], []
for step in range(a.steps + 1):
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    loss = loss_fn(features, None)
    loss.backward()
    if step > 0:
        times.append(time.perf_counter() - t)
    losses.append(loss.item())
times.sort()
print(json.dumps({"impl": "sentence-transformers CachedMNRL", "batch": len(triples), "chunk": a.chunk, "threads": a.threads,
                  "median_s": times[len(times) // 2], "peak_mb": vm_hwm_mb(), "before_step_mb": before,
                  "first_loss": losses[0], "steps": len(times)}))
