#!/usr/bin/env python
"""How fast does `streamfit score` score documents? Documents/s and tokens/s, from text.

On the text form of the GCIDE corpus (data/gcide-text: train.txt and test.txt, a document
per line), in one run: `tokenize` the train lines (word vocabulary, two passes) and the test
lines with that tokenizer; accumulate and finalize an order-3 Kneser-Ney model and a
window-2 model (sparse, conditional); then, for each model, `evaluate` over the test tokens
(the baseline: the same per-token scorer, no per-document output) and `score` into a folder
with 1 and with more processes — the n-gram model on every test document, best of 3 runs; the
window model, whose sparse scorer is slow at this vocabulary, once on the first 2,000. Every
timing is of the Python API in this process, after a warm-up call (numba's compiled code
loaded), with the 1-minute load average beside it.

    python tools/bench_score.py --data /work/data [--quick] [--jobs 1,2]
    python tools/bench_score.py --data /work/data --save docs/score.json   # + the README block
    python tools/bench_score.py --render docs/score.json                   # the block again
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (ROOT, block_options, command, load_average, load_results, log,  # noqa: E402
                     machine_facts, save_and_render, to_json, utc_now, write_block)

QUICK_LINES = {"train": 20_000, "test": 3_000}
WINDOW_DOCS = 2_000


def head_lines(src: Path, dst: Path, n: int | None) -> Path:
    """The first n lines of src (all with None), as dst."""
    if n is None:
        return src
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for i, line in enumerate(fin):
            if i == n:
                break
            fout.write(line)
    return dst


def timed(fn, repeat: int = 1):
    """(result, best seconds of `repeat` calls, load average before the first)."""
    load = load_average()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best, load


def measure(text: Path, tmp: Path, quick: bool, jobs: list[int]) -> dict:
    import pyarrow.parquet as pq

    import streamfit

    train = head_lines(text / "train.txt", tmp / "train.txt", QUICK_LINES["train"] if quick else None)
    test = head_lines(text / "test.txt", tmp / "test.txt", QUICK_LINES["test"] if quick else None)
    m, s, load = timed(lambda: streamfit.tokenize([train], tmp / "train", lines=True))
    out = {"tokenize_train": {"documents": m["documents"], "tokens": m["tokens"], "seconds": s,
                              "load": load, "vocab_size": m["vocab_size"]}}
    log(f"tokenize train: {m['documents']:,} documents, {m['tokens']:,} tokens, {s:.1f} s")
    tok = tmp / "train" / "tokenizer.json"
    m, s, load = timed(lambda: streamfit.tokenize([test], tmp / "test", lines=True, tokenizer=tok))
    out["tokenize_test"] = {"documents": m["documents"], "tokens": m["tokens"], "seconds": s,
                            "load": load, "unknown_rate": m["unknown_rate"]}
    test_tokens = tmp / "test" / "tokens.parquet"
    warm = tmp / "warm.parquet"
    pq.write_table(pq.read_table(test_tokens).slice(0, 64), warm)
    # the window model's sparse scorer is slow at this vocabulary: its first documents only
    window_docs = tmp / "window-test" / "tokens.parquet"
    window_docs.parent.mkdir()
    pq.write_table(pq.read_table(test_tokens).slice(0, WINDOW_DOCS), window_docs,
                   row_group_size=1024)

    from streamfit.solve.ngram import finalize_ngram

    models = {}
    stats = streamfit.accumulate([tmp / "train"], order=3)
    models["n-gram, order 3, Kneser-Ney"] = finalize_ngram(stats, tmp / "kn3.npy", form="kneser-ney")
    del stats
    stats = streamfit.accumulate([tmp / "train"], window=2)
    models["window 2, conditional, sparse"] = streamfit.finalize(
        stats, tmp / "w2.npy", form="conditional", layout="sparse")
    del stats
    weights = {"n-gram, order 3, Kneser-Ney": tmp / "kn3.npy",
               "window 2, conditional, sparse": tmp / "w2.npy"}
    out["models"] = {}
    for name, model in models.items():
        ngram = name.startswith("n-gram")
        docs, repeat = (test_tokens, 3) if ngram else (window_docs, 1)
        streamfit.evaluate(model, [warm])
        ev, s, load = timed(lambda: streamfit.evaluate(model, [docs]), repeat)
        row = {"evaluate": {"seconds": s, "load": load, "tokens": ev["n"],
                            "perplexity": ev["perplexity"]}, "score": {}, "repeat": repeat}
        log(f"{name}: evaluate {ev['n']:,} tokens in {s:.2f} s (perplexity {ev['perplexity']:.1f})")
        for j in jobs:
            streamfit.score(weights[name], [warm], tmp / "warm-out", jobs=j, overwrite=True)
            sc, s, load = timed(lambda: streamfit.score(weights[name], [docs],
                                                        tmp / f"scored-{len(out['models'])}-{j}",
                                                        jobs=j, overwrite=True), repeat)
            row["score"][str(j)] = {"seconds": s, "load": load, "documents": sc["documents"],
                                    "tokens": sc["tokens"]}
            log(f"  score, {j} process(es): {sc['documents'] / s:,.0f} documents/s, "
                f"{sc['tokens'] / s:,.0f} tokens/s (load {load:.1f})")
        out["models"][name] = row
    return out


def readme_block(saved: dict) -> list[str]:
    meta, r = saved["meta"], saved["results"]
    machine = meta["machine"]
    tt, te = r["tokenize_train"], r["tokenize_test"]
    L = [f"From `{meta['command']}` ({meta['date']}; {machine['cpu']}, {machine['cores']} cores "
         f"usable, a shared machine: the 1-minute load average is given beside each timing). "
         f"GCIDE as text, a document per line: tokenize read {tt['documents']:,} train documents "
         f"({tt['tokens']:,} tokens, vocabulary {tt['vocab_size']:,}) in {tt['seconds']:.1f} s, "
         f"two passes ({tt['tokens'] / tt['seconds']:,.0f} tokens/s, load {tt['load']:.1f}), and "
         f"encoded the {te['documents']:,} test documents with that tokenizer at "
         f"{te['tokens'] / te['seconds']:,.0f} tokens/s (unknown rate {te['unknown_rate']:.3f}). "
         f"Scoring the test documents:", "",
         "| model | processes | documents/s | tokens/s | seconds | vs evaluate | load |",
         "|---|---|---|---|---|---|---|"]
    for name, row in r["models"].items():
        ev = row["evaluate"]
        label = name + (f" (first {row['score']['1']['documents']:,} documents)"
                        if row["score"]["1"]["documents"] != te["documents"] else "")
        L.append(f"| {label} | evaluate (baseline) | | {ev['tokens'] / ev['seconds']:,.0f} | "
                 f"{ev['seconds']:.2f} | 1 | {ev['load']:.1f} |")
        for j, s in row["score"].items():
            L.append(f"| | score, {j} | {s['documents'] / s['seconds']:,.0f} | "
                     f"{s['tokens'] / s['seconds']:,.0f} | {s['seconds']:.2f} | "
                     f"{ev['seconds'] / s['seconds']:.2f}× | {s['load']:.1f} |")
    repeats = sorted({row.get("repeat", 1) for row in r["models"].values()})
    L += ["", "\"vs evaluate\" is evaluate's seconds over score's on the same tokens (above 1: "
          "faster); score also writes every document's row, evaluate only sums. "
          + (f"Best of {repeats[-1]} runs for the n-gram model, one for the window model. "
             if repeats[-1] > 1 else "") + "Test "
          "perplexity: " + ", ".join(f"{name} {row['evaluate']['perplexity']:.1f}"
                                     for name, row in r["models"].items()) + "."]
    return L


def render(saved: dict, readme: Path) -> None:
    log(f"{write_block(readme, 'score', readme_block(saved))}: score block written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data"),
                    help="the folder holding gcide-text/ (default: data)")
    ap.add_argument("--quick", action="store_true",
                    help=f"the first {QUICK_LINES['train']:,} train and {QUICK_LINES['test']:,} "
                         f"test lines only")
    ap.add_argument("--jobs", default="1,2", help="score's process counts (default: 1,2)")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    block_options(ap, "score")
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.readme))
        return 0
    text = Path(args.data) / "gcide-text"
    if not (text / "train.txt").exists():
        raise SystemExit(f"{text}/train.txt: missing (the KenLM text form of the GCIDE corpus)")
    t_start, load_start = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="bench_score-") as tmp:
        results = measure(text, Path(tmp), args.quick, [int(j) for j in args.jobs.split(",")])
    payload = {"meta": {"command": command("bench_score.py", argv), "date": utc_now(),
                        "mode": "quick" if args.quick else "default", "dataset": "gcide-text",
                        "machine": machine_facts("tokenizers"),
                        "wall_s": time.perf_counter() - t_start, "load_start": load_start},
               "results": results}
    if args.save:
        save_and_render(args.save, payload, render, Path(args.readme))
    if args.json:
        print(to_json(payload))
    else:
        print("\n".join(readme_block(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
