"""Writes benchmarks/README.md and one README.md per folder of benchmarks/:
the question each folder answers, its drivers (the one command each, as the
script's own header gives it), the tables they fill, and the date and commit
that last changed each table (git log of the file: the run recorded there).
Run it after committing new results:

    python3 benchmarks/common/readmes.py
"""
import functools, pathlib, re, subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
B = ROOT / "benchmarks"

# Folder -> (question, where the answer is read, [(driver, [result files])]).
FOLDERS = {
    "step": (
        "How close does the two-cache step come to this machine's limit, and where does its time go?",
        "docs/benchmarks.md: Step time and memory; bf16 on the CPU; Against the machine's limit",
        [("step/bench.sh", ["step_bench.md"]), ("step/overhead.sh", ["step_overhead.md"]),
         ("step/flop_rate.sh", ["flop_rate.jsonl"]), ("step/precision.sh", ["precision_step.md"]),
         ("step/profile.sh", ["step_profile_bf16.md"]), ("step/device_build_check.sh", ["device_build_cpu.md"])],
    ),
    "budget": (
        "What does a memory budget buy: how much faster is the step when it may keep what it would recompute?",
        "docs/benchmarks.md: Memory budgets; Sizes chosen from the budget",
        [("budget/sweep.sh", ["budget_sweep.md"]), ("budget/targets.sh", ["budget_targets.md"]),
         ("budget/auto_sizes.sh", ["auto_sizes.md"])],
    ),
    "peers": (
        "How does gradcache compare with sentence-transformers' CachedMultipleNegativesRankingLoss on the same work, "
        "each in the precision it would choose?",
        "docs/benchmarks.md: Against sentence-transformers; Against the machine's limit; Memory budgets",
        [("peers/cmnrl.sh", ["peer_cmnrl.md", "peer_cmnrl_bf16.md"]), ("peers/tokens.sh", ["peer_tokens.md"]),
         ("peers/budget.sh", ["peer_budget.md"])],
    ),
    "encoders": (
        "How fast are gradcache's encoders (MiniLM, XLM-RoBERTa, ModernBERT) and tokenizers against Hugging Face's?",
        "docs/encoder-speed.md; docs/models.md",
        [("encoders/speed.sh", ["encoder_speed.md", "encoder_speed_forward.md"]),
         ("encoders/families.sh", ["encoder_families.md"]),
         ("cargo run --release --example encoders_tokenizer_speed", ["tokenizer_speed.md"])],
    ),
    "heads": (
        "Which head ranks best at the main job's budget and beyond, against the pretrained encoder, the fine-tuned "
        "bi-encoder and a cross-encoder; and how well does a Mixture of Logits retrieve on its own?",
        "docs/heads-results.md; docs/benchmarks.md: Mixture of Logits; README's table",
        [("heads/compare.sh", ["heads/dev.md"]), ("heads/mol_quality.sh", ["mol_quality.md"]),
         ("heads/pydoc.sh", ["heads_pydoc.md"]), ("heads/precision_quality.sh", ["precision/quality.md"]),
         ("heads/cross_encoder.sh", ["cross_encoder/rerank.jsonl"]), ("heads/train_step_time.sh", ["cross_encoder/train_step.jsonl"]),
         ("heads/mol_retrieval.sh", ["mol_retrieval.md"]),
         ("python3 benchmarks/heads/baselines_from_runs.py", ["heads/baselines.json"])],
    ),
    "serving": (
        "How fast and how lean is inference: the server under load, reranking latency, first-stage memory?",
        "docs/serving.md: Throughput; docs/benchmarks.md: Serving, First-stage retrieval memory; docs/inference.md",
        [("serving/serve_bench.sh", ["serve_bench.md", "serve_bench_precision.md"]),
         ("serving/rerank_latency.sh", ["cross_encoder/latency.jsonl"]), ("serving/retrieval_memory.sh", ["retrieval_memory.md"])],
    ),
    "distributed": (
        "What do several MPI processes cost or gain against one process on the same global batch?",
        "docs/distributed.md: Measured here; docs/benchmarks.md: Several processes",
        [("distributed/bench.sh", ["distributed_bench.md"])],
    ),
    "common": (
        "What the other folders share: the main job's batches written for peers (common_write_batches), the Python "
        "peers' helpers (peer_common.py), and this generator.",
        "–",
        [],
    ),
}


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


@functools.cache
def last_run(result):
    out = git("log", "-1", "--format=%cs %h", "--", f"docs/results/{result}")
    return out or "not run yet"


def usage(driver):
    """The script's own usage line: the comment line that names it."""
    if not driver.endswith((".sh",)):
        return driver
    path = B / driver
    for line in path.read_text().splitlines():
        if line.startswith("#   benchmarks/") or line.startswith("#  benchmarks/"):
            text = line.lstrip("# ").strip()
            # A parenthesis continued on the next comment line: the command alone.
            if text.count("(") > text.count(")"):
                text = text[: text.rindex("(")].strip()
            return re.sub(r"\s{2,}", "  ", text)
    return f"benchmarks/{driver}"


def files_of(folder):
    return sorted(p.name for p in (B / folder).iterdir() if p.is_file() and p.suffix in (".sh", ".py", ".rs") and p.name != "README.md")


index = ["# Benchmarks", "",
         "Speed, memory and quality, measured side by side in one run and recorded in `docs/results/` with the command "
         "that made them. Never timed assertions in tests. One folder per question; each folder's README gives the "
         "question, the command, the tables it fills and when they were last recorded. Rust drivers are Cargo examples "
         "named after their folder (`cargo run --release --example step_flop_rate`); Python peers run in the benchmark "
         "venv (`scripts/gradcache.sh setup-bench`, then `./.python`).", "",
         "| folder | question | tables last recorded |", "|---|---|---|"]
for folder, (question, where, drivers) in FOLDERS.items():
    lines = [f"# benchmarks/{folder}", "", f"**Question.** {question}", "", f"**Read in:** {where}.", ""]
    if drivers:
        lines += ["| command | fills | last recorded (commit date, commit) |", "|---|---|---|"]
        for driver, results in drivers:
            cells = ", ".join(f"`docs/results/{r}`" for r in results)
            when = "; ".join(last_run(r) for r in results)
            lines.append(f"| `{usage(driver)}` | {cells} | {when} |")
        lines.append("")
    lines += ["Files: " + ", ".join(f"`{f}`" for f in files_of(folder)) + ".", "",
              "Written by `benchmarks/common/readmes.py`; each script's header says what it measures and how."]
    (B / folder / "README.md").write_text("\n".join(lines) + "\n")
    dates = sorted({last_run(r).split()[0] for _, rs in drivers for r in rs if last_run(r) != "not run yet"})
    span = f"{dates[0]} – {dates[-1]}" if len(dates) > 1 else (dates[0] if dates else "–")
    index.append(f"| [`{folder}/`]({folder}/README.md) | {question} | {span} |")
index += ["", "Written by `benchmarks/common/readmes.py`."]
(B / "README.md").write_text("\n".join(index) + "\n")
print("\n".join(index))
