"""Accumulating: record batches into sufficient statistics, batch by batch.

`Accumulator` is what a data pipeline calls (`update(record_batch)`, then `stats()`);
`accumulate(paths)` streams Parquet files through one, recording which row groups were
consumed. Counting runs in the numba kernels of `streamfit.count.kernels` over a hash table
that grows as new (feature, class) pairs appear, or, for token keys that are mostly new to a
large table, into sorted runs (`CountTable.next_path`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from . import kernels
from ..errors import InputError, OptionError
from ..data.featurize import (FeatureRows, TokenArrays, check_encoding, check_feature_rows,
                              check_token_arrays, encode_rows, feature_rows, raw_width,
                              token_arrays)
from ..data.limits import MAX_ORDER, max_ngram_token, ngram_bits
from ..data.tokenize import text_input
from ..io.progress import progress_bar
from ..io.parquet import (DEFAULT_BATCH_ROWS, FEATURES, INDICES, LABEL, TOKENS, VALUES,
                      detect_task, iter_batches, open_parquet, resolve_paths)
from .stats import Statistics

MAX_LOAD = 0.5
PATHS = ("hashing", "partitioned", "sorted")  # how a chunk of keys is counted (CountTable)
CHUNK_KEYS = 1 << 20        # keys counted at a time (at most an eighth of the table's bytes)
PARTITION_MIN_BITS = 20     # tables of 2^20 slots (16 MiB) and more are past the caches ...
REGION_BITS = 14            # the partitioned path's regions: 2^14 slots (256 KiB)
COMPACT_BLOCK = 1 << 16    # slots moved at a time by CountTable.sorted_in_place (1 MiB)
PARTITION_NEW_SHARE = 0.25  # ... and when this share of a chunk's keys is new, the next
#                             chunk goes in by the partitioned path (kernels.partition_by_hash)
SORT_NEW_SHARE = 0.5        # ... and from this share, by the sorted path (kernels.run_lengths)
SORT_CHUNK_KEYS = 1 << 27   # keys sorted at a time (1 GiB, touched as it fills: 8 bytes a key,
#                             less than the 16 of a run's entry when most keys are distinct;
#                             under a budget at most a quarter of max_bits' slots)
PARKED_BITS = 2             # the table's size while the sorted path counts outside it
SPILL_LOAD = 0.4            # a capped table spills at this share of its max_bits' slots


class CountTable:
    """Open-addressing hash table of packed (feature, class) keys to sums; keys and values
    interleaved in one int64 array (float sums through a float64 view of it)."""

    def __init__(self, value_dtype: type, capacity_bits: int = 16, max_bits: int | None = None,
                 ngram: bool = False):
        self.value_dtype = np.dtype(value_dtype)
        self.ngram = ngram  # keys are packed n-grams, kept as they are (no row layout)
        self.max_bits = max_bits  # growth stops here unless a batch needs more
        # Called with the sorted (keys, values) when the table is full at max_bits in the
        # middle of a batch (or about to grow into max_bits): it takes them (e.g. writes a
        # run) and the table is emptied instead of grown, so a long document or batch stays
        # within the budget. They are views inside the table (`sorted_in_place`), valid
        # during the call only: a callback that keeps them copies them.
        self.spill: Callable[[np.ndarray, np.ndarray], None] | None = None
        # Of the last chunk's keys, those new to the table (hashing, partitioned) or the
        # distinct ones (sorted): what picks the next chunk's path (`next_path`).
        self.new_share = 1.0
        self.force_path: str | None = None  # a path for every chunk: tests and benchmarks
        self.chunks = dict.fromkeys(PATHS, 0)  # chunks counted by each path
        # The sorted path's runs: (keys increasing, int64 counts), longest first; the table
        # holds other counts of the same keys, summed by items().
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending = 0  # keys waiting in the sorted path's buffer
        # On the sorted path the table is idle: its array is freed (`_park`) and this is
        # the size it comes back at (`_unpark`); None while the table counts.
        self.parked: int | None = None
        self._sorting: np.ndarray | None = None
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None
        self._allocate(capacity_bits)

    def _allocate(self, bits: int) -> None:
        self.bits = bits
        self.slots = np.zeros(2 << bits, dtype=np.int64)
        self.slots[0::2] = kernels.EMPTY
        self.vals = self.slots if self.value_dtype == np.int64 else self.slots.view(np.float64)
        self.n_used = 0

    def clear(self, capacity_bits: int = 16) -> None:
        """Empty the table, at `capacity_bits` (never above max_bits). At its present size
        the array is emptied in place: no new pages to fault in after every spill."""
        bits = capacity_bits if self.max_bits is None else min(capacity_bits, self.max_bits)
        self.runs, self.pending = [], 0
        if self.parked is not None and bits == self.bits:
            return  # parked, and stays so (a spill on the sorted path): nothing in the table
        if self.parked is not None:  # unparked at `capacity_bits`: the sort buffer goes too
            self.parked, self._sorting = None, None
        if bits != self.bits:
            self._allocate(bits)
            return
        self._empty_slots()

    def _empty_slots(self) -> None:
        self.slots[0::2] = kernels.EMPTY
        self.slots[1::2] = 0
        self.n_used = 0

    @property
    def run_entries(self) -> int:
        return sum(keys.size for keys, _ in self.runs)

    @property
    def full(self) -> bool:
        """Holding as many entries (in the table and the sorted runs, 16 bytes each) as the
        table at its maximum size near the load that would make it grow."""
        return self.max_bits is not None and self._entries >= SPILL_LOAD * (1 << self.max_bits)

    @property
    def _entries(self) -> int:
        return self.n_used + self.run_entries + self.pending

    @property
    def shift(self) -> int:
        return 64 - self.bits

    @property
    def max_used(self) -> int:
        return int((1 << self.bits) * MAX_LOAD)

    @property
    def nbytes(self) -> int:
        return self.slots.nbytes + 16 * self.run_entries

    def grow(self) -> None:
        """Double the capacity (quadruple while small: rehashing is the cost of growth); at
        max_bits with a `spill`, hand the table over and empty it instead. Growing into
        max_bits with a `spill`, the table is handed over too and the new one allocated
        empty after the old one is freed: the two never coexist, and the table's peak is
        its cap's bytes, not 1.5 or 1.25 times them."""
        bits = self.bits + (2 if self.bits < 22 else 1)
        if self.max_bits is not None:
            bits = min(bits, max(self.max_bits, self.bits + 1))
        if self.spill is not None and self.max_bits is not None and bits >= self.max_bits:
            keys, vals = self.sorted_in_place()
            self.spill(keys, vals)
            if self.bits < self.max_bits:
                self.slots = self.vals = keys = vals = None  # freed before the new one
            self.clear(bits)
            return
        old, n_used = self.slots, self.n_used
        self._allocate(bits)
        kernels.rehash(old, self.slots, self.shift)
        self.n_used = n_used

    def add_windows(self, tokens: np.ndarray, doc_offsets: np.ndarray, window: int) -> None:
        self._add_documents(kernels.count_windows, kernels.window_keys, (tokens, doc_offsets, window),
                            doc_offsets, window)

    def add_ngrams(self, tokens: np.ndarray, doc_offsets: np.ndarray, order: int,
                   eos: bool) -> None:
        self._add_documents(kernels.count_ngrams, kernels.ngram_keys,
                            (tokens, doc_offsets, order, ngram_bits(order), eos), doc_offsets, 1)

    def next_path(self) -> str:
        """The path of the next chunk of keys (`kernels`): past the caches, "sorted" when
        most keys of the last chunk were new (distinct, on the sorted path), "partitioned"
        when a quarter were; else "hashing"."""
        if self.force_path is not None:
            return self.force_path
        bits = self.bits if self.parked is None else self.parked
        if bits < PARTITION_MIN_BITS or self.new_share < PARTITION_NEW_SHARE:
            return "hashing"
        return "sorted" if self.new_share >= SORT_NEW_SHARE else "partitioned"

    def _chunk_buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if self._buffers is None or self._buffers[0].size < size:
            self._buffers = (np.empty(size, np.int64), np.empty(size, np.int64))
        return self._buffers

    def _add_documents(self, count, fill, args: tuple, doc_offsets: np.ndarray,
                       keys_per_token: int) -> None:
        """Count the keys of a batch of documents chunk by chunk, each chunk by the path
        `next_path()` picks: the hashing kernel `count` (about CHUNK_KEYS keys), or keys
        built by `fill` and then ordered by hash and inserted (partitioned) or left in a
        buffer that is sorted into a run when full (sorted, `flush`)."""
        doc, pos, n_docs = 0, 0, doc_offsets.size - 1
        while doc < n_docs:
            path = self.next_path()
            if path == "sorted":  # keys wait in a buffer (across batches) until it is full
                if self.parked is None:
                    self._park()
                keys = self._sort_buffer()
                room = keys.size - self.pending
                if self.spill is not None and self.max_bits is not None:
                    # no more keys than the spill point leaves room for (whole tokens):
                    # the runs, merged, never outgrow what the table would hold
                    left = math.ceil(SPILL_LOAD * (1 << self.max_bits)) - self._entries
                    room = min(room, max(left, keys_per_token))
                doc, pos, n = fill(*args, doc, pos, keys[self.pending:self.pending + room])
                self.pending += n
                if doc < n_docs:
                    self.flush()
                continue
            if self.parked is not None:
                self._unpark()
            self.chunks[path] += 1
            chunk = min(CHUNK_KEYS, 1 << max(self.bits - 3, 10))
            before, inserted = self.n_used, 0
            if path == "partitioned":
                keys, ordered = self._chunk_buffers(chunk)
                doc, pos, n = fill(*args, doc, pos, keys[:chunk])
                kernels.partition_by_hash(keys, n, min(12, max(1, self.bits - REGION_BITS)), ordered)
                i = 0
                while True:
                    i, self.n_used = kernels.add_keys(ordered, i, n, self.slots, self.vals,
                                                      self.n_used, self.max_used, self.shift)
                    if i == n:
                        break
                    inserted += self.n_used - before
                    self.grow()
                    before = self.n_used
                seen = n
            else:
                start = int(doc_offsets[doc]) + pos
                end = max(doc + 1, int(np.searchsorted(doc_offsets, start + chunk // keys_per_token,
                                                       side="right")) - 1)
                part = doc_offsets[:end + 1]  # offsets are absolute: documents doc..end-1
                first_doc, first_pos = doc, pos
                while True:
                    doc, pos, self.n_used = count(*args[:1], part, *args[2:], doc, pos, self.slots,
                                                  self.vals, self.n_used, self.max_used, self.shift)
                    if doc == end:
                        break
                    inserted += self.n_used - before
                    self.grow()
                    before = self.n_used
                seen = (int(doc_offsets[end]) - int(doc_offsets[first_doc]) - first_pos) * keys_per_token
                pos = 0
            inserted += self.n_used - before
            if seen:
                self.new_share = inserted / seen

    def _park(self) -> None:
        """Onto the sorted path, which counts outside the table: the table's counts join
        the runs (no pass over all at the end) and its array is freed, with the partitioned
        path's buffers, for the runs' room (a table of PARKED_BITS slots stays)."""
        run = self._table_items() if self.n_used else None
        self.parked, self._buffers = self.bits, None
        self._allocate(PARKED_BITS)
        if run is not None:
            self._add_run(*run)

    def _unpark(self) -> None:
        """Back to the table: the keys waiting in the sort buffer become a run, the buffer
        is freed and the table allocated at its size again."""
        self.flush()
        bits, self.parked, self._sorting = self.parked, None, None
        self._allocate(bits)

    def _sort_buffer(self) -> np.ndarray:
        """The sorted path's buffer of keys waiting to be sorted (its pages are touched
        only as it fills)."""
        if self._sorting is None:
            size = SORT_CHUNK_KEYS if self.max_bits is None else \
                min(SORT_CHUNK_KEYS, 1 << max(self.max_bits - 2, 10))
            self._sorting = np.empty(size, np.int64)
        return self._sorting

    def flush(self) -> None:
        """Sort the keys waiting in the sorted path's buffer into a run (`kernels`)."""
        n, self.pending = self.pending, 0
        if not n:
            return
        keys = self._sorting[:n]
        keys.sort()
        m = 1 + int(np.count_nonzero(keys[1:] != keys[:-1]))
        run = (np.empty(m, np.int64), np.empty(m, np.int64))
        kernels.run_lengths(keys, n, *run)
        self.chunks["sorted"] += 1
        self.new_share = m / n
        self._add_run(*run)

    def _add_run(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Keep a sorted run, merged with the last runs while they are less than twice
        its length (so about log2 of the entries' count of runs remain); at the budget
        with a `spill`, hand everything over and start empty."""
        run = (keys, counts)
        while self.runs and self.runs[-1][0].size < 2 * run[0].size:
            run = _merge(self.runs.pop(), run)
        self.runs.append(run)
        if self.spill is not None and self.full:
            self.spill(*self.items())
            self.clear(self.bits)

    def add_rows(self, rows: FeatureRows) -> None:
        row = 0
        while True:
            row, self.n_used = kernels.add_feature_rows(
                rows.indptr, rows.indices, rows.values, rows.labels, row,
                self.slots, self.vals, self.n_used, self.max_used, self.shift)
            if row == rows.n_rows:
                return
            self.grow()

    def sorted_in_place(self) -> tuple[np.ndarray, np.ndarray]:
        """The occupied (key, value) pairs sorted by key, like `items`, but inside the table's
        own array: views valid until the table is cleared, which must come next. A spill
        then holds no second copy of what it writes (0.4x the table's bytes at a spill's
        load). The pairs are first moved to the front, a block at a time (the table is at
        most half full, so the sorted keys and values fit behind them). With runs of the
        sorted path, which live outside the table, their merge with it (`items`)."""
        if self.runs or self.pending:
            return self.items()
        n = self.n_used
        pairs = self.slots.reshape(-1, 2)  # raw bits move: float values are kept exactly
        w = 0
        for a in range(0, pairs.shape[0], COMPACT_BLOCK):
            block = pairs[a:a + COMPACT_BLOCK]
            moved = block[block[:, 0] != kernels.EMPTY]  # a copy: the target may overlap
            pairs[w:w + moved.shape[0]] = moved
            w += moved.shape[0]
        keys, vals = self.slots[2 * n:3 * n], self.vals[3 * n:4 * n]
        lm = self.value_dtype == np.int64
        if not self.ngram and kernels.sorted_items(self.slots[:2 * n], self.vals[:2 * n], n,
                                kernels.TOKEN_BITS if lm else kernels.LABEL_BITS, lm, keys, vals):
            return keys, vals
        order = np.argsort(self.slots[0:2 * n:2])
        np.take(self.slots[0:2 * n:2], order, out=keys)
        np.take(self.vals[1:2 * n:2], order, out=vals)
        return keys, vals

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(key, value) pairs sorted by key: the table's, summed with the sorted path's
        (its waiting keys sorted, its runs merged into one on the way)."""
        self.flush()
        keys, vals = self._table_items()
        if not self.runs:
            return keys, vals
        while len(self.runs) > 1:
            last = self.runs.pop()
            self.runs.append(_merge(self.runs.pop(), last))
        return _merge(self.runs[0], (keys, vals)) if keys.size else self.runs[0]

    def _table_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The table's occupied (key, value) pairs sorted by key."""
        keys = np.empty(self.n_used, dtype=np.int64)
        vals = np.empty(self.n_used, dtype=self.value_dtype)
        lm = self.value_dtype == np.int64
        if self.ngram:  # keys sorted alone (numpy's vectorised sort), values looked up:
            kernels.occupied_keys(self.slots, keys)  # 3x faster than an argsort and gathers
            keys.sort()
            kernels.values_of(keys, self.slots, self.vals, self.shift, vals)
            return keys, vals
        if kernels.sorted_items(self.slots, self.vals, self.n_used,
                                kernels.TOKEN_BITS if lm else kernels.LABEL_BITS, lm, keys, vals):
            return keys, vals
        occupied = self.slots[0::2] != kernels.EMPTY
        keys, vals = self.slots[0::2][occupied], self.vals[1::2][occupied]
        order = np.argsort(keys)
        return keys[order], vals[order]


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one (kernels.merge_runs), in arrays of its size when keys that
    were in both leave much room unused."""
    keys = np.empty(a[0].size + b[0].size, dtype=np.int64)
    vals = np.empty(keys.size, dtype=np.result_type(a[1], b[1]))
    n = kernels.merge_runs(a[0], a[1], b[0], b[1], keys, vals)
    if n < keys.size * 3 // 4:
        return keys[:n].copy(), vals[:n].copy()
    return keys[:n], vals[:n]


class Accumulator:
    """Sufficient statistics of a stream of batches.

    task "lm": record batches with a list<integer> token column (default "tokens"), one
    document per row; `window` previous tokens are the features of each token.
    task "classify": an integer label column with a dense list<float> `features` column, or
    sparse `indices` + `values` list columns (set features=None).
    `vocab_size` / `n_classes` / `n_features` fix the sizes up front (ids beyond them are
    errors); otherwise they are discovered as the largest id seen plus one.
    `table_bits` caps the hash table at 2**table_bits slots (16 bytes each); past it the
    table grows anyway unless `table.spill` is set (see CountTable).
    `order` N > 0 counts n-grams instead of the window (task "lm"): every token with its N-1
    previous tokens as one key, with `eos` an end-of-document token predicted too.
    `encoding` "complement" (dense features in [0, 1]) counts each row x as [x, 1 − x]
    (featurize.encode_rows); `n_features` is then the encoded width 2d.
    """

    def __init__(self, task: str, *, window: int = 1, column: str = TOKENS,
                 label: str = LABEL, features: str | None = FEATURES, indices: str = INDICES,
                 values: str = VALUES, vocab_size: int | None = None,
                 n_classes: int | None = None, n_features: int | None = None,
                 table_bits: int | None = None, order: int = 0, eos: bool = False,
                 text_column: str | None = None, tokenizer: str | None = None,
                 encoding: str = "normalised"):
        if task not in ("lm", "classify"):
            raise OptionError(f"task must be 'lm' or 'classify', not {task!r}")
        self.encoding = check_encoding(encoding)
        if encoding != "normalised" and (task != "classify" or features is None):
            raise OptionError(f"encoding {encoding!r} is for dense feature columns (classify), "
                              f"not {'sparse features' if task == 'classify' else 'tokens'}")
        if order and (task != "lm" or not 1 <= order <= MAX_ORDER):
            raise OptionError(f"order is for token corpora, between 1 and {MAX_ORDER}, not {order}")
        if eos and not order:
            raise OptionError("eos is an option of n-gram statistics (order N)")
        self.order = order
        self.eos = bool(eos)
        if order:
            window = 0
        elif task == "lm" and not 1 <= window <= kernels.MAX_WINDOW:
            raise OptionError(f"window must be between 1 and {kernels.MAX_WINDOW}, not {window}")
        self.task = task
        self.window = window if task == "lm" else 0
        self.columns = dict(column=column, label=label, features=features, indices=indices,
                            values=values)
        self.text = None
        if text_column is not None or tokenizer is not None:
            if task != "lm":
                raise OptionError("text (a text column with a tokenizer) is read by language models")
            self.text = text_input({"text_column": text_column, "tokenizer": tokenizer,
                                    "column": column})
            vocab_size = self.text.tokenizer.vocab_size if vocab_size is None else vocab_size
            if vocab_size != self.text.tokenizer.vocab_size:
                raise OptionError(f"the tokenizer has {self.text.tokenizer.vocab_size:,} ids, not "
                                  f"--vocab-size {vocab_size:,}")
            self.columns.update(text_column=text_column, tokenizer=tokenizer)
        self.n_classes = vocab_size if task == "lm" else n_classes
        self.n_features_fixed = n_features
        self.table = CountTable(np.int64 if task == "lm" else np.float64,
                                16 if table_bits is None else min(16, table_bits), table_bits,
                                ngram=bool(order))
        self.n_examples = 0
        self.l1_sum = 0.0
        self.empty_rows = 0
        self.max_label = -1
        self.max_width = 0
        self.max_id = -1  # largest token id (lm) or feature index (classify) seen
        self.dense_width: int | None = None  # row length of the dense features seen so far
        self.sources: list[dict] = []

    @property
    def input_columns(self) -> list[str]:
        c = self.columns
        if self.text is not None:
            return [self.text.text_column]
        if self.task == "lm":
            return [c["column"]]
        if c["features"] is not None:
            return [c["label"], c["features"]]
        return [c["label"], c["indices"], c["values"]]

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Add one Arrow record batch or table (or a pandas DataFrame, converted to one)."""
        if not isinstance(batch, (pa.RecordBatch, pa.Table)):
            batch = _as_arrow(batch)
        if isinstance(batch, pa.Table):
            for rb in batch.to_batches():
                self.update(rb)
            return
        if self.text is not None:
            batch = self.text.tokens(batch)
        if self.task == "lm":
            self._add_tokens(token_arrays(batch, self.columns["column"], self.n_classes))
        else:
            c = self.columns
            dense = c["features"] is not None
            # Dense rows must have one length across batches too, not only within one.
            width = self.n_features_fixed if self.n_features_fixed is not None or not dense \
                else self.dense_width
            rows = feature_rows(batch, label=c["label"], features=c["features"],
                                indices=c["indices"], values=c["values"],
                                n_features=raw_width(width, self.encoding),
                                n_classes=self.n_classes)
            rows = encode_rows(rows, self.encoding, c["features"] or c["values"])
            if dense and self.dense_width is None and rows.n_rows:
                self.dense_width = rows.n_features
            self._add_rows(rows)

    def add_tokens(self, arrays: TokenArrays) -> None:
        """Add documents given as numpy arrays: integer token ids, documents concatenated,
        and their offsets. Checked first (types, offsets, id range: min / max), since an id
        outside the range would corrupt the hash table."""
        self._add_tokens(check_token_arrays(arrays, self.n_classes))

    def add_rows(self, rows: FeatureRows) -> None:
        """Add feature rows given as numpy arrays (CSR indptr / indices / values, labels),
        checked first as `add_tokens` checks tokens."""
        rows = check_feature_rows(rows, raw_width(self.n_features_fixed, self.encoding),
                                  self.n_classes)
        self._add_rows(encode_rows(rows, self.encoding))

    def _add_tokens(self, arrays: TokenArrays) -> None:
        """add_tokens of arrays already validated (by token_arrays)."""
        if self.order:
            limit = max_ngram_token(self.order)
            if arrays.n_tokens and int(arrays.tokens.max()) > limit:
                raise InputError(f"token id {int(arrays.tokens.max())} does not fit an order-"
                                 f"{self.order} n-gram key (ids up to {limit}); use a lower order "
                                 f"or a smaller vocabulary")
            self.table.add_ngrams(arrays.tokens, arrays.doc_offsets, self.order, self.eos)
            self.n_examples += arrays.n_tokens + (arrays.doc_offsets.size - 1 if self.eos else 0)
        else:
            self.table.add_windows(arrays.tokens, arrays.doc_offsets, self.window)
            self.n_examples += arrays.n_tokens
        if arrays.n_tokens:
            self.max_id = max(self.max_id, int(arrays.tokens.max()))

    def _add_rows(self, rows: FeatureRows) -> None:
        """add_rows of rows already validated (by feature_rows)."""
        self.table.add_rows(rows)
        row_of = np.repeat(np.arange(rows.n_rows), np.diff(rows.indptr))
        sums = np.bincount(row_of, weights=rows.values, minlength=rows.n_rows)
        self.empty_rows += int(np.sum(sums <= 0))
        self.n_examples += rows.n_rows
        self.l1_sum += float(sums.sum())
        if rows.n_rows:
            self.max_label = max(self.max_label, int(rows.labels.max()))
        if rows.indices.size:
            self.max_id = max(self.max_id, int(rows.indices.max()))
        self.max_width = max(self.max_width, rows.n_features)

    def take(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """Hand over what was added since the last take — sorted (key, value) pairs and the
        counts — and start empty again (sizes seen so far are kept). What a spill writes."""
        keys, vals = self.table.items()
        counts = {"n_examples": self.n_examples, "l1_sum": self.l1_sum,
                  "empty_rows": self.empty_rows}
        # A table that filled up to its cap (a spill) stays at that size: regrowing it from
        # small would rehash its keys again on every doubling.
        self.table.clear(self.table.bits if self.table.full else 16)
        self.n_examples, self.l1_sum, self.empty_rows = 0, 0.0, 0
        return keys, vals, counts

    def stats(self) -> Statistics:
        """The statistics of everything added so far (the accumulator stays usable)."""
        keys, vals = self.table.items()
        if self.order:
            v = self.n_classes if self.n_classes is not None else self.max_id + 1
            return Statistics.of_ngrams(keys, vals, order=self.order, eos=self.eos, vocab_size=v,
                                        n_examples=self.n_examples, sources=list(self.sources))
        if self.task == "lm":  # in two passes over the keys, without temporaries
            cols = np.empty(keys.size, dtype=np.int32)
            top = kernels.window_targets(keys, cols)
            v = self.n_classes if self.n_classes is not None else top + 1
            n_classes, n_features = v, self.window * (v + 1)
            indptr = np.zeros(n_features + 1, dtype=np.int64)
            kernels.window_row_counts(keys, v, indptr)
            np.cumsum(indptr, out=indptr)
            l1_sum = float(self.n_examples * self.window)
        else:
            rows = keys >> kernels.LABEL_BITS
            cols = (keys & kernels.LABEL_MASK).astype(np.int32)
            n_classes = self.n_classes if self.n_classes is not None else self.max_label + 1
            n_features = self.n_features_fixed if self.n_features_fixed is not None else \
                max(self.max_width, int(rows.max()) + 1 if rows.size else 0)
            indptr = np.zeros(n_features + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=n_features), out=indptr[1:])
            l1_sum = self.l1_sum
        return Statistics(task=self.task, n_classes=n_classes, n_features=n_features,
                          window=self.window, indptr=indptr, indices=cols,
                          data=vals, n_examples=self.n_examples, l1_sum=l1_sum,
                          empty_rows=self.empty_rows, sources=list(self.sources),
                          encoding=self.encoding)


def _as_arrow(data) -> pa.Table:
    """A pandas DataFrame (or anything speaking the Arrow stream protocol) as an Arrow table."""
    if type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False)
    if hasattr(data, "__arrow_c_stream__"):
        return pa.table(data)
    raise TypeError(f"update takes a pyarrow RecordBatch or Table (or a pandas DataFrame), not "
                    f"{type(data).__name__}")


def accumulator_for(paths: list[Path], task: str | None = None, **options) -> Accumulator:
    """An Accumulator for these files, with the task detected from the first file's columns
    when not given (dense vs sparse features too)."""
    schema = open_parquet(paths[0]).schema_arrow
    if task is None and options.get("text_column") is not None:
        task = "lm"
    if task is None:
        try:
            task = detect_task(schema, **{k: options[k] for k in
                                          ("column", "label", "features", "indices", "values")
                                          if k in options})
        except InputError as exc:
            raise InputError(exc.message, path=str(paths[0])) from None
    features = options.get("features", FEATURES)
    if task == "classify" and features is not None and features not in schema.names \
            and options.get("indices", INDICES) in schema.names:
        options["features"] = None
    return Accumulator(task, **options)


def consume(acc: Accumulator, paths: Iterable[Path], *, skip: set[tuple[str, int]] = frozenset(),
            batch_rows: int = DEFAULT_BATCH_ROWS, progress: bool = True) -> None:
    """Stream files into `acc` row group by row group, recording each consumed row group
    in `acc.sources`; row groups listed in `skip` ((resolved path, row group)) are passed."""
    paths = list(paths)
    plan = []
    for p in paths:
        pf = open_parquet(p)
        key = str(p.resolve())
        groups = [rg for rg in range(pf.num_row_groups) if (key, rg) not in skip]
        rows = sum(pf.metadata.row_group(rg).num_rows for rg in groups)
        plan.append((p, key, groups, rows, os.path.getsize(p)))
    unit = "docs" if acc.task == "lm" else "rows"
    with progress_bar(progress, total=sum(r for *_, r, _ in plan), unit=unit, unit_scale=True,
                      desc="accumulate") as bar:
        for p, key, groups, _, size in plan:
            for rg in groups:
                n_rows = 0
                for b in iter_batches(p, acc.input_columns, row_groups=[rg], batch_rows=batch_rows):
                    try:
                        acc.update(b.data)
                    except InputError as exc:
                        raise exc.located(path=str(p), row_group=rg, row_offset=b.row_offset) from None
                    n_rows += b.data.num_rows
                    bar.update(b.data.num_rows)
                    if acc.task == "lm":
                        bar.set_postfix(tokens=acc.n_examples, refresh=False)
                _record(acc.sources, key, size, rg, n_rows)


def _record(sources: list[dict], path: str, size: int, row_group: int, rows: int) -> None:
    for s in sources:
        if s["path"] == path:
            s["row_groups"].append(row_group)
            s["rows"] += rows
            return
    sources.append({"path": path, "size": size, "row_groups": [row_group], "rows": rows})


def accumulate(paths: Iterable[str | os.PathLike], *, task: str | None = None,
               progress: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
               **options) -> Statistics:
    """Statistics of Parquet files, globs or directories, streamed batch by batch.
    Options are those of `Accumulator` (window, column names, fixed sizes)."""
    files = resolve_paths(paths)
    acc = accumulator_for(files, task, **options)
    consume(acc, files, batch_rows=batch_rows, progress=progress)
    return acc.stats()
