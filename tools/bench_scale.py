#!/usr/bin/env python
"""Benchmark: `streamfit accumulate` at scale — peak memory and throughput of the
out-of-core accumulate for corpora 1x, 10x and 100x its memory budget, --jobs 2 vs 1, and
the cost of spilling.

What it measures
    Every measurement is a real subprocess, ``python -m streamfit accumulate FILES --memory
    BUDGET --jobs N --window M --temp DIR --checkpoint 1e9 --batch-rows R --quiet
    --overwrite``, timed by wall clock (``time.perf_counter`` around start to exit: Python
    start-up and imports included) and watched for memory two ways:

    peak RSS (tree)  the largest sum of the resident set sizes of the process and all its
                     descendants (the --jobs worker processes), sampled every ``--poll``
                     seconds with psutil. Pages shared between forked workers are counted
                     once per process (an over-estimate); "anon" is the same sum of RSS minus
                     file-backed/shared pages (psutil's ``shared``), i.e. the heap. Spilled
                     runs are read back through memory maps, whose resident file pages count
                     in RSS but not in "anon" (the kernel can drop them at any time).
    max proc         ``ru_maxrss`` of the largest single process of the tree, exact (the
                     kernel's own high-water mark, from ``os.wait4``). With --jobs 1 the tree
                     is one process, so this is the exact peak.
    runs             sorted runs spilled, counted in the --temp directory while it runs (they
                     stay there until the merge has finished), and their size on disk.

    Corpus size relative to the budget: the in-memory size of a corpus is taken to be that
    of its final statistics, nnz x 16 bytes (one packed int64 key and one int64 count per
    non-zero, as in the table and in a run; nnz from the manifest), divided by the budget.
    The ratio is reported as measured; the token counts are chosen to land near 1, 10, 100.
    (The hash table that counts them needs 2-4x that: it stays at most half full.)

    Corpora: a sparse first-order Markov chain built here, deterministic from ``--seed``
    (``streamfit.synthetic.markov_chain`` is a dense V x V matrix, too big at V = 100k):
    each of ``--vocab`` states has ``--successors`` random successors with Dirichlet
    (``--concentration``) weights, sampled with alias tables in a small numba kernel.
    Spread rows and a window of 3 make almost every (context, next) pair new, so the
    statistics outgrow a small budget with a few hundred million tokens at most. Written as
    Parquet (``tokens: list<int32>``, documents of ``--doc-len`` tokens, row groups of
    ``--row-group-docs`` documents, ``--docs-per-file`` documents a file), one directory
    per corpus size, under a temporary directory or ``--data DIR`` (reused when its
    parameters match). Generation and writing are not timed; the files were just written,
    so they are read from the page cache.

    Runs, in order: baselines (``python -c "import streamfit"``; a tiny corpus through
    ``accumulate`` with --jobs 1 and 2, which also warms numba's on-disk kernel cache), then
    every corpus size with --jobs 1 at the budget, then the ``--jobs-scale`` corpus with
    --jobs 2, then the ``--spill-scale`` corpus with a budget large enough not to spill
    (computed from its nnz: 128 bytes per hash-table slot of the final table, so the table
    stays under the quarter of the budget at which a worker spills). ``--repeat`` repeats
    each (best wall time; peak memory is the largest seen), except the largest corpus,
    measured ``--repeat-largest`` times.

    In the same run it checks that the spilled statistics equal the in-memory ones, and
    --jobs 2 those of --jobs 1 (indptr, indices, data and the manifest's counts, via
    ``streamfit.load_stats``), printing OK, or exiting with status 1 on a mismatch or a
    failed command.

Targets (project issue, part 8) — reported, not asserted
    peak RSS from 1x to 100x grows by <= 1.1x, and stays under the budget plus a fixed
    overhead (the start-up baseline is reported separately); --jobs 2 >= 1.8x the
    throughput of --jobs 1; spilling costs <= 1.5x the in-memory time on the same corpus.

Rerun
    /work/venv/bin/python tools/bench_scale.py                    # default size (budget 64M)
    /work/venv/bin/python tools/bench_scale.py --quick            # ~1 min smoke run (budget 4M)
    /work/venv/bin/python tools/bench_scale.py --json > scale.json
    /work/venv/bin/python tools/bench_scale.py --data /tmp/scale-corpus   # keep/reuse corpora
    /work/venv/bin/python tools/bench_scale.py --memory 32M --scales 1,10,100 --window 3

Disk: the largest corpus's Parquet files, its spilled runs (nnz x 16 bytes) and its final
statistics (nnz x 12 bytes) at once: about 15 GB at the default size. Memory: the chain's
tables (V x K x 12 bytes, 300 MB at the default) and one corpus file at a time while
generating; the in-memory run needs about 3x its hash table (2 GiB at the default).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit, prange

import streamfit
from streamfit.pipeline import parse_size

try:
    import psutil
except ImportError:  # the `bench` extra; without it only the kernel's per-process peak
    psutil = None

ENTRY_BYTES = 16           # one packed int64 key + one int64 count
NO_CHECKPOINT = "1e9"      # spill for memory only, never for time, in every measured run
META = "bench_scale_corpus.json"
MiB = 1 << 20

# nnz per token of the default chain (100k states, 256 successors, concentration 1) by
# window, at ~1e6, 1e7, 1e8 tokens: only used to pick token counts near the nominal ratios.
NNZ_PER_TOKEN = {1: (0.95, 0.75, 0.35), 2: (1.9, 1.55, 1.2), 3: (2.9, 2.55, 2.2)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ corpus

@njit(cache=False)
def _alias_tables(weights, successors, table):
    """Vose's alias method, row by row: table[s, j] = (threshold * 2^31, successor j,
    successor alias[j]) so that one sample reads one 12-byte entry."""
    n_states, k = weights.shape
    small = np.empty(k, np.int64)
    large = np.empty(k, np.int64)
    p = np.empty(k, np.float64)
    prob = np.empty(k, np.float64)
    alias = np.empty(k, np.int64)
    for s in range(n_states):
        ns = 0
        nl = 0
        for j in range(k):
            p[j] = weights[s, j] * k
            alias[j] = j
            prob[j] = 1.0
            if p[j] < 1.0:
                small[ns] = j
                ns += 1
            else:
                large[nl] = j
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            a = small[ns]
            nl -= 1
            g = large[nl]
            prob[a] = p[a]
            alias[a] = g
            p[g] = p[g] + p[a] - 1.0
            if p[g] < 1.0:
                small[ns] = g
                ns += 1
            else:
                large[nl] = g
                nl += 1
        for j in range(k):
            table[s, j, 0] = min(np.int64(prob[j] * 2147483648.0), np.int64(2147483647))
            table[s, j, 1] = successors[s, j]
            table[s, j, 2] = successors[s, alias[j]]


@njit(parallel=True, cache=False)
def _walk(table, starts, u, doc_len, out):
    """Sample documents: u[i] in [0, 1) picks column j = floor(u*K) and, from its fraction,
    successor j or its alias. Each document reads its own slice of u: deterministic."""
    k = table.shape[1]
    for d in prange(starts.size):
        s = starts[d]
        base = d * doc_len
        for t in range(doc_len):
            out[base + t] = s
            x = u[base + t] * k
            j = min(np.int64(x), k - 1)
            frac = np.int64((x - j) * 2147483648.0)
            s = table[s, j, 1] if frac < table[s, j, 0] else table[s, j, 2]


def build_chain(vocab: int, successors: int, concentration: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, vocab, size=(vocab, successors), dtype=np.int32)
    weights = rng.standard_gamma(concentration, size=(vocab, successors))
    weights /= weights.sum(axis=1, keepdims=True)
    table = np.empty((vocab, successors, 3), dtype=np.int32)
    _alias_tables(weights, succ, table)
    return table


def corpus_params(args, label: str, tokens: int, index: int) -> dict:
    n_docs = max(2, -(-tokens // args.doc_len))
    return {"label": label, "tokens": n_docs * args.doc_len, "n_docs": n_docs,
            "doc_len": args.doc_len, "vocab": args.vocab, "successors": args.successors,
            "concentration": args.concentration, "chain_seed": args.seed,
            "sample_seed": args.seed + 1000 + index, "row_group_docs": args.row_group_docs,
            "docs_per_file": args.docs_per_file, "sampler": "alias-v1"}


def write_corpus(directory: Path, params: dict, chain_fn) -> list[Path]:
    """Sample and write one corpus, a file at a time (reused when `params` match)."""
    meta_path = directory / META
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        files = [directory / f for f in meta.get("files", [])]
        if meta.get("params") == params and files and all(f.exists() for f in files):
            log(f"  reused {params['label']} corpus in {directory}")
            return files
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    table = chain_fn()
    rng = np.random.default_rng(params["sample_seed"])
    schema = pa.schema([("tokens", pa.list_(pa.int32()))])
    doc_len, files, t0 = params["doc_len"], [], time.perf_counter()
    for i, d0 in enumerate(range(0, params["n_docs"], params["docs_per_file"])):
        n = min(params["docs_per_file"], params["n_docs"] - d0)
        starts = rng.integers(0, params["vocab"], size=n).astype(np.int32)
        u = rng.random(n * doc_len)
        tokens = np.empty(n * doc_len, dtype=np.int32)
        _walk(table, starts, u, doc_len, tokens)
        del u
        offsets = pa.array(np.arange(0, n * doc_len + 1, doc_len, dtype=np.int32))
        arr = pa.ListArray.from_arrays(offsets, pa.array(tokens, type=pa.int32()))
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(pa.Table.from_arrays([arr], schema=schema), path,
                       row_group_size=params["row_group_docs"])
        files.append(path)
    meta_path.write_text(json.dumps({"params": params, "files": [f.name for f in files]},
                                    indent=1))
    log(f"  generated {params['label']} corpus: {params['tokens']:,} tokens in {len(files)} "
        f"file(s), {time.perf_counter() - t0:.1f}s (not timed)")
    return files


def tokens_for(ratio: float, budget: int, window: int) -> int:
    """Tokens whose statistics should be about `ratio` x the budget (a rough model of the
    default chain, interpolated in log N; the real ratio is measured and reported)."""
    target_nnz = ratio * budget / ENTRY_BYTES
    table = NNZ_PER_TOKEN.get(window, tuple(window * x / 3 for x in NNZ_PER_TOKEN[3]))
    n = target_nnz / table[0]
    for _ in range(20):  # fixed point: nnz/token falls as the corpus grows
        x = min(max(math.log10(n), 6.0), 8.0)
        i = min(int(x) - 6, 1)
        rate = table[i] + (table[i + 1] - table[i]) * (x - 6 - i)
        n = target_nnz / rate
    return int(n)


# ------------------------------------------------------------------------- measuring

def tree_memory(root) -> tuple[int, int, int]:
    """(sum of RSS, sum of RSS minus shared/file pages, processes) of a process tree."""
    rss = anon = n = 0
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        try:
            mi = p.memory_info()
        except psutil.Error:
            continue
        rss += mi.rss
        anon += mi.rss - getattr(mi, "shared", 0)
        n += 1
    return rss, anon, n


def measure(cmd: list[str], *, poll: float, temp: Path | None = None,
            logs: Path | None = None) -> dict:
    """Run `cmd`; wall time, exit status, peak tree RSS (sampled), exact largest
    single-process peak (ru_maxrss), and the spilled runs seen in `temp`."""
    logs = logs or Path(tempfile.gettempdir())
    out_path, err_path = logs / "last.stdout", logs / "last.stderr"
    state = {"rss": 0, "anon": 0, "procs": 0, "samples": 0, "runs": 0, "run_bytes": 0}
    stop = threading.Event()
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe)

        def watch() -> None:
            root = psutil.Process(proc.pid) if psutil is not None else None
            while not stop.is_set():
                if root is not None:
                    rss, anon, n = tree_memory(root)
                    state["rss"] = max(state["rss"], rss)
                    state["anon"] = max(state["anon"], anon)
                    state["procs"] = max(state["procs"], n)
                    state["samples"] += 1
                if temp is not None:
                    try:
                        runs = [p for p in os.scandir(temp) if p.name.endswith(".keys.npy")
                                and p.name.startswith("run-")]
                        if len(runs) > state["runs"]:
                            state["runs"] = len(runs)
                            size = 0
                            for r in runs:
                                try:
                                    size += 2 * r.stat().st_size  # keys and vals: same size
                                except OSError:
                                    pass
                            state["run_bytes"] = max(state["run_bytes"], size)
                    except OSError:
                        pass
                stop.wait(poll)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        watcher.join()
    return {"seconds": wall, "returncode": proc.returncode,
            "stdout": out_path.read_text(errors="replace").strip(),
            "stderr": err_path.read_text(errors="replace").strip()[-2000:],
            "peak_rss_tree": state["rss"] or None, "peak_anon_tree": state["anon"] or None,
            "max_processes": state["procs"], "samples": state["samples"],
            "maxrss_process": usage.ru_maxrss * 1024,  # Linux: KiB
            "runs": state["runs"] if temp is not None else None,
            "run_bytes": state["run_bytes"] if temp is not None else None}


def accumulate_cmd(files, stats: Path, temp: Path, memory: str, jobs: int, args) -> list[str]:
    return [sys.executable, "-m", "streamfit", "accumulate", *map(str, files),
            "--stats", str(stats), "--temp", str(temp), "--overwrite", "--quiet",
            "--memory", memory, "--jobs", str(jobs), "--window", str(args.window),
            "--vocab-size", str(args.vocab), "--checkpoint", NO_CHECKPOINT,
            "--batch-rows", str(args.batch_rows)]


def manifest_of(stats: Path) -> dict:
    return json.loads((stats / "manifest.json").read_text())


def memory_for_no_spill(nnz: int, jobs: int = 1) -> int:
    """A budget under which a worker's table holding `nnz` keys never reaches the quarter of
    the budget at which it spills (the table is at most half full: 2^b >= 2 nnz slots)."""
    bits = max(16, math.ceil(math.log2(max(2 * nnz, 1))))
    return 128 * (1 << bits) * jobs  # 16 bytes a slot, x 4 (spill at budget/4), x 2 margin


def size_text(n: int) -> str:
    return f"{n >> 30}G" if n % (1 << 30) == 0 else f"{n >> 20}M"


# ------------------------------------------------------------------------- comparisons

def same_statistics(a: Path, b: Path) -> list[str]:
    sa, sb = streamfit.load_stats(a), streamfit.load_stats(b)
    problems = []
    for attr in ("task", "window", "n_classes", "n_features", "n_examples", "nnz"):
        if getattr(sa, attr) != getattr(sb, attr):
            problems.append(f"{attr}: {getattr(sa, attr)} != {getattr(sb, attr)}")
    if not problems:
        for name in ("indptr", "indices", "data"):
            x, y = getattr(sa, name), getattr(sb, name)
            step = 1 << 24  # compare in slices: the memory maps stay out of the heap
            for lo in range(0, x.size, step):
                if not np.array_equal(x[lo:lo + step], y[lo:lo + step]):
                    problems.append(f"{name} differs (first mismatch in [{lo}, {lo + step}))")
                    break
    return problems


# ------------------------------------------------------------------------------- report

def environment() -> dict:
    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total if psutil is not None else None
    return {"python": platform.python_version(), "numpy": np.__version__,
            "pyarrow": pa.__version__, "streamfit": streamfit.__version__,
            "psutil": psutil.__version__ if psutil is not None else None,
            "platform": platform.platform(), "cpu_model": cpu_model,
            "cpu_count": os.cpu_count(), "memory_bytes": mem}


def mib(x) -> str:
    return "-" if x is None else f"{x / MiB:,.0f}"


def format_report(r: dict) -> str:
    c, env, b = r["config"], r["environment"], r["baselines"]
    lines = [
        f"streamfit accumulate at scale — budget --memory {c['memory']} "
        f"({c['budget_bytes'] / MiB:g} MiB), window {c['window']}, --batch-rows "
        f"{c['batch_rows']}, --checkpoint {NO_CHECKPOINT} (spills for memory only)",
        f"corpora: sparse Markov chain, {c['vocab']:,} states x {c['successors']} successors "
        f"(Dirichlet {c['concentration']:g}, seed {c['seed']}), documents of {c['doc_len']} "
        f"tokens, row groups of {c['row_group_docs']} docs, {c['docs_per_file']} docs a file",
        f"{env['cpu_model']}, {env['cpu_count']} CPUs, "
        f"{(env['memory_bytes'] or 0) / (1 << 30):.0f} GiB; python {env['python']}, "
        f"numpy {env['numpy']}, pyarrow {env['pyarrow']}; best of {c['repeat']} "
        f"({c['repeat_largest']} for the largest); memory sampled every {c['poll']}s",
        "",
        "baselines (fixed overhead, peak RSS):",
    ]
    for key, label in (("import", 'python -c "import streamfit"'),
                       ("tiny_jobs1", "accumulate, tiny corpus, --jobs 1"),
                       ("tiny_jobs2", "accumulate, tiny corpus, --jobs 2")):
        m = b[key]
        lines.append(f"  {label:<38} tree {mib(m['peak_rss_tree']):>6} MiB (anon "
                     f"{mib(m['peak_anon_tree'])}), max process {mib(m['maxrss_process'])} "
                     f"MiB, {m['seconds']:.2f}s")
    lines += ["", f"  {'run':<22}{'tokens':>13}{'nnz':>13}{'stats/':>8}{'wall':>8}"
              f"{'M tok/s':>9}{'peak RSS':>10}{'anon':>7}{'max proc':>9}{'runs':>6}"
              f"{'spilled':>9}",
              f"  {'':<22}{'':>13}{'':>13}{'budget':>8}{'s':>8}{'':>9}{'MiB':>10}"
              f"{'MiB':>7}{'MiB':>9}{'':>6}{'MiB':>9}"]
    for res in r["results"]:
        lines.append(
            f"  {res['name']:<22}{res['tokens']:>13,}{res['nnz']:>13,}"
            f"{res['stats_over_budget']:>8.2f}{res['seconds']:>8.2f}"
            f"{res['tokens_per_s'] / 1e6:>9.2f}{mib(res['peak_rss_tree']):>10}"
            f"{mib(res['peak_anon_tree']):>7}{mib(res['maxrss_process']):>9}"
            f"{res['runs'] if res['runs'] is not None else '-':>6}{mib(res['run_bytes']):>9}")
    lines.append("  (stats/budget: nnz x 16 bytes over the run's own --memory; peak RSS: the "
                 "whole process tree)")
    t = r["targets"]
    lines += ["", "targets (reported, not asserted):"]
    g = t["rss_growth"] or {}
    if g:
        lines.append(f"  peak RSS {g['from']} -> {g['to']}: {g['ratio']:.3f}x (anon "
                     f"{g['anon_ratio']:.3f}x), target <= {g['target']} -> "
                     f"{'met' if g['met'] else 'NOT met'}")
    for u in t["under_budget"]:
        lines.append(f"  {u['name']:<10} peak RSS {mib(u['peak_rss_tree'])} MiB - import "
                     f"baseline {mib(u['baseline'])} = {mib(u['above_baseline'])} MiB vs budget "
                     f"{mib(u['budget'])} MiB -> {'under' if u['met'] else 'OVER'} "
                     f"({u['above_baseline'] / u['budget']:.2f}x budget; above the tiny "
                     f"accumulate: {mib(u['above_tiny'])} MiB)")
    j = t["jobs"]
    if j:
        lines.append(f"  --jobs 2 vs --jobs 1 on {j['corpus']}: {j['ratio']:.2f}x throughput "
                     f"({j['jobs1_s']:.2f}s -> {j['jobs2_s']:.2f}s), target >= {j['target']} "
                     f"-> {'met' if j['met'] else 'NOT met'}")
    s = t["spill"]
    if s:
        lines.append(f"  spilling vs in memory on {s['corpus']}: {s['ratio']:.2f}x time "
                     f"({s['in_memory_s']:.2f}s, 1 run a worker, --memory {s['in_memory_memory']}"
                     f" -> {s['spilled_s']:.2f}s, {s['spilled_runs']} runs), target <= "
                     f"{s['target']} -> {'met' if s['met'] else 'NOT met'}")
    lines += ["", "checks:"]
    for ch in r["checks"]:
        lines.append(f"  {ch['what']}: {'OK' if not ch['problems'] else 'MISMATCH'}")
        for p in ch["problems"]:
            lines.append(f"    {p}")
    lines.append(f"{'OK' if r['ok'] else 'FAILED'}; total run time {r['run_seconds']:.1f}s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", default="64M", help="the budget (--memory of accumulate; "
                    "default 64M)")
    ap.add_argument("--scales", default="1,10,100",
                    help="nominal corpus sizes in budgets (default 1,10,100)")
    ap.add_argument("--tokens", metavar="N,N,...",
                    help="token counts, one per scale (default: estimated from the budget)")
    ap.add_argument("--window", type=int, default=3, help="context window (default 3)")
    ap.add_argument("--vocab", type=int, default=100_000, help="chain states (default 100000)")
    ap.add_argument("--successors", type=int, default=256,
                    help="successors of each state (default 256)")
    ap.add_argument("--concentration", type=float, default=1.0,
                    help="Dirichlet concentration of the successor weights (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc-len", type=int, default=1000)
    ap.add_argument("--row-group-docs", type=int, default=1000)
    ap.add_argument("--docs-per-file", type=int, default=8000)
    ap.add_argument("--batch-rows", type=int, default=64,
                    help="--batch-rows of accumulate (default 64 documents = 64k tokens: the "
                         "budget is checked between batches, so a batch's new keys are the "
                         "table's overshoot; accumulate's own default is 4096)")
    ap.add_argument("--jobs-scale", type=float, default=10,
                    help="the corpus (a --scales value) for --jobs 2 vs 1 (default 10)")
    ap.add_argument("--spill-scale", type=float, default=10,
                    help="the corpus (a --scales value) for spilled vs in memory (default 10)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N (default 2)")
    ap.add_argument("--repeat-largest", type=int, default=1,
                    help="best of N for the largest corpus (default 1)")
    ap.add_argument("--poll", type=float, default=0.05,
                    help="memory sampling interval in seconds (default 0.05)")
    ap.add_argument("--data", metavar="DIR",
                    help="keep the corpora here and reuse them when the parameters match")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~1 min): budget 4M, 2000 states, 64 successors, "
                         "docs of 200 tokens, row groups of 100 docs, 1 repeat")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout (the table goes to stderr)")
    args = ap.parse_args(argv)
    if args.quick:
        args.memory, args.repeat, args.repeat_largest = "4M", 1, 1
        args.vocab, args.successors = 20_000, 64
        args.doc_len, args.row_group_docs, args.docs_per_file = 200, 100, 2000
        args.batch_rows = 32
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
        budget = parse_size(args.memory)
    except ValueError as exc:
        ap.error(str(exc))
    if not scales or any(s <= 0 for s in scales) or args.repeat < 1 \
            or args.repeat_largest < 1 or args.window < 1 or args.vocab < 2 \
            or args.successors < 1 or args.doc_len < 2 or args.batch_rows < 1:
        ap.error("scales, --repeat, --window, --successors, --batch-rows must be positive; "
                 "--vocab and --doc-len at least 2")
    if args.jobs_scale not in scales or args.spill_scale not in scales:
        ap.error("--jobs-scale and --spill-scale must be among --scales")
    if args.tokens:
        tokens = [int(float(t)) for t in args.tokens.split(",")]
        if len(tokens) != len(scales):
            ap.error("--tokens: one count per scale")
    else:
        tokens = [tokens_for(s, budget, args.window) for s in scales]
    if psutil is None:
        log("psutil is missing (pip install psutil, the `bench` extra): only the largest "
            "single process's peak is measured, not the whole tree")

    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    data = Path(args.data) if args.data else workdir / "corpora"
    chain_cache: dict = {}

    def chain():
        if "t" not in chain_cache:
            t0 = time.perf_counter()
            chain_cache["t"] = build_chain(args.vocab, args.successors, args.concentration,
                                           args.seed)
            log(f"  chain: {args.vocab:,} x {args.successors} in "
                f"{time.perf_counter() - t0:.1f}s")
        return chain_cache["t"]

    def label(s: float) -> str:
        return f"{s:g}x"

    results, checks, failures = [], [], []
    try:
        log("corpora")
        corpora = {}
        for i, (s, n) in enumerate(zip(scales, tokens)):
            params = corpus_params(args, label(s), n, i)
            corpora[s] = (write_corpus(data / f"corpus-{label(s)}", params, chain), params)
        chain_cache.clear()

        def run(name, files, memory, jobs, keep=False, repeat=1):
            stats, temp = workdir / f"stats-{name}", workdir / f"temp-{name}"
            best = None
            for r in range(repeat):
                m = measure(accumulate_cmd(files, stats, temp, memory, jobs, args),
                            poll=args.poll, temp=temp, logs=workdir)
                if m["returncode"] != 0:
                    failures.append(f"{name}: exit {m['returncode']}: {m['stderr']}")
                    log(f"  {name}: FAILED (exit {m['returncode']})\n{m['stderr']}")
                    return None, stats
                log(f"  {name} repeat {r + 1}/{repeat}: {m['seconds']:.2f}s, peak RSS tree "
                    f"{mib(m['peak_rss_tree'])} MiB, max process {mib(m['maxrss_process'])} "
                    f"MiB, {m['runs']} runs")
                if best is None:
                    best = m
                else:
                    peaks = {k: max(best[k] or 0, m[k] or 0) or None for k in
                             ("peak_rss_tree", "peak_anon_tree", "maxrss_process")}
                    if m["seconds"] < best["seconds"]:
                        best = m
                    best.update(peaks)
            man = manifest_of(stats)
            res = {"name": name, "memory": memory, "jobs": jobs, "tokens": man["n_examples"],
                   "nnz": man["nnz"], "stats_bytes": man["nnz"] * ENTRY_BYTES,
                   "stats_over_budget": man["nnz"] * ENTRY_BYTES / parse_size(memory),
                   "tokens_per_s": man["n_examples"] / best["seconds"], "repeat": repeat,
                   "files": len(files), **{k: v for k, v in best.items()
                                           if k not in ("stdout", "stderr", "returncode")}}
            results.append(res)
            if not keep:
                shutil.rmtree(stats, ignore_errors=True)
            shutil.rmtree(temp, ignore_errors=True)
            return res, stats

        log("baselines")
        baselines = {"import": measure([sys.executable, "-c", "import streamfit"],
                                       poll=args.poll, logs=workdir)}
        tiny = workdir / "tiny"
        tiny.mkdir()
        rng = np.random.default_rng(0)
        toks = rng.integers(0, min(args.vocab, 1000), size=4000, dtype=np.int32)
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, 4001, 1000, dtype=np.int32)),
                                       pa.array(toks))
        pq.write_table(pa.table({"tokens": arr}), tiny / "tiny.parquet", row_group_size=1)
        for jobs in (1, 2, 1, 2):  # the first two warm the numba cache
            m = measure(accumulate_cmd([tiny / "tiny.parquet"], workdir / "stats-tiny",
                                       workdir / "temp-tiny", args.memory, jobs, args),
                        poll=args.poll, logs=workdir)
            if m["returncode"] != 0:
                raise SystemExit(f"tiny accumulate failed: {m['stderr']}")
            baselines[f"tiny_jobs{jobs}"] = m
        for k, m in baselines.items():
            log(f"  {k}: tree {mib(m['peak_rss_tree'])} MiB, max process "
                f"{mib(m['maxrss_process'])} MiB, {m['seconds']:.2f}s")

        log("scales (--jobs 1)")
        largest = max(scales)
        kept = {}
        for s in scales:
            files = corpora[s][0]
            keep = s in (args.jobs_scale, args.spill_scale)
            res, stats = run(label(s), files, args.memory, 1, keep=keep,
                             repeat=args.repeat_largest if s == largest else args.repeat)
            if res is not None and keep:
                kept[s] = (res, stats)

        jobs_cmp = spill_cmp = None
        if args.jobs_scale in kept:
            log("--jobs 2")
            s = args.jobs_scale
            res2, stats2 = run(f"{label(s)} --jobs 2", corpora[s][0], args.memory, 2, keep=True,
                               repeat=args.repeat_largest if s == largest else args.repeat)
            if res2 is not None:
                res1 = kept[s][0]
                checks.append({"what": f"--jobs 2 == --jobs 1 ({label(s)})",
                               "problems": same_statistics(kept[s][1], stats2)})
                shutil.rmtree(stats2, ignore_errors=True)
                jobs_cmp = {"corpus": label(s), "jobs1_s": res1["seconds"],
                            "jobs2_s": res2["seconds"],
                            "ratio": res2["tokens_per_s"] / res1["tokens_per_s"],
                            "target": 1.8}
                jobs_cmp["met"] = jobs_cmp["ratio"] >= 1.8
        if args.spill_scale in kept:
            s = args.spill_scale
            res1 = kept[s][0]
            big = size_text(memory_for_no_spill(res1["nnz"]))
            log(f"in memory (--memory {big})")
            resm, statsm = run(f"{label(s)} in memory", corpora[s][0], big, 1, keep=True,
                               repeat=args.repeat_largest if s == largest else args.repeat)
            if resm is not None:
                problems = same_statistics(kept[s][1], statsm)
                if resm["runs"] not in (None, 1):
                    problems.append(f"the in-memory run spilled {resm['runs']} runs (not 1)")
                if res1["runs"] is not None and res1["runs"] < 2:
                    problems.append(f"the budget run wrote {res1['runs']} run(s): no spill")
                checks.append({"what": f"spilled == in memory ({label(s)})",
                               "problems": problems})
                shutil.rmtree(statsm, ignore_errors=True)
                spill_cmp = {"corpus": label(s), "in_memory_s": resm["seconds"],
                             "in_memory_memory": big, "spilled_s": res1["seconds"],
                             "spilled_runs": res1["runs"],
                             "ratio": res1["seconds"] / resm["seconds"], "target": 1.5}
                spill_cmp["met"] = spill_cmp["ratio"] <= 1.5
        for _, stats in kept.values():
            shutil.rmtree(stats, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    by_name = {r["name"]: r for r in results}
    base = baselines["import"]["peak_rss_tree"] or baselines["import"]["maxrss_process"]
    tiny1 = baselines["tiny_jobs1"]["peak_rss_tree"] or baselines["tiny_jobs1"]["maxrss_process"]
    scale_rows = [by_name[label(s)] for s in scales if label(s) in by_name]
    targets: dict = {"rss_growth": None, "under_budget": [], "jobs": jobs_cmp,
                     "spill": spill_cmp}
    if scale_rows:
        lo, hi = scale_rows[0], scale_rows[-1]
        peak = (lambda x: x["peak_rss_tree"] or x["maxrss_process"])
        ratio = peak(hi) / peak(lo)
        anon_ratio = (hi["peak_anon_tree"] or 0) / max(lo["peak_anon_tree"] or 1, 1)
        targets["rss_growth"] = {"from": lo["name"], "to": hi["name"], "ratio": ratio,
                                 "anon_ratio": anon_ratio, "target": 1.1, "met": ratio <= 1.1}
        for x in scale_rows:
            above = peak(x) - base
            targets["under_budget"].append({
                "name": x["name"], "peak_rss_tree": peak(x), "baseline": base,
                "above_baseline": above, "above_tiny": peak(x) - tiny1, "budget": budget,
                "met": above <= budget})
    if failures:
        checks.append({"what": "every command succeeded", "problems": failures})
    report = {
        "benchmark": "streamfit accumulate at scale",
        "config": {"memory": args.memory, "budget_bytes": budget, "scales": scales,
                   "tokens_requested": tokens, "window": args.window, "vocab": args.vocab,
                   "successors": args.successors, "concentration": args.concentration,
                   "seed": args.seed, "doc_len": args.doc_len,
                   "row_group_docs": args.row_group_docs, "docs_per_file": args.docs_per_file,
                   "batch_rows": args.batch_rows, "checkpoint": float(NO_CHECKPOINT),
                   "repeat": args.repeat, "repeat_largest": args.repeat_largest,
                   "poll": args.poll, "quick": args.quick,
                   "data_dir": str(Path(args.data).resolve()) if args.data else None},
        "corpora": {label(s): p for s, (_, p) in corpora.items()},
        "environment": environment(),
        "timer": "time.perf_counter around the subprocess (start-up included); best of repeat",
        "baselines": {k: {kk: vv for kk, vv in v.items() if kk not in ("stdout", "stderr")}
                      for k, v in baselines.items()},
        "results": results, "targets": targets, "checks": checks,
        "ok": not failures and all(not c["problems"] for c in checks),
        "run_seconds": time.perf_counter() - start,
    }
    if targets["rss_growth"] is None:
        report["ok"] = False
    table = format_report(report)
    if args.json:
        log(table)
        print(json.dumps(report, indent=1))
    else:
        print(table)
    if not report["ok"]:
        log("FAILED: a check or a command failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
