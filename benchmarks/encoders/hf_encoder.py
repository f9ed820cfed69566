"""Hugging Face transformers on the work of benchmarks/encoders/speed.rs:
MiniLM forward+backward in train mode, one fixed random batch, median
seconds per step after two warm-up steps, minor page faults and system time.

    ./.python benchmarks/encoders/hf_encoder.py [--attn eager|sdpa]
"""
import argparse, json, resource, time
import torch
from transformers import AutoModel

p = argparse.ArgumentParser()
p.add_argument("--model", default=".models/all-MiniLM-L6-v2")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--tokens", type=int, default=64)
p.add_argument("--steps", type=int, default=14)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--attn", default="eager")
p.add_argument("--name", default="MiniLM", help="the model's name in the output row")
p.add_argument("--forward-only", action="store_true", help="no graph, still train mode")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
model = AutoModel.from_pretrained(a.model, attn_implementation=a.attn).train()
ids = torch.randint(1000, 30000, (a.batch, a.tokens))
mask = torch.ones_like(ids)
times = []
for step in range(a.steps + 2):
    if step == 2:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    m = mask.unsqueeze(-1).float()
    if a.forward_only:
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            (h * m).sum(1) / m.sum(1)
    else:
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ((h * m).sum(1) / m.sum(1)).sum().backward()
    if step >= 2:
        times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
times.sort()
print(json.dumps({"model": a.name, "impl": f"transformers ({a.attn})", "pass": "forward" if a.forward_only else "forward+backward", "median_s": round(times[len(times) // 2], 4),
                  "minor_faults": r1.ru_minflt - r0.ru_minflt, "system_s": round(r1.ru_stime - r0.ru_stime, 2),
                  "steps": len(times)}))
