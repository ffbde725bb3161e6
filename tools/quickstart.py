#!/usr/bin/env python
"""The README's first command: a language model of Python source, end to end.

Builds the embedded default corpus (the Python standard library's own .py files, see
tools/make_stdlib_corpus.py), then runs the real CLI — accumulate → finalize → evaluate →
predict — and prints held-out perplexity beside a unigram baseline's. Every figure it prints
is computed here, now. Outputs go under data/ (ignored by git).

The model is the best form of docs/lm.md: n-gram statistics (`--order`), finalized as the
block model calibrated on the valid split, mixed with a document cache (the tokens seen so far
in the same file; `--no-cache` leaves it out). `--window M` runs the window model instead.

    python tools/quickstart.py [--order 4 | --window 3] [--no-cache] [--data data] [--rebuild]
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


def unigram_cross_entropy(train: Path, test: Path, vocab_size: int) -> float:
    """Cross-entropy on `test` of the add-one unigram of the training tokens: the baseline
    any context model must beat."""
    import pyarrow.parquet as pq

    counts = np.zeros(vocab_size)
    for batch in pq.ParquetFile(train).iter_batches(columns=["tokens"]):
        counts += np.bincount(batch.column(0).values.to_numpy(), minlength=vocab_size)
    logp = np.log((counts + 1.0) / (counts.sum() + counts.size))
    total, n = 0.0, 0
    for batch in pq.ParquetFile(test).iter_batches(columns=["tokens"]):
        ids = batch.column(0).values.to_numpy()
        total -= float(logp[ids].sum())
        n += ids.size
    return total / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--order", type=int, default=4,
                   help="n-gram order of the block model (default: 4, the best of docs/lm.md)")
    g.add_argument("--window", type=int, help="the window model with this many context tokens")
    ap.add_argument("--no-cache", action="store_true",
                    help="the n-gram model without the document cache (a pure n-gram model)")
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
    model = ["--window", str(args.window)] if args.window else ["--order", str(args.order)]
    cache = not (args.window or args.no_cache)
    run("accumulate", str(corpus / "train.parquet"), "--stats", str(stats), *model, "--overwrite")
    run("finalize", "--stats", str(stats), "--out", str(weights),
        *(["--format", "sparse"] if args.window else []),
        "--heldout", str(corpus / "valid.parquet"), *(["--cache"] if cache else []))
    result = json.loads(run("evaluate", "--weights", str(weights), str(corpus / "test.parquet"),
                            "--json", capture=True))
    run("predict", "--weights", str(weights), "--vocab", str(corpus / "vocab.txt"),
        "--context", "def __init__ ( self")
    vocab_size = json.loads((corpus / "corpus.json").read_text())["vocab_size"]
    unigram = unigram_cross_entropy(corpus / "train.parquet", corpus / "test.parquet", vocab_size)
    print(f"\nheld-out (test split, {result['n']:,} tokens):")
    if args.window:
        print(f"  streamfit, window {args.window}: perplexity {result['perplexity']:8.2f}  "
              f"accuracy {result['accuracy']:.3f}  top-5 {result['top5_accuracy']:.3f}")
    else:
        name = f"order {args.order} blocks" + (" + cache" if cache else "")
        print(f"  {'streamfit, ' + name + ':':<36}perplexity {result['perplexity']:8.2f}")
    print(f"  {'unigram baseline:':<36}perplexity {math.exp(unigram):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
