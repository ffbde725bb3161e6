"""Pure-numpy twins of the numba kernels: the oracles the tests compare the kernels with,
and the plain numpy counting baseline of `tools/bench_accumulate.py`.

They compute the same quantities in the most direct vectorised way (build every key, then
`np.unique`), with no hash table and no early exit.
"""
from __future__ import annotations

import numpy as np

from .kernels import BOS_KEY, LABEL_BITS, TOKEN_BITS


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
