"""The document cache of an n-gram model: the next token's n-gram probability mixed with
the distribution of the tokens seen so far in the same document.

    p(y | h, document so far) = (1 − λ_b) · p_ngram(y | h) + λ_b · c(y) / t

t is the number of tokens of the document before the prediction, c(y) how many of them are
y, and λ_b one weight per bucket b of t (0 at t = 0, then 1 + ⌊log2 t⌋, the last bucket
open-ended), fitted on held-out data (`solve.cache`). A mixture of two distributions over
the classes, so the model stays exactly normalised with no vocabulary-sized work: one count
per token. It sees what the n-gram context cannot — a dictionary entry repeats its headword
and terms, a source file its names — at the price of conditioning on the whole document so
far, not on the order−1 previous tokens only. The weights live in the model's sidecar
(`"cache"`); a model without them scores as before.
"""
from __future__ import annotations

import numpy as np

from ..io.jit import njit

N_BUCKETS = 16


def cache_bucket(seen: np.ndarray) -> np.ndarray:
    """The λ bucket of predictions that have `seen` tokens of their document before them."""
    seen = np.asarray(seen, np.int64)
    b = 1 + np.floor(np.log2(np.maximum(seen, 1))).astype(np.int64)
    return np.where(seen > 0, np.minimum(b, N_BUCKETS - 1), 0)


@njit(cache=True, nogil=True)
def document_counts(target, offsets, n_classes):
    """Per prediction (documents' predictions contiguous, `offsets` their bounds): how many
    predictions of its document come before it, and how many of those had its target."""
    n = target.size
    seen = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    counts = np.zeros(n_classes, np.int64)
    for d in range(offsets.size - 1):
        for i in range(offsets[d], offsets[d + 1]):
            seen[i] = i - offsets[d]
            count[i] = counts[target[i]]
            counts[target[i]] += 1
        for i in range(offsets[d], offsets[d + 1]):
            counts[target[i]] = 0
    return seen, count


def document_counts_reference(target: np.ndarray, offsets: np.ndarray):
    """numpy twin of `document_counts`, from its definition (quadratic in a document)."""
    seen = np.empty(target.size, np.int64)
    count = np.empty(target.size, np.int64)
    for d in range(offsets.size - 1):
        a = offsets[d]
        for i in range(a, offsets[d + 1]):
            seen[i], count[i] = i - a, int(np.sum(target[a:i] == target[i]))
    return seen, count


def mix(log_p: np.ndarray, seen: np.ndarray, count: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """log((1 − λ_b) p + λ_b c / t) of predictions with n-gram log-probabilities `log_p`."""
    lam_b = np.asarray(lam, np.float64)[cache_bucket(seen)]
    with np.errstate(divide="ignore"):
        cached = np.log(lam_b) + np.log(count) - np.log(np.maximum(seen, 1))
        return np.logaddexp(np.log1p(-lam_b) + log_p, cached)


def cache_weights(meta: dict) -> np.ndarray | None:
    """The λ of a model's sidecar, or None for a model without the cache."""
    cache = meta.get("cache")
    return None if cache is None else np.asarray(cache["lambda"], np.float64)


def prediction_offsets(doc_offsets: np.ndarray, eos: bool) -> np.ndarray:
    """Bounds of each document's predictions (its tokens, and the end token with eos)."""
    preds = np.diff(doc_offsets) + (1 if eos else 0)
    return np.concatenate([[0], np.cumsum(preds)]).astype(np.int64)


def with_cache(log_p: np.ndarray, target: np.ndarray, offsets: np.ndarray, n_classes: int,
               lam: np.ndarray) -> np.ndarray:
    """The cache mixed into the n-gram log-probabilities of documents' predictions."""
    target = np.ascontiguousarray(target, np.int64)
    seen, count = document_counts(target, np.ascontiguousarray(offsets, np.int64), n_classes)
    return mix(log_p, seen, count, lam)


def distribution_with_cache(p: np.ndarray, context: list[int], lam: np.ndarray) -> np.ndarray:
    """The cache mixed into an n-gram distribution `p` over the classes, the context being
    the document so far."""
    t = len(context)
    if t == 0:
        return p
    lam_b = float(np.asarray(lam)[cache_bucket(np.array([t]))[0]])
    c = np.bincount(np.asarray(context, np.int64), minlength=p.size)[:p.size]
    return (1 - lam_b) * p + lam_b * c / t
