"""Where one MiniLM layer's forward and backward spend their time, on the
threads the step uses: the question #25 leaves open after measuring the
encoder passes at 0.54-0.76x of the machine's matmul rate.

It runs the op sequence of gradcache's fused BERT layer
(`src/models/encoders/fused_bert.rs`: three projections, one
scaled-dot-product attention with a boolean key mask and attention dropout,
output projection, dropout, residual add, layer norm, feed-forward with
GELU, dropout, residual add, layer norm) in train mode, forward then
backward, through torch 2.4: the same libtorch build gradcache links (the
PyPI wheel torch==2.4.0). For each chunk shape it reports

- the wall time of forward + backward without the profiler (median of
  repeats), the layer's matmul FLOPs (the count gradcache uses:
  per token 8d^2 + 4*d*ff + 4*L*d forward, backward 2x) and so its GFLOP/s;
- the same matrix multiplies alone (the layer's `addmm`/`mm`/`bmm` calls
  with the same shapes, timed back to back), i.e. what the layer would
  reach if everything else took no time;
- torch.profiler's self CPU time per operator, grouped (matmul, attention
  softmax and masking, dropout, layer norm, GELU, residual adds and other
  element-wise, copies and layout changes, other), as shares of the
  profiled total (the profiler adds per-op overhead, larger for small ops).

Usage: python benchmarks/step/layer_profile.py [--threads 2] [--out FILE]
Writes one JSON line per shape to --out (default
docs/results/layer_profile.jsonl) and prints a table.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

D, FF, HEADS = 384, 1536, 12  # MiniLM-L6's config.json
P_DROP = 0.1


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(D, D) for _ in range(3))
        self.o = torch.nn.Linear(D, D)
        self.n1 = torch.nn.LayerNorm(D, eps=1e-12)
        self.up = torch.nn.Linear(D, FF)
        self.down = torch.nn.Linear(FF, D)
        self.n2 = torch.nn.LayerNorm(D, eps=1e-12)

    def forward(self, x, keys):
        n, length, _ = x.shape

        def split(t):
            return t.view(n, length, HEADS, D // HEADS).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=P_DROP)
        context = context.transpose(1, 2).reshape(n, length, D)
        a = self.n1(F.dropout(self.o(context), P_DROP, True) + x)
        hidden = F.gelu(self.up(a))
        return self.n2(F.dropout(self.down(hidden), P_DROP, True) + a)


def layer_flops(n, length):
    tokens = n * length
    forward = tokens * (8 * D * D + 4 * D * FF + 4 * length * D)
    return 3 * forward  # forward + backward (2x)


def fwd_bwd(layer, x, keys):
    out = layer(x, keys)
    out.backward(torch.ones_like(out))


def matmuls_alone(n, length, repeats):
    """The layer's matrix multiplies, forward and backward, with nothing
    else: projections as addmm/mm over [n*length, D] rows, attention as
    bmm over [n*HEADS, length, D/HEADS]."""
    t = n * length
    x = torch.randn(t, D)
    w, w_up, w_down = torch.randn(D, D), torch.randn(D, FF), torch.randn(FF, D)
    h = torch.randn(t, FF)
    g, g_up = torch.randn(t, D), torch.randn(t, FF)
    qh = torch.randn(n * HEADS, length, D // HEADS)
    kt = torch.randn(n * HEADS, D // HEADS, length)
    s = torch.randn(n * HEADS, length, length)

    def once():
        # forward: 4 projections, up, down, QK^T, PV
        for _ in range(4):
            torch.mm(x, w)
        torch.mm(x, w_up)
        torch.mm(h, w_down)
        torch.bmm(qh, kt)
        torch.bmm(s, qh)
        # backward: two products per forward product (input and weight
        # gradients)
        for _ in range(4):
            torch.mm(g, w)
            torch.mm(g.t(), x)
        torch.mm(g_up, w_up.t())
        torch.mm(x.t(), g_up)
        torch.mm(g, w_down.t())
        torch.mm(h.t(), g)
        for _ in range(2):
            torch.bmm(s, qh)
            torch.bmm(kt, s)

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


GROUPS = [
    ("matmul", ("addmm", "aten::mm", "bmm", "baddbmm", "aten::matmul", "aten::linear")),
    ("softmax and mask", ("softmax", "masked_fill", "logical_not", "where", "_scaled_dot_product")),
    ("dropout", ("dropout", "bernoulli", "aten::div", "empty_like")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("element-wise (adds, sums, scale)", ("aten::add", "aten::mul", "aten::sum", "aten::fill_", "ones_like", "aten::sub")),
    ("copies and layout", ("copy_", "clone", "contiguous", "transpose", "aten::t", "view", "reshape", "expand", "permute", "as_strided", "_unsafe_view", "aten::empty", "unsqueeze", "aten::select", "aten::slice")),
]


def group_of(name):
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def profile(layer, x, keys, repeats):
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(repeats):
            fwd_bwd(layer, x, keys)
    shares, ops = {}, {}
    total = 0.0
    for e in p.key_averages():
        us = e.self_cpu_time_total
        if us <= 0:
            continue
        total += us
        shares[group_of(e.key)] = shares.get(group_of(e.key), 0.0) + us
        ops[e.key] = ops.get(e.key, 0.0) + us
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:12]
    return {k: v / total for k, v in shares.items()}, [(k, v / total) for k, v in top]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="docs/results/layer_profile.jsonl")
    ap.add_argument("--shapes", default="24x32,16x48,48x32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = Layer()
    lines = []
    for shape in args.shapes.split(","):
        n, length = (int(v) for v in shape.split("x"))
        x = torch.randn(n, length, D, requires_grad=True)
        keys = torch.ones(n, 1, 1, length, dtype=torch.bool)
        for _ in range(3):
            fwd_bwd(layer, x, keys)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fwd_bwd(layer, x, keys)
            times.append(time.perf_counter() - start)
        wall = statistics.median(times)
        flops = layer_flops(n, length)
        alone = matmuls_alone(n, length, args.repeats)
        shares, top = profile(layer, x, keys, max(5, args.repeats // 4))
        line = {
            "shape": shape,
            "tokens": n * length,
            "threads": args.threads,
            "torch": torch.__version__,
            "layer_s": wall,
            "layer_gflop_s": flops / wall / 1e9,
            "matmuls_alone_s": alone,
            "matmuls_alone_gflop_s": flops / alone / 1e9,
            "profile_shares": shares,
            "profile_top_ops": top,
        }
        lines.append(line)
        print(json.dumps(line))
    with open(args.out, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
