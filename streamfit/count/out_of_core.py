"""The out-of-core accumulate: bounded memory, several processes, crash-safe resume.

    units (file, row group) ─▶ workers: Accumulator, spilled to sorted runs at the budget
        ─▶ journal (runs + units consumed, replaced atomically after every spill)
        ─▶ k-way merge of the runs (+ the statistics already there) ─▶ statistics directory

The journal lives in the work directory (default STATS/.work) and is written by the parent
process alone. A run killed at any moment leaves the journal of its last spill: the next
`accumulate` with the same options skips every row group (and every row of a row group in
progress) that a journalled run holds, and ends with the same statistics as an
uninterrupted run. The statistics directory is locked for the whole run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .accumulate import Accumulator, accumulator_for
from ..defaults import CHECKPOINT_SECONDS, DEFAULT_MEMORY
from ..errors import InputError, OptionError, StreamfitError
from ..io.files import DirectoryLock, fault_point, write_json
from ..io.progress import progress_bar
from ..io.parquet import DEFAULT_BATCH_ROWS, iter_batches, open_parquet, resolve_paths
from .spill import PendingRun, cells, merge_runs, remove_run, statistics_as_run, write_run
from .stats import (MANIFEST, check_mergeable, combined_sources, commit, describe, load,
                    manifest_header, new_generation, remove_uncommitted, save_arrays, summary)

JOURNAL = "journal.json"
RUN_NAME = re.compile(r"run-[0-9a-f]{12}")  # spill.write_run's names
MAX_MEMORY = 1 << 50  # a budget beyond any one machine is a typing error


def physical_memory() -> int | None:
    """This machine's memory in bytes — or its container's limit (cgroup v2 or v1), when
    lower; None where the system does not say."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            sizes.append(int(text))
    sizes = [s for s in sizes if s > 0]
    return min(sizes) if sizes else None


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' → bytes; '50%' → that share of this machine's
    memory (or its container's limit)."""
    if text.strip().endswith("%"):
        try:
            share = float(text.strip()[:-1])
        except ValueError:
            share = math.nan
        if not 0 < share <= 100:
            raise OptionError(f"memory budget {text!r}: a share of memory is more than 0% and "
                              f"at most 100%")
        total = physical_memory()
        if total is None:
            raise OptionError(f"memory budget {text!r}: this system does not say how much "
                              f"memory it has; give a size (e.g. 4G)")
        text = str(int(total * share / 100))
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" else t
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise OptionError(f"memory budget {text!r} is not a size (e.g. 512M, 2G)")
    if value > MAX_MEMORY:
        raise OptionError(f"memory budget {text!r} is too large: at most {MAX_MEMORY >> 40}T")
    size = int(value)
    if size < 1 << 20:
        raise OptionError(f"memory budget {text!r} is too small: at least 1M")
    return size


@dataclass
class Job:
    """What every worker needs to know (picklable: it crosses process boundaries)."""

    task: str
    options: dict          # Accumulator keyword options
    batch_rows: int
    budget: int            # bytes for this worker's table
    work: str              # work directory
    checkpoint_seconds: float


@dataclass
class Journal:
    """What the runs in the work directory hold."""

    options: dict
    runs: list[dict] = field(default_factory=list)
    done: dict[str, dict] = field(default_factory=dict)     # path -> {row group: rows}
    partial: dict[str, dict] = field(default_factory=dict)  # path -> {row group: rows so far}
    sizes: dict[str, int] = field(default_factory=dict)
    counts: dict = field(default_factory=lambda: {"n_examples": 0, "l1_sum": 0.0, "empty_rows": 0})
    extent: dict = field(default_factory=lambda: {"max_id": -1, "max_label": -1, "max_width": 0})

    @classmethod
    def load(cls, path: Path) -> "Journal":
        raw = json.loads(path.read_text())
        journal = cls(**raw)
        for run in journal.runs:  # run files are read and removed: only streamfit's own names
            if not (isinstance(run.get("name"), str) and RUN_NAME.fullmatch(run["name"])):
                raise StreamfitError(f"{path}: names the run {run.get('name')!r}, not one of "
                                     f"streamfit's (run-<12 hex digits>): refused; remove "
                                     f"{path.parent} or pass --overwrite")
        return journal

    def save(self, path: Path) -> None:
        write_json(path, self.__dict__)

    def record(self, msg: dict) -> None:
        """Add one spill's report: its run, the units and rows it holds, its counts."""
        self.runs.extend(msg["runs"])
        for path, rg, rows in msg["done"]:
            self.done.setdefault(path, {})[str(rg)] = rows
            self.partial.get(path, {}).pop(str(rg), None)
        for path, rg, rows in msg["partial"]:
            self.partial.setdefault(path, {})[str(rg)] = rows
        for k, v in msg["counts"].items():
            self.counts[k] += v
        for k, v in msg["extent"].items():
            self.extent[k] = max(self.extent[k], v)

    def units_done(self) -> set[tuple[str, int]]:
        return {(p, int(rg)) for p, groups in self.done.items() for rg in groups}


def table_bits(budget: int) -> int:
    """The largest hash table (2^bits slots of 16 bytes) for a worker's `budget` bytes: at
    most half of it. The table never coexists with a grown copy of itself (CountTable.grow),
    a spill inside a batch sorts inside it (sorted_in_place) and writes from there, and a
    spill at a batch's end holds one sorted copy of its pairs while a thread writes it
    (0.4x the table), so the rest holds that copy, the key buffers of the partitioned or
    the sorted path (an eighth
    of the table; each path frees the other's, and the sorted path the table itself, while
    it counts), the counting sort's row counts and a decoded batch."""
    return max(10, int(np.log2(max(budget // 2 // 16, 1024))))


def _work(worker: int, units: list[tuple[str, int, int]], job: Job, report: Callable,
          keep_last: bool = False) -> None:
    """Accumulate `units` (path, row group, rows already journalled), spilling a run and
    reporting it whenever the table reaches the budget or a checkpoint is due. With
    `keep_last`, a table that never had to spill is reported in memory ("table": sorted
    keys and values) instead of as a run."""
    acc = Accumulator(job.task, table_bits=table_bits(job.budget), **job.options)
    work = Path(job.work)
    done: list = []
    last = time.monotonic()
    current: tuple[str, int, int] | None = None

    # A spill's run is written, fsynced and reported by a thread while counting goes on
    # (fsync waits for the disk without holding the GIL); one spill at a time, so at most
    # one table's sorted items wait to be written. The report follows its run's fsync.
    writer = ThreadPoolExecutor(1)
    pending: list = []
    spilled = False
    inside: list[dict] = []  # runs spilled inside a batch, reported with the next spill

    def spill_inside(keys: np.ndarray, vals: np.ndarray) -> None:
        # The table is full in the middle of a batch: a run, not a bigger table. Its files
        # are written here (into the page cache: the table, whose views these are, is then
        # free) and fsynced by the thread while counting goes on: fsynced here too, the
        # counting waited 1.0-1.6 s of a worker's 2.7-5 s on the bench_scale 10x corpus.
        # It is journalled only with the next spill (at a batch's end), so a run killed
        # before that recounts the batch and the resume removes this run as unjournalled.
        nonlocal spilled
        while pending:  # one run at a time in the page cache, waiting for the disk
            pending.pop().result()
        run = PendingRun(work, keys, vals)

        def finish() -> None:
            inside.append(run.finish())
            fault_point("mid_batch_spill")
        pending.append(writer.submit(finish))
        spilled = True
    acc.table.spill = spill_inside

    def spill(final: bool = False) -> None:
        nonlocal done, last, spilled, inside
        while pending:  # first, so that no two spills' items are held at once
            pending.pop().result()  # the previous spill's error, if any, is raised here
        keys, vals, counts = acc.take()
        in_memory = final and keep_last and not spilled
        msg = {"kind": "spill", "worker": worker, "runs": list(inside),
               "done": done, "table": (keys, vals) if in_memory else None,
               "partial": [current] if current else [], "counts": counts,
               "extent": {"max_id": acc.max_id, "max_label": acc.max_label,
                          "max_width": acc.max_width}}

        def write_and_report() -> None:
            if keys.size and not in_memory:
                msg["runs"] = msg["runs"] + [write_run(work, keys, vals)]
            report(msg)
        pending.append(writer.submit(write_and_report))
        spilled, inside = True, []
        done, last = [], time.monotonic()

    try:
        for path, rg, skip_rows in units:
            rows = skip_rows
            current = (path, rg, rows)
            for b in iter_batches(Path(path), acc.input_columns, row_groups=[rg],
                                  batch_rows=job.batch_rows):
                n = b.data.num_rows
                if b.row_offset + n <= skip_rows:
                    continue
                data = b.data.slice(max(0, skip_rows - b.row_offset))
                try:
                    acc.update(data)
                except InputError as exc:
                    raise exc.located(path=path, row_group=rg,
                                      row_offset=b.row_offset + (n - data.num_rows)) from None
                rows += data.num_rows
                current = (path, rg, rows)
                report({"kind": "progress", "rows": data.num_rows})
                fault_point("after_batch")
                if acc.table.full or time.monotonic() - last >= job.checkpoint_seconds:
                    spill()
            done.append((path, rg, rows))
            current = None
        spill(final=True)
        pending.pop().result()
    finally:
        writer.shutdown(wait=True)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when its parent dies, so a killed run leaves no orphan
    writing runs (or holding the directory lock)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _process_worker(worker, units, job, q) -> None:
    _die_with_parent()
    try:
        _work(worker, units, job, q.put)
        q.put({"kind": "finished", "worker": worker})
    except StreamfitError as exc:
        q.put({"kind": "error", "worker": worker, "message": str(exc)})
    except Exception as exc:  # report, so the parent stops instead of waiting forever
        q.put({"kind": "error", "worker": worker, "message": f"{type(exc).__name__}: {exc}"})


def _next_message(q, procs, what: str) -> dict:
    """The next message of the worker processes, waiting; an error as soon as one of them
    has died (a killed worker sends nothing)."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue_module.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise StreamfitError(f"a {what} process died (exit code {dead[0].exitcode}); "
                                     f"run again to resume") from None


def _load_kernels(unit: tuple[str, int, int], job: Job) -> None:
    """Load (from numba's on-disk cache, or compile) the counting kernels in this process,
    on the first rows of `unit`, by both paths of the table: forked workers then share
    them instead of each loading its own copy (~60 MiB and a fraction of a second each).
    Bad input is left to the worker, which reports where it is."""
    path, rg = unit[0], unit[1]
    for kind in ("hashing", "partitioned"):
        acc = Accumulator(job.task, table_bits=8, **job.options)  # small: it grows (rehash)
        acc.table.force_path = kind
        try:
            for b in iter_batches(Path(path), acc.input_columns, row_groups=[rg], batch_rows=8):
                acc.update(b.data)
                break
            acc.take()
        except InputError:
            return


def _start(procs: list) -> None:
    """Start (fork) the processes with the parent's objects frozen out of garbage collection:
    a child's collections then leave them, and the pages they lie on, alone."""
    gc.freeze()
    try:
        for p in procs:
            p.start()
    finally:
        gc.unfreeze()


def _run_workers(assignments: list[list], job: Job, on_report: Callable) -> None:
    if len(assignments) == 1:
        _work(0, assignments[0], job, on_report)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork":
        _load_kernels(assignments[0][0], job)
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(w, units, job, q), daemon=True)
             for w, units in enumerate(assignments)]
    _start(procs)
    running = len(procs)
    try:
        while running:
            msg = _next_message(q, procs, "worker")
            if msg["kind"] == "finished":
                running -= 1
            elif msg["kind"] == "error":
                raise _rebuild_error(msg["message"])
            else:
                on_report(msg)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def _process_call(index: int, fn: Callable, kwargs: dict, q) -> None:
    _die_with_parent()
    try:
        q.put({"kind": "result", "index": index, "result": fn(**kwargs)})
    except StreamfitError as exc:
        q.put({"kind": "error", "message": str(exc)})
    except Exception as exc:  # report, so the parent stops instead of waiting forever
        q.put({"kind": "error", "message": f"{type(exc).__name__}: {exc}"})


def map_processes(fn: Callable, calls: list[dict]) -> list:
    """[fn(**call) for call in calls], each call in a process of its own, all at once (the
    parts of a merge); a call that fails, or a process that dies, stops them all."""
    if len(calls) == 1:
        return [fn(**calls[0])]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=_process_call, args=(i, fn, kw, q), daemon=True)
             for i, kw in enumerate(calls)]
    _start(procs)
    results: dict[int, object] = {}
    try:
        while len(results) < len(procs):
            msg = _next_message(q, procs, "merge")
            if msg["kind"] == "error":
                raise _rebuild_error(msg["message"])
            results[msg["index"]] = msg["result"]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return [results[i] for i in range(len(calls))]


def _rebuild_error(message: str) -> StreamfitError:
    return InputError(message) if ": " in message else StreamfitError(message)


def work_directory(stats_dir: str | os.PathLike, temp: str | os.PathLike | None,
                   prefix: str = "streamfit-work") -> Path:
    """Where an accumulate keeps its spilled runs and journal: STATS/.work, or with `temp`
    a subdirectory of it that is streamfit's own, named after the statistics directory (a
    rerun with the same `temp` finds an interrupted run's journal there, and several
    statistics directories can share one `temp`). Only that subdirectory is ever created
    or removed in `temp`: the user's own files there are left alone."""
    if temp is None:
        return Path(stats_dir) / ".work"
    key = hashlib.sha256(str(Path(stats_dir).resolve()).encode()).hexdigest()[:16]
    return Path(temp) / f"{prefix}-{key}"


def accumulate_into(stats_dir: str | os.PathLike, paths, *, task: str | None = None,
                    window: int | None = None, overwrite: bool = False,
                    memory: int = DEFAULT_MEMORY, temp: str | os.PathLike | None = None,
                    jobs: int = 1, batch_rows: int = DEFAULT_BATCH_ROWS,
                    checkpoint_seconds: float = CHECKPOINT_SECONDS, progress: bool = False,
                    units: set[tuple[str, int]] | None = None, allow_empty: bool = False,
                    **options) -> dict:
    """Accumulate Parquet files into a statistics directory, out of core and resumably;
    returns the manifest. Into existing statistics, only row groups not yet counted are
    added; `overwrite` starts over. `units` ((resolved path, row group) pairs) restricts
    the run to those row groups; `allow_empty` commits statistics of no examples instead
    of refusing them (a distributed unit of empty documents). Options are those of
    `Accumulator`."""
    if jobs < 1:
        raise OptionError(f"jobs must be at least 1, not {jobs}")
    stats_dir = Path(stats_dir)
    files = resolve_paths(paths)
    created = not stats_dir.exists()
    stats_dir.mkdir(parents=True, exist_ok=True)
    work = work_directory(stats_dir, temp)
    # The lock comes first: a writer refused because another one holds the directory has
    # touched nothing (not the other's work directory, whose journal may not exist yet).
    with DirectoryLock(stats_dir):
        try:
            return _accumulate_locked(stats_dir, work, files, task, window, overwrite, memory,
                                      jobs, batch_rows, checkpoint_seconds, progress, units,
                                      allow_empty, options)
        except BaseException:
            # Leave no trace of a run that recorded nothing: an interrupted run's journal
            # stays, with the runs it names (to resume), but nothing else it did not record.
            remove_uncommitted(stats_dir)
            if not (work / JOURNAL).exists():
                shutil.rmtree(work, ignore_errors=True)
                if created and not any(stats_dir.iterdir()):
                    stats_dir.rmdir()
            else:
                with contextlib.suppress(OSError, ValueError, TypeError, StreamfitError):
                    _remove_unjournalled(work, Journal.load(work / JOURNAL))
            raise


def _accumulate_locked(stats_dir, work, files, task, window, overwrite, memory, jobs,
                       batch_rows, checkpoint_seconds, progress, only, allow_empty,
                       options) -> dict:
    previous = None
    if (stats_dir / MANIFEST).exists() and not overwrite:
        previous = load(stats_dir)
    if previous is not None and "order" not in options and window is None:
        options = {**options, "order": previous.order, "eos": previous.eos}
    template = accumulator_for(files, task or (previous.task if previous else None),
                               window=window if window is not None else
                               (previous.window if previous and previous.window else 1),
                               **options)
    if previous is not None and "encoding" not in options and template.task == "classify":
        template.encoding = previous.encoding   # adding to statistics keeps their encoding
    if previous is not None and (previous.task, previous.window, previous.order, previous.eos,
                                 previous.encoding) != \
            (template.task, template.window, template.order, template.eos, template.encoding):
        raise StreamfitError(
            f"{stats_dir} holds {describe(previous)} statistics, not {describe(template)}: "
            f"use another --stats directory or --overwrite")
    job_options = _job_options(template)
    identity = {"task": template.task, **job_options}
    journal = _open_journal(work, identity, previous, overwrite)
    counted = {(s["path"], rg) for s in (previous.sources if previous else [])
               for rg in s["row_groups"]} | journal.units_done()
    sizes = {**{s["path"]: s["size"] for s in (previous.sources if previous else [])},
             **journal.sizes}
    # Files of which something was counted (a file that failed validation before any of
    # its rows were journalled was not: fixing it must not block the rerun).
    counted_files = {p for p, _ in counted} | {p for p, groups in journal.partial.items() if groups}
    units, unit_rows, total_rows = [], [], 0
    for p in files:
        key = str(p.resolve())
        size = os.path.getsize(p)
        if key in counted_files and key in sizes and sizes[key] != size:
            raise StreamfitError(f"{p} changed since it was counted (size {sizes[key]} → "
                                 f"{size}): use --overwrite")
        journal.sizes[key] = size
        meta = open_parquet(p).metadata
        for rg in range(meta.num_row_groups):
            if (key, rg) in counted or (only is not None and (key, rg) not in only):
                continue
            skip = journal.partial.get(key, {}).get(str(rg), 0)
            units.append((key, rg, skip))
            unit_rows.append(meta.row_group(rg).num_rows - skip)
            total_rows += unit_rows[-1]
    resumed = bool(journal.runs or journal.done)
    if units:
        if jobs > 1 and template.task == "classify" and template.columns["features"] is not None \
                and template.n_features_fixed is None:
            width = first_dense_width([(p, rg) for p, rg, _ in units], template.task, job_options)
            job_options = {**job_options, "n_features": width}
        job = Job(template.task, job_options, batch_rows, max(memory // jobs, 1 << 16),
                  str(work), checkpoint_seconds)
        assignments = balanced(units, unit_rows, jobs)
        unit = "docs" if template.task == "lm" else "rows"
        with progress_bar(progress, total=total_rows, unit=unit, unit_scale=True,
                          desc="accumulate") as bar:
            def on_report(msg: dict) -> None:
                if msg["kind"] == "progress":
                    bar.update(msg["rows"])
                    return
                journal.record(msg)
                journal.save(work / JOURNAL)
            _run_workers(assignments, job, on_report)
    if not units and not journal.runs and previous is not None:
        shutil.rmtree(work, ignore_errors=True)
        return {"unchanged": True, **summary(previous.header())}
    if journal.counts["n_examples"] == 0 and not allow_empty:
        shutil.rmtree(work, ignore_errors=True)
        raise StreamfitError(f"no examples in {', '.join(map(str, files))}: nothing to "
                             f"accumulate")
    manifest = _merge_into(stats_dir, work, journal, previous, template, memory, progress=progress,
                           jobs=jobs)
    shutil.rmtree(work, ignore_errors=True)
    return {"unchanged": False, "resumed": resumed, **summary(manifest)}


def balanced(units: list, rows: list[int], jobs: int) -> list[list]:
    """`units` shared among at most `jobs` workers with about as many rows each: the
    largest first, each to the worker with the fewest rows so far (each worker's units
    then in their given order). Round-robin ignored the sizes: the large row groups of one
    file could all fall to one worker, and the run waits for the slowest."""
    n = min(jobs, len(units))
    load, mine = [0] * n, [[] for _ in range(n)]
    for i in sorted(range(len(units)), key=lambda i: -rows[i]):
        w = load.index(min(load))
        load[w] += rows[i]
        mine[w].append(i)
    return [[units[i] for i in sorted(m)] for m in mine if m]


def first_dense_width(units: list[tuple[str, int]], task: str, options: dict) -> int | None:
    """The length of the first dense feature row of the row groups `units` ((path, row
    group)), which several workers are all held to, as one process holds every row to its
    first one."""
    for path, rg in units:
        probe = accumulator_for([Path(path)], task, **options)
        for b in iter_batches(Path(path), probe.input_columns, row_groups=[rg], batch_rows=1):
            try:
                probe.update(b.data)
            except InputError as exc:
                raise exc.located(path=str(path), row_group=rg, row_offset=b.row_offset) from None
            return probe.dense_width
    return None


def _job_options(template: Accumulator) -> dict:
    return {"window": template.window, "order": template.order, "eos": template.eos,
            **template.columns, "encoding": template.encoding,
            "vocab_size": template.n_classes if template.task == "lm" else None,
            "n_classes": template.n_classes if template.task == "classify" else None,
            "n_features": template.n_features_fixed}


def count_units(out_dir: str | os.PathLike, units: list[tuple[str, int]], *, task: str | None,
                window: int = 1, memory: int = DEFAULT_MEMORY, temp: str | os.PathLike,
                batch_rows: int = DEFAULT_BATCH_ROWS, **options) -> dict:
    """Count the row groups `units` ((resolved path, row group), in order) into the new
    statistics directory `out_dir`, without a journal: a unit of distributed work, redone
    whole if lost. While the table fits `memory` the statistics go from memory to disk
    once (three arrays and a manifest); past it, runs are spilled to `temp` and merged.
    Statistics of no examples are committed too. Returns the manifest."""
    out_dir, work = Path(out_dir), Path(temp)
    files = list(dict.fromkeys(Path(p) for p, _ in units))
    template = accumulator_for(files, task, window=window, **options)
    job_options = _job_options(template)
    journal = Journal(options={"task": template.task, **job_options},
                      sizes={str(p): os.path.getsize(p) for p in files})
    tables = []

    def on_report(msg: dict) -> None:
        if msg["kind"] == "spill":
            journal.record(msg)
            if msg["table"] is not None:
                tables.append(msg["table"])
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    job = Job(template.task, job_options, batch_rows, memory, str(work), math.inf)
    _work(0, [(p, rg, 0) for p, rg in units], job, on_report, keep_last=True)
    return _merge_into(out_dir, work, journal, None, template, memory,
                       table=tables[0] if tables else None)


def _open_journal(work: Path, identity: dict, previous, overwrite: bool) -> Journal:
    """The journal of an interrupted run with the same options, or a fresh one."""
    path = work / JOURNAL
    if overwrite or not path.exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        return Journal(options=identity)
    journal = Journal.load(path)
    if journal.options != identity:
        raise StreamfitError(f"{work} holds an interrupted accumulate with other options "
                             f"({journal.options}); rerun it with those, or pass --overwrite")
    committed = {(s["path"], rg) for s in (previous.sources if previous else [])
                 for rg in s["row_groups"]}
    if journal.units_done() and journal.units_done() <= committed:
        # Killed after the merge was committed but before the work was cleaned up.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        return Journal(options=identity)
    _remove_unjournalled(work, journal)
    return journal


def _remove_unjournalled(work: Path, journal: Journal) -> None:
    """Remove run files the journal does not name (spilled after its last entry, or the
    merge's own) and half-written temporary files."""
    known = {r["name"] for r in journal.runs}
    for stale in work.glob("run-*.npy"):
        if stale.name.split(".")[0] not in known:
            stale.unlink(missing_ok=True)
    for stale in work.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


def _merge_into(stats_dir: Path, work: Path, journal: Journal, previous, template: Accumulator,
                memory: int, table: tuple[np.ndarray, np.ndarray] | None = None,
                progress: bool = False, jobs: int = 1) -> dict:
    """Merge the journalled runs and the previous statistics into new statistics; `table`
    (sorted keys and values of a table that never spilled) is the only part when given.
    With `jobs` > 1, that many processes merge disjoint ranges of keys at once."""
    runs = list(journal.runs)
    ext = journal.extent
    if template.order:
        v = template.n_classes if template.n_classes is not None else ext["max_id"] + 1
        n_classes = max(v, previous.n_classes) if previous is not None else v
        n_features, l1, dtype = 0, float(journal.counts["n_examples"]), np.int64
    elif template.task == "lm":
        v = template.n_classes if template.n_classes is not None else ext["max_id"] + 1
        if previous is not None:
            v = max(v, previous.n_classes)
        n_classes, n_features = v, template.window * (v + 1)
        l1 = float(journal.counts["n_examples"] * template.window)
        dtype = np.int64
    else:
        n_classes = template.n_classes if template.n_classes is not None else ext["max_label"] + 1
        n_features = template.n_features_fixed if template.n_features_fixed is not None else \
            max(ext["max_width"], ext["max_id"] + 1)
        if previous is not None:
            n_classes, n_features = max(n_classes, previous.n_classes), max(n_features, previous.n_features)
        l1 = float(journal.counts["l1_sum"])
        dtype = np.float64
    if previous is not None:
        runs.append(statistics_as_run(previous, work))
    generation = new_generation()
    if table is not None and template.order:
        arrays = save_arrays(stats_dir, generation, {"keys": table[0], "data": table[1]})
    elif table is not None:
        rows, cols = cells(table[0], template.task, n_classes)
        indptr = np.zeros(n_features + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_features), out=indptr[1:])
        arrays = save_arrays(stats_dir, generation, {"indptr": indptr,
                                                     "indices": cols.astype(np.int32),
                                                     "data": table[1].astype(dtype)})
    else:
        arrays = merge_runs(work, runs, task=template.task, vocab_size=n_classes,
                            n_features=n_features, value_dtype=dtype, out_dir=stats_dir,
                            generation=generation, memory=memory, progress=progress,
                            ngram=bool(template.order), parts=jobs, map_parts=map_processes)
    sources = list(previous.sources) if previous is not None else []
    for path, groups in journal.done.items():
        entry = {"path": path, "size": journal.sizes[path],
                 "row_groups": sorted(int(rg) for rg in groups), "rows": int(sum(groups.values()))}
        for s in sources:
            if s["path"] == path:
                s["row_groups"] = sorted(s["row_groups"] + entry["row_groups"])
                s["rows"] += entry["rows"]
                break
        else:
            sources.append(entry)
    header = manifest_header(
        task=template.task, window=template.window, n_classes=n_classes, n_features=n_features,
        nnz=arrays["data"]["shape"][0],
        n_examples=journal.counts["n_examples"] + (previous.n_examples if previous else 0),
        l1_sum=l1 + (previous.l1_sum if previous else 0.0),
        empty_rows=journal.counts["empty_rows"] + (previous.empty_rows if previous else 0),
        sources=sources, order=template.order, eos=template.eos, encoding=template.encoding)
    fault_point("before_commit")
    manifest = commit(stats_dir, header, arrays)
    fault_point("after_commit")
    # Several at once: an unlink waits on the file system more than it computes (206 runs
    # of the bench's 10x corpus: 0.70 s one by one, 0.33 s four at a time, load 5.5).
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda r: remove_run(work, r), journal.runs))
    return manifest


def refuse_duplicates(dirs) -> None:
    """A statistics directory named twice would be counted twice: refused."""
    seen: set[Path] = set()
    for d in dirs:
        if Path(d).resolve() in seen:
            raise OptionError(f"{d} is given twice: merging would count it twice")
        seen.add(Path(d).resolve())


def _directory_as_run(directory: str, work: Path) -> dict:
    return statistics_as_run(load(directory), work)


def merge_into(out_dir: str | os.PathLike, dirs, *, memory: int = DEFAULT_MEMORY,
               progress: bool = False, parts: int = 1, map_parts: Callable | None = None) -> dict:
    """Merge statistics directories into `out_dir` (which may be one of them) with the
    bounded-memory k-way merge; returns the manifest. With `parts` > 1, `map_parts(fn,
    [keyword arguments, ...])` runs the conversions of the shards to runs and the merges
    of `parts` disjoint key ranges at once (e.g. on Dask workers; `spill.merge_runs`)."""
    out_dir = Path(out_dir)
    refuse_duplicates(dirs)
    parts_n, parts = parts, [load(d) for d in dirs]
    check_mergeable(parts)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out_dir):
        work = out_dir / ".work-merge"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            first = parts[0]
            n_classes = max(s.n_classes for s in parts)
            n_features = 0 if first.order else first.window * (n_classes + 1) \
                if first.task == "lm" else max(s.n_features for s in parts)
            if parts_n > 1 and map_parts is not None:
                runs = map_parts(_directory_as_run, [dict(directory=str(d), work=work) for d in dirs])
            else:
                runs = [statistics_as_run(s, work) for s in parts]
            arrays = merge_runs(work, runs, task=first.task, vocab_size=n_classes,
                                n_features=n_features, value_dtype=first.data.dtype,
                                out_dir=out_dir, generation=new_generation(), memory=memory,
                                progress=progress, ngram=bool(first.order), parts=parts_n,
                                map_parts=map_parts)
            merged = dataclasses.replace(
                first, n_classes=n_classes, n_features=n_features,
                n_examples=sum(s.n_examples for s in parts), l1_sum=sum(s.l1_sum for s in parts),
                empty_rows=sum(s.empty_rows for s in parts),
                sources=combined_sources([src for s in parts for src in s.sources]))
            return commit(out_dir, {**merged.header(), "nnz": arrays["data"]["shape"][0]}, arrays)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            remove_uncommitted(out_dir)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failed merge leaves no empty output directory
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
