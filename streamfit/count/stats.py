"""Statistics: the sparse co-occurrence matrix F and its totals, on disk and merged.

F has one row per feature and one column per class. For token corpora (task `lm`) it holds
integer counts of (context position k, context token, next token), row k*(V+1) + token, with
row k*(V+1) + V for "before the document start"; each example's normalised input puts
1/window on each of its rows, so the explicit solution only needs the counts. For feature
corpora (task `classify`) it holds float64 sums of x / sum(x) per (feature, label).

n-gram statistics (`order` N > 0, task `lm`) hold instead the raw counts of every top-order
n-gram, BOS-padded, as sorted packed keys (`data.limits`) and int64 counts: sums too, and
every lower order, continuation count and count-of-counts derives from them at finalize
(those are not additive over shards, the raw counts are).

On disk a statistics directory holds `manifest.json` and three CSR arrays as `.npy` files
whose names carry a generation id: a new save writes new arrays, then atomically replaces
the manifest, then deletes the old arrays, so a killed save leaves the previous statistics.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FormatError, OptionError
from ..io.files import (StreamingDigest, check_array_entries, check_csr, check_fields,
                        header_checksum, load_npy, named_file, read_document, save_npy, verify,
                        write_json)

FORMAT = "streamfit-statistics"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("indptr", "indices", "data")
MANIFEST_FIELDS = {"task": str, "window": int, "n_classes": int, "n_features": int, "nnz": int,
                   "n_examples": int, "l1_sum": (int, float), "empty_rows": int, "sources": list,
                   "checksum": str}

NGRAM_ARRAYS = ("keys", "data")


def array_names(order: int) -> tuple[str, ...]:
    """The arrays of a statistics directory: CSR, or packed n-gram keys and counts."""
    return NGRAM_ARRAYS if order else ARRAYS


@dataclass
class Statistics:
    """Sufficient statistics of a corpus: F (CSR) plus counts. Sums, so shards merge by
    addition."""

    task: str                  # "lm" or "classify"
    n_classes: int             # lm: the vocabulary size V
    n_features: int            # lm: window * (V + 1)
    indptr: np.ndarray         # int64, n_features + 1
    indices: np.ndarray        # int32 class ids, sorted within each row
    data: np.ndarray           # lm: int64 counts; classify: float64 masses
    n_examples: int            # tokens (lm) or rows (classify)
    l1_sum: float              # sum of the raw inputs' L1 norms (lm: n_examples * window)
    window: int = 0            # lm only
    empty_rows: int = 0        # classify rows whose features are all zero (add nothing)
    sources: list[dict] = field(default_factory=list)  # {"path", "size", "row_groups", "rows"}
    # Loaded from a directory: each array's file and manifest entry, so that a pass that
    # reads an array whole can check its sha256 on the way (see `digests`).
    files: dict = field(default_factory=dict, repr=False, compare=False)
    _totals: tuple | None = field(default=None, repr=False, compare=False)
    order: int = 0             # n-gram statistics: N (then indptr/indices are empty)
    eos: bool = False          # n-gram statistics: an end-of-document token was counted
    keys: np.ndarray | None = None  # n-gram statistics: sorted packed n-gram keys
    encoding: str = "normalised"    # classify: how rows were read (featurize.ENCODINGS)

    @classmethod
    def of_ngrams(cls, keys: np.ndarray, counts: np.ndarray, *, order: int, eos: bool,
                  vocab_size: int, n_examples: int, sources: list[dict]) -> "Statistics":
        """n-gram statistics from sorted unique keys and their counts."""
        return cls(task="lm", n_classes=vocab_size, n_features=0,
                   indptr=np.zeros(1, np.int64), indices=np.zeros(0, np.int32),
                   data=np.asarray(counts, np.int64), n_examples=n_examples,
                   l1_sum=float(n_examples), window=0, sources=sources, order=order, eos=eos,
                   keys=np.asarray(keys, np.int64))

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def vocab_size(self) -> int:
        return self.n_classes

    @property
    def priming_number(self) -> float:
        """K of the paper's form: the mean L1 norm of the raw inputs."""
        return self.l1_sum / max(self.n_examples - self.empty_rows, 1)

    def csr(self) -> "scipy.sparse.csr_matrix":  # noqa: F821
        import scipy.sparse as sp  # here, not above: accumulating never loads scipy

        return sp.csr_matrix((self.data, self.indices, self.indptr),
                             shape=(self.n_features, self.n_classes))

    def digests(self) -> dict:
        """A StreamingDigest per array loaded from a file (none for statistics in memory)."""
        return {name: StreamingDigest(path, array, entry)
                for name, (path, entry, array) in self.files.items()
                if getattr(self, name) is array}  # not an array replaced since loading

    def totals(self, *, verify: bool = True, block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
        """(f, c): f_i = sum_j F_ij and c_j = sum_i F_ij (float64), in one pass over F a
        block of entries at a time (memory-mapped arrays stay out of memory), kept for
        later calls. With `verify`, arrays loaded from files have their sha256 checked on
        the way: a damaged statistics directory is refused, not solved."""
        if self._totals is not None:
            return self._totals
        digests = self.digests() if verify else {}
        f, c = np.zeros(self.n_features), np.zeros(self.n_classes)
        indptr = self.indptr
        if "indptr" in digests:
            for lo in range(0, indptr.size, block):
                digests["indptr"].update(indptr[lo:lo + block])
        for lo in range(0, self.nnz, block):
            hi = min(self.nnz, lo + block)
            r0 = int(np.searchsorted(indptr, lo, side="right")) - 1
            r1 = int(np.searchsorted(indptr, hi, side="left"))
            counts = np.diff(np.clip(np.asarray(indptr[r0:r1 + 1]), lo, hi))
            rows = np.repeat(np.arange(r1 - r0), counts)
            indices, data = np.asarray(self.indices[lo:hi]), np.asarray(self.data[lo:hi])
            for name, part in (("indices", indices), ("data", data)):
                if name in digests:
                    digests[name].update(part)
            values = data.astype(np.float64, copy=False)
            f[r0:r1] += np.bincount(rows, weights=values, minlength=r1 - r0)
            c += np.bincount(indices, weights=values, minlength=self.n_classes)
        for d in digests.values():
            d.check()
        self._totals = (f, c)
        return self._totals

    def feature_totals(self) -> np.ndarray:
        """f_i = sum_j F_ij (float64); see `totals`."""
        return self.totals()[0]

    def class_totals(self) -> np.ndarray:
        """c_j = sum_i F_ij (float64); see `totals`."""
        return self.totals()[1]

    def relayout(self, n_classes: int, n_features: int | None = None) -> "Statistics":
        """The same statistics in a layout for more classes (and features): for lm, rows move
        from k*(V+1)+t to k*(V'+1)+t, BOS to the end of each block."""
        if self.order:  # packed keys do not depend on the vocabulary size
            return replace(self, n_classes=max(n_classes, self.n_classes))
        if n_classes < self.n_classes:
            raise ValueError("relayout can only grow the vocabulary / class count")
        if self.task == "lm":
            old_v, new_v = self.n_classes, n_classes
            n_features = self.window * (new_v + 1)
            rows_old = np.arange(self.n_features)
            k, t = np.divmod(rows_old, old_v + 1)
            t = np.where(t == old_v, new_v, t)
            new_rows = k * (new_v + 1) + t
        else:
            n_features = max(n_features or self.n_features, self.n_features)
            new_rows = np.arange(self.n_features)
        if n_classes == self.n_classes and n_features == self.n_features:
            return self
        counts = np.zeros(n_features, dtype=np.int64)
        counts[new_rows] = np.diff(self.indptr)
        indptr = np.zeros(n_features + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return replace(self, n_classes=n_classes, n_features=n_features, indptr=indptr,
                       indices=np.asarray(self.indices), data=np.asarray(self.data),
                       files={}, _totals=None)

    def header(self) -> dict:
        """The manifest's description of these statistics (no file entries)."""
        return manifest_header(task=self.task, window=self.window, n_classes=self.n_classes,
                               n_features=self.n_features, nnz=self.nnz,
                               n_examples=self.n_examples, l1_sum=self.l1_sum,
                               empty_rows=self.empty_rows, sources=self.sources,
                               order=self.order, eos=self.eos, encoding=self.encoding)


def manifest_header(*, task: str, window: int, n_classes: int, n_features: int, nnz: int,
                    n_examples: int, l1_sum: float, empty_rows: int, sources: list[dict],
                    order: int = 0, eos: bool = False, encoding: str = "normalised") -> dict:
    """A statistics manifest's description of its statistics (no file entries); the
    encoding is written only when it is not the default."""
    h = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "streamfit_version": __version__,
         "task": task, "window": window, "n_classes": n_classes, "n_features": n_features,
         "value": "count" if task == "lm" else "mass", "nnz": nnz, "n_examples": n_examples,
         "l1_sum": l1_sum, "empty_rows": empty_rows, "sources": sources}
    if order:
        h["order"] = order
        h["eos"] = bool(eos)
    if task == "lm":
        h["vocab_size"] = n_classes
    if encoding != "normalised":
        h["encoding"] = encoding
    return h


def summary(header: dict) -> dict:
    """The few numbers of a manifest a command reports."""
    return {**{k: header[k] for k in ("task", "window", "n_classes", "n_features", "nnz",
                                      "n_examples", "empty_rows")},
            "order": header.get("order", 0)}


def _checksum(arrays: dict) -> str:
    h = hashlib.sha256()
    for name in (NGRAM_ARRAYS if "keys" in arrays else ARRAYS):
        h.update(arrays[name]["sha256"].encode())
    return h.hexdigest()


def new_generation() -> str:
    return uuid.uuid4().hex[:12]


def array_file(generation: str, name: str) -> str:
    return f"F-{generation}.{name}.npy"


def commit(directory: Path, header: dict, arrays: dict) -> dict:
    """Make arrays already written in `directory` the statistics there: atomically replace
    the manifest, then delete arrays and temporary files no manifest names."""
    manifest = {**header, "arrays": arrays, "checksum": _checksum(arrays)}
    manifest["header_checksum"] = header_checksum(manifest)
    manifest["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(directory / MANIFEST, manifest)
    keep = {a["file"] for a in arrays.values()}
    for p in directory.glob("F-*.npy"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    for p in directory.glob(".*.tmp-*"):  # leftovers of killed writes
        p.unlink(missing_ok=True)
    return manifest


def remove_uncommitted(directory: Path) -> None:
    """Remove arrays that no manifest names and temporary files: what a failed save left
    in a statistics directory (its writer holds the directory's lock)."""
    import json

    keep: set[str] = set()
    try:
        keep = {a["file"] for a in json.loads((directory / MANIFEST).read_text())["arrays"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        if (directory / MANIFEST).exists():
            return  # a manifest that cannot be read: leave its directory alone
    for p in directory.glob("F-*.npy"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    for p in directory.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def save_arrays(directory: Path, generation: str, arrays: dict[str, np.ndarray]) -> dict:
    """Write the CSR arrays of one generation; returns their manifest entries (`commit`
    makes them the statistics)."""
    entries = {}
    for name in (NGRAM_ARRAYS if "keys" in arrays else ARRAYS):
        fname = array_file(generation, name)
        arr = arrays[name]
        entries[name] = {"file": fname, "dtype": str(arr.dtype), "shape": list(arr.shape),
                         **save_npy(directory / fname, arr)}
    return entries


def save(stats: Statistics, directory: str | os.PathLike) -> dict:
    """Write statistics to `directory` crash-safely; returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = save_arrays(directory, new_generation(),
                         {n: getattr(stats, n) for n in array_names(stats.order)})
    return commit(directory, stats.header(), arrays)


def read_manifest(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise FormatError(f"{directory}: no statistics directory here (run `streamfit accumulate` first)")
    if not path.exists():
        raise FormatError(f"{directory}: not a statistics directory (no {MANIFEST})")
    what = "statistics manifest"
    manifest = read_document(path, FORMAT, SCHEMA_VERSION, what)
    check_fields(manifest, MANIFEST_FIELDS, path, what)
    if manifest["task"] not in ("lm", "classify"):
        raise FormatError(f"{path}: {what} has task {manifest['task']!r}, not lm or classify")
    check_array_entries(manifest, array_names(manifest.get("order", 0)), path, what)
    return manifest


def load(directory: str | os.PathLike, *, mmap: bool = True, check: bool = False) -> Statistics:
    """Open statistics (memory-mapped by default). Sizes, shapes and dtypes are always
    checked against the manifest; `check=True` also verifies every byte's checksum."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    arrays = {}
    order = manifest.get("order", 0)
    for name in array_names(order):
        entry = manifest["arrays"][name]
        path = named_file(directory, entry["file"], directory / MANIFEST)
        if check:
            verify(path, entry)
        arr = load_npy(path, entry, mmap=mmap)
        if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
            raise FormatError(f"{path}: shape/dtype {arr.shape}/{arr.dtype} does not match "
                              f"the manifest ({entry['shape']}/{entry['dtype']})")
        arrays[name] = arr
    if order:
        if arrays["keys"].size != manifest["nnz"] or arrays["data"].size != manifest["nnz"]:
            raise FormatError(f"{directory}: arrays do not match the manifest's sizes")
        return Statistics.of_ngrams(arrays["keys"], arrays["data"], order=order,
                                    eos=manifest["eos"], vocab_size=manifest["n_classes"],
                                    n_examples=manifest["n_examples"], sources=manifest["sources"])
    if arrays["indptr"].size != manifest["n_features"] + 1 or arrays["data"].size != manifest["nnz"] \
            or arrays["indices"].size != manifest["nnz"]:
        raise FormatError(f"{directory}: arrays do not match the manifest's sizes")
    check_csr(arrays["indptr"], arrays["indices"], manifest["n_features"], manifest["n_classes"],
              tuple(directory / manifest["arrays"][n]["file"] for n in ("indptr", "indices")))
    files = {name: (directory / manifest["arrays"][name]["file"], manifest["arrays"][name],
                    arrays[name]) for name in ARRAYS}
    return Statistics(task=manifest["task"], n_classes=manifest["n_classes"],
                      n_features=manifest["n_features"], window=manifest["window"],
                      n_examples=manifest["n_examples"], l1_sum=manifest["l1_sum"],
                      empty_rows=manifest["empty_rows"], sources=manifest["sources"],
                      files=files, encoding=manifest.get("encoding", "normalised"), **arrays)


def checksum_of(directory: str | os.PathLike) -> str:
    return read_manifest(directory)["checksum"]


def _source_keys(stats: Statistics) -> set[tuple[str, int]]:
    return {(s["path"], rg) for s in stats.sources for rg in s["row_groups"]}


def check_mergeable(parts) -> None:
    """Refuse shards of different task or window, and shards that consumed the same row
    group of the same file (merging would count it twice)."""
    if not parts:
        raise OptionError("merge needs at least one statistics shard")
    for i, s in enumerate(parts):
        for t in parts[:i]:
            if s is t or (s.nnz and np.may_share_memory(s.data, t.data)):
                raise OptionError("the same statistics are given twice: merging would count "
                                  "them twice")
    first = parts[0]
    for s in parts[1:]:
        if (s.task, s.window, s.order, s.eos, s.encoding) != \
                (first.task, first.window, first.order, first.eos, first.encoding):
            raise FormatError(f"cannot merge {describe(s)} statistics into {describe(first)}")
    seen: set[tuple[str, int]] = set()
    for s in parts:
        overlap = seen & _source_keys(s)
        if overlap:
            path, rg = sorted(overlap)[0]
            raise FormatError(f"shards overlap: {path} row group {rg} was counted in more "
                              f"than one; merging would count it twice")
        seen |= _source_keys(s)


def describe(stats: Statistics) -> str:
    """What kind of statistics these are, in words."""
    if stats.order:
        return f"order-{stats.order} n-gram" + (" (with eos)" if stats.eos else "")
    if stats.task == "lm":
        return f"{stats.task} window {stats.window}"
    return stats.task + (f" ({stats.encoding} encoding)" if stats.encoding != "normalised" else "")


def combined_sources(sources: list[dict]) -> list[dict]:
    """Source entries of merged shards, one per file (row groups sorted, rows summed), in
    the order files first appear."""
    by_path: dict[str, dict] = {}
    for s in sources:
        entry = by_path.setdefault(s["path"], {**s, "row_groups": [], "rows": 0})
        entry["row_groups"] = sorted(entry["row_groups"] + list(s["row_groups"]))
        entry["rows"] += s["rows"]
    return list(by_path.values())


def merge(*parts: Statistics) -> Statistics:
    """Exact sum of statistics shards, in memory (see `pipeline.merge_into` for the
    bounded-memory merge of statistics directories)."""
    check_mergeable(parts)
    first = parts[0]
    sources = combined_sources([src for s in parts for src in s.sources])
    if first.order:
        keys = np.concatenate([np.asarray(s.keys) for s in parts])
        counts = np.concatenate([np.asarray(s.data) for s in parts])
        keys, counts = sum_sorted(keys, counts)
        return Statistics.of_ngrams(keys, counts, order=first.order, eos=first.eos,
                                    vocab_size=max(s.n_classes for s in parts),
                                    n_examples=sum(s.n_examples for s in parts), sources=sources)
    import scipy.sparse as sp

    n_classes = max(s.n_classes for s in parts)
    n_features = max(s.n_features for s in parts)
    laid = [s.relayout(n_classes, n_features) for s in parts]
    total = laid[0].csr()
    for s in laid[1:]:
        total = total + s.csr()
    total = sp.csr_matrix(total)
    total.sum_duplicates()
    total.sort_indices()
    return Statistics(
        task=first.task, n_classes=n_classes, n_features=laid[0].n_features, window=first.window,
        indptr=total.indptr.astype(np.int64), indices=total.indices.astype(np.int32),
        data=total.data.astype(first.data.dtype),
        n_examples=sum(s.n_examples for s in parts), l1_sum=sum(s.l1_sum for s in parts),
        empty_rows=sum(s.empty_rows for s in parts),
        sources=combined_sources([src for s in parts for src in s.sources]),
        encoding=first.encoding)


def sum_sorted(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys in increasing order and the sum of the values at each."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    if not keys.size:
        return keys, values
    first = np.empty(keys.size, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return keys[starts], np.add.reduceat(values, starts)
