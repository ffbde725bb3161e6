#!/usr/bin/env python
"""Benchmark: streamfit on a local Dask cluster of 1 and 2 worker processes against one
process and `accumulate --jobs 2`, all in the same run (compare ratios, not absolute times).

What it measures, on token corpora: by default three synthetic ones written here (documents
of 400 tokens of a first-order Markov chain over ``--vocab`` states, deterministic from the
seed, in one file each): *small row groups*, ``--row-groups`` row groups of 1,000 documents
(0.4M tokens, ~1.6 MB), and *large row groups*, ``--large-row-groups`` row groups of 10,000
documents (4M tokens, ~16 MB, closer to what Parquet writers produce), and *more large row
groups*, ``--more-row-groups`` (24) of them (96M tokens: a command's fixed costs — the tasks'
start-up, the final merge — weigh less); or ``--corpus`` Parquet files:

- accumulate (window ``--window``) on every corpus: ``count.out_of_core.accumulate_into`` with jobs
  1 and 2, and ``distributed.accumulate_distributed`` on a LocalCluster of 1 and 2 workers
  (its default units of row groups, see ``distributed.plan_units``; shards merged in this
  process); and two one-process accumulates at once, in forked processes: twice the work
  over their time against one alone is this machine's ceiling for two workers;
- evaluate, on the first corpus: the conditional explicit solution of its statistics scored
  on it, by ``model.evaluate.evaluate`` and by ``distributed.evaluate_distributed``.

The configurations run in rounds — one untimed (warm-up: numba's kernel cache, the workers'
imports), then ``--repeat`` timed — each round running every configuration once, so that a
change of load on a shared machine falls on all of them alike; the best time of each is
reported. A cluster's start-up (processes, imports) is timed apart: it is paid once per
command, not per task. All statistics must have the same checksum and all evaluations the
same cross-entropy (to 1e-9): the tool stops otherwise. Calls are in-process through the
Python API (no interpreter start-up).

    python tools/bench_dask.py                 # ~8 min on 2 cores; writes docs/distributed.md's figures
    python tools/bench_dask.py --corpus data/gcide/train.parquet --window 2 --no-write

Evaluating a model of a large vocabulary is slow (minutes for GCIDE's 16,384 classes): keep
``--corpus`` to small vocabularies when timing evaluate.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (ROOT, block_options, command, load_average, load_results, log,  # noqa: E402
                     machine_facts, relative, save_and_render, to_json, utc_now, write_block)
from internals import checksum_of, open_parquet, resolve_paths  # noqa: E402
from streamfit import accumulate_into, distributed as D, evaluate, finalize, load_model, synthetic  # noqa: E402
from streamfit import load_stats as load  # noqa: E402


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


PAIR = "two one-process accumulates at once (this machine's ceiling)"


def at_once(calls: list) -> None:
    """Run the calls at once, each in a forked process, and wait for them all: two
    one-process accumulates of the same corpus show what this machine gives two processes
    that share nothing (memory bandwidth, page faults, the host) — the ceiling of any two
    workers. The fork copies only this thread, not the clusters' event loops."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=c) for c in calls]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"an accumulate of the pair failed: exit codes {[p.exitcode for p in procs]}")


def run(corpora: dict[str, list[str]], window: int, workers: list[int], repeat: int,
        tmp: Path) -> dict:
    """Every configuration on every corpus (evaluate on the first only), in interleaved
    rounds after a warm-up round, so that a change of load on the shared machine falls on
    every configuration alike; the best round of each counts. The statistics of each corpus
    must have one checksum across configurations, evaluations one cross-entropy."""
    files = {name: resolve_paths(c) for name, c in corpora.items()}
    first = next(iter(corpora))
    facts = {}
    for name, fs in files.items():
        accumulate_into(tmp / f"{name}-ref", fs, window=window)
        stats = load(tmp / f"{name}-ref")
        facts[name] = {"files": [relative(p) for p in fs], "tokens": stats.n_examples,
                       "nnz": stats.nnz, "units": len(D.source_units(fs)),
                       "row_groups": sum(open_parquet(p).metadata.num_row_groups for p in fs)}
    stats = load(tmp / f"{first}-ref")
    weights = tmp / "w.npy"
    finalize(stats, weights, form="conditional", layout="dense" if stats.n_classes <= 4096
             else "sparse")
    model = load_model(weights)
    ref = evaluate(model, files[first], top_k=5)

    def acc(name, d, fn):  # d: the statistics directory, or the pair's two
        fn()
        return ("checksum", name, [checksum_of(x) for x in (d if isinstance(d, list) else [d])])

    def ev(fn):
        got = fn()
        if abs(got["cross_entropy"] - ref["cross_entropy"]) > 1e-9 * ref["cross_entropy"]:
            raise SystemExit(f"evaluate on Dask differs: {got} vs {ref}")
        return None

    configs, startup = [], {}
    with contextlib.ExitStack() as stack:
        for name, fs in files.items():
            for jobs in (1, 2):
                d = tmp / f"{name}-jobs{jobs}"
                configs.append(({"corpus": name, "task": "accumulate", "how": f"one machine, --jobs {jobs}",
                                 "n": jobs}, lambda name=name, fs=fs, d=d, jobs=jobs: acc(
                    name, d, lambda: accumulate_into(d, fs, window=window, jobs=jobs, overwrite=True))))
            d2 = [tmp / f"{name}-pair{i}" for i in (0, 1)]
            configs.append(({"corpus": name, "task": "accumulate", "how": PAIR, "n": 2},
                            lambda name=name, fs=fs, d2=d2: acc(name, d2, lambda: at_once(
                                [lambda d=d: accumulate_into(d, fs, window=window, overwrite=True)
                                 for d in d2]))))
        configs.append(({"corpus": first, "task": "evaluate", "how": "one process", "n": 1},
                        lambda: ev(lambda: evaluate(model, files[first], top_k=5))))
        for n in workers:
            log(f"LocalCluster of {n} worker(s)")
            t = time.perf_counter()
            client = stack.enter_context(D.cluster(workers=n))
            client.wait_for_workers(n)
            startup[n] = time.perf_counter() - t
            for name, fs in files.items():
                d = tmp / f"{name}-dask{n}"
                configs.append(({"corpus": name, "task": "accumulate", "how": f"Dask, {n} local worker(s)",
                                 "n": n, "startup": startup[n]},
                                lambda name=name, fs=fs, d=d, client=client: acc(
                    name, d, lambda: D.accumulate_distributed(client, d, fs, window=window,
                                                              overwrite=True))))
            configs.append(({"corpus": first, "task": "evaluate", "how": f"Dask, {n} local worker(s)",
                             "n": n, "startup": startup[n]},
                            lambda client=client: ev(lambda: D.evaluate_distributed(
                                client, weights, files[first], top_k=5))))
        times = [[] for _ in configs]
        checksums = {name: {checksum_of(tmp / f"{name}-ref")} for name in files}
        for r in range(repeat + 1):
            log(f"round {r} of {repeat}" + (" (warm-up, untimed)" if r == 0 else ""))
            for (row, fn), ts in zip(configs, times):
                t = time.perf_counter()
                out = fn()
                if r:
                    ts.append(time.perf_counter() - t)
                if out is not None:
                    checksums[out[1]].update(out[2])
    differ = {name: c for name, c in checksums.items() if len(c) != 1}
    if differ:
        raise SystemExit(f"statistics differ between configurations: {differ}")
    rows = [{**row, "seconds": min(ts), "all_seconds": ts} for (row, _), ts in zip(configs, times)]
    for r in rows:
        base = next(b for b in rows if (b["corpus"], b["task"]) == (r["corpus"], r["task"])
                    and b["n"] == 1 and not b["how"].startswith("Dask"))
        copies = 2 if r["how"] == PAIR else 1  # two accumulates of the corpus: twice the work
        r["tokens_per_s"] = copies * facts[r["corpus"]]["tokens"] / r["seconds"]
        r["speed_vs_one_process"] = copies * base["seconds"] / r["seconds"]
    rows.sort(key=lambda r: (r["task"] != "accumulate", list(corpora).index(r["corpus"])))
    return {"corpora": facts, "window": window, "rows": rows, "identical_statistics": True}


def block(saved: dict) -> list[str]:
    """The lines of docs/distributed.md's results:distributed block."""
    res, meta = saved, saved["meta"]
    m = meta["machine"]
    L = ["", f"Measured by `{meta['command']}` on {meta['date']}: {m['cpu']}, {m['cpu_count']} "
         f"CPUs, Python {m['python']} (load average {meta['load_start']:.1f} at the start: the "
         "machine was shared).", ""]
    for name, f in res["corpora"].items():
        L.append(f"- {name}: {f['description']} — {f['tokens']:,} tokens in {f['row_groups']} "
                 f"row groups, {f['units']} Dask units; {f['nnz']:,} non-zeros.")
    L += ["", f"Window {res['window']}. Best of {meta['repeat']} interleaved rounds after a "
          f"warm-up round, in-process API calls; a cluster's start-up is paid once per command. Every "
          f"configuration gave the same statistics (checksum) and the same cross-entropy. "
          f"The row \"{PAIR}\" runs two one-process accumulates of the corpus at once (forked "
          f"processes): its speed is twice the work over its time against one alone, what this "
          f"machine gives two processes that share nothing — the ceiling for two workers.", "",
          "| corpus | task | how | seconds | tokens / s | speed vs one process | cluster start-up (s) |",
          "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        startup = f"{r['startup']:.1f}" if "startup" in r else "—"
        L.append(f"| {r['corpus']} | {r['task']} | {r['how']} | {r['seconds']:.2f} | "
                 f"{r['tokens_per_s']:,.0f} | {r['speed_vs_one_process']:.2f}× | {startup} |")
    return L + [""]


def render(saved: dict, doc: Path) -> None:
    log(f"{write_block(doc, 'distributed', block(saved))}: figures written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", help="Parquet token files (default: a synthetic corpus)")
    ap.add_argument("--vocab", type=int, default=512, help="synthetic corpus: states (default: 512)")
    ap.add_argument("--row-groups", type=int, default=16,
                    help="small-row-group corpus: row groups of 1,000 documents (default: 16)")
    ap.add_argument("--large-row-groups", type=int, default=8,
                    help="large-row-group corpus: row groups of 10,000 documents (default: 8; "
                         "0: none)")
    ap.add_argument("--more-row-groups", type=int, default=24,
                    help="a third corpus of large row groups, more of them (default: 24, "
                         "96M tokens; 0: none)")
    ap.add_argument("--window", type=int, default=1, help="accumulate window (default: 1)")
    ap.add_argument("--workers", default="1,2", help="local Dask worker counts (default: 1,2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds (default: 3)")
    ap.add_argument("--no-write", action="store_true",
                    help="print the table only (else the figures are saved beside --doc as its "
                         "name with .json, and its block is written from them)")
    block_options(ap, "distributed", save=None, flag="--doc", page=ROOT / "docs" / "distributed.md")
    ap.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.doc))
        return 0
    for c in args.corpus or []:
        if not Path(c).exists():
            raise SystemExit(f"{c}: missing (tools/make_*_corpus.py build the corpora of data/)")
    meta = {"command": command("bench_dask.py", argv), "date": utc_now(),
            "load_start": load_average(), "repeat": args.repeat}
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
            if args.more_row_groups:
                corpora["more large row groups"] = [synthetic_corpus(
                    Path(tmp), args.vocab, args.more_row_groups, docs=10_000)]
                described["more large row groups"] = \
                    f"synthetic ({chain}), 10,000 documents a row group"
        res = run(corpora, args.window, [int(w) for w in args.workers.split(",")],
                  args.repeat, Path(tmp))
    for name, text in described.items():
        res["corpora"][name]["description"] = text
    meta["machine"] = machine_facts("dask", "distributed")
    saved = {"meta": meta, **res}
    print("\n".join(block(saved)))
    if args.json:
        print(to_json(saved))
    if not args.no_write:
        save_and_render(Path(args.doc).with_suffix(".json"), saved, render, Path(args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
