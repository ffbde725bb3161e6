"""Numba counting kernels: (feature, class) pairs into an open-addressing hash table.

Plain arrays in, plain arrays out, no Python objects. Each kernel has a pure-numpy twin in
`streamfit.count.reference` that the tests compare it with.

Statistics are accumulated in an open-addressing hash table (`keys`, `vals`, linear probing,
Fibonacci hashing) keyed by a packed (feature, class) int64. A kernel stops early and reports
where when the table reaches `max_used` entries; the caller grows the table and resumes.
Keys are packed so that their integer order is (row, class) order, which makes the final
sort produce CSR directly. Keys that are mostly new to a large table are built into a buffer
instead and sorted into runs (the partitioned and sorted paths at the end of this module).
"""
from __future__ import annotations

import numpy as np

from ..io.jit import njit
from ..data.limits import (BOS_KEY, LABEL_BITS, LABEL_MASK, MAX_FEATURE, MAX_LABEL,  # noqa: F401
                           MAX_TOKEN_ID, MAX_WINDOW, TOKEN_BITS, TOKEN_MASK)

EMPTY = np.int64(-1)
HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, inline="always")
def _slot(key, shift):
    return np.int64((np.uint64(key) * HASH_MULT) >> np.uint64(shift))


@njit(cache=True, nogil=True, inline="always")
def _add(slots, vals, key, value, shift, mask):
    """Add `value` at `key`; returns 1 if the key was new, else 0. Slot h holds its key at
    slots[2h] and its value at vals[2h + 1] (vals: slots itself, or a float64 view of it),
    so a probe touches one cache line."""
    h = _slot(key, shift)
    while True:
        k = slots[2 * h]
        if k == key:
            vals[2 * h + 1] += value
            return 0
        if k == EMPTY:
            slots[2 * h] = key
            vals[2 * h + 1] = value
            return 1
        h = (h + 1) & mask


@njit(cache=True, nogil=True)
def count_windows(tokens, doc_offsets, window, start_doc, start_pos,
                  slots, vals, n_used, max_used, shift):
    """Count (position k, context token, next token) for every token of every document.

    tokens: int32/int64 token ids, documents concatenated; doc_offsets: int64, n_docs + 1.
    Context positions before a document's start are BOS. Resumes at (start_doc, start_pos)
    and returns (doc, pos, n_used); doc == n_docs when the batch is done.
    """
    mask = slots.size // 2 - 1
    n_docs = doc_offsets.size - 1
    for d in range(start_doc, n_docs):
        lo = doc_offsets[d]
        hi = doc_offsets[d + 1]
        first = lo + start_pos if d == start_doc else lo
        for t in range(first, hi):
            if n_used + window > max_used:
                return d, t - lo, n_used
            target = np.int64(tokens[t])
            for k in range(window):
                j = t - 1 - k
                ctx = np.int64(tokens[j]) if j >= lo else np.int64(BOS_KEY)
                key = (np.int64(k) << 56) | (ctx << TOKEN_BITS) | target
                n_used += _add(slots, vals, key, np.int64(1), shift, mask)
    return n_docs, 0, n_used


@njit(cache=True, nogil=True)
def add_feature_rows(indptr, indices, values, labels, start_row,
                     slots, vals, n_used, max_used, shift):
    """Add each row's normalised features x / sum(x) at (feature, label).

    Rows are CSR (indptr int64, indices int64, values float64), values already checked
    finite and non-negative. Rows whose sum is zero add nothing. Resumes at `start_row`
    and returns (row, n_used); row == n_rows when the batch is done.
    """
    mask = slots.size // 2 - 1
    n_rows = indptr.size - 1
    for r in range(start_row, n_rows):
        lo = indptr[r]
        hi = indptr[r + 1]
        if n_used + (hi - lo) > max_used:
            return r, n_used
        total = 0.0
        for p in range(lo, hi):
            total += values[p]
        if total <= 0.0:
            continue
        label = np.int64(labels[r])
        for p in range(lo, hi):
            v = values[p]
            if v != 0.0:
                key = (np.int64(indices[p]) << LABEL_BITS) | label
                n_used += _add(slots, vals, key, v / total, shift, mask)
    return n_rows, n_used


@njit(cache=True, nogil=True)
def rehash(old_slots, slots, shift):
    """Move every occupied slot of the old table into the (larger, empty) new one."""
    mask = slots.size // 2 - 1
    for i in range(old_slots.size // 2):
        k = old_slots[2 * i]
        if k != EMPTY:
            h = _slot(k, shift)
            while slots[2 * h] != EMPTY:
                h = (h + 1) & mask
            slots[2 * h] = k
            slots[2 * h + 1] = old_slots[2 * i + 1]


@njit(cache=True, nogil=True)
def sorted_items(slots, vals, n_used, row_bits, lm_rows, out_keys, out_vals):
    """The occupied (key, value) pairs in key order, by a counting sort on the row part of
    the key (key >> row_bits) and a sort of each row's few keys: linear, unlike a full sort.

    lm_rows: rows are (k, context) with context BOS_KEY mapped to a dense index, else rows
    are plain feature ids. Fills out_keys / out_vals (size n_used) and returns True, or
    returns False without sorting when the rows are too sparse for a counting sort.
    """
    n_slots = slots.size // 2
    # dense row index: lm keys hold (k << 28 | ctx) above the target bits.
    max_ctx = -1
    max_row = -1
    for i in range(n_slots):
        key = slots[2 * i]
        if key != EMPTY:
            r = key >> row_bits
            if lm_rows:
                ctx = r & TOKEN_MASK
                if ctx != BOS_KEY and ctx > max_ctx:
                    max_ctx = ctx
                k = r >> TOKEN_BITS
                if k > max_row:
                    max_row = k
            elif r > max_row:
                max_row = r
    width = max_ctx + 2  # contexts 0..max_ctx, then BOS
    n_rows = (max_row + 1) * width if lm_rows else max_row + 1
    if n_rows > 4 * n_used + 4096:
        return False
    counts = np.zeros(n_rows + 1, np.int64)
    for i in range(n_slots):
        key = slots[2 * i]
        if key != EMPTY:
            counts[_dense_row(key, row_bits, lm_rows, width) + 1] += 1
    for r in range(n_rows):
        counts[r + 1] += counts[r]
    fill = counts[:-1].copy()
    for i in range(n_slots):
        key = slots[2 * i]
        if key != EMPTY:
            r = _dense_row(key, row_bits, lm_rows, width)
            p = fill[r]
            out_keys[p] = key
            out_vals[p] = vals[2 * i + 1]
            fill[r] = p + 1
    for r in range(n_rows):
        lo = counts[r]
        hi = counts[r + 1]
        if hi - lo <= 16:
            for i in range(lo + 1, hi):  # insertion sort
                k = out_keys[i]
                v = out_vals[i]
                j = i - 1
                while j >= lo and out_keys[j] > k:
                    out_keys[j + 1] = out_keys[j]
                    out_vals[j + 1] = out_vals[j]
                    j -= 1
                out_keys[j + 1] = k
                out_vals[j + 1] = v
        else:
            _heapsort(out_keys, out_vals, lo, hi)
    return True


@njit(cache=True, nogil=True)
def _heapsort(keys, vals, lo, hi):
    """Sort keys[lo:hi] in place, vals alongside (keys distinct): a heapsort written out
    in one loop rather than np.argsort, whose compilation was most of a cold start."""
    n = hi - lo
    start, end = n // 2, n
    while end > 1:
        if start > 0:  # building the heap
            start -= 1
            root = start
        else:  # moving its top behind it
            end -= 1
            k = keys[lo]
            keys[lo] = keys[lo + end]
            keys[lo + end] = k
            v = vals[lo]
            vals[lo] = vals[lo + end]
            vals[lo + end] = v
            root = 0
        k = keys[lo + root]
        v = vals[lo + root]
        while True:  # sift down
            child = 2 * root + 1
            if child >= end:
                break
            if child + 1 < end and keys[lo + child + 1] > keys[lo + child]:
                child += 1
            if keys[lo + child] <= k:
                break
            keys[lo + root] = keys[lo + child]
            vals[lo + root] = vals[lo + child]
            root = child
        keys[lo + root] = k
        vals[lo + root] = v


@njit(cache=True, nogil=True)
def _dense_row(key, row_bits, lm_rows, width):
    r = key >> row_bits
    if lm_rows:
        ctx = r & TOKEN_MASK
        return (r >> TOKEN_BITS) * width + (width - 1 if ctx == BOS_KEY else ctx)
    return r


NGRAM_GROUP = 16  # count_ngrams: keys built together, then added together


@njit(cache=True, nogil=True, inline="always")
def _ngram_key(tokens, lo, hi, t, order, bits, eos_value):
    """The packed key of the order-`order` n-gram ending at position t of the document
    tokens[lo:hi] (t == hi: the end-of-document token): ids + 1, BOS 0 before lo."""
    key = np.int64(0)
    for j in range(t - order + 1, t):
        v = np.int64(tokens[j]) + 1 if j >= lo else np.int64(0)
        key = (key << bits) | v
    target = np.int64(tokens[t]) + 1 if t < hi else eos_value
    return (key << bits) | target


@njit(cache=True, nogil=True)
def count_ngrams(tokens, doc_offsets, order, bits, eos, start_doc, start_pos,
                 slots, vals, n_used, max_used, shift):
    """Count every order-`order` n-gram: each token with its order-1 previous tokens (BOS
    before the document start), and with `eos` an end-of-document token after each
    document's last. Keys as in `data.limits` (id + 1, BOS 0, EOS all ones). Resumes at
    (start_doc, start_pos) and returns (doc, pos, n_used); doc == n_docs when done.

    Keys are built by groups of up to NGRAM_GROUP of a document, then added: a loop of
    adds alone lets the processor overlap their cache misses (the same table, about 1.5x
    faster than building and adding each key in turn once the table is past the caches)."""
    mask = slots.size // 2 - 1
    n_docs = doc_offsets.size - 1
    eos_value = (np.int64(1) << bits) - 1
    group = np.empty(NGRAM_GROUP, np.int64)
    for d in range(start_doc, n_docs):
        lo = doc_offsets[d]
        hi = doc_offsets[d + 1]
        t = lo + start_pos if d == start_doc else lo
        end = hi + 1 if eos else hi
        while t < end:
            g = min(NGRAM_GROUP, end - t, max_used - n_used)
            if g <= 0:
                return d, t - lo, n_used
            for i in range(g):
                group[i] = _ngram_key(tokens, lo, hi, t + i, order, bits, eos_value)
            for i in range(g):
                n_used += _add(slots, vals, group[i], np.int64(1), shift, mask)
            t += g
    return n_docs, 0, n_used


@njit(cache=True, nogil=True)
def occupied_keys(slots, out):
    """The keys of the occupied slots, in slot order, into out[:n]; returns n."""
    n = 0
    for i in range(slots.size // 2):
        k = slots[2 * i]
        if k != EMPTY:
            out[n] = k
            n += 1
    return n


@njit(cache=True, nogil=True)
def values_of(keys, slots, vals, shift, out):
    """out[i] = the value at keys[i], each present in the table: the home slots of a group
    of NGRAM_GROUP keys computed before they are probed, as in count_ngrams."""
    mask = slots.size // 2 - 1
    home = np.empty(NGRAM_GROUP, np.int64)
    for lo in range(0, keys.size, NGRAM_GROUP):
        hi = min(lo + NGRAM_GROUP, keys.size)
        for i in range(lo, hi):
            home[i - lo] = _slot(keys[i], shift)
        for i in range(lo, hi):
            h = home[i - lo]
            while slots[2 * h] != keys[i]:
                h = (h + 1) & mask
            out[i] = vals[2 * h + 1]


# --- the partitioned path: for batches whose keys are mostly new to a large table -------------
# Inserting keys in the order they come hits a random slot of the table each time: past the
# caches, a memory round trip each. Instead a chunk of keys is built first, ordered by the
# top bits of their hash (a counting sort: one sequential pass), and inserted in that order,
# so that consecutive inserts fall in one cache-sized region of the table. The counts are
# the same; only the order in which keys enter the table differs.

@njit(cache=True, nogil=True)
def window_keys(tokens, doc_offsets, window, start_doc, start_pos, out):
    """The packed keys of count_windows, written to `out` instead of counted: from
    (start_doc, start_pos) until `out` is full (whole tokens only). Returns (doc, pos, n)."""
    n_docs = doc_offsets.size - 1
    n = 0
    for d in range(start_doc, n_docs):
        lo = doc_offsets[d]
        hi = doc_offsets[d + 1]
        first = lo + start_pos if d == start_doc else lo
        for t in range(first, hi):
            if n + window > out.size:
                return d, t - lo, n
            target = np.int64(tokens[t])
            for k in range(window):
                j = t - 1 - k
                ctx = np.int64(tokens[j]) if j >= lo else np.int64(BOS_KEY)
                out[n] = (np.int64(k) << 56) | (ctx << TOKEN_BITS) | target
                n += 1
    return n_docs, 0, n


@njit(cache=True, nogil=True)
def ngram_keys(tokens, doc_offsets, order, bits, eos, start_doc, start_pos, out):
    """The packed keys of count_ngrams, written to `out` instead of counted (as
    window_keys). Returns (doc, pos, n)."""
    n_docs = doc_offsets.size - 1
    eos_value = (np.int64(1) << bits) - 1
    n = 0
    for d in range(start_doc, n_docs):
        lo = doc_offsets[d]
        hi = doc_offsets[d + 1]
        first = lo + start_pos if d == start_doc else lo
        end = hi + 1 if eos else hi
        for t in range(first, end):
            if n + 1 > out.size:
                return d, t - lo, n
            out[n] = _ngram_key(tokens, lo, hi, t, order, bits, eos_value)
            n += 1
    return n_docs, 0, n


@njit(cache=True, nogil=True)
def partition_by_hash(keys, n, part_bits, out):
    """keys[:n] into out[:n] ordered by the top `part_bits` bits of their hash (stable
    counting sort), i.e. by the region of the table each falls in, whatever its size."""
    shift = np.uint64(64 - part_bits)
    counts = np.zeros((1 << part_bits) + 1, np.int64)
    for i in range(n):
        counts[np.int64((np.uint64(keys[i]) * HASH_MULT) >> shift) + 1] += 1
    for b in range(1 << part_bits):
        counts[b + 1] += counts[b]
    for i in range(n):
        b = np.int64((np.uint64(keys[i]) * HASH_MULT) >> shift)
        out[counts[b]] = keys[i]
        counts[b] += 1


@njit(cache=True, nogil=True)
def add_keys(keys, start, n, slots, vals, n_used, max_used, shift):
    """Add 1 at each of keys[start:n]; stops before the table would pass `max_used`
    entries. Returns (where it stopped, n_used); n when done."""
    mask = slots.size // 2 - 1
    for i in range(start, n):
        if n_used + 1 > max_used:
            return i, n_used
        n_used += _add(slots, vals, keys[i], np.int64(1), shift, mask)
    return n, n_used


# --- the sorted path: for batches whose keys are mostly distinct -------------------------------
# Even ordered by hash, a key new to a table past the caches costs a memory round trip. When
# most keys of a chunk are distinct, sorting them costs less: the chunk's keys are built,
# sorted (np.sort), reduced to its distinct keys and their counts (run_lengths): a sorted run;
# runs of about the same size are merged (merge_runs), summing the counts of keys in both,
# so that a few long runs remain, and the table's items are merged with them at the end.
# The counts are integers: the same sums, whichever path counted which key.

@njit(cache=True, nogil=True)
def run_lengths(keys, n, out_keys, out_counts):
    """keys[:n] sorted: each distinct key once in out_keys, its number of occurrences in
    out_counts (both with room for every distinct key). Returns how many were written."""
    m = 0
    for i in range(n):
        k = keys[i]
        if m > 0 and out_keys[m - 1] == k:
            out_counts[m - 1] += 1
        else:
            out_keys[m] = k
            out_counts[m] = 1
            m += 1
    return m


@njit(cache=True, nogil=True)
def merge_runs(a_keys, a_vals, b_keys, b_vals, out_keys, out_vals):
    """Two runs (keys increasing, each distinct within its run) as one into out_keys /
    out_vals (room for both): a key in both once, with the sum of its two values. Returns
    the number of keys written."""
    i = 0
    j = 0
    n = 0
    while i < a_keys.size and j < b_keys.size:
        a = a_keys[i]
        b = b_keys[j]
        if a < b:
            out_keys[n] = a
            out_vals[n] = a_vals[i]
            i += 1
        elif b < a:
            out_keys[n] = b
            out_vals[n] = b_vals[j]
            j += 1
        else:
            out_keys[n] = a
            out_vals[n] = a_vals[i] + b_vals[j]
            i += 1
            j += 1
        n += 1
    while i < a_keys.size:
        out_keys[n] = a_keys[i]
        out_vals[n] = a_vals[i]
        i += 1
        n += 1
    while j < b_keys.size:
        out_keys[n] = b_keys[j]
        out_vals[n] = b_vals[j]
        j += 1
        n += 1
    return n


# --- from sorted window keys to CSR ---------------------------------------------------------
# The statistics' row of a window key is k * (V + 1) + context (the document start, BOS,
# in the block's last row), its column the target. Done in numpy this makes half a dozen
# temporary arrays the size of the keys, each paid again in fresh pages.

@njit(cache=True, nogil=True)
def window_targets(keys, out):
    """Each key's target (its column) into `out` (int32). Returns the largest, -1 if none."""
    top = -1
    for i in range(keys.size):
        t = keys[i] & TOKEN_MASK
        out[i] = t
        if t > top:
            top = t
    return top


@njit(cache=True, nogil=True)
def window_row_counts(keys, vocab_size, out):
    """Adds to out[row + 1] the number of keys in each row of a vocabulary of `vocab_size`
    (so that a cumulative sum of `out` is the CSR's indptr)."""
    for i in range(keys.size):
        key = keys[i]
        ctx = (key >> TOKEN_BITS) & TOKEN_MASK
        if ctx == BOS_KEY:
            ctx = vocab_size
        out[(key >> 56) * (vocab_size + 1) + ctx + 1] += 1
