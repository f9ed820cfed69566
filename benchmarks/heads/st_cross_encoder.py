"""A cross-encoder baseline trained on a gradcache run's batches (#24).

sentence-transformers' CrossEncoder built from the MiniLM folder (a plain
BERT with a fresh one-logit head, as CrossEncoder makes it), trained with
its CachedMultipleNegativesRankingLoss on the batches that
`benchmarks/common/write_batches.rs` wrote for the main job: the same examples in
the same order, 100 steps of 64 queries, AdamW at the main job's learning
rate (3e-5; the fresh head at 30x, as gradcache's head), weight decay 0.01
on matrices, 10 warm-up steps then linear decay to 0, gradient norm clipped
to 1, dropout on. `--precision bf16` puts the step under torch's CPU
autocast (what a user on a CPU with bf16 units would add). For each query the loss scores its positive, its hard
negative (the batch's second column) and `--num-negatives` passages drawn
from the rest of the batch (the loss's own sampling; 4 by default, so 6
pairs per query and 384 per step), sigmoid x 10, cross-entropy. Pairs are
cut at `--max-length` tokens (96: the main job cuts each text at 48).

Writes the model to OUTPUT/model and a JSON line per step to
OUTPUT/train_log.jsonl; prints a summary JSON line.

    ./.python benchmarks/heads/st_cross_encoder.py --batches FILE --output DIR [--seed 0]
"""
import argparse, json, os, random, statistics, time

import numpy as np
import torch
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.losses import CachedMultipleNegativesRankingLoss
import os as _os, sys as _sys
_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "common"))  # benchmarks/common/
from peer_common import vm_hwm_mb  # noqa: E402


p = argparse.ArgumentParser()
p.add_argument("--batches", required=True, help="JSONL from benchmarks/common/write_batches.rs")
p.add_argument("--output", required=True)
p.add_argument("--model", default=".models/all-MiniLM-L6-v2")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--lr", type=float, default=3e-5)
p.add_argument("--head-lr-multiplier", type=float, default=30.0)
p.add_argument("--warmup", type=int, default=10)
p.add_argument("--weight-decay", type=float, default=0.01)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--max-length", type=int, default=96)
p.add_argument("--num-negatives", type=int, default=4)
p.add_argument("--mini-batch", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
               help="bf16: the forward and the loss's cached re-forward under torch's CPU autocast (one line, as a user would)")
a = p.parse_args()

torch.set_num_threads(a.threads)
random.seed(a.seed)
np.random.seed(a.seed)
torch.manual_seed(a.seed)
batches = [json.loads(line) for line in open(a.batches)]
total = len(batches)

model = CrossEncoder(a.model, num_labels=1, max_length=a.max_length, device="cpu")
model.train()
loss_fn = CachedMultipleNegativesRankingLoss(model, num_negatives=a.num_negatives, mini_batch_size=a.mini_batch)

named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
head = [n for n, _ in named if "classifier" in n]
assert head, "no classifier parameters found"
groups = []
for is_head in (False, True):
    for decays in (True, False):
        params = [q for n, q in named if (n in head) == is_head and (q.dim() > 1) == decays]
        if params:
            groups.append({"params": params, "lr": a.lr * (a.head_lr_multiplier if is_head else 1.0),
                           "weight_decay": a.weight_decay if decays else 0.0})
optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)


def schedule(step):
    # gradcache's LinearSchedule: warm-up to the peak, then linear decay to 0.
    if step < a.warmup:
        return (step + 1) / a.warmup
    return max(0.0, min(1.0, (total - step) / max(1, total - a.warmup)))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
os.makedirs(a.output, exist_ok=True)
log = open(os.path.join(a.output, "train_log.jsonl"), "w")
times, losses = [], []
started = time.perf_counter()
for b in batches:
    queries, passages = b["queries"], b["passages"]
    group = len(passages) // len(queries)
    columns = [passages[j::group] for j in range(group)]  # positives, then hard negatives
    t = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    # The cached loss runs its second forward inside backward(): both under autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
        loss = loss_fn([queries] + columns, None)
        loss.backward()
    torch.nn.utils.clip_grad_norm_([q for _, q in named], a.clip)
    optimizer.step()
    scheduler.step()
    dt = time.perf_counter() - t
    times.append(dt)
    losses.append(loss.item())
    log.write(json.dumps({"step": b["step"], "loss": losses[-1], "seconds": dt}) + "\n")
    log.flush()
    if b["step"] % 10 == 0:
        print(f"step {b['step'] + 1}/{total} loss {losses[-1]:.4f} {dt:.1f} s/step", flush=True)
model.save(os.path.join(a.output, "model"))
summary = {"impl": "sentence-transformers CrossEncoder, CachedMNRL", "seed": a.seed, "steps": total,
           "pairs_per_step": len(batches[0]["queries"]) * (1 + a.num_negatives + group - 1),
           "median_step_s": statistics.median(times), "train_s": time.perf_counter() - started,
           "peak_mb": vm_hwm_mb(), "first_loss": losses[0], "last10_loss": statistics.mean(losses[-10:]),
           "settings": vars(a)}
json.dump(summary, open(os.path.join(a.output, "summary.json"), "w"), indent=1)
print(json.dumps(summary))
