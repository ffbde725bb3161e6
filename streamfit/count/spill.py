"""Spilling: sorted runs of packed (key, value) pairs on disk, and their streaming merge.

When the in-memory table reaches its budget it is written out as a run — keys in
increasing order, with their values — and emptied. At the end the runs are merged in one
streaming pass, a slice of each at a time (an external k-way merge), straight into the
CSR arrays of a statistics directory. Packed keys do not depend on the vocabulary size,
so runs written before the vocabulary was known merge into its final layout. n-gram
statistics are their sorted keys: the merge writes the keys themselves.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from . import kernels
from .stats import array_file
from ..errors import FormatError, StreamfitError
from ..io.progress import progress_bar
from ..io.files import (NpyWriter, atomic_path, disk_full, drop_cached, fault_point,
                        file_digest, fsync_dir, fsync_path, no_space, prefetch, save_npy,
                        temp_name, write_npy)

RUN_ENTRY_BYTES = 16
DAMAGED_RUN = ("is damaged ({}): its interrupted work cannot be resumed; run accumulate again "
               "with --overwrite to count from the start")
MERGE_CHUNK = 1 << 18  # entries a merge step sorts at most (~2 MiB arrays, whatever the budget)
WINDOW_SHARE = 8  # the runs' windows take 1 / WINDOW_SHARE of a merge's memory
MERGE_FAN_IN = 128  # runs merged at once (two open files each); more are merged in levels,
#                    which read and write everything once more (--jobs 2 spills twice as
#                    many runs, half the size, as --jobs 1)
FENCES = 32  # keys of a run kept in its journal entry, evenly spaced: a key range's cut is
#             found in every run by reading one block of keys, not by a binary search of
#             reads that, with the run's pages dropped, each wait for the disk. They are
#             one base64 string of little-endian int64s: as JSON lists, the journal saved
#             after every spill took 0.1 s to write at 686 runs (100x a 64M budget)


class PendingRun:
    """A sorted run written to temporary files in the page cache, not yet on the disk:
    `finish` fsyncs and names it and returns its journal entry (in a thread, while counting
    goes on: the keys and values are no longer needed, so the table is free at once with
    no copy of them held). `abort` removes what was written. A run that cannot be written
    whole (a full disk) leaves no file."""

    def __init__(self, directory: Path, keys: np.ndarray, vals: np.ndarray):
        n, f = int(keys.size), min(int(keys.size), FENCES)
        fences = keys[np.arange(f) * n // f] if f else keys[:0]
        self.directory = directory
        self.entry = {"name": f"run-{uuid.uuid4().hex[:12]}", "n": n,
                      "fences": base64.b64encode(fences.astype("<i8").tobytes()).decode()}
        self.files: list[tuple[Path, Path]] = []  # (temporary, final)
        try:
            for part, array in (("keys", keys), ("vals", vals)):
                path = directory / f"{self.entry['name']}.{part}.npy"
                self.files.append((temp_name(path), path))
                write_npy(self.files[-1][0], array)
        except BaseException as exc:
            self.abort()
            if disk_full(exc) and not isinstance(exc, StreamfitError):
                raise no_space(path, int(keys.nbytes + vals.nbytes)) from None
            raise

    def finish(self) -> dict:
        """fsync, rename, and drop from the page cache (on the disk now, and read only by
        the merge, much later) each file; the run's journal entry."""
        try:
            for i, (tmp, path) in enumerate(self.files):
                fsync_path(tmp)
                os.replace(tmp, path)
                fd = os.open(path, os.O_RDONLY)
                try:
                    drop_cached(fd)
                finally:
                    os.close(fd)
                if i == 0:
                    fault_point("mid_spill")
            fsync_dir(self.directory)
        except BaseException as exc:
            self.abort()
            if disk_full(exc) and not isinstance(exc, StreamfitError):
                raise no_space(path) from None
            raise
        return self.entry

    def abort(self) -> None:
        for tmp, path in self.files:
            tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)


def write_run(directory: Path, keys: np.ndarray, vals: np.ndarray) -> dict:
    """Write one sorted run crash-safely (`PendingRun`, finished here); its journal entry."""
    return PendingRun(directory, keys, vals).finish()


@contextlib.contextmanager
def unjournalled_run(directory: Path, value_dtype,
                     **fields) -> Iterator[tuple[NpyWriter, NpyWriter, dict]]:
    """Writers of the keys and values of a run that lives only for one merge and is never
    journalled (a merge killed midway starts over), so written without fsync; yields them
    and the run's entry (its size filled in at the end). On failure its files are removed
    and a full disk is reported naming them."""
    entry = {"name": f"run-{uuid.uuid4().hex[:12]}", "n": 0, **fields}
    writers = (NpyWriter(directory / f"{entry['name']}.keys.npy", np.int64),
               NpyWriter(directory / f"{entry['name']}.vals.npy", value_dtype))
    try:
        yield writers[0], writers[1], entry
        for w in writers:
            w.close(sync=False)
    except BaseException as exc:
        full = no_space(writers[0].path) if disk_full(exc) and not isinstance(
            exc, StreamfitError) else None  # the free space before the run is removed
        for w in writers:
            w.abort()
        remove_run(directory, entry)
        if full is not None:
            raise full from None
        raise
    entry["n"] = writers[0].n


def fences_of(entry: dict) -> np.ndarray:
    """A run's fences (`write_run`): none for runs written without them, or whose fences
    cannot be read (a cut is then found by reading the run's own keys)."""
    try:
        return np.frombuffer(base64.b64decode(entry.get("fences", ""), validate=True),
                             "<i8").astype(np.int64)
    except (TypeError, ValueError):
        return np.zeros(0, np.int64)


def remove_run(directory: Path, entry: dict) -> None:
    for part in ("keys", "vals"):
        (directory / f"{entry['name']}.{part}.npy").unlink(missing_ok=True)


def cells(keys: np.ndarray, task: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, class) of packed keys in the statistics layout of `stats.py`."""
    if task == "lm":
        k = keys >> 56
        ctx = (keys >> kernels.TOKEN_BITS) & kernels.TOKEN_MASK
        rows = k * (vocab_size + 1) + np.where(ctx == kernels.BOS_KEY, vocab_size, ctx)
        return rows, keys & kernels.TOKEN_MASK
    return keys >> kernels.LABEL_BITS, keys & kernels.LABEL_MASK


def packed(rows: np.ndarray, cols: np.ndarray, task: str, vocab_size: int) -> np.ndarray:
    """The inverse of `cells`."""
    cols = cols.astype(np.int64)
    if task == "lm":
        k, ctx = np.divmod(rows.astype(np.int64), vocab_size + 1)
        ctx = np.where(ctx == vocab_size, kernels.BOS_KEY, ctx)
        return (k << 56) | (ctx << kernels.TOKEN_BITS) | cols
    return (rows.astype(np.int64) << kernels.LABEL_BITS) | cols


def statistics_as_run(stats, directory: Path, chunk_rows: int = 1 << 16) -> dict:
    """Write existing statistics as a run (CSR order is key order), a block of rows at a
    time, so they merge with new runs in bounded memory. Such a run lives only for one
    merge and is never journalled (a merge killed midway starts over from the statistics),
    so it is written without fsync."""
    digests = stats.digests()  # statistics read whole: their sha256 checked on the way
    with unjournalled_run(directory, stats.data.dtype) as (wk, wv, entry):
        if stats.order:  # n-gram statistics: the sorted keys are the run
            for lo in range(0, stats.nnz, chunk_rows * 16):
                wk.append(np.asarray(stats.keys[lo:lo + chunk_rows * 16]))
                wv.append(np.asarray(stats.data[lo:lo + chunk_rows * 16]))
        for lo in range(0, 0 if stats.order else stats.n_features, chunk_rows):
            hi = min(stats.n_features, lo + chunk_rows)
            p0, p1 = int(stats.indptr[lo]), int(stats.indptr[hi])
            ptr = np.asarray(stats.indptr[lo:hi + 1])
            rows = lo + np.repeat(np.arange(hi - lo), np.diff(ptr))
            indices, data = np.asarray(stats.indices[p0:p1]), np.asarray(stats.data[p0:p1])
            for name, part in (("indptr", ptr[:-1]), ("indices", indices), ("data", data)):
                if name in digests:
                    digests[name].update(part)
            wk.append(packed(rows, indices, stats.task, stats.n_classes))
            wv.append(data)
        if "indptr" in digests:
            digests["indptr"].update(np.asarray(stats.indptr[stats.n_features:]))
        for d in digests.values():
            d.check()
    return entry


class _RunReader:
    """A run's keys and values, read a window at a time with plain reads into buffers of
    its own — not through a memory map, whose pages would stay resident and grow RSS with
    the corpus. An entry with "lo" / "hi" positions (`split_runs`) is read over that range
    only."""

    def __init__(self, directory: Path, entry: dict, step: int):
        self.n, self.step, self.name = entry["n"], step, entry["name"]
        self.synced = "fences" in entry
        self.pos, self.end = entry.get("lo", 0), entry.get("hi", entry["n"])
        self._files = []
        for part in ("keys", "vals"):
            fh = open(directory / f"{entry['name']}.{part}.npy", "rb", buffering=0)
            self._files.append(fh)  # closed by close(), also when the next line fails
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            if shape != (self.n,):
                raise FormatError(f"{directory}: run {entry['name']} "
                                  + DAMAGED_RUN.format("size mismatch"))
            self._files[-1] = (fh, fh.tell(), np.empty(min(step, self.end - self.pos), dtype))
        self._start, self._count = self.pos, 0  # the buffers hold entries _start.._start+_count

    def window(self, need: int) -> tuple[np.ndarray, np.ndarray]:
        """The entries from the current position on, at least `need` (at most the step) of
        them or all that are left; views of the buffers, valid until the next call. What is
        left of the window is moved to the front, and what follows it read behind (plain
        reads: numpy's fromfile costs ~50 us a call on a file object, most of a merge's
        reading with many small windows)."""
        have = self._start + self._count - self.pos
        if have < min(need, self.end - self.pos):
            lo, at = self.pos - self._start, self.pos + have
            for fh, offset, buf in self._files:
                count = min(buf.size - have, self.end - at)
                buf[:have] = buf[lo:lo + have]
                view = memoryview(buf[have:have + count]).cast("B")
                fh.seek(offset + at * buf.itemsize)
                done = 0
                while done < view.nbytes:
                    got = fh.readinto(view[done:])
                    if not got:
                        raise FormatError(f"run {self.name} " + DAMAGED_RUN.format(
                            "shorter than its header says"))
                    done += got
                # What was read is in the buffer: its pages can go (whole pages only, so
                # from the last window's end) if they are on the disk (a run of write_run,
                # which has fences; dropping a merge's own unsynced run would write it
                # out), and the next window is read ahead.
                end = offset + (at + count) * buf.itemsize
                if self.synced:
                    drop_cached(fh.fileno(), offset + at * buf.itemsize & ~4095, end)
                prefetch(fh.fileno(), end, offset + min(at + count + buf.size, self.end) * buf.itemsize)
            self._start, self._count = self.pos, have + count
        lo, hi = self.pos - self._start, self._count
        return self._files[0][2][lo:hi], self._files[1][2][lo:hi]

    def close(self) -> None:
        for f in self._files:
            (f[0] if isinstance(f, tuple) else f).close()


def fan_in() -> int:
    """How many runs one merge reads at once: MERGE_FAN_IN, or fewer when the open-file
    limit leaves no room for two files per run (with a margin for everything else)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return MERGE_FAN_IN
    if soft == resource.RLIM_INFINITY:
        return MERGE_FAN_IN
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    return max(2, min(MERGE_FAN_IN, (soft - open_now - 32) // 2))


def _merged(directory: Path, runs: list[dict], memory: int, bar) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The runs' (key, summed value) pairs in key order, a bounded chunk at a time: a
    slice of each run, at most about `memory` bytes in all. The runs' files are open until
    the generator is exhausted or closed."""
    total = max(1, sum(span(r) for r in runs))
    windows_entries = memory // (WINDOW_SHARE * RUN_ENTRY_BYTES)  # all windows together
    readers = []
    try:
        for r in runs:  # a run's window in proportion to its size: all cover about as many keys
            readers.append(_RunReader(directory, r, max(1024, windows_entries * span(r) // total)))
        while True:
            live = [r for r in readers if r.pos < r.end]
            if not live:
                return
            # A step takes at most MERGE_CHUNK entries (its arrays stay small and are reused
            # by the allocator, however large the windows are), from each run in proportion
            # to what is left of it and at most its window, which is refilled to hold that
            # share: the slices of all runs end near the same key, and a step merges about
            # MERGE_CHUNK entries (or all the windows hold).
            left = sum(r.end - r.pos for r in live)
            windows = []
            for r in live:
                share = max(1, min(r.step, MERGE_CHUNK * (r.end - r.pos) // left))
                keys, vals = r.window(share)
                windows.append((keys[:share], vals[:share], r.pos + share >= r.end))
            # Every key <= bound of every run lies in its window: bounded slices of each. A
            # window that holds the rest of its run bounds nothing.
            bound = min((int(keys[-1]) for keys, _, last in windows if not last),
                        default=max(int(keys[-1]) for keys, _, _ in windows))
            key_parts, val_parts = [], []
            for r, (keys, vals, _) in zip(live, windows):
                end = int(np.searchsorted(keys, bound, side="right"))
                key_parts.append(keys[:end])
                val_parts.append(vals[:end])
                r.pos += end
            keys = np.concatenate(key_parts)
            bar.update(keys.size)
            yield summed(keys, np.concatenate(val_parts))
    finally:
        for r in readers:
            r.close()


def summed(keys: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct `keys` in increasing order and the sum of the `vals` of each (`keys`, a
    new array, is overwritten). Float sums add their terms in the order given (the runs'
    order: a merge in key ranges sums as one merge does). Integer sums are exact in any
    order: where the key range and the values leave room, each value is packed below its
    key (key - smallest key) << bits | value, so that numpy's sort of the keys alone (SIMD,
    ~2.5x faster than an argsort and two gathers) carries the values with them."""
    if not keys.size:
        return keys, vals
    lo, hi = int(keys.min()), int(keys.max())
    bits = 0
    if vals.dtype.kind in "iu":
        low, high = int(vals.min()), int(vals.max())
        bits = max(1, high.bit_length()) if low >= 0 else 0
    if bits and (hi - lo).bit_length() + bits <= 62:
        keys -= lo
        keys <<= bits
        keys |= vals.astype(np.int64, copy=False)
        keys.sort()
        vals = keys & ((1 << bits) - 1)
        keys >>= bits
        keys += lo
    else:
        order = np.argsort(keys, kind="stable" if vals.dtype.kind == "f" else "quicksort")
        keys, vals = keys[order], vals[order]
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    if vals.dtype.kind == "f":
        return keys[starts], np.add.reduceat(vals, starts)
    # Integers: differences of a running sum at each key's last entry (2x faster than
    # reduceat; exact, as integer arithmetic wraps alike both ways).
    last = np.cumsum(vals)[np.append(starts[1:] - 1, keys.size - 1)]
    last[1:] -= last[:-1]
    return keys[starts], last


def _merge_level(directory: Path, runs: list[dict], width: int, value_dtype, memory: int,
                 progress: bool, level: int) -> list[dict]:
    """Merge each group of `width` runs into one run (a single run passes as it is).
    Merged runs live only until the next level has read them and are never journalled (a
    merge killed midway starts over from the journalled runs), so they are written
    without fsync, under run names that a resume removes as unjournalled."""
    out: list[dict] = []
    made: list[dict] = []  # this level's runs, removed again if it fails
    try:
        with progress_bar(progress, total=sum(span(r) for r in runs), unit="entries",
                          unit_scale=True, desc=f"merge (level {level})") as bar:
            for lo in range(0, len(runs), width):
                group = runs[lo:lo + width]
                if len(group) == 1:
                    out.append(group[0])
                    continue
                with unjournalled_run(directory, value_dtype, level=level) as (wk, wv, entry):
                    for keys, sums in _merged(directory, group, memory, bar):
                        wk.append(keys)
                        wv.append(sums)
                        fault_point("mid_merge")
                made.append(entry)
                out.append(entry)
                for r in group:
                    if r.get("level"):  # an earlier level's merged run: done with
                        remove_run(directory, r)
    except BaseException:
        for entry in made:
            remove_run(directory, entry)
        raise
    return out


def span(run: dict) -> int:
    """Entries of a run that a merge reads (its "lo" / "hi" range, or all)."""
    return run.get("hi", run["n"]) - run.get("lo", 0)


class _KeysOnDisk:
    """A run's sorted keys, read where they lie a few at a time (os.pread): sampling and
    searching them maps no page. Through a memory map, the samples' page faults mapped the
    whole files (the kernel maps pages around a fault): every run's keys, ~400 MiB of page
    cache in the parent's RSS at 10x a 64M budget with --jobs 2, for a few thousand keys.
    The run's "fences" (`write_run`), where its entry has them, narrow a search to one
    block read."""

    def __init__(self, path: Path, entry: dict):
        n = entry["n"]
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            header = np.lib.format.read_array_header_1_0 if major == 1 else \
                np.lib.format.read_array_header_2_0
            shape, _, self.dtype = header(fh)
            self.offset = fh.tell()
            if shape != (n,) or os.fstat(fh.fileno()).st_size < self.offset + n * self.dtype.itemsize:
                raise FormatError(f"{path.parent}: run {path.name} " + DAMAGED_RUN.format(
                    "shorter than its journal entry says"))
        self.path, self.n = path, n
        self.fences = fences_of(entry)
        self.fence_at = np.arange(self.fences.size) * n // max(self.fences.size, 1)
        self.fd = os.open(path, os.O_RDONLY)

    def at(self, positions) -> np.ndarray:
        size = self.dtype.itemsize
        return np.frombuffer(b"".join(os.pread(self.fd, size, self.offset + size * int(i))
                                      for i in positions), self.dtype)

    def searchsorted(self, lo: int, hi: int, key) -> int:
        """The first position in [lo, hi) whose key is not below `key` (hi if none)."""
        if self.fences.size:  # the first key not below `key` lies between two fences
            i = int(np.searchsorted(self.fences, key))  # fences[:i] < key <= fences[i:]
            start = int(self.fence_at[i - 1]) if i else 0
            stop = int(self.fence_at[i]) + 1 if i < self.fences.size else self.n
            size = self.dtype.itemsize
            data = os.pread(self.fd, (stop - start) * size, self.offset + start * size)
            block = np.frombuffer(data[:len(data) // size * size], self.dtype)
            if block.size != stop - start or (i and block[0] != self.fences[i - 1]) or \
                    (i < self.fences.size and block[-1] != self.fences[i]):
                raise FormatError(f"{self.path.parent}: run {self.path.name} " +
                                  DAMAGED_RUN.format("its keys are not those its journal "
                                                     "entry says"))
            return min(max(start + int(np.searchsorted(block, key)), lo), hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.at([mid])[0] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def sample(self, lo: int, hi: int, samples: int) -> np.ndarray:
        """Keys evenly spaced over [lo, hi), about `samples` of them: the fences where the
        range is the whole run."""
        if self.fences.size and (lo, hi) == (0, self.n):
            return self.fences
        k = min(hi - lo, samples)
        return self.at(lo + np.arange(k) * (hi - lo) // k)

    def close(self) -> None:
        os.close(self.fd)


def split_runs(directory: Path, runs: list[dict], parts: int,
               samples: int = 256) -> list[list[dict]]:
    """The runs cut into `parts` disjoint ranges of keys holding about as many entries each
    (boundaries from `samples` evenly spaced keys of every run): for each range, its runs
    restricted to it (entries with "lo" / "hi" positions, empty ranges left out). Merged
    one by one, the ranges give the merge of all runs, in pieces to concatenate; a key's
    values meet in the same order, so every sum is bit for bit the same."""
    keys: dict[str, _KeysOnDisk] = {}
    try:
        for r in runs:
            keys[r["name"]] = _KeysOnDisk(directory / f"{r['name']}.keys.npy", r)
        return _split(runs, parts, samples, keys)
    finally:
        for k in keys.values():
            k.close()


def _split(runs: list[dict], parts: int, samples: int, keys: dict) -> list[list[dict]]:
    """split_runs on the runs' keys (name -> _KeysOnDisk)."""
    picked, weights = [], []
    for r in runs:
        lo, m = r.get("lo", 0), span(r)
        if m:
            picked.append(keys[r["name"]].sample(lo, lo + m, samples))
            weights.append(np.full(picked[-1].size, m / picked[-1].size))
    if parts <= 1 or not picked:
        return [runs]
    order = np.argsort(np.concatenate(picked), kind="stable")
    sample = np.concatenate(picked)[order]
    mass = np.cumsum(np.concatenate(weights)[order])
    # A run holds (samples below a key) blocks below it, less half a block on average (each
    # sample opens its block): without that, the first part came out ~3% short (32 fences).
    shift = 0.5 * sum(w[0] for w in weights)
    at = np.searchsorted(mass, mass[-1] * np.arange(1, parts) / parts + shift)
    cuts = np.unique(sample[np.minimum(at, sample.size - 1)])
    cuts = cuts[cuts > sample[0]]  # part i holds the keys in [cuts[i - 1], cuts[i])
    out = []
    for i in range(cuts.size + 1):
        part = []
        for r in runs:
            lo, hi = r.get("lo", 0), r.get("hi", r["n"])
            k = keys[r["name"]]
            a = lo if i == 0 else k.searchsorted(lo, hi, cuts[i - 1])
            b = hi if i == cuts.size else k.searchsorted(lo, hi, cuts[i])
            if b > a:
                part.append({**r, "lo": a, "hi": b})
        out.append(part)
    return out


def merge_part(directory: Path, runs: list[dict], *, task: str, vocab_size: int,
               n_features: int, value_dtype, paths: dict[str, Path], memory: int,
               progress: bool = False, ngram: bool = False) -> np.ndarray:
    """Merge runs (more than `fan_in()` first in levels) into the two NpyWriter files
    `paths` — packed keys (n-gram) or int32 class ids ("keys" / "indices"), and the summed
    values ("data") — and return the entries per statistics row (n-gram: none)."""
    width, level = fan_in(), 0
    row_counts = np.zeros(0 if ngram else n_features, dtype=np.int64)
    first = "keys" if ngram else "indices"
    try:
        while len(runs) > width:
            level += 1
            runs = _merge_level(directory, runs, width, value_dtype, memory, progress, level)
        with progress_bar(progress, total=sum(span(r) for r in runs), unit="entries",
                          unit_scale=True, desc="merge") as bar:
            wi = NpyWriter(paths[first], np.int64 if ngram else np.int32)
            wd = NpyWriter(paths["data"], value_dtype)
            try:
                for keys, sums in _merged(directory, runs, memory, bar):
                    if ngram:
                        wi.append(keys)
                    else:
                        rows, cols = cells(keys, task, vocab_size)
                        first_row = int(rows.min())  # count the rows of this step only
                        counts = np.bincount(rows - first_row)
                        row_counts[first_row:first_row + counts.size] += counts
                        wi.append(cols.astype(np.int32))
                    wd.append(sums)
                    fault_point("mid_merge")
            except BaseException:
                wi.abort()
                wd.abort()
                raise
            wi.close(sync=False)
            wd.close(sync=False)
    finally:
        for r in runs:
            if r.get("level"):
                remove_run(directory, r)
    return row_counts


def merge_runs(directory: Path, runs: list[dict], *, task: str, vocab_size: int,
               n_features: int, value_dtype, out_dir: Path, generation: str,
               memory: int, progress: bool = False, ngram: bool = False, parts: int = 1,
               map_parts=None) -> dict:
    """Merge sorted runs into the CSR arrays F-<generation>.{indptr,indices,data}.npy of
    `out_dir` (n-gram statistics: F-<generation>.{keys,data}.npy), summing equal keys,
    holding at most about `memory` bytes of run slices. Returns the arrays' manifest
    entries. At most `fan_in()` runs are open at once: more are first merged in levels.

    With `parts` > 1 the key space is cut into that many ranges (`split_runs`), merged
    apart — `map_parts(merge_part, [keyword arguments, ...])` runs them, in parallel
    processes where it can, each within memory / parts — the first straight into the
    output files, the others into pieces in `directory` that are then appended: the same
    arrays as one merge. `progress`: a bar of the entries merged (one per level)."""
    first = "keys" if ngram else "indices"
    dtypes = {first: np.int64 if ngram else np.int32, "data": value_dtype}
    paths = {name: out_dir / array_file(generation, name) for name in (first, "data")}
    common = dict(task=task, vocab_size=vocab_size, n_features=n_features,
                  value_dtype=value_dtype, ngram=ngram)
    pieces = split_runs(directory, runs, parts) if parts > 1 else [runs]
    with atomic_path(paths[first]) as ti, atomic_path(paths["data"]) as td:
        targets = {first: ti, "data": td}
        names = [targets] + [{name: directory / f".{uuid.uuid4().hex[:12]}.tmp-{name}.npy"
                              for name in targets} for _ in pieces[1:]]
        try:
            counts = (map_parts if len(pieces) > 1 and map_parts else _map_here)(merge_part, [
                dict(directory=directory, runs=piece, paths=piece_paths,
                     memory=max(memory // len(pieces), 1 << 16), progress=progress and len(pieces) == 1,
                     **common) for piece, piece_paths in zip(pieces, names)])
            row_counts = np.sum(counts, axis=0)
            # Both arrays at once (hashing and file I/O release the GIL): this part is serial.
            with ThreadPoolExecutor(2) as pool:
                digests = dict(zip(targets, pool.map(
                    lambda name: _concatenated(targets[name], [n[name] for n in names[1:]],
                                               dtypes[name]), targets)))
        finally:
            for piece_paths in names[1:]:
                for path in piece_paths.values():
                    path.unlink(missing_ok=True)
    out = {}
    if not ngram:
        indptr = np.zeros(n_features + 1, dtype=np.int64)
        np.cumsum(row_counts, out=indptr[1:])
        path = out_dir / array_file(generation, "indptr")
        out["indptr"] = {"file": path.name, "dtype": str(indptr.dtype),
                         "shape": list(indptr.shape), **save_npy(path, indptr)}
    for name in (first, "data"):
        path = paths[name]
        out[name] = {"file": path.name, "dtype": str(np.dtype(dtypes[name])),
                     "shape": [(digests[name]["size"] - NpyWriter.HEADER_BYTES)
                               // np.dtype(dtypes[name]).itemsize], **digests[name]}
    return out


def _concatenated(target: Path, pieces: list[Path], dtype, chunk: int = 1 << 22) -> dict:
    """Append the elements of the NpyWriter files `pieces` to the NpyWriter file `target`,
    give it the header of the whole and fsync it; returns its {"size", "sha256"}. The
    pieces are copied inside the kernel where it can (`_append`), and the file is hashed
    while its pages go to the disk."""
    itemsize = np.dtype(dtype).itemsize
    header = NpyWriter.HEADER_BYTES
    n = sum((os.path.getsize(p) - header) // itemsize for p in [target, *pieces])
    with open(target, "r+b", buffering=0) as fh:
        fh.seek(0, os.SEEK_END)
        for piece in pieces:
            with open(piece, "rb", buffering=0) as src:
                _append(fh, src, header, os.path.getsize(piece) - header)
            fault_point("mid_merge")
        fh.seek(0)
        fh.write(NpyWriter.header(dtype, n))
        with ThreadPoolExecutor(1) as pool:
            synced = pool.submit(os.fsync, fh.fileno())
            try:
                digest = file_digest(target, chunk)
            finally:
                synced.result()
    return {"size": header + n * itemsize, "sha256": digest["sha256"]}


def _append(dst, src, start: int, count: int) -> None:
    """Copy `count` bytes of the unbuffered file `src` from `start` to the end of the
    unbuffered file `dst`: by os.copy_file_range (inside the kernel; a copy through
    Python's buffers took 3x the time) where the system and the file systems allow it,
    else by reads and writes."""
    copy = getattr(os, "copy_file_range", None)
    src.seek(start)
    while count > 0:
        if copy is not None:
            try:
                done = copy(src.fileno(), dst.fileno(), count)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                     errno.EPERM, errno.EBADF):
                    raise
                copy = None
                continue
        else:
            block = src.read(min(count, 1 << 22))
            done = len(block or b"")
            view = memoryview(block or b"")
            while view:
                view = view[dst.write(view):]
        if not done:
            raise FormatError(f"{src.name} is shorter than its header says")
        count -= done


def _map_here(fn, calls: list[dict]) -> list:
    """`merge_runs`'s map_parts in this process, one after the other."""
    return [fn(**kw) for kw in calls]
