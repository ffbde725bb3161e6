#!/usr/bin/env python
"""The README's first command: a language model of Python source, end to end.

Builds the embedded default corpus (the Python standard library's own .py files, see
tools/make_stdlib_corpus.py), then runs the real CLI — accumulate → finalize → evaluate →
predict — and prints held-out perplexity beside a unigram baseline's. Every figure it prints
is computed here, now. Outputs go under data/ (ignored by git).

    python tools/quickstart.py [--window 3] [--data data] [--rebuild]
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run(*args: str, capture: bool = False) -> str:
    """Run `streamfit ARGS` with this interpreter, echoing the command."""
    print(f"$ streamfit {shlex.join(args)}", flush=True)
    out = subprocess.run([sys.executable, "-m", "streamfit", *args], check=True, text=True,
                         stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ""


def unigram_cross_entropy(stats_dir: Path, test: Path) -> float:
    """Cross-entropy on `test` of the add-one unigram of the training tokens (the class
    totals of the statistics): the baseline any context model must beat."""
    import pyarrow.parquet as pq
    from streamfit import load_stats

    stats = load_stats(stats_dir)
    counts = stats.class_totals() / stats.window  # every target is counted once per position
    logp = np.log((counts + 1.0) / (counts.sum() + counts.size))
    total, n = 0.0, 0
    for batch in pq.ParquetFile(test).iter_batches(columns=["tokens"]):
        ids = batch.column(0).values.to_numpy()
        total -= float(logp[ids].sum())
        n += ids.size
    return total / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=int, default=3, help="context tokens (default: 3)")
    ap.add_argument("--data", default="data", help="working directory (default: data)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if present")
    args = ap.parse_args(argv)
    data = Path(args.data)
    corpus = data / "stdlib"
    if args.rebuild or not (corpus / "corpus.json").exists():
        print("$ python tools/make_stdlib_corpus.py --out", corpus, flush=True)
        subprocess.run([sys.executable, str(HERE / "make_stdlib_corpus.py"), "--out", str(corpus)],
                       check=True)
    stats, weights = data / "stdlib-stats", data / "stdlib-model" / "weights.npy"
    run("accumulate", str(corpus / "train.parquet"), "--stats", str(stats),
        "--window", str(args.window), "--overwrite")
    run("finalize", "--stats", str(stats), "--out", str(weights), "--format", "sparse",
        "--heldout", str(corpus / "valid.parquet"))
    result = json.loads(run("evaluate", "--weights", str(weights), str(corpus / "test.parquet"),
                            "--json", capture=True))
    run("predict", "--weights", str(weights), "--vocab", str(corpus / "vocab.txt"),
        "--context", "def __init__ ( self")
    unigram = unigram_cross_entropy(stats, corpus / "test.parquet")
    print(f"\nheld-out (test split, {result['n']:,} tokens):")
    print(f"  streamfit, window {args.window}: perplexity {result['perplexity']:8.2f}  "
          f"accuracy {result['accuracy']:.3f}  top-5 {result['top5_accuracy']:.3f}")
    print(f"  unigram baseline:    perplexity {math.exp(unigram):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
