"""The document cache's weights (`model.cache`) fitted on held-out data.

Each λ_b maximises the held-out log-likelihood of the mixture (1 − λ_b) p_ngram + λ_b c/t
over the predictions of its bucket; the likelihood is concave in λ_b, and the
expectation-maximisation update λ ← mean of the cache's posterior share converges to its
maximum from any start inside (0, 1). Buckets without held-out predictions take the λ of the
nearest bucket below (0 when there is none: no cache before the first token).
"""
from __future__ import annotations

import math

import numpy as np

from ..model.cache import N_BUCKETS, cache_bucket, document_counts, mix, prediction_offsets
from ..model.ngram import context_rows

MAX_ITER = 200
TOL = 1e-9


def fit_weights(log_p: np.ndarray, seen: np.ndarray, count: np.ndarray,
                max_iter: int = MAX_ITER) -> np.ndarray:
    """λ per bucket maximising Σ log((1 − λ_b) p + λ_b c/t) over held-out predictions with
    n-gram log-probabilities `log_p`, `seen` tokens of the document before them, `count` of
    which were the target."""
    bucket = cache_bucket(seen)
    lam = np.zeros(N_BUCKETS)
    for b in range(1, N_BUCKETS):
        at = bucket == b
        if not at.any():
            lam[b] = lam[b - 1]
            continue
        p = np.exp(log_p[at])
        q = count[at] / seen[at]
        if not (q > 0).any():
            continue                       # the cache never holds the target here: λ = 0
        x = 0.5
        for _ in range(max_iter):
            share = x * q / ((1 - x) * p + x * q)
            new = float(share.mean())
            if abs(new - x) < TOL:
                x = new
                break
            x = new
        lam[b] = x
    return lam


def heldout_counts(model, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n-gram log p, seen, count) of every prediction of held-out token batches."""
    parts = []
    for arrays in batches:
        context, target = context_rows(np.asarray(arrays.tokens, np.int64), arrays.doc_offsets,
                                       model.order, model.vocab_size, model.eos)
        seen, count = document_counts(target, prediction_offsets(arrays.doc_offsets, model.eos),
                                      model.n_classes)
        parts.append((model.log_prob(context, target), seen, count))
    if not parts:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(p) for p in zip(*parts))


def fit_cache(model, batches) -> dict:
    """The sidecar's `"cache"` entry of an n-gram model: λ per bucket fitted on every
    prediction of the held-out token batches, and the held-out cross-entropy without and
    with the cache."""
    log_p, seen, count = heldout_counts(model, batches)
    lam = fit_weights(log_p, seen, count)
    n = int(log_p.size)
    return {"lambda": [float(x) for x in lam], "buckets": "0: no token before; b: 2^(b-1) <= t",
            "positions": n,
            "cross_entropy_without": float(-log_p.mean()) if n else math.nan,
            "cross_entropy": float(-mix(log_p, seen, count, lam).mean()) if n else math.nan}
