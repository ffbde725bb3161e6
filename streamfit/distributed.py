"""Distributed: accumulate, merge and streaming passes on a Dask distributed cluster.

Everything streamfit streams is a sum, so the work splits into units — consecutive row
groups, in file order, of about `unit_values` values (tokens, feature values) — that workers
process independently, and whose results add up:

    units ─▶ workers: fn(unit), a pure function ─▶ tree reduction on the workers ─▶ result

A unit amortises a task's fixed cost (scheduling, opening files, writing a shard) over
several row groups when they are small; the units depend only on the row groups to do, so
a rerun splits them the same way. `map_sum` is that executor for any function whose
results support `+` (evaluate's `Scores`, refine's `PassResult`). `accumulate_distributed`
maps each unit to a statistics shard in a directory the workers share, counted in memory
when it fits the budget (`pipeline.count_units`: no journal, one write), named by a hash
of the unit's whole range (files, sizes, row groups) and the options, written under a
temporary name and renamed into place: a unit whose worker is lost is run again by Dask
and rewrites only its own shard, a finished shard is reused, so nothing is counted twice.
Shards are merged in a tree on the workers, the last merge into the statistics directory
here; its manifest records every (file, row group) exactly once (the merge refuses
overlaps).

Every path (data, statistics, shards, weights) must name the same file on every worker and
on this machine: a shared filesystem. Dask is imported only when a cluster is used, so
streamfit works without the `dask` extra.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import operator
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import reduce
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence


from .count.accumulate import accumulator_for
from .defaults import INSTALL_HINT, MERGE_FAN_IN, MIN_UNITS, UNIT_VALUES
from .errors import OptionError, StreamfitError
from .model.evaluate import Scores, metrics, score_examples, unit_examples
from .io.files import DirectoryLock, fault_point, fsync_dir
from .io.progress import progress_bar
from .model.weights import load_model
from .count.out_of_core import (DEFAULT_MEMORY, count_units, first_dense_width, merge_into,
                                refuse_duplicates, work_directory)
from .io.parquet import DEFAULT_BATCH_ROWS, open_parquet, resolve_paths
from .train.core import PassFn, PassResult, full_pass
from .count.stats import MANIFEST, load, summary

SHARDS = ".shards"
PASS_ATTEMPTS = 3   # runs of a training pass whose tasks the scheduler cancelled


def _distributed():
    try:
        import distributed
    except ImportError:
        raise StreamfitError(f"running on Dask needs the dask extra: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def cluster(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: of the running cluster whose scheduler is at `scheduler`, or of a
    new local cluster of `workers` processes (one thread each), closed on exit."""
    distributed = _distributed()
    if (scheduler is None) == (workers is None):
        raise OptionError("give either a scheduler address or a number of local workers")
    if scheduler is not None:
        if "://" in scheduler and not scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            raise StreamfitError(f"{scheduler!r} is not a Dask scheduler address "
                                 f"(e.g. tcp://10.0.0.5:8786)")
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise StreamfitError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        with client:
            yield client
        return
    if workers < 1:
        raise OptionError(f"the number of Dask workers must be at least 1, not {workers}")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as lc, \
            distributed.Client(lc) as client:
        yield client


# --- units and the executor ----------------------------------------------------------------
class RowGroup(NamedTuple):
    path: str       # resolved
    size: int       # file size in bytes, part of a unit's identity
    row_group: int
    rows: int
    values: int     # values of its columns (tokens, features…), from the file's metadata


def row_groups(paths) -> list[RowGroup]:
    """Every row group of the files, globs or directories, in file order."""
    out = []
    for p in resolve_paths(paths):
        meta = open_parquet(p).metadata
        key, size = str(p.resolve()), os.path.getsize(p)
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            values = sum(group.column(c).num_values for c in range(group.num_columns))
            out.append(RowGroup(key, size, rg, group.num_rows, values))
    return out


@dataclass(frozen=True)
class Unit:
    """Consecutive row groups (possibly of several files): the unit of distributed work."""

    parts: tuple[RowGroup, ...]

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.parts)

    def files(self) -> list[tuple[str, list[int]]]:
        """(path, row groups) of each file the unit reads, in order."""
        out: list[tuple[str, list[int]]] = []
        for g in self.parts:
            if not out or out[-1][0] != g.path:
                out.append((g.path, []))
            out[-1][1].append(g.row_group)
        return out


def plan_units(groups: Sequence[RowGroup], unit_values: int | None = None) -> list[Unit]:
    """Consecutive row groups gathered into units of at least `unit_values` values (the
    last may have fewer): the work of a task, whatever the encoding or compression. By
    default UNIT_VALUES, or fewer where that would make fewer than MIN_UNITS units.
    Depends only on `groups`, so a rerun gets the same units."""
    if unit_values is not None and unit_values < 1:
        raise OptionError(f"the values per unit must be at least 1, not {unit_values}")
    if unit_values is None:
        unit_values = min(UNIT_VALUES, sum(g.values for g in groups) // MIN_UNITS)
    units, current, values = [], [], 0
    for g in groups:
        current.append(g)
        values += g.values
        if values >= unit_values:
            units.append(Unit(tuple(current)))
            current, values = [], 0
    if current:
        units.append(Unit(tuple(current)))
    return units


def source_units(paths, unit_values: int | None = None) -> list[Unit]:
    """The row groups of the files, globs or directories as units (see `plan_units`)."""
    return plan_units(row_groups(paths), unit_values)


def unit_batches(unit: Unit, **layout) -> Iterator:
    """The examples of a unit's row groups, file by file (evaluate.unit_examples)."""
    return chain.from_iterable(unit_examples(path, rgs, **layout) for path, rgs in unit.files())


def _run_unit(fn: Callable, unit: Unit, *args):
    result = fn(unit, *args)
    fault_point("after_unit")  # crash tests: a worker lost after its unit's work is done
    return result


def _sum_all(parts: list):
    return reduce(operator.add, parts)


def _reduce(client, futures: list, combine: Callable, fan_in: int, keep: int,
            *args) -> list:
    """Combine futures level by level in fixed groups of `fan_in` until at most `keep`
    remain: the grouping depends only on the order of the units, not on which worker
    finished first, so a rerun (or a retried task) sums in the same order."""
    level = futures
    while len(level) > keep:
        level = [client.submit(combine, level[i:i + fan_in], *args, pure=False)
                 if len(level[i:i + fan_in]) > 1 else level[i]
                 for i in range(0, len(level), fan_in)]
    return level


def _map_reduce(client, fn: Callable, units: Sequence[Unit], args: tuple, combine: Callable,
                combine_args: tuple, fan_in: int, keep: int, progress: bool, desc: str) -> list:
    distributed = _distributed()
    if not units:
        raise StreamfitError("no row groups to process")
    mapped = [client.submit(_run_unit, fn, u, *args, pure=False) for u in units]
    top = _reduce(client, mapped, combine, fan_in, keep, *combine_args)
    rows = {f.key: u.rows for f, u in zip(mapped, units)}
    done = distributed.as_completed(mapped)
    del mapped  # results are released as soon as their reduction has used them
    with progress_bar(progress, total=sum(rows.values()), unit="rows", unit_scale=True,
                      desc=desc) as bar:
        for f in done:
            if f.status == "error":
                f.result()  # raises the task's own exception
            bar.update(rows[f.key])
    return client.gather(top)


def map_sum(client, fn: Callable, units: Sequence[Unit], *args, progress: bool = False,
            desc: str = "pass"):
    """fn(unit, *args) for every unit on the workers, summed with `+` in a fixed pairwise
    tree. fn must be pure (a unit whose worker is lost is run again); args may be futures
    (client.scatter), which the workers resolve."""
    return _map_reduce(client, fn, units, args, _sum_all, (), 2, 1, progress, desc)[0]


# --- accumulate and merge ------------------------------------------------------------------
def _refuse_url(path: str | os.PathLike, what: str) -> Path:
    text = os.fspath(path)
    if "://" in text:
        raise StreamfitError(f"{what} {text!r}: URLs are not supported yet; use a directory "
                             f"on a filesystem every worker mounts at the same path")
    return Path(text)


def _publish(tmp: Path, out: Path) -> None:
    """Rename a finished shard into place; if a duplicate attempt got there first, keep
    theirs (the same unit gives the same statistics)."""
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / MANIFEST).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(out.parent)


def _unit_name(unit: Unit, settings: dict) -> str:
    """A name keyed by the unit's whole range (file, size, row group of each part) and the
    options: the same unit always writes the same shard."""
    identity = json.dumps({"parts": [[g.path, g.size, g.row_group] for g in unit.parts],
                           **{k: settings[k] for k in ("task", "window", "options")}},
                          sort_keys=True)
    return "unit-" + hashlib.sha256(identity.encode()).hexdigest()[:20]


def _accumulate_unit(unit: Unit, root: str, settings: dict) -> str:
    """The statistics of one unit in the shard directory `root`; returns its path."""
    out = Path(root) / _unit_name(unit, settings)
    if (out / MANIFEST).exists():
        return str(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tempfile.TemporaryDirectory(prefix="streamfit-unit-", dir=settings["temp"]) as temp:
            count_units(tmp, [(g.path, g.row_group) for g in unit.parts], task=settings["task"],
                        window=settings["window"], memory=settings["memory"], temp=temp,
                        batch_rows=settings["batch_rows"], **settings["options"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out)
    return str(out)


def _call(fn: Callable, kwargs: dict):
    return fn(**kwargs)


def _map_calls(client, fn: Callable, calls: list[dict]) -> list:
    """[fn(**call) for call in calls] on the workers (the final merge's conversions and key
    ranges, whose files are on the shared storage); results in order."""
    return client.gather([client.submit(_call, fn, kw, pure=False) for kw in calls])


def _merge_shards(shards: list[str], root: str, memory: int) -> str:
    """Merge shards into one, named by its parts (so a retried merge reuses it)."""
    out = Path(root) / ("merge-" + hashlib.sha256("\n".join(shards).encode()).hexdigest()[:20])
    if not (out / MANIFEST).exists():
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        merge_into(tmp, shards, memory=memory)
        _publish(tmp, out)
    return str(out)


def accumulate_distributed(client, stats_dir: str | os.PathLike, paths, *,
                           task: str | None = None, window: int | None = None,
                           overwrite: bool = False, memory: int = DEFAULT_MEMORY,
                           shards: str | os.PathLike | None = None,
                           temp: str | os.PathLike | None = None,
                           batch_rows: int = DEFAULT_BATCH_ROWS, unit_values: int | None = None,
                           progress: bool = False, **options) -> dict:
    """`pipeline.accumulate_into` on a Dask cluster, one task per unit of row groups (see
    `plan_units`): the same statistics (bit-identical counts) and the same summary.
    `memory` is each task's budget; `shards` (default STATS/.shards) holds the per-unit
    statistics until the final merge, so a rerun after an interruption reuses the finished
    ones; `temp` is where tasks spill on their worker (default: its temporary directory)."""
    stats_dir = _refuse_url(stats_dir, "statistics directory")
    # A user's --shards directory gets a subdirectory of streamfit's own: only that is
    # emptied on --overwrite and removed once merged.
    root = stats_dir / SHARDS if shards is None else \
        work_directory(stats_dir, _refuse_url(shards, "shard directory"), "streamfit-shards")
    files = resolve_paths(paths)
    previous = None
    if (stats_dir / MANIFEST).exists() and not overwrite:
        previous = load(stats_dir)
        if task is not None and task != previous.task or \
                window is not None and window != previous.window:
            raise StreamfitError(
                f"{stats_dir} holds {previous.task} statistics with window {previous.window}, "
                f"not {task or previous.task} window {window or previous.window}: use another "
                f"--stats directory or --overwrite")
        task, window = previous.task, previous.window
    counted = {(s["path"], rg): s["size"] for s in (previous.sources if previous else [])
               for rg in s["row_groups"]}
    todo = []
    for g in row_groups(files):
        if (g.path, g.row_group) in counted:
            if counted[g.path, g.row_group] != g.size:
                raise StreamfitError(f"{g.path} changed since it was counted (size "
                                     f"{counted[g.path, g.row_group]} → {g.size}): use --overwrite")
            continue
        todo.append(g)
    units = plan_units(todo, unit_values)
    if not units and previous is not None:
        if root.exists():
            with DirectoryLock(root):  # never another writer's shards
                shutil.rmtree(root, ignore_errors=True)
        return {"unchanged": True, **summary(previous.header())}
    if not units:
        raise StreamfitError(f"no row groups in {', '.join(map(str, files))}: nothing to "
                             f"accumulate")
    window = window if window is not None else 1
    template = accumulator_for(files, task, window=window, **options)
    if template.task == "classify" and template.columns["features"] is not None \
            and options.get("n_features") is None:
        width = first_dense_width([(g.path, g.row_group) for u in units for g in u.parts],
                                  template.task, options)
        options = {**options, "n_features": width}
    settings = {"task": template.task, "window": window, "memory": memory,
                "batch_rows": batch_rows, "options": options,
                "temp": None if temp is None else str(temp)}
    root.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(root):
        if overwrite:
            for old in root.iterdir():
                shutil.rmtree(old, ignore_errors=True)
        resumed = any(root.glob("unit-*"))
        top = _map_reduce(client, _accumulate_unit, units, (str(root), settings),
                          _merge_shards, (str(root), memory), MERGE_FAN_IN, MERGE_FAN_IN,
                          progress, "accumulate")
        parts = ([stats_dir] if previous is not None else []) + [Path(t) for t in top]
        if sum(load(p).n_examples for p in parts) == 0:
            raise StreamfitError(f"no examples in {', '.join(map(str, files))}: nothing to "
                                 f"accumulate")
        workers = max(1, len(client.scheduler_info()["workers"]))
        manifest = merge_into(stats_dir, parts, memory=memory, parts=workers,
                              map_parts=lambda fn, calls: _map_calls(client, fn, calls))
        shutil.rmtree(root, ignore_errors=True)  # still locked: no other writer's shards
    return {"unchanged": False, "resumed": resumed, **summary(manifest)}


def merge_distributed(client, out_dir: str | os.PathLike, dirs, *,
                      memory: int = DEFAULT_MEMORY) -> dict:
    """`pipeline.merge_into` with the merges of groups of shards on the workers and the
    last one here; returns the manifest."""
    out_dir = _refuse_url(out_dir, "output directory")
    dirs = [str(_refuse_url(d, "statistics directory")) for d in dirs]
    refuse_duplicates(dirs)
    if len(dirs) <= MERGE_FAN_IN:
        return merge_into(out_dir, dirs, memory=memory)
    root = out_dir / SHARDS
    root.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(root):
        top = client.gather(_reduce(client, dirs, _merge_shards, MERGE_FAN_IN, MERGE_FAN_IN,
                                    str(root), memory))
        manifest = merge_into(out_dir, top, memory=memory)
        shutil.rmtree(root, ignore_errors=True)
    return manifest


# --- streaming passes ----------------------------------------------------------------------
def _evaluate_unit(unit: Unit, weights: str, top_k: int, batch_rows: int, columns: dict) -> Scores:
    model = load_model(weights)
    return score_examples(model, unit_batches(
        unit, task=model.task, window=model.window, n_classes=model.n_classes,
        n_features=model.n_features, encoding=model.encoding, batch_rows=batch_rows,
        **columns), top_k)


def evaluate_distributed(client, weights: str | os.PathLike, paths, *, top_k: int = 5,
                         progress: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
                         unit_values: int | None = None, **columns) -> dict:
    """`evaluate.evaluate` of the weights file on a Dask cluster, one task per unit of row
    groups (see `plan_units`)."""
    path = str(Path(_refuse_url(weights, "weights file")).resolve())
    load_model(path)  # a missing or damaged weights file is reported here, once
    scores = map_sum(client, _evaluate_unit, source_units(paths, unit_values), path, top_k,
                     batch_rows, columns, progress=progress, desc="evaluate")
    return metrics(scores, top_k)


def _pass_unit(unit: Unit, w, expected: bool, observed: bool, layout: dict) -> PassResult:
    return full_pass(w, unit_batches(unit, **layout), expected=expected, observed=observed)


def _growth_unit(unit: Unit, layers, full: bool, inputs: bool, layout: dict):
    from .train.grow import growth_pass
    return growth_pass(layers, unit_batches(unit, **layout), full=full, inputs=inputs)


def _hessian_unit(unit: Unit, candidates, layout: dict):
    from .train.newton import hessian_pass
    return hessian_pass(candidates, unit_batches(unit, **layout))


def _scattered_pass(client, unit_fn: Callable, paths, unit_values: int | None, **layout) -> Callable:
    """A pass function for the data at `paths`: its first argument (the parameters) is sent
    to every worker once per pass, each unit of row groups is a task of unit_fn, the
    results are tree-summed. A pass cut short by a worker lost at the wrong moment — its
    tasks cancelled ("lost dependencies") or the broadcast of the parameters to it closed —
    is run again from the start, up to PASS_ATTEMPTS times: a pass is pure, so the sums are
    the same."""
    from distributed.comm.core import CommClosedError

    units = source_units(paths, unit_values)

    def pass_fn(params, *flags):
        for attempt in range(1, PASS_ATTEMPTS + 1):
            shared = None
            try:
                shared = client.scatter([params], broadcast=True, hash=False)[0]  # lists too
                return map_sum(client, unit_fn, units, shared, *flags, layout)
            except (concurrent.futures.CancelledError, CommClosedError):
                if attempt == PASS_ATTEMPTS:
                    raise
            finally:
                if shared is not None:
                    shared.release()
    return pass_fn


def pass_function(client, paths, *, task: str, window: int, n_classes: int, n_features: int,
                  batch_rows: int = DEFAULT_BATCH_ROWS, unit_values: int | None = None,
                  **columns) -> PassFn:
    """refine's full pass (loss, accuracy, E and F) on a Dask cluster: W is sent to every
    worker once per pass, each unit of row groups is a task, the PassResults are
    tree-summed."""
    return _scattered_pass(client, _pass_unit, paths, unit_values, task=task, window=window,
                           n_classes=n_classes, n_features=n_features, batch_rows=batch_rows,
                           **columns)


def hessian_function(client, paths, *, task: str, window: int, n_classes: int,
                     n_features: int, batch_rows: int = DEFAULT_BATCH_ROWS,
                     unit_values: int | None = None, **columns) -> Callable:
    """refine --method newton's pass (losses and gradients at the candidate steps, the
    Hessian at the first) on a Dask cluster: the candidates are sent to every worker once per
    pass, the HessianSums of the units are tree-summed."""
    return _scattered_pass(client, _hessian_unit, paths, unit_values, task=task, window=window,
                           n_classes=n_classes, n_features=n_features, batch_rows=batch_rows,
                           **columns)


def growth_pass_function(client, paths, *, task: str, window: int, n_classes: int,
                         n_features: int, batch_rows: int = DEFAULT_BATCH_ROWS,
                         unit_values: int | None = None, **columns) -> Callable:
    """grow's training pass (the growth statistics, or the output layer's loss and gradient)
    on a Dask cluster: the layers are sent to every worker once per pass, the GrowthSums of
    the units are tree-summed."""
    return _scattered_pass(client, _growth_unit, paths, unit_values, task=task, window=window,
                           n_classes=n_classes, n_features=n_features, batch_rows=batch_rows,
                           **columns)
