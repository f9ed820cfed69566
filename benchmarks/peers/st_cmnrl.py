"""sentence-transformers' CachedMultipleNegativesRankingLoss on the work of
benchmarks/peers/cmnrl.rs: the same MiniLM folder, the same triples (written
by it as JSONL), batch, mini-batch size and thread count; cosine x 20,
cross-entropy over every passage in the batch. One step = zeroed gradients,
the loss and its backward (which runs the cached mini-batch backward); no
optimizer. Prints one JSON line like the Rust side.

    ./.python benchmarks/peers/st_cmnrl.py --triples FILE [--chunk 16] [--steps 3]
"""
import argparse, contextlib, json, resource, time
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
import os as _os, sys as _sys
_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "common"))  # benchmarks/common/
from peer_common import vm_hwm_mb  # noqa: E402


p = argparse.ArgumentParser()
p.add_argument("--model", default=".models/all-MiniLM-L6-v2")
p.add_argument("--triples", required=True)
p.add_argument("--chunk", type=int, default=16)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--max-len", type=int, default=128)
p.add_argument("--mini-batch-num-tokens", type=int, default=None,
               help="its token budget per mini-batch (non-padding tokens), instead of --chunk sequences")
p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
               help="bf16: torch.autocast('cpu', torch.bfloat16) around the loss and its backward (whose cached re-forward runs inside it)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
triples = [json.loads(l) for l in open(a.triples)]
# Transformer + mean pooling, no normalisation module: cos_sim normalises.
word = Transformer(a.model, max_seq_length=a.max_len)
model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
model.train()
loss_fn = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=a.chunk, mini_batch_num_tokens=a.mini_batch_num_tokens)
features = [model.preprocess([t[k] for t in triples]) for k in ("query", "positive", "negative")]
before = vm_hwm_mb()
times, losses = [], []
for step in range(a.steps + 1):
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else contextlib.nullcontext():
        loss = loss_fn(features, None)
        loss.backward()
    if step > 0:
        times.append(time.perf_counter() - t)
    losses.append(loss.item())
times.sort()


def step_flops():
    """Its step's matrix-multiply FLOPs, counted as gradcache counts its own
    (Architecture::forward_flops: per layer and token 8d² + 4·d·ff + 4·L·d):
    every mini-batch, trimmed to its longest item as it trims it, forward
    without graph, forward again with graph, and a backward of twice the
    forward. The score matrix and the loss are left out (under 0.1%)."""
    from sentence_transformers.base.losses.gradcache import _minibatch_ranges
    cfg = word.auto_model.config
    d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    total = 0.0
    for f in features:
        for begin, end in _minibatch_ranges(f, a.chunk, a.mini_batch_num_tokens):
            n, length = end - begin, int(f["attention_mask"][begin:end].sum(dim=1).max())
            total += layers * n * length * (8 * d * d + 4 * d * ff + 4 * length * d)
    return 4 * total
print(json.dumps({"impl": "sentence-transformers CachedMNRL", "batch": len(triples), "chunk": a.chunk, "threads": a.threads,
                  "median_s": times[len(times) // 2], "peak_mb": vm_hwm_mb(), "before_step_mb": before,
                  "first_loss": losses[0], "steps": len(times), "mini_batch_num_tokens": a.mini_batch_num_tokens,
                  "step_gflop": step_flops() / 1e9, "gflop_s": {"step": step_flops() / 1e9 / times[len(times) // 2]},
                  "precision": a.precision}))
