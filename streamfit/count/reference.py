"""Pure-numpy twins of the numba kernels: the oracles the tests compare the kernels with,
and the plain numpy counting baseline of `tools/bench_accumulate.py`.

They compute the same quantities in the most direct vectorised way (build every key, then
`np.unique`), with no hash table and no early exit.
"""
from __future__ import annotations

import numpy as np

from .kernels import BOS_KEY, LABEL_BITS, TOKEN_BITS, TOKEN_MASK


def window_keys(tokens: np.ndarray, doc_offsets: np.ndarray, window: int) -> np.ndarray:
    """Every packed (k, context, target) key, one per token and position."""
    tokens = tokens.astype(np.int64)
    n = tokens.size
    doc_start = np.repeat(doc_offsets[:-1], np.diff(doc_offsets))
    pos = np.arange(n, dtype=np.int64) - doc_start
    keys = np.empty((window, n), dtype=np.int64)
    for k in range(window):
        ctx = np.full(n, BOS_KEY, dtype=np.int64)
        has = pos > k
        ctx[has] = tokens[np.flatnonzero(has) - 1 - k]
        keys[k] = (np.int64(k) << 56) | (ctx << TOKEN_BITS) | tokens
    return keys.ravel()


def count_windows(tokens: np.ndarray, doc_offsets: np.ndarray, window: int):
    """Sorted unique keys and their counts (what the kernel's table holds)."""
    return np.unique(window_keys(tokens, doc_offsets, window), return_counts=True)


def add_feature_rows(indptr, indices, values, labels):
    """Sorted unique (feature, label) keys and the sums of x / sum(x) at each."""
    n = labels.size
    lengths = np.diff(indptr)
    row_of = np.repeat(np.arange(n), lengths)
    sums = np.bincount(row_of, weights=values, minlength=n)
    keep = (values != 0) & (sums[row_of] > 0)
    keys = (indices[keep].astype(np.int64) << LABEL_BITS) | labels[row_of[keep]].astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=values[keep] / sums[row_of[keep]], minlength=uniq.size)


def ngram_keys(tokens: np.ndarray, doc_offsets: np.ndarray, order: int, eos: bool) -> np.ndarray:
    """Every packed order-`order` n-gram key, one per prediction (`data.limits` layout)."""
    bits = 63 // order
    lengths = np.diff(doc_offsets)
    preds = lengths + (1 if eos else 0)
    # Each document padded with order-1 BOS (0) in front and, with eos, the EOS value after.
    padded_len = preds + order - 1
    starts = np.concatenate([[0], np.cumsum(padded_len)[:-1]]).astype(np.int64)
    padded = np.zeros(int(padded_len.sum()), dtype=np.int64)
    doc_of = np.repeat(np.arange(lengths.size), lengths)
    within = np.arange(tokens.size) - doc_offsets[:-1][doc_of]
    padded[starts[doc_of] + order - 1 + within] = tokens.astype(np.int64) + 1
    if eos:
        padded[starts + padded_len - 1] = (1 << bits) - 1
    doc_of_pred = np.repeat(np.arange(lengths.size), preds)
    pred_starts = np.concatenate([[0], np.cumsum(preds)[:-1]]).astype(np.int64)
    target_at = starts[doc_of_pred] + order - 1 + (np.arange(int(preds.sum())) - pred_starts[doc_of_pred])
    keys = np.zeros(target_at.size, dtype=np.int64)
    for j in range(order - 1, -1, -1):
        keys = (keys << bits) | padded[target_at - j]
    return keys


def count_ngrams(tokens: np.ndarray, doc_offsets: np.ndarray, order: int, eos: bool):
    """Sorted unique n-gram keys and their counts (what the kernel's table holds)."""
    return np.unique(ngram_keys(tokens, doc_offsets, order, eos), return_counts=True)


def run_lengths(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct key once and its number of occurrences."""
    return np.unique(sorted_keys, return_counts=True)


def merge_runs(a_keys, a_vals, b_keys, b_vals) -> tuple[np.ndarray, np.ndarray]:
    """The keys of both runs once each, with the sums of their values (integer sums)."""
    keys, inverse = np.unique(np.concatenate([a_keys, b_keys]), return_inverse=True)
    sums = np.zeros(keys.size, dtype=np.result_type(a_vals, b_vals))
    np.add.at(sums, inverse, np.concatenate([a_vals, b_vals]))
    return keys, sums


def table_items(slots: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The occupied (key, value) pairs of a count table (keys at slots[2h], values at
    vals[2h + 1]) sorted by key: an argsort."""
    keys = slots[0::2]
    occupied = keys != -1
    order = np.argsort(keys[occupied])
    return keys[occupied][order], vals[1::2][occupied][order]


def window_csr(keys: np.ndarray, window: int, vocab_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted keys of a `window` as CSR of the statistics: (indptr, column per key, vocab
    size), the vocabulary one past the largest target unless given (twin of window_targets
    and window_row_counts)."""
    k = keys >> 56
    ctx = (keys >> TOKEN_BITS) & TOKEN_MASK
    target = keys & TOKEN_MASK
    v = vocab_size if vocab_size is not None else (int(target.max()) + 1 if target.size else 0)
    rows = k * (v + 1) + np.where(ctx == BOS_KEY, v, ctx)
    indptr = np.zeros(window * (v + 1) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=window * (v + 1)), out=indptr[1:])
    return indptr, target.astype(np.int32), v
