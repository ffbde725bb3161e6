"""The document cache's weights (`model.cache`) fitted on held-out data.

Each row of weights (one per bucket of tokens seen × whether the bigram cache exists)
maximises the held-out log-likelihood of the mixture over the predictions of its row; the
likelihood is concave in the weights, and the expectation-maximisation update — each
weight ← the mean posterior share of its part — increases it at every step and converges to
its maximum from any start inside the simplex. A part that cannot hold the target there
(the bigram cache before it exists) keeps weight 0. Rows without held-out predictions take
the weights of the bucket below (the n-gram alone when there is none).
"""
from __future__ import annotations

import math

import numpy as np

from ..model.cache import (N_BUCKETS, N_PARTS, cache_group, document_counts, mix, parts,
                           prediction_offsets)
from ..model.ngram import context_rows

MAX_ITER = 500
TOL = 1e-10


def fit_weights(log_p: np.ndarray, counts: tuple, max_iter: int = MAX_ITER) -> np.ndarray:
    """Weights (2·N_BUCKETS rows, N_PARTS columns) maximising the summed log-probability of
    held-out predictions with n-gram log-probabilities `log_p` and `document_counts`
    `counts`."""
    group = cache_group(counts[0], counts[2])
    logs = parts(log_p, *counts)
    weights = np.zeros((2 * N_BUCKETS, N_PARTS))
    weights[:, 0] = 1.0
    for g in range(2, 2 * N_BUCKETS):
        at = group == g
        if not at.any():
            weights[g] = weights[g - 2]
            continue
        lg = logs[at]
        used = np.isfinite(lg).any(0)           # parts that hold some target here
        used[0] = True
        w = np.where(used, 1.0 / used.sum(), 0.0)
        shifted = np.exp(lg[:, used] - lg[:, used].max(1, keepdims=True))
        for _ in range(max_iter):
            share = shifted * w[used]
            share /= share.sum(1, keepdims=True)
            new = share.mean(0)
            done = np.abs(new - w[used]).max() < TOL
            w[used] = new
            if done:
                break
        weights[g] = w
    return weights


def heldout_counts(model, batches) -> tuple[np.ndarray, tuple]:
    """(n-gram log p, document counts) of every prediction of held-out token batches."""
    lps, counts = [], []
    for arrays in batches:
        context, target = context_rows(np.asarray(arrays.tokens, np.int64), arrays.doc_offsets,
                                       model.order, model.vocab_size, model.eos)
        counts.append(document_counts(target, prediction_offsets(arrays.doc_offsets, model.eos),
                                      model.n_classes))
        lps.append(model.log_prob(context, target))
    if not lps:
        return np.zeros(0), tuple(np.zeros(0, np.int64) for _ in range(4))
    return np.concatenate(lps), tuple(np.concatenate(c) for c in zip(*counts))


def fit_cache(model, batches) -> dict:
    """The sidecar's `"cache"` entry of an n-gram model: the weights fitted on every
    prediction of the held-out token batches, and the held-out cross-entropy without and
    with the cache."""
    log_p, counts = heldout_counts(model, batches)
    weights = fit_weights(log_p, counts)
    n = int(log_p.size)
    return {"weights": weights.tolist(), "positions": n,
            "rows": "2·b + (bigram cache exists); bucket b: 0 no token before, else "
                    "2^(b-1) <= t; columns: n-gram, unigram cache, bigram cache",
            "cross_entropy_without": float(-log_p.mean()) if n else math.nan,
            "cross_entropy": float(-mix(log_p, counts, weights).mean()) if n else math.nan}
