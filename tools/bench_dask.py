#!/usr/bin/env python
"""Benchmark: streamfit on a local Dask cluster of 1 and 2 worker processes against one
process and `accumulate --jobs 2`, all in the same run (compare ratios, not absolute times).

What it measures, on token corpora: by default two synthetic ones written here (documents
of 400 tokens of a first-order Markov chain over ``--vocab`` states, deterministic from the
seed, in one file each): *small row groups*, ``--row-groups`` row groups of 1,000 documents
(0.4M tokens, ~1.6 MB), and *large row groups*, ``--large-row-groups`` row groups of 10,000
documents (4M tokens, ~16 MB, closer to what Parquet writers produce); or ``--corpus``
Parquet files:

- accumulate (window ``--window``) on every corpus: ``pipeline.accumulate_into`` with jobs
  1 and 2, and ``distributed.accumulate_distributed`` on a LocalCluster of 1 and 2 workers
  (its default units of row groups, see ``distributed.plan_units``; shards merged in this
  process);
- evaluate, on the first corpus: the conditional explicit solution of its statistics scored
  on it, by ``evaluate.evaluate`` and by ``distributed.evaluate_distributed``.

Every configuration runs once untimed (warm-up: numba's kernel cache, the workers' imports),
then ``--repeat`` times; the best time is reported. A cluster's start-up (processes, imports)
is timed apart: it is paid once per command, not per row group. All statistics must have
the same checksum and all evaluations the same cross-entropy (to 1e-9): the tool stops
otherwise. Calls are in-process through the Python API (no interpreter start-up).

    python tools/bench_dask.py                 # ~5 min on 2 cores; writes docs/distributed.md's figures
    python tools/bench_dask.py --corpus data/gcide/train.parquet --window 2 --no-write

Evaluating a model of a large vocabulary is slow (minutes for GCIDE's 16,384 classes): keep
``--corpus`` to small vocabularies when timing evaluate.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from streamfit import distributed as D  # noqa: E402
from streamfit import synthetic  # noqa: E402
from streamfit.evaluate import evaluate  # noqa: E402
from streamfit.model import load_model  # noqa: E402
from streamfit.pipeline import accumulate_into  # noqa: E402
from streamfit.reading import open_parquet, resolve_paths  # noqa: E402
from streamfit.solve import finalize  # noqa: E402
from streamfit.stats import checksum_of, load  # noqa: E402

BEGIN, END = "<!-- bench_dask:begin -->", "<!-- bench_dask:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_corpus(tmp: Path, vocab: int, row_groups: int, docs: int = 1000,
                     doc_len: int = 400) -> str:
    """A Markov chain's documents, one file of `row_groups` row groups of `docs` documents."""
    chain = synthetic.markov_chain(vocab, concentration=0.3, seed=0)
    tokens, offsets = synthetic.sample_documents(chain, docs * row_groups, doc_len, seed=1)
    table = pa.table({"tokens": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                         pa.array(tokens))})
    path = tmp / f"markov-v{vocab}-{row_groups}x{docs}.parquet"
    pq.write_table(table, path, row_group_size=docs)
    return str(path)


def best_of(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def run(corpora: dict[str, list[str]], window: int, workers: list[int], repeat: int,
        tmp: Path) -> dict:
    """Every configuration on every corpus (evaluate on the first only); the statistics of
    each corpus must have one checksum across configurations."""
    rows, facts, checksums = [], {}, {}
    for name, corpus in corpora.items():
        files = resolve_paths(corpus)
        for jobs in (1, 2):
            log(f"{name}: accumulate --jobs {jobs}")
            d = tmp / f"{name}-jobs{jobs}"
            s, _ = best_of(lambda: accumulate_into(d, files, window=window, jobs=jobs,
                                                   overwrite=True), repeat)
            checksums.setdefault(name, set()).add(checksum_of(d))
            rows.append({"corpus": name, "task": "accumulate", "how": f"one machine, --jobs {jobs}",
                         "n": jobs, "seconds": s})
        stats = load(tmp / f"{name}-jobs1")
        facts[name] = {"files": [str(p) for p in files], "tokens": stats.n_examples,
                       "nnz": stats.nnz, "units": len(D.source_units(files)),
                       "row_groups": sum(open_parquet(p).metadata.num_row_groups for p in files)}
    first = next(iter(corpora))
    files = resolve_paths(corpora[first])
    stats = load(tmp / f"{first}-jobs1")
    weights = tmp / "w.npy"
    finalize(stats, weights, form="conditional", layout="dense" if stats.n_classes <= 4096
             else "sparse")
    model = load_model(weights)
    log(f"{first}: evaluate, one process")
    s, ref = best_of(lambda: evaluate(model, files, top_k=5), repeat)
    rows.append({"corpus": first, "task": "evaluate", "how": "one process", "n": 1, "seconds": s})
    for n in workers:
        log(f"LocalCluster of {n} worker(s)")
        t = time.perf_counter()
        with D.cluster(workers=n) as client:
            client.wait_for_workers(n)
            startup = time.perf_counter() - t
            for name, corpus in corpora.items():
                d = tmp / f"{name}-dask{n}"
                log(f"{name}: accumulate on Dask")
                s, _ = best_of(lambda: D.accumulate_distributed(client, d, corpus, window=window,
                                                                overwrite=True), repeat)
                checksums[name].add(checksum_of(d))
                rows.append({"corpus": name, "task": "accumulate", "how": f"Dask, {n} local worker(s)",
                             "n": n, "seconds": s, "startup": startup})
            log(f"{first}: evaluate on Dask")
            s, got = best_of(lambda: D.evaluate_distributed(client, weights, files, top_k=5),
                             repeat)
            if abs(got["cross_entropy"] - ref["cross_entropy"]) > 1e-9 * ref["cross_entropy"]:
                raise SystemExit(f"evaluate on Dask differs: {got} vs {ref}")
            rows.append({"corpus": first, "task": "evaluate", "how": f"Dask, {n} local worker(s)",
                         "n": n, "seconds": s, "startup": startup})
    differ = {name: c for name, c in checksums.items() if len(c) != 1}
    if differ:
        raise SystemExit(f"statistics differ between configurations: {differ}")
    for r in rows:
        base = next(b for b in rows if (b["corpus"], b["task"]) == (r["corpus"], r["task"])
                    and b["n"] == 1 and not b["how"].startswith("Dask"))
        r["tokens_per_s"] = facts[r["corpus"]]["tokens"] / r["seconds"]
        r["speed_vs_one_process"] = base["seconds"] / r["seconds"]
    rows.sort(key=lambda r: (r["task"] != "accumulate", list(corpora).index(r["corpus"])))
    return {"corpora": facts, "window": window, "rows": rows, "identical_statistics": True}


def markdown(res: dict, meta: dict) -> str:
    L = [BEGIN, "",
         f"Measured by `{meta['command']}` on {meta['date']}: {meta['machine']} "
         f"(load average {meta['load_start']:.1f} at the start: the machine was shared).", ""]
    for name, f in res["corpora"].items():
        L.append(f"- {name}: {f['description']} — {f['tokens']:,} tokens in {f['row_groups']} "
                 f"row groups, {f['units']} Dask units; {f['nnz']:,} non-zeros.")
    L += ["", f"Window {res['window']}. Best of {meta['repeat']} runs after a warm-up, "
          f"in-process API calls; a cluster's start-up is paid once per command. Every "
          f"configuration gave the same statistics (checksum) and the same cross-entropy.", "",
          "| corpus | task | how | seconds | tokens / s | speed vs one process | cluster start-up (s) |",
          "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        startup = f"{r['startup']:.1f}" if "startup" in r else "—"
        L.append(f"| {r['corpus']} | {r['task']} | {r['how']} | {r['seconds']:.2f} | "
                 f"{r['tokens_per_s']:,.0f} | {r['speed_vs_one_process']:.2f}× | {startup} |")
    L += ["", END]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", help="Parquet token files (default: a synthetic corpus)")
    ap.add_argument("--vocab", type=int, default=512, help="synthetic corpus: states (default: 512)")
    ap.add_argument("--row-groups", type=int, default=16,
                    help="small-row-group corpus: row groups of 1,000 documents (default: 16)")
    ap.add_argument("--large-row-groups", type=int, default=8,
                    help="large-row-group corpus: row groups of 10,000 documents (default: 8; "
                         "0: none)")
    ap.add_argument("--window", type=int, default=1, help="accumulate window (default: 1)")
    ap.add_argument("--workers", default="1,2", help="local Dask worker counts (default: 1,2)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per configuration (default: 2)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "distributed.md"),
                    help="page whose generated block receives the table (default: docs/distributed.md)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = ap.parse_args(argv)
    for c in args.corpus or []:
        if not Path(c).exists():
            raise SystemExit(f"{c}: missing (tools/make_*_corpus.py build the corpora of data/)")
    argv_shown = sys.argv[1:] if argv is None else argv
    meta = {"command": "python tools/bench_dask.py" + "".join(" " + shlex.quote(a) for a in argv_shown),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                       f"Python {platform.python_version()}",
            "load_start": os.getloadavg()[0], "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        chain = f"Markov chain of {args.vocab} states, seed 0"
        if args.corpus:
            corpora = {"given": args.corpus}
            described = {"given": ", ".join(os.path.relpath(c, ROOT) for c in args.corpus)}
        else:
            corpora = {"small row groups": [synthetic_corpus(Path(tmp), args.vocab, args.row_groups)]}
            described = {"small row groups": f"synthetic ({chain}), 1,000 documents a row group"}
            if args.large_row_groups:
                corpora["large row groups"] = [synthetic_corpus(Path(tmp), args.vocab,
                                                                args.large_row_groups, docs=10_000)]
                described["large row groups"] = f"synthetic ({chain}), 10,000 documents a row group"
        res = run(corpora, args.window, [int(w) for w in args.workers.split(",")],
                  args.repeat, Path(tmp))
    for name, text in described.items():
        res["corpora"][name]["description"] = text
    block = markdown(res, meta)
    print(block)
    if args.json:
        print(json.dumps({"meta": meta, **res}, indent=1))
    if not args.no_write:
        doc = Path(args.doc)
        text = doc.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{doc}: no {BEGIN} … {END} block to replace")
        head, rest = text.split(BEGIN, 1)
        doc.write_text(head + block + rest.split(END, 1)[1])
        log(f"{doc}: figures written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
