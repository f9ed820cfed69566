"""Rewrites the rows of docs/results/heads/baselines.json (the baselines the
main job prints beside its own run) that runs of the recipe as it now runs
can give: NAME=RUN_DIR pairs, each RUN_DIR holding seed-S/results.json of
the recipe's dev evaluation (e.g. runs/precision/cosine-bf16 from
benchmarks/heads/precision_quality.sh or benchmarks/heads/mol_quality.sh). Rows not
named are kept; a row whose runs predate the current chunks should say so
in its name.

    benchmarks/heads/baselines_from_runs.py "default head (residual MLP)=runs/precision/mlp_residual_gate300-bf16" …
"""
import json, pathlib, statistics, sys
path = pathlib.Path("docs/results/heads/baselines.json")
data = json.loads(path.read_text())
keys = ["wsd_accuracy", "top1", "top5", "top20", "mrr10", "ndcg10"]
for arg in sys.argv[1:]:
    name, run = arg.split("=", 1)
    rs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(run).glob("seed-*/results.json"))]
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in rs}
    assert budgets == {json.dumps(data["budget"], sort_keys=True)}, f"{run}: budget {budgets} differs from {data['budget']}"
    row = {"name": name, "seeds": len(rs),
           "mean": {k: statistics.mean(r["after"][k] for r in rs) for k in keys},
           "sd": {k: statistics.stdev(r["after"][k] for r in rs) if len(rs) > 1 else 0.0 for k in keys}}
    names = [r["name"] for r in data["rows"]]
    data["rows"] = [row if r["name"] == name else r for r in data["rows"]] if name in names else data["rows"] + [row]
tmp = path.with_suffix(".json.tmp")
tmp.write_text(json.dumps(data, indent=2) + "\n")
tmp.replace(path)
print("\n".join(f"{r['name']}: {r['seeds']} seeds, MRR@10 {r['mean']['mrr10']:.3f}" for r in data["rows"]))
