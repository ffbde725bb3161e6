"""Pure-numpy twins of the scoring kernels: dense logits and per-example scores, the oracles
the tests compare `streamfit.model.kernels` with."""
from __future__ import annotations

import numpy as np


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
