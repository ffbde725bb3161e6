"""The document cache of an n-gram model: the next token's n-gram probability mixed with
what the same document has shown so far.

    p(y | h, document so far) = w0 · p_ngram(y | h) + w1 · c(y) / t + w2 · c(x, y) / c(x •)

t is the number of tokens of the document before the prediction, c(y) how many of them are
y, x the previous token, c(x •) how many times x was followed by a token before it and
c(x, y) how many of those by y (the bigram cache; absent, w2 = 0, while c(x •) = 0). The
weights (w0, w1, w2), summing to 1, are one triple per bucket b of t (0 at t = 0: the n-gram
alone, then 1 + ⌊log2 t⌋, the last bucket open-ended) and per whether the bigram cache
exists, fitted on held-out data (`solve.cache`). A mixture of distributions over the classes,
so the model stays exactly normalised with no vocabulary-sized work: a few counts per token.
It sees what the n-gram context cannot — a dictionary entry repeats its headword and terms,
a source file its names — at the price of conditioning on the whole document so far, not on
the order−1 previous tokens only. The weights live in the model's sidecar (`"cache"`); a
model without them scores as before.
"""
from __future__ import annotations

import numpy as np

from ..io.jit import njit

N_BUCKETS = 16
N_PARTS = 3           # the n-gram model, the unigram cache, the bigram cache


def cache_bucket(seen: np.ndarray) -> np.ndarray:
    """The weights' bucket of predictions that have `seen` tokens of their document before
    them."""
    seen = np.asarray(seen, np.int64)
    b = 1 + np.floor(np.log2(np.maximum(seen, 1))).astype(np.int64)
    return np.where(seen > 0, np.minimum(b, N_BUCKETS - 1), 0)


def cache_group(seen: np.ndarray, follows: np.ndarray) -> np.ndarray:
    """The row of the weights table (bucket × whether the bigram cache exists)."""
    return 2 * cache_bucket(seen) + (np.asarray(follows) > 0)


@njit(cache=True, nogil=True)
def document_counts(target, offsets, n_classes):
    """Per prediction (documents' predictions contiguous, `offsets` their bounds): t, the
    predictions of its document before it; c(y), how many of those had its target y;
    c(x •), how many of them followed the previous target x (x itself excluded); c(x, y),
    how many of those had the target y. Pairs are counted in an open-addressing table
    twice the longest document's size, emptied slot by slot after each document."""
    n = target.size
    seen = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    follows = np.zeros(n, np.int64)
    pairs = np.zeros(n, np.int64)
    counts = np.zeros(n_classes, np.int64)
    longest = 1
    for d in range(offsets.size - 1):
        longest = max(longest, offsets[d + 1] - offsets[d])
    bits = 1
    while (1 << bits) < 2 * longest:
        bits += 1
    mask = (1 << bits) - 1
    keys = np.full(1 << bits, -1, np.int64)
    values = np.zeros(1 << bits, np.int64)
    used = np.empty(longest, np.int64)
    for d in range(offsets.size - 1):
        a = offsets[d]
        n_used = 0
        for i in range(a, offsets[d + 1]):
            y = target[i]
            seen[i] = i - a
            count[i] = counts[y]
            counts[y] += 1
            if i > a:
                follows[i] = count[i - 1]
                key = target[i - 1] * n_classes + y
                s = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits)) & mask
                while keys[s] != -1 and keys[s] != key:
                    s = (s + 1) & mask
                if keys[s] == -1:
                    keys[s] = key
                    used[n_used] = s
                    n_used += 1
                pairs[i] = values[s]
                values[s] += 1
        for i in range(a, offsets[d + 1]):
            counts[target[i]] = 0
        for k in range(n_used):
            keys[used[k]] = -1
            values[used[k]] = 0
    return seen, count, follows, pairs


def document_counts_reference(target: np.ndarray, offsets: np.ndarray):
    """numpy twin of `document_counts`, from its definition (quadratic in a document)."""
    out = [np.zeros(target.size, np.int64) for _ in range(4)]
    seen, count, follows, pairs = out
    for d in range(offsets.size - 1):
        a = offsets[d]
        for i in range(a, offsets[d + 1]):
            seen[i], count[i] = i - a, int(np.sum(target[a:i] == target[i]))
            if i > a:
                before = target[a:i - 1] == target[i - 1]       # x at j − 1, j = a + 1 .. i − 1
                follows[i] = int(before.sum())
                pairs[i] = int(np.sum(before & (target[a + 1:i] == target[i])))
    return seen, count, follows, pairs


def parts(log_p, seen, count, follows, pairs) -> np.ndarray:
    """log of the three distributions at each prediction's target (−inf where a cache is
    empty or misses it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([log_p, np.log(count) - np.log(np.maximum(seen, 1)),
                         np.log(pairs) - np.log(np.maximum(follows, 1))], 1)


def mix(log_p: np.ndarray, counts: tuple, weights: np.ndarray) -> np.ndarray:
    """log p of predictions with n-gram log-probabilities `log_p` and `document_counts`
    `counts`, the cache mixed in with `weights` (rows of `cache_group`, N_PARTS columns)."""
    w = np.asarray(weights, np.float64)[cache_group(counts[0], counts[2])]
    with np.errstate(divide="ignore"):
        return np.logaddexp.reduce(np.log(w) + parts(log_p, *counts), axis=1)


@njit(cache=True, nogil=True)
def mixed(log_p, seen, count, follows, pairs, weights):
    """`mix` as one compiled loop (the scorer's; `mix` is its numpy twin)."""
    out = np.empty(log_p.size)
    for i in range(log_p.size):
        t = seen[i]
        g = 0
        if t > 0:
            g = min(1 + np.int64(np.floor(np.log2(t))), N_BUCKETS - 1)
        g = 2 * g + (1 if follows[i] > 0 else 0)
        p = weights[g, 0] * np.exp(log_p[i])
        if t > 0:
            p += weights[g, 1] * count[i] / t
        if follows[i] > 0:
            p += weights[g, 2] * pairs[i] / follows[i]
        out[i] = np.log(p)
    return out


def cache_weights(meta: dict) -> np.ndarray | None:
    """The weights table of a model's sidecar, or None for a model without the cache."""
    cache = meta.get("cache")
    return None if cache is None else np.asarray(cache["weights"], np.float64)


def prediction_offsets(doc_offsets: np.ndarray, eos: bool) -> np.ndarray:
    """Bounds of each document's predictions (its tokens, and the end token with eos)."""
    preds = np.diff(doc_offsets) + (1 if eos else 0)
    return np.concatenate([[0], np.cumsum(preds)]).astype(np.int64)


def with_cache(log_p: np.ndarray, target: np.ndarray, offsets: np.ndarray, n_classes: int,
               weights: np.ndarray) -> np.ndarray:
    """The cache mixed into the n-gram log-probabilities of documents' predictions."""
    counts = document_counts(np.ascontiguousarray(target, np.int64),
                             np.ascontiguousarray(offsets, np.int64), n_classes)
    return mixed(np.ascontiguousarray(log_p, np.float64), *counts,
                 np.ascontiguousarray(weights, np.float64))


def distribution_with_cache(p: np.ndarray, context: list[int], weights: np.ndarray) -> np.ndarray:
    """The cache mixed into an n-gram distribution `p` over the classes, the context being
    the document so far."""
    t = len(context)
    if t == 0:
        return p
    doc = np.asarray(context, np.int64)
    after = doc[1:][doc[:-1] == doc[-1]]        # the tokens that followed x = doc[-1]
    w = np.asarray(weights)[cache_group(np.array([t]), np.array([after.size]))[0]]
    out = w[0] * p + w[1] * np.bincount(doc, minlength=p.size)[:p.size] / t
    if after.size:
        out += w[2] * np.bincount(after, minlength=p.size)[:p.size] / after.size
    return out
