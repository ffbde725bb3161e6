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


def dense_logits(x_indptr, x_indices, x_values, weights, tau, bias):
    """logits = tau * x W + bias with W dense (rows: features)."""
    n = x_indptr.size - 1
    row_of = np.repeat(np.arange(n), np.diff(x_indptr))
    z = np.zeros((n, weights.shape[1]))
    np.add.at(z, row_of, x_values[:, None] * np.asarray(weights, dtype=np.float64)[x_indices])
    return tau * z + (0.0 if bias is None else bias)


def score_dense(logits: np.ndarray, targets: np.ndarray, top_k: int):
    """Per-example negative log-likelihood, rank of the target (ties by index) and top-k."""
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    idx = np.arange(targets.size)
    zy = logits[idx, targets]
    cls = np.arange(logits.shape[1])
    rank = (logits > zy[:, None]).sum(axis=1) + ((logits == zy[:, None]) & (cls < targets[:, None])).sum(axis=1)
    order = np.lexsort((np.broadcast_to(cls, logits.shape), -logits), axis=1)[:, :top_k]
    return lse - zy, rank, order
