"""Builds a small retrieval set of one's own kind (not WordNet) for
docs/training.md's "your own data" walk-through: Python standard library
docstrings. A query is a function's one-line summary; its positive is the
rest of the docstring. Deterministic for a given Python (the committed files
come from CPython 3.11's standard library, PSF License).

    python3 examples/data/pydoc/make_pydoc_set.py examples/data/pydoc

Writes OUT/pairs.jsonl (training pairs, no negatives: `gradcache mine`
adds them), OUT/corpus.jsonl (every docstring body: what negatives are
mined from), and OUT/dev/ (a BEIR folder of held-out queries over the same
corpus: corpus.jsonl, queries.jsonl, qrels/dev.tsv).
"""
import hashlib, importlib, inspect, json, os, re, sys, warnings

MODULES = ["os", "os.path", "shutil", "json", "re", "string", "textwrap", "collections", "itertools", "functools",
           "math", "statistics", "random", "datetime", "calendar", "time", "pathlib", "glob", "fnmatch", "tempfile",
           "csv", "gzip", "zipfile", "tarfile", "hashlib", "base64", "binascii", "struct", "copy", "pprint", "heapq",
           "bisect", "array", "difflib", "urllib.parse", "http.client", "email.utils", "html", "socket", "subprocess",
           "threading", "queue", "logging", "argparse", "inspect", "ast", "tokenize", "dis", "pickle", "shelve",
           "sqlite3", "uuid", "decimal", "fractions", "operator", "contextlib", "abc", "typing", "dataclasses", "enum",
           "locale", "gettext", "unicodedata", "codecs", "io", "mimetypes", "platform", "sysconfig", "zlib", "bz2", "lzma"]


def clean(text):
    return re.sub(r"\s+", " ", text).strip()


def pairs():
    seen = set()
    for name in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            parts = doc.split("\n\n", 1)
            if len(parts) < 2:
                continue
            summary, body = clean(parts[0]), clean(parts[1])
            if not (4 <= len(summary.split()) <= 30) or len(body.split()) < 12 or summary in seen:
                continue
            seen.add(summary)
            yield summary, " ".join(body.split()[:120])


def main(out):
    items = list(pairs())
    # Held out by a hash of the query: about one in five.
    dev = [p for p in items if hashlib.sha256(p[0].encode()).digest()[0] < 52]
    train = [p for p in items if p not in dev]
    os.makedirs(os.path.join(out, "dev", "qrels"), exist_ok=True)
    with open(os.path.join(out, "pairs.jsonl"), "w") as f:
        for q, p in train:
            f.write(json.dumps({"query": q, "positive": p}) + "\n")
    bodies = list(dict.fromkeys(p for _, p in items))
    ids = {b: f"d{i}" for i, b in enumerate(bodies)}
    for path in [os.path.join(out, "corpus.jsonl"), os.path.join(out, "dev", "corpus.jsonl")]:
        with open(path, "w") as f:
            for b in bodies:
                f.write(json.dumps({"_id": ids[b], "text": b}) + "\n")
    with open(os.path.join(out, "dev", "queries.jsonl"), "w") as f, open(os.path.join(out, "dev", "qrels", "dev.tsv"), "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for i, (q, p) in enumerate(dev):
            f.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
            r.write(f"q{i}\t{ids[p]}\t1\n")
    print(f"{len(train)} training pairs, {len(dev)} dev queries, {len(bodies)} documents (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main(sys.argv[1])
