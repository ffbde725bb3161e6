#!/usr/bin/env python
"""Benchmark: `streamfit accumulate` at scale — peak memory and throughput of the
out-of-core accumulate for corpora 1x, 10x and 100x its memory budget, --jobs 2 vs 1, and
the cost of spilling.

What it measures
    Every measurement is a real subprocess, ``python -m streamfit accumulate FILES --memory
    BUDGET --jobs N --window 3 --vocab-size V --temp DIR --checkpoint 1e9 --batch-rows R
    --quiet --overwrite`` (--checkpoint 1e9: runs are spilled for memory only, never on a
    timer), timed by wall clock from its start to its exit (Python start-up and imports
    included: see the baselines), and watched for memory (Linux /proc):

    RSS, anon, PSS   peaks of the sum over the process and all its descendants (the --jobs
                     worker processes) of: the resident set size; the resident set less its
                     file-backed and shared-memory pages (/proc/PID/statm), i.e. the heap;
                     the proportional set size (/proc/PID/smaps_rollup: a page shared by n
                     processes counts 1/n in each — the fair figure for forked workers, whose
                     RSS sum counts the shared libraries n times). RSS and anon are sampled
                     every ``--poll`` seconds (0.02), PSS every ``--pss-every`` (0.5: reading
                     it costs ~2 ms a process, ~16 ms once numba's kernels are loaded) — but
                     every sample for the baselines: the workers of a tiny --jobs 2 run live
                     a fraction of a second, which samples 0.5 s apart can miss, and the
                     runtime is what a run's PSS is taken above. A page counts shared with
                     every process mapping it, this benchmark included (it imports numpy,
                     Arrow and numba too): PSS figures are comparable within one run only.
                     Spilled runs are read by the merge with plain reads into buffers of its
                     own (anon), not through memory maps; the parallel merge samples its key
                     ranges through memory maps (which fault in whole run files: their page
                     cache shows in the parent's RSS and PSS for that moment).
    max proc         ``ru_maxrss`` of the largest single process of the tree: exact, the
                     kernel's high-water mark (``os.wait4``). The command is started through a
                     bare ``python -S`` launcher with ``posix_spawn``, because a process's
                     ru_maxrss includes the memory of whatever it was forked from until its
                     exec (the benchmark itself, with numpy, pyarrow and numba, is large).
    phases           counting (reading, counting, spilling) until the merge begins writing
                     the statistics arrays into --stats — or, with --jobs N, the pieces of
                     them that its N processes write into the work directory first — then
                     merging; their times and peaks. Levels of the merge (more runs than it
                     reads at once) count as counting.
    runs             sorted runs spilled, counted in the --temp directory (every sample, and
                     every ``--dir-every`` seconds once it holds 128: they stay until the merge
                     has ended), and their bytes on disk.

    Corpus size relative to the budget: the in-memory size of a corpus is that of its final
    statistics, nnz x 16 bytes (one packed int64 key and one int64 count per non-zero, as in
    the hash table and in a run; nnz from the manifest), over the budget. It is reported as
    measured; token counts are picked (from a rough model of the default chain, or
    ``--tokens``) to land near 1, 10 and 100. The hash table that counts them needs 2-8x
    that: it is at most half full, and a worker spills when its table reaches a quarter of
    its share of the budget.

    Corpora: a sparse first-order Markov chain built here, deterministic from ``--seed``
    (``streamfit.synthetic.markov_chain`` is a dense V x V matrix, too big at V = 100k):
    each of ``--vocab`` states (100k) has ``--successors`` (256) random successors with
    Dirichlet (``--concentration`` 1) weights, sampled with alias tables by a small numba
    kernel. Spread rows and window 3 make most (context, next) pairs new: about 2-3
    non-zeros a token, so the 100x corpus needs ~190M tokens at a 64M budget. Written as
    Parquet (``tokens: list<int32>``, documents of ``--doc-len`` tokens, row groups of
    ``--row-group-docs`` documents, ``--docs-per-file`` documents a file), one directory
    per corpus size, in a temporary directory or ``--data DIR`` (reused when its parameters
    match). Generation is not timed; the files were just written (or read before), so they
    come from the page cache.

    Runs, in order: baselines (``python -c "import streamfit"``, ``streamfit accumulate
    --help`` — what every command pays before its work; a 4000-token corpus
    through ``accumulate`` with --jobs 1 and 2, twice: the first pair also warms numba's
    on-disk kernel cache); every corpus size with --jobs 1 at the budget; the
    ``--jobs-scale`` corpus (10x) with --jobs 2, then ``--jobs-rounds`` (3) interleaved
    rounds of --jobs 1 and 2 on it, whose median ratio is the --jobs figure (with each
    run's CPU seconds, user + system of the whole tree, also by phase: the tree's at the
    moment the merge begins, when the counting workers have been waited for — and the
    load average), each round ending with two --jobs 1 runs started at once: twice the
    time of one alone over theirs is this machine's ceiling for two processes that share
    nothing, and with the tiny corpus's time taken as serial (start-up, commit; the rest
    sped up by the ceiling) it bounds --jobs 2 (Amdahl's law, an upper bound: the
    merge's end is serial too); the ``--spill-scale`` corpus (10x) with a
    budget under which it does not spill (128 bytes per slot of the final hash table:
    16 GiB at the default, which allocates ~4 GiB) — and, for comparison, at the budget
    with accumulate's own default ``--batch-rows 4096`` (the budget is checked between
    batches, so one batch's new keys overshoot it; ``--no-default-batch`` skips this);
    the ``--jobs-scale`` corpus under each of ``--budgets`` (64M, 256M, 1G).
    ``--batch-rows`` defaults to the most documents whose keys fit the largest table a
    worker keeps without spilling (budget / 128 bytes / (doc-len x window): 174 at the
    default); smaller batches make more, smaller runs, which the merge pays for.
    Each is repeated ``--repeat`` times (best wall time; memory peaks the largest seen),
    the largest of several corpora ``--repeat-largest`` times.

    In the same run it checks that the spilled statistics equal the in-memory ones and
    --jobs 2 those of --jobs 1 (indptr, indices, data and the manifest's sizes and counts,
    via ``streamfit.load_stats``), and that the in-memory run wrote at most one run and the
    budget run more; it prints OK, or exits with status 1 on a mismatch or a failed command.

Targets (project issue, part 8) — reported, not asserted
    peak RSS grows <= 1.1x from 1x to 100x and stays under the budget plus a fixed overhead
    (reported separately: the import baseline, and the tiny accumulate, which adds the
    numba kernels and Arrow): for each of --budgets, peak RSS less the runtime (the tiny
    accumulate's peak, with as many processes) <= the budget, and PSS the same way, also
    by phase (counting: the workers, memory / N each; merging: the merge's N processes);
    --jobs 2 >= 1.8x the throughput of --jobs 1; spilling costs <= 1.5x the in-memory time on the same corpus.
    The load average is reported: other work on the machine shows in the times.

Rerun
    python tools/bench_scale.py                    # default size, ~10 min
    python tools/bench_scale.py --quick            # ~1 min smoke run (budget 2M)
    python tools/bench_scale.py --json > scale.json   # table on stderr
    python tools/bench_scale.py --data /tmp/scale-corpus   # keep/reuse corpora
    python tools/bench_scale.py --memory 32M --scales 1,10,100

Needs: Linux (/proc, ru_maxrss in KiB), numba (a streamfit dependency). Disk: the corpora
(~1 GB of Parquet at the default), and at once the largest corpus's spilled runs (~9 GB)
and statistics (nnz x 12 bytes, ~4.5 GB). Memory: the chain's alias tables (V x K x 12
bytes, 300 MB) and one corpus file while generating; the in-memory run ~4.5 GiB.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent))
import streamfit  # noqa: E402
from corpora import generated_files, record_generated  # noqa: E402
from harness import (block_options, command, load_results, log, machine_facts, report_status,  # noqa: E402
                     relative, save_and_render, write_block)
from internals import DEFAULT_BATCH_ROWS, parse_size  # noqa: E402

ENTRY_BYTES = 16           # one packed int64 key + one int64 count
NO_CHECKPOINT = "1e9"      # spill for memory only, never for time, in every measured run
META = "bench_scale_corpus.json"
MiB = 1 << 20

# nnz per token of the default chain (100k states, 256 successors, concentration 1) by
# window, at ~1e6, 1e7, 1e8 tokens: only used to pick token counts near the nominal ratios.
NNZ_PER_TOKEN = {1: (0.95, 0.75, 0.35), 2: (1.9, 1.55, 1.2), 3: (2.9, 2.55, 2.2)}


# ------------------------------------------------------------------------------ corpus

@njit(cache=False)
def _stack(p, j, small, large, ns, nl):
    """Vose's method: j onto the small stack (p[j] < 1) or the large one; the new heights."""
    if p[j] < 1.0:
        small[ns] = j
        return ns + 1, nl
    large[nl] = j
    return ns, nl + 1


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
            ns, nl = _stack(p, j, small, large, ns, nl)
        while ns > 0 and nl > 0:
            ns -= 1
            a = small[ns]
            nl -= 1
            g = large[nl]
            prob[a] = p[a]
            alias[a] = g
            p[g] = p[g] + p[a] - 1.0
            ns, nl = _stack(p, g, small, large, ns, nl)
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


def corpus_params(args, label: str, tokens: int, scale: float) -> dict:
    n_docs = max(2, -(-tokens // args.doc_len))
    return {"label": label, "tokens": n_docs * args.doc_len, "n_docs": n_docs,
            "doc_len": args.doc_len, "vocab": args.vocab, "successors": args.successors,
            "concentration": args.concentration, "chain_seed": args.seed,
            "sample_seed": args.seed + 1000 + round(scale * 1000),
            "row_group_docs": args.row_group_docs, "docs_per_file": args.docs_per_file,
            "sampler": "alias-v1"}


def write_corpus(directory: Path, params: dict, chain_fn) -> list[Path]:
    """Sample and write one corpus, a file at a time (reused when `params` match)."""
    meta_path = directory / META
    files, reuse = generated_files(meta_path, params)
    if reuse:
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
    record_generated(meta_path, params, files)
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

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

# Started by the benchmark, it starts the measured command and reports its wall time, exit
# status and ru_maxrss. The detour matters: a process's ru_maxrss includes the RSS of the
# process it was forked from until its exec, and the benchmark itself is large (numpy,
# pyarrow, numba); this launcher is a bare `python -S` of a few MiB, and posix_spawn
# shares its memory until the exec.
LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawn(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump({"pid": pid, "seconds": seconds, "maxrss_kib": usage.ru_maxrss,
               "cpu_seconds": usage.ru_utime + usage.ru_stime,
               "returncode": os.waitstatus_to_exitcode(status)}, fh)
"""


def children(pid: int) -> list[int]:
    """Child processes of `pid` (of all its threads), from /proc."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out += [int(c) for c in fh.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    todo, out = children(pid), []
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def statm(pid: int) -> tuple[int, int]:
    """(RSS, RSS minus file-backed and shared-memory pages) in bytes."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            f = fh.read().split()
        return int(f[1]) * PAGE, (int(f[1]) - int(f[2])) * PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and of its children that it has waited for
    (/proc/PID/stat: utime, stime, cutime, cstime); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def pss(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) in bytes: a page shared by n processes counts 1/n in each."""
    total = anon = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return total, anon


def run_files(temp: Path) -> tuple[list, bool]:
    """The spilled runs' files: in the subdirectory of `temp` that accumulate makes its
    own (count.out_of_core.work_directory), or in `temp` itself; and whether the pieces
    of the statistics that a merge in N processes (--jobs N) writes there first are seen
    (.<hex>.tmp-indices.npy: spill.merge_runs), i.e. the merge has begun."""
    runs, pieces = [], False

    def look(entry) -> None:
        nonlocal pieces
        if entry.name.startswith("run-") and entry.name.endswith(".npy"):
            runs.append(entry)
        elif ".tmp-indices" in entry.name or ".tmp-keys" in entry.name:
            pieces = True
    try:
        for e in os.scandir(temp):
            if e.is_dir():
                for f in os.scandir(e.path):
                    look(f)
            else:
                look(e)
    except OSError:
        pass
    return runs, pieces


def _merge_started(stats: Path) -> bool:
    """Whether the merge has begun writing the statistics arrays (F-*.npy, under a
    temporary name first)."""
    try:
        return any(e.name.startswith(("F-", ".F-")) for e in os.scandir(stats))
    except OSError:
        return False


def measure(cmd: list[str], *, poll: float, dir_every: float, pss_every: float, logs: Path,
            temp: Path | None = None, stats: Path | None = None) -> dict:
    """Run `cmd` (through the launcher); wall time, exit status, peak memory of its process
    tree (sampled; overall, and before / after the merge began writing into `stats`), the
    exact peak of its largest single process (ru_maxrss), and the spilled runs in `temp`."""
    result, out_path, err_path = logs / "last.json", logs / "last.stdout", logs / "last.stderr"
    result.unlink(missing_ok=True)
    zero = {"rss": 0, "anon": 0, "pss": 0, "pss_anon": 0}
    phase = {"count": dict(zero), "merge": dict(zero)}
    seen = {"procs": 0, "samples": 0, "pss_samples": 0, "runs": 0, "run_bytes": 0,
            "merge_at": None, "count_cpu": None}
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.monotonic()
        launcher = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(result), *cmd],
                                    stdout=fo, stderr=fe)
        next_pss = next_dir = 0.0
        while launcher.poll() is None:
            now = time.monotonic()
            if stats is not None and seen["merge_at"] is None and _merge_started(stats):
                seen["merge_at"] = now - t0  # a small directory: looked at every sample
            if seen["merge_at"] is not None and seen["count_cpu"] is None:
                # The counting workers have been waited for: their CPU is their parent's.
                seen["count_cpu"] = sum(cpu_seconds(p) for p in descendants(launcher.pid))
            # The runs directory every sample while it is small (a short run's runs live
            # briefly), every `dir_every` seconds once it holds many (their merge is long).
            if now >= next_dir or seen["runs"] < 128:
                next_dir = now + dir_every
                if temp is not None:
                    runs, pieces = run_files(temp)
                    if pieces and seen["merge_at"] is None:
                        seen["merge_at"] = now - t0
                        seen["count_cpu"] = sum(cpu_seconds(p) for p in descendants(launcher.pid))
                    if len(runs) > 2 * seen["runs"]:  # runs stay until the merge has ended
                        size = 0
                        for e in runs:
                            try:
                                size += e.stat().st_size
                            except OSError:
                                pass
                        seen["runs"] = len(runs) // 2  # keys and vals
                        seen["run_bytes"] = max(seen["run_bytes"], size)
            peak = phase["count" if seen["merge_at"] is None else "merge"]
            procs = descendants(launcher.pid)
            rss = anon = 0
            for p in procs:
                r, a = statm(p)
                rss, anon = rss + r, anon + a
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            seen["procs"] = max(seen["procs"], len(procs))
            seen["samples"] += 1
            if procs and now >= next_pss:
                next_pss = now + pss_every
                t, a = map(sum, zip(*(pss(p) for p in procs)))
                peak["pss"], peak["pss_anon"] = max(peak["pss"], t), max(peak["pss_anon"], a)
                seen["pss_samples"] += 1
            time.sleep(poll)
    try:
        r = json.loads(result.read_text())
    except (OSError, ValueError):
        r = {"seconds": math.nan, "maxrss_kib": 0, "returncode": launcher.returncode}
    both = {k: max(phase["count"][k], phase["merge"][k]) for k in zero}
    merge_s = None if seen["merge_at"] is None else max(r["seconds"] - seen["merge_at"], 0.0)
    return {"seconds": r["seconds"], "returncode": r["returncode"],
            "cpu_seconds": r.get("cpu_seconds"), "load_average": os.getloadavg()[0],
            "stdout": out_path.read_text(errors="replace").strip(),
            "stderr": err_path.read_text(errors="replace").strip()[-2000:],
            "peak_rss_tree": both["rss"], "peak_anon_tree": both["anon"],
            "peak_pss_tree": both["pss"], "peak_pss_anon_tree": both["pss_anon"],
            "maxrss_process": r["maxrss_kib"] * 1024,  # Linux: KiB
            "count_phase": {"seconds": None if merge_s is None else r["seconds"] - merge_s,
                            "cpu_seconds": seen["count_cpu"],
                            **{f"peak_{k}_tree": v for k, v in phase["count"].items()}},
            "merge_phase": {"seconds": merge_s,
                            **{f"peak_{k}_tree": v for k, v in phase["merge"].items()}},
            "max_processes": seen["procs"], "samples": seen["samples"],
            "pss_samples": seen["pss_samples"],
            "runs": seen["runs"] if temp is not None else None,
            "run_bytes": seen["run_bytes"] if temp is not None else None}


def accumulate_cmd(files, stats: Path, temp: Path, memory: str, jobs: int, args,
                   batch_rows: int | None = None) -> list[str]:
    return [sys.executable, "-m", "streamfit", "accumulate", *map(str, files),
            "--stats", str(stats), "--temp", str(temp), "--overwrite", "--quiet",
            "--memory", memory, "--jobs", str(jobs), "--window", str(args.window),
            "--vocab-size", str(args.vocab), "--checkpoint", NO_CHECKPOINT,
            "--batch-rows", str(batch_rows or args.batch_rows)]


def two_at_once(cmd_a: list[str], cmd_b: list[str], workdir: Path) -> dict:
    """Wall time of two commands started together, until both have ended: two --jobs 1
    accumulates of the same corpus at once show what this machine gives two processes
    that share nothing (memory bandwidth, page faults, the disk, the host), a ceiling for
    --jobs 2. Their outputs are removed."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in (cmd_a, cmd_b)]
    errs = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - start
    for name in ("stats-a", "temp-a", "stats-b", "temp-b"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    return {"seconds": seconds,
            "problems": [f"two --jobs 1 at once: exit status {p.returncode}: {e.strip()}"
                         for p, e in zip(procs, errs) if p.returncode != 0]}


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


def memory_target(res: dict, memory: str, budget: int, runtime: dict, help_: dict) -> dict:
    """Peak memory of one run against its budget: above the runtime (the tiny accumulate
    with as many processes: the interpreter with numpy, Arrow, numba's LLVM and the
    loaded kernels, which no budget shrinks) it should be at most the budget. PSS too:
    forked workers share the parent's pages, which their RSS sum counts once each."""
    above = res["peak_rss_tree"] - runtime["peak_rss_tree"]
    return {"name": res["name"], "memory": memory, "budget": budget, "jobs": res["jobs"],
            "baseline_help": help_["peak_rss_tree"], "runtime": runtime["peak_rss_tree"],
            "runtime_pss": runtime["peak_pss_tree"], "peak_rss": res["peak_rss_tree"],
            "peak_pss": res["peak_pss_tree"], "above_runtime": above,
            "pss_above_runtime": res["peak_pss_tree"] - runtime["peak_pss_tree"],
            # by phase: the counting workers' budget, and the merge's (its N processes)
            "count_pss_above_runtime": res["count_phase"]["peak_pss_tree"] - runtime["peak_pss_tree"],
            "merge_pss_above_runtime": res["merge_phase"]["peak_pss_tree"] - runtime["peak_pss_tree"],
            "stats_over_budget": res["stats_over_budget"], "runs": res["runs"],
            "met": above <= budget}


# ------------------------------------------------------------------------------- report

def mib(x) -> str:
    return "-" if not x else f"{x / MiB:,.0f}"


def secs(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_report(r: dict) -> str:
    c, env, b = r["config"], r["environment"], r["baselines"]
    lines = [
        f"streamfit accumulate at scale — budget --memory {c['memory']} "
        f"({c['budget_bytes'] / MiB:g} MiB), window {c['window']}, --batch-rows "
        f"{c['batch_rows']}{' (budget/128 B/doc-len/window)' if c['batch_rows_auto'] else ''}"
        f", --checkpoint {NO_CHECKPOINT} (spills for memory only)",
        f"corpora: sparse Markov chain, {c['vocab']:,} states x {c['successors']} successors "
        f"(Dirichlet {c['concentration']:g}, seed {c['seed']}), documents of {c['doc_len']} "
        f"tokens, row groups of {c['row_group_docs']} docs, {c['docs_per_file']} docs a file",
        f"{env['cpu']}, {env['cpu_count']} CPUs, "
        f"{env['memory_gib']:.0f} GiB; python {env['python']}, "
        f"numpy {env['numpy']}, pyarrow {env['pyarrow']}; best of {c['repeat']} "
        f"({c['repeat_largest']} for the largest); memory sampled every {c['poll']}s "
        f"(PSS every {c['pss_every']}s); load average {env['loadavg_at_start'][0]:.1f} at the "
        f"start, {env['load_average_end'][0]:.1f} at the end (1 min)",
        "",
        "baselines (fixed overhead; MiB, whole process tree):",
    ]
    for key, label in (("import", 'python -c "import streamfit"'),
                       ("help", "streamfit accumulate --help"),
                       ("tiny_jobs1", "accumulate, tiny corpus, --jobs 1"),
                       ("tiny_jobs2", "accumulate, tiny corpus, --jobs 2")):
        if key not in b:
            continue  # a report from before the --help baseline
        m = b[key]
        lines.append(f"  {label:<36} RSS {mib(m['peak_rss_tree']):>5}, anon "
                     f"{mib(m['peak_anon_tree']):>4}, PSS {mib(m['peak_pss_tree']):>4}, "
                     f"max process {mib(m['maxrss_process']):>4}; {m['seconds']:.2f}s")
    lines += ["", f"  {'run':<22}{'tokens':>13}{'nnz':>13}{'stats/':>8}{'wall':>8}"
              f"{'M tok':>7}{'RSS':>7}{'anon':>6}{'PSS':>7}{'max':>7}{'runs':>6}"
              f"{'spilled':>8}",
              f"  {'':<22}{'':>13}{'':>13}{'budget':>8}{'s':>8}{'/s':>7}{'MiB':>7}"
              f"{'MiB':>6}{'MiB':>7}{'proc':>7}{'':>6}{'MiB':>8}"]
    for res in r["results"]:
        lines.append(
            f"  {res['name']:<22}{res['tokens']:>13,}{res['nnz']:>13,}"
            f"{res['stats_over_budget']:>8.2f}{res['seconds']:>8.2f}"
            f"{res['tokens_per_s'] / 1e6:>7.2f}{mib(res['peak_rss_tree']):>7}"
            f"{mib(res['peak_anon_tree']):>6}{mib(res['peak_pss_tree']):>7}"
            f"{mib(res['maxrss_process']):>7}"
            f"{res['runs'] if res['runs'] is not None else '-':>6}{mib(res['run_bytes']):>8}")
    lines.append("  stats/budget: nnz x 16 bytes over the run's own --memory. RSS, anon (RSS "
                 "less file-backed pages), PSS: peaks of the whole process tree; max proc: "
                 "ru_maxrss of its largest process; runs: sorted runs spilled")
    lines += ["", "  phases: counting (reading, counting, spilling) until the merge begins "
              "writing the statistics, then merging (peaks in MiB)",
              f"  {'run':<22}{'count s':>9}{'merge s':>9}{'RSS':>9}{'anon':>7}"
              f"{'RSS':>9}{'anon':>7}",
              f"  {'':<22}{'':>9}{'':>9}{'counting':>16}{'merging':>16}"]
    for res in r["results"]:
        cp, mp = res["count_phase"], res["merge_phase"]
        lines.append(f"  {res['name']:<22}{secs(cp['seconds']):>9}{secs(mp['seconds']):>9}"
                     f"{mib(cp['peak_rss_tree']):>9}{mib(cp['peak_anon_tree']):>7}"
                     f"{mib(mp['peak_rss_tree']):>9}{mib(mp['peak_anon_tree']):>7}")
    t = r["targets"]
    lines += ["", "targets (reported, not asserted):"]
    g = t["rss_growth"]
    if g:
        lines.append(f"  peak RSS {g['from']} -> {g['to']}: {g['ratio']:.2f}x (anon "
                     f"{g['anon_ratio']:.2f}x, PSS {g['pss_ratio']:.2f}x), target <= "
                     f"{g['target']} -> {'met' if g['met'] else 'NOT met'}")
    for u in t["under_budget"]:
        bud = u["budget"]
        lines.append(f"  {u['name']:<6} peak above the import baseline: RSS "
                     f"{mib(u['above_baseline']):>5} MiB = {u['above_baseline'] / bud:6.2f}x "
                     f"budget (anon {u['anon_above_baseline'] / bud:5.2f}x); above the tiny "
                     f"accumulate: RSS {u['above_tiny_accumulate'] / bud:6.2f}x, anon "
                     f"{u['anon_above_tiny_accumulate'] / bud:5.2f}x -> "
                     f"{'under' if u['met'] else 'OVER'} the budget")
    for m in t.get("memory", []):
        lines.append(f"  --memory {m['memory']:<5} --jobs {m['jobs']}: peak RSS {mib(m['peak_rss']):>5} "
                     f"MiB - runtime {mib(m['runtime']):>4} (--help {mib(m['baseline_help'])}) = "
                     f"{mib(m['above_runtime']):>5} MiB = {m['above_runtime'] / m['budget']:.2f}x "
                     f"the budget (PSS {m['pss_above_runtime'] / m['budget']:.2f}x{pss_phases(m)}), "
                     f"target <= 1 -> {'met' if m['met'] else 'NOT met'}")
    j = t["jobs"]
    if j:
        for i, p in enumerate(j.get("rounds", [])):
            one, two = p["1"], p["2"]
            lines.append(f"  round {i + 1}: --jobs 1 {one['seconds']:.2f}s (CPU "
                         f"{one['cpu_seconds']:.2f}s{cpu_phases(one)}, merge "
                         f"{secs(one['merge_seconds'])}s), --jobs 2 {two['seconds']:.2f}s (CPU "
                         f"{two['cpu_seconds']:.2f}s{cpu_phases(two)}, merge "
                         f"{secs(two['merge_seconds'])}s): {p['ratio']:.2f}x; load "
                         f"{one['load_average']:.1f} / {two['load_average']:.1f}"
                         + (f"; two --jobs 1 at once {p['two_jobs1_at_once_s']:.2f}s: ceiling "
                            f"{p['ceiling']:.2f}x, bound {p['bound']:.2f}x" if "ceiling" in p
                            else ""))
        lines.append(f"  --jobs 2 vs --jobs 1 on {j['corpus']}: {j['ratio']:.2f}x throughput "
                     f"({j.get('ratio_from', 'one run each')}; best runs {j['jobs1_s']:.2f}s -> "
                     f"{j['jobs2_s']:.2f}s), target >= {j['target']} "
                     f"-> {'met' if j['met'] else 'NOT met'}")
        if j.get("ceiling"):
            lines.append(f"  this machine's ceiling for two processes: {j['ceiling']:.2f}x (two "
                         f"--jobs 1 at once against one alone, median); with the "
                         f"{j['fixed_s']:.2f}s a tiny corpus takes (start-up, commit) serial, "
                         f"at most {j['bound']:.2f}x for --jobs 2: it reached "
                         f"{j['ratio'] / j['bound']:.0%} of that")
    sp = t["spill"]
    if sp:
        lines.append(f"  spilling vs in memory on {sp['corpus']}: {sp['ratio']:.2f}x the time "
                     f"({sp['in_memory_s']:.2f}s with --memory {sp['in_memory_memory']}, "
                     f"{sp['in_memory_runs']} run(s) seen -> {sp['spilled_s']:.2f}s, "
                     f"{sp['spilled_runs']} runs), target <= {sp['target']} -> "
                     f"{'met' if sp['met'] else 'NOT met'}")
    lines += ["", "checks:"]
    for ch in r["checks"]:
        lines.append(f"  {ch['what']}: {'OK' if not ch['problems'] else 'MISMATCH'}")
        for p in ch["problems"]:
            lines.append(f"    {p}")
    lines.append(f"{'OK' if r['ok'] else 'FAILED'}; total run time {r['run_seconds']:.1f}s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main

def cpu_phases(run: dict) -> str:
    """The CPU seconds of the process tree by phase (counting, merge), when measured."""
    if run.get("count_cpu_seconds") is None or run.get("merge_cpu_seconds") is None:
        return ""
    return f": counting {run['count_cpu_seconds']:.2f} + merge {run['merge_cpu_seconds']:.2f}"


def pss_phases(m: dict) -> str:
    """PSS above the runtime by phase, over the budget (reports from before: nothing)."""
    if "count_pss_above_runtime" not in m:
        return ""
    return (f": counting {m['count_pss_above_runtime'] / m['budget']:.2f}x, merging "
            f"{m['merge_pss_above_runtime'] / m['budget']:.2f}x")


def readme_table(r: dict) -> list[str]:
    """The README's table: the corpus sizes at the budget, --jobs 1."""
    c, env = r["config"], r["environment"]
    names = {f"{x:g}x" for x in c["scales"]}
    L = [f"From `{r['command']}` (a sparse {c['vocab'] / 1000:g}k-state Markov chain, window "
         f"{c['window']}, `--memory {c['memory']}`, each run a real `streamfit accumulate` "
         f"subprocess; peaks of the whole process tree; {env['cpu_count']} cores, load average "
         f"{env['loadavg_at_start'][0]:.1f} at the start and {env['load_average_end'][0]:.1f} at "
         "the end: other work on the machine shows in the times):", "",
         "| corpus | tokens | statistics / budget | peak RSS | anon (RSS less file pages) "
         "| spilled runs | M tokens/s |", "|---|---|---|---|---|---|---|"]
    for res in r["results"]:
        if res["name"] in names:
            t = res["tokens"]
            tokens = f"{t / 1e6:.2g}M" if t < 1e7 else f"{t / 1e6:.0f}M"
            L.append(f"| {res['name'].replace('x', '×')} | {tokens} | {res['stats_over_budget']:.1f} "
                     f"| {mib(res['peak_rss_tree'])} MiB | {mib(res['peak_anon_tree'])} MiB | "
                     f"{res['runs']} | {res['tokens_per_s'] / 1e6:.2f} |")
    mem = r["targets"].get("memory", [])
    if mem:
        b = r["baselines"]
        L += ["", f"Peak memory against the budget on the {mem[0]['name'].split()[0].replace('x', '×')}"
              f" corpus: the runtime is the peak of a tiny accumulate with as many processes "
              f"(interpreter, numpy, Arrow, numba's LLVM and the loaded kernels: "
              f"{mib(b['tiny_jobs1']['peak_rss_tree'])} MiB, where `accumulate --help` takes "
              f"{mib(b['help']['peak_rss_tree'])} MiB); what is above it should stay within "
              "`--memory`:", "",
              "| --memory | --jobs | statistics / budget | spilled runs | peak RSS | runtime "
              "| peak − runtime | / budget | PSS above runtime / budget | PSS: counting | PSS: merging |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in mem:
            L.append(f"| {m['memory']} | {m['jobs']} | {m['stats_over_budget']:.1f} | {m['runs']} "
                     f"| {mib(m['peak_rss'])} MiB | {mib(m['runtime'])} MiB "
                     f"| {mib(m['above_runtime'])} MiB | {m['above_runtime'] / m['budget']:.2f} "
                     f"| {m['pss_above_runtime'] / m['budget']:.2f} "
                     + ("| - | - |" if "count_pss_above_runtime" not in m else
                        f"| {m['count_pss_above_runtime'] / m['budget']:.2f} "
                        f"| {m['merge_pss_above_runtime'] / m['budget']:.2f} |"))
    return L


def render(saved: dict, readme: Path) -> None:
    log(f"{write_block(readme, 'scale', readme_table(saved))}: scale table written")


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
    ap.add_argument("--batch-rows", type=int,
                    help="--batch-rows of accumulate (default: the most documents whose keys "
                         "fit the table a worker may hold, budget / 128 bytes / (doc-len x "
                         "window): 174 at the default. The budget is checked between batches, "
                         "so one batch's new keys overshoot it, and a worker spills as soon as "
                         "its table reaches a quarter of the budget, so smaller batches make "
                         f"more, smaller runs; accumulate's own default is {DEFAULT_BATCH_ROWS})")
    ap.add_argument("--no-default-batch", action="store_true",
                    help=f"skip the extra run of the --spill-scale corpus with accumulate's "
                         f"default --batch-rows {DEFAULT_BATCH_ROWS}")
    ap.add_argument("--jobs-scale", type=float, default=10,
                    help="the corpus (a --scales value) for --jobs 2 vs 1 (default 10)")
    ap.add_argument("--spill-scale", type=float, default=10,
                    help="the corpus (a --scales value) for spilled vs in memory (default 10)")
    ap.add_argument("--budgets", default="64M,256M,1G",
                    help="budgets under which the --jobs-scale corpus is accumulated too (--jobs "
                         "1), for peak RSS less the runtime against the budget (default "
                         "64M,256M,1G; a budget equal to --memory reuses that run; '' skips)")
    ap.add_argument("--jobs-rounds", type=int, default=3,
                    help="interleaved rounds of --jobs 1 and --jobs 2 on the --jobs-scale "
                         "corpus after its runs; the ratio is their median (default 3; 0: the "
                         "ratio of the two runs)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N (default 2)")
    ap.add_argument("--repeat-largest", type=int, default=1,
                    help="best of N for the largest corpus (default 1)")
    ap.add_argument("--poll", type=float, default=0.02,
                    help="RSS sampling interval in seconds (default 0.02)")
    ap.add_argument("--dir-every", type=float, default=0.2,
                    help="interval in seconds between looks at the --temp directory once it "
                         "holds 128 runs (every sample before; default 0.2)")
    ap.add_argument("--pss-every", type=float, default=0.5,
                    help="PSS sampling interval in seconds (default 0.5: reading smaps_rollup "
                         "costs ~2 ms a process)")
    ap.add_argument("--data", metavar="DIR",
                    help="keep the corpora here and reuse them when the parameters match")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~1 min): budget 2M, 20000 states x 64 successors, "
                         "documents of 200 tokens, row groups of 100, 1 repeat")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout (the table goes to stderr)")
    block_options(ap, "scale", save="save the report there,")
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.readme))
        return 0
    if args.quick:
        args.memory, args.repeat, args.repeat_largest = "2M", 1, 1
        args.budgets = "2M,8M" if args.budgets == "64M,256M,1G" else args.budgets
        args.vocab, args.successors = 20_000, 64
        args.doc_len, args.row_group_docs, args.docs_per_file = 200, 100, 2000
    try:
        scales = [float(x) for x in args.scales.split(",") if x.strip()]
        budget = parse_size(args.memory)
        budgets = [x.strip() for x in args.budgets.split(",") if x.strip()]
        budget_bytes = {x: parse_size(x) for x in budgets}
    except ValueError as exc:
        ap.error(str(exc))
    auto_batch = args.batch_rows is None
    if auto_batch:
        args.batch_rows = max(1, budget // 128 // (args.doc_len * args.window))
    if not scales or any(x <= 0 for x in scales) or args.repeat < 1 \
            or args.repeat_largest < 1 or args.window < 1 or args.vocab < 2 \
            or args.successors < 1 or args.doc_len < 2 or args.batch_rows < 1 \
            or args.poll <= 0 or args.pss_every <= 0 or args.dir_every <= 0:
        ap.error("scales, --repeat, --window, --successors, --batch-rows, --poll must be "
                 "positive; --vocab and --doc-len at least 2")
    if args.jobs_rounds < 0:
        ap.error("--jobs-rounds is 0 or more")
    if args.jobs_scale not in scales or args.spill_scale not in scales:
        ap.error("--jobs-scale and --spill-scale must be among --scales")
    if args.tokens:
        tokens = [int(float(t)) for t in args.tokens.split(",")]
        if len(tokens) != len(scales):
            ap.error("--tokens: one count per scale")
    else:
        tokens = [tokens_for(x, budget, args.window) for x in scales]

    start = time.perf_counter()
    load_start = list(os.getloadavg())
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

    def label(x: float) -> str:
        return f"{x:g}x"

    largest = max(scales)
    results, checks, failures, baselines, corpora = [], [], [], {}, {}

    def meas(cmd, temp=None, stats=None, pss_every=None):
        if stats is not None:
            shutil.rmtree(stats, ignore_errors=True)  # the merge is seen by its new files
        return measure(cmd, poll=args.poll, dir_every=args.dir_every,
                       pss_every=pss_every or args.pss_every, logs=workdir, temp=temp,
                       stats=stats)

    def run(name, scale, memory, jobs, keep=False, batch_rows=None):
        """Measure one accumulate (best of the repeats); its row of the table."""
        files = corpora[scale][0]
        repeat = args.repeat_largest if scale == largest and len(scales) > 1 else args.repeat
        stats, temp = workdir / f"stats-{len(results)}", workdir / f"temp-{len(results)}"
        cmd = accumulate_cmd(files, stats, temp, memory, jobs, args, batch_rows)
        best = None
        for r in range(repeat):
            m = meas(cmd, temp, stats)
            if m["returncode"] != 0:
                failures.append(f"{name}: exit status {m['returncode']}: {m['stderr']}")
                log(f"  {name}: FAILED (exit status {m['returncode']})\n{m['stderr']}")
                shutil.rmtree(stats, ignore_errors=True)
                shutil.rmtree(temp, ignore_errors=True)
                return None, stats
            log(f"  {name} ({r + 1}/{repeat}): {m['seconds']:.2f}s, RSS {mib(m['peak_rss_tree'])}"
                f" MiB (anon {mib(m['peak_anon_tree'])}, PSS {mib(m['peak_pss_tree'])}), max "
                f"process {mib(m['maxrss_process'])} MiB, {m['runs']} runs; merge "
                f"{m['merge_phase']['seconds'] or 0:.2f}s, its RSS "
                f"{mib(m['merge_phase']['peak_rss_tree'])} MiB (anon "
                f"{mib(m['merge_phase']['peak_anon_tree'])}), before it "
                f"{mib(m['count_phase']['peak_rss_tree'])} (anon "
                f"{mib(m['count_phase']['peak_anon_tree'])})")
            if best is None:
                best = m
            else:
                peaks = {k: max(best[k], m[k]) for k in
                         ("peak_rss_tree", "peak_anon_tree", "peak_pss_tree",
                          "peak_pss_anon_tree", "maxrss_process", "runs", "run_bytes")}
                phases = {ph: {k: v if k == "seconds" else max(v, best[ph][k])
                               for k, v in m[ph].items()}
                          for ph in ("count_phase", "merge_phase")}
                if m["seconds"] < best["seconds"]:
                    best = m
                else:
                    for ph in phases:
                        phases[ph]["seconds"] = best[ph]["seconds"]
                best.update(peaks)
                best.update(phases)
        man = manifest_of(stats)
        res = {"name": name, "scale": scale, "memory": memory, "jobs": jobs,
               "batch_rows": batch_rows or args.batch_rows, "files": len(files),
               "tokens": man["n_examples"], "nnz": man["nnz"],
               "stats_bytes": man["nnz"] * ENTRY_BYTES,
               "stats_over_budget": man["nnz"] * ENTRY_BYTES / parse_size(memory),
               "tokens_per_s": man["n_examples"] / best["seconds"], "repeat": repeat,
               **{k: v for k, v in best.items() if k not in ("stdout", "stderr", "returncode")}}
        results.append(res)
        if not keep:
            shutil.rmtree(stats, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
        return res, stats

    try:
        log("corpora")
        for x, n in zip(scales, tokens):
            params = corpus_params(args, label(x), n, x)
            corpora[x] = (write_corpus(data / f"corpus-{label(x)}", params, chain), params)
        chain_cache.clear()

        log("baselines")
        baselines["import"] = meas([sys.executable, "-c", "import streamfit"])
        baselines["help"] = meas([sys.executable, "-m", "streamfit", "accumulate", "--help"])
        tiny = workdir / "tiny"
        tiny.mkdir()
        toks = np.random.default_rng(0).integers(0, min(args.vocab, 1000), size=4000,
                                                 dtype=np.int32)
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, 4001, 1000, dtype=np.int32)),
                                       pa.array(toks))
        pq.write_table(pa.table({"tokens": arr}), tiny / "tiny.parquet", row_group_size=1)
        for jobs in (1, 2, 1, 2):  # the first two also warm numba's on-disk cache
            m = meas(accumulate_cmd([tiny / "tiny.parquet"], workdir / "stats-tiny",
                                    workdir / "temp-tiny", args.memory, jobs, args),
                     pss_every=args.poll)  # every sample: its workers live briefly
            if m["returncode"] != 0:
                raise SystemExit(f"accumulate of a tiny corpus failed: {m['stderr']}")
            baselines[f"tiny_jobs{jobs}"] = m
        for k, m in baselines.items():
            log(f"  {k}: RSS {mib(m['peak_rss_tree'])} MiB (anon {mib(m['peak_anon_tree'])}, "
                f"PSS {mib(m['peak_pss_tree'])}), max process {mib(m['maxrss_process'])} MiB, "
                f"{m['seconds']:.2f}s")

        log(f"corpus sizes, --jobs 1, --memory {args.memory}")
        kept = {}
        for x in scales:
            res, stats = run(label(x), x, args.memory, 1,
                             keep=x in (args.jobs_scale, args.spill_scale))
            if res is not None and x in (args.jobs_scale, args.spill_scale):
                kept[x] = (res, stats)

        jobs_cmp = spill_cmp = None
        if args.jobs_scale in kept:
            x = args.jobs_scale
            log(f"--jobs 2 on {label(x)}")
            res2, stats2 = run(f"{label(x)} --jobs 2", x, args.memory, 2, keep=True)
            if res2 is not None:
                res1 = kept[x][0]
                checks.append({"what": f"--jobs 2 == --jobs 1 ({label(x)})",
                               "problems": same_statistics(kept[x][1], stats2)})
                shutil.rmtree(stats2, ignore_errors=True)
                ratio = res2["tokens_per_s"] / res1["tokens_per_s"]
                jobs_cmp = {"corpus": label(x), "jobs1_s": res1["seconds"],
                            "jobs2_s": res2["seconds"], "ratio": ratio, "target": 1.8,
                            "met": ratio >= 1.8, "rounds": []}
                files = corpora[x][0]
                for i in range(args.jobs_rounds):  # interleaved: load changes fall on both
                    pair = {}
                    for jobs in (1, 2):
                        st, tp = workdir / f"stats-round-{jobs}", workdir / f"temp-round-{jobs}"
                        m = meas(accumulate_cmd(files, st, tp, args.memory, jobs, args), tp, st)
                        shutil.rmtree(st, ignore_errors=True)
                        shutil.rmtree(tp, ignore_errors=True)
                        if m["returncode"] != 0:
                            failures.append(f"round {i + 1} --jobs {jobs}: exit status "
                                            f"{m['returncode']}: {m['stderr']}")
                            break
                        # keyed "1" / "2": what JSON makes of the keys anyway
                        pair[str(jobs)] = {k: m[k] for k in ("seconds", "cpu_seconds",
                                                             "load_average")}
                        pair[str(jobs)]["count_seconds"] = m["count_phase"]["seconds"]
                        pair[str(jobs)]["merge_seconds"] = m["merge_phase"]["seconds"]
                        count_cpu = m["count_phase"]["cpu_seconds"]
                        pair[str(jobs)]["count_cpu_seconds"] = count_cpu
                        pair[str(jobs)]["merge_cpu_seconds"] = None if count_cpu is None \
                            or m["cpu_seconds"] is None else m["cpu_seconds"] - count_cpu
                    if len(pair) == 2:
                        one, two = pair["1"], pair["2"]
                        pair["ratio"] = one["seconds"] / two["seconds"]
                        both = two_at_once(accumulate_cmd(files, workdir / "stats-a",
                                                          workdir / "temp-a", args.memory, 1,
                                                          args),
                                           accumulate_cmd(files, workdir / "stats-b",
                                                          workdir / "temp-b", args.memory, 1,
                                                          args), workdir)
                        if both["problems"]:
                            failures.extend(both["problems"])
                        else:
                            pair["two_jobs1_at_once_s"] = both["seconds"]
                            pair["ceiling"] = 2 * one["seconds"] / both["seconds"]
                            fixed = baselines["tiny_jobs1"]["seconds"]
                            pair["bound"] = one["seconds"] / (
                                fixed + (one["seconds"] - fixed) / pair["ceiling"])
                        jobs_cmp["rounds"].append(pair)
                        log(f"  round {i + 1}: --jobs 1 {one['seconds']:.2f}s "
                            f"(CPU {one['cpu_seconds']:.2f}s{cpu_phases(one)}), --jobs 2 "
                            f"{two['seconds']:.2f}s (CPU {two['cpu_seconds']:.2f}s"
                            f"{cpu_phases(two)}): {pair['ratio']:.2f}x, load "
                            f"{two['load_average']:.1f}; two --jobs 1 at once "
                            f"{both['seconds']:.2f}s: ceiling {pair.get('ceiling', math.nan):.2f}x, "
                            f"bound {pair.get('bound', math.nan):.2f}x")
                if jobs_cmp["rounds"]:
                    ratio = float(np.median([p["ratio"] for p in jobs_cmp["rounds"]]))
                    jobs_cmp.update(ratio=ratio, met=ratio >= 1.8, ratio_from="median of rounds")
                    for k in ("ceiling", "bound"):
                        got = [p[k] for p in jobs_cmp["rounds"] if k in p]
                        jobs_cmp[k] = float(np.median(got)) if got else None
                    jobs_cmp["fixed_s"] = baselines["tiny_jobs1"]["seconds"]
        if args.spill_scale in kept:
            x = args.spill_scale
            res1 = kept[x][0]
            big = size_text(memory_for_no_spill(res1["nnz"]))
            log(f"in memory on {label(x)} (--memory {big})")
            resm, statsm = run(f"{label(x)} in memory", x, big, 1, keep=True)
            if resm is not None:
                problems = same_statistics(kept[x][1], statsm)
                if resm["runs"] > 1:
                    problems.append(f"the in-memory run spilled: {resm['runs']} runs")
                if res1["runs"] < 2:
                    problems.append(f"the budget run wrote {res1['runs']} run(s): no spill")
                checks.append({"what": f"spilled == in memory ({label(x)})",
                               "problems": problems})
                shutil.rmtree(statsm, ignore_errors=True)
                ratio = res1["seconds"] / resm["seconds"]
                spill_cmp = {"corpus": label(x), "in_memory_s": resm["seconds"],
                             "in_memory_memory": big, "in_memory_runs": resm["runs"],
                             "spilled_s": res1["seconds"], "spilled_runs": res1["runs"],
                             "ratio": ratio, "target": 1.5, "met": ratio <= 1.5}
            if not args.no_default_batch and args.batch_rows != DEFAULT_BATCH_ROWS:
                log(f"accumulate's default --batch-rows {DEFAULT_BATCH_ROWS} on {label(x)}")
                run(f"{label(x)} --batch-rows {DEFAULT_BATCH_ROWS}", x, args.memory, 1,
                    batch_rows=DEFAULT_BATCH_ROWS)
        for _, stats in kept.values():
            shutil.rmtree(stats, ignore_errors=True)
        x = args.jobs_scale
        for b in budgets:
            if budget_bytes[b] == budget:
                continue  # the --jobs 1 run of this corpus above
            log(f"--memory {b} on {label(x)}")
            run(f"{label(x)} --memory {b}", x, b, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    by_name = {r["name"]: r for r in results}
    base = baselines["import"]
    scale_rows = [by_name[label(x)] for x in scales if label(x) in by_name]
    targets: dict = {"rss_growth": None, "under_budget": [], "jobs": jobs_cmp,
                     "spill": spill_cmp, "memory": []}
    if len(scale_rows) == len(scales):
        lo, hi = scale_rows[0], scale_rows[-1]
        ratio = hi["peak_rss_tree"] / lo["peak_rss_tree"]
        targets["rss_growth"] = {
            "from": lo["name"], "to": hi["name"], "ratio": ratio,
            "anon_ratio": hi["peak_anon_tree"] / lo["peak_anon_tree"],
            "pss_ratio": hi["peak_pss_tree"] / lo["peak_pss_tree"] if lo["peak_pss_tree"]
            else math.nan, "target": 1.1, "met": ratio <= 1.1}
    for x in scale_rows:
        above = x["peak_rss_tree"] - base["peak_rss_tree"]
        targets["under_budget"].append({
            "name": x["name"], "peak_rss_tree": x["peak_rss_tree"],
            "baseline": base["peak_rss_tree"], "above_baseline": above,
            "anon_above_baseline": x["peak_anon_tree"] - base["peak_anon_tree"],
            "above_tiny_accumulate": x["peak_rss_tree"] - baselines["tiny_jobs1"]["peak_rss_tree"],
            "anon_above_tiny_accumulate":
                x["peak_anon_tree"] - baselines["tiny_jobs1"]["peak_anon_tree"],
            "budget": budget, "met": above <= budget})
    runtime = baselines["tiny_jobs1"]
    for b in budgets:
        name = label(args.jobs_scale) + ("" if budget_bytes[b] == budget else f" --memory {b}")
        if name in by_name:
            targets["memory"].append(memory_target(by_name[name], b, budget_bytes[b], runtime,
                                                   baselines["help"]))
    name = f"{label(args.jobs_scale)} --jobs 2"
    if name in by_name:
        targets["memory"].append(memory_target(by_name[name], args.memory, budget,
                                               baselines["tiny_jobs2"], baselines["help"]))
    if failures:
        checks.append({"what": "every accumulate command succeeded", "problems": failures})
    report = {
        "benchmark": "streamfit accumulate at scale",
        "config": {"memory": args.memory, "budget_bytes": budget, "scales": scales,
                   "tokens_requested": tokens, "window": args.window, "vocab": args.vocab,
                   "successors": args.successors, "concentration": args.concentration,
                   "seed": args.seed, "doc_len": args.doc_len,
                   "row_group_docs": args.row_group_docs, "docs_per_file": args.docs_per_file,
                   "batch_rows": args.batch_rows, "batch_rows_auto": auto_batch,
                   "checkpoint": float(NO_CHECKPOINT),
                   "repeat": args.repeat, "repeat_largest": args.repeat_largest,
                   "poll": args.poll, "dir_every": args.dir_every,
                   "pss_every": args.pss_every, "quick": args.quick,
                   "data_dir": relative(args.data) if args.data else None},
        "corpora": {label(x): p for x, (_, p) in corpora.items()},
        "command": command("bench_scale.py", argv),
        "environment": {**machine_facts(), "loadavg_at_start": load_start},
        "timer": "time.perf_counter around the accumulate process (start-up included); "
                 "best of repeat; memory peaks the largest of the repeats",
        "baselines": {k: {kk: vv for kk, vv in v.items() if kk not in ("stdout", "stderr")}
                      for k, v in baselines.items()},
        "results": results, "targets": targets, "checks": checks,
        "ok": not failures and bool(checks) and all(not c["problems"] for c in checks),
        "run_seconds": time.perf_counter() - start,
    }
    table = format_report(report)
    if args.save:
        save_and_render(args.save, report, render, Path(args.readme))
    return report_status(table, report, args.json, "FAILED: a check or an accumulate command failed")


if __name__ == "__main__":
    sys.exit(main())
