"""Numba scoring kernels: normalisers, top-k and target lookups against sparse weights.

Plain arrays in, plain arrays out, no Python objects; the pure-numpy twins the tests compare
them with are in `streamfit.model.reference`.
"""
from __future__ import annotations

import numpy as np

from ..io.jit import njit


@njit(cache=True, nogil=True)
def log_expm1(x):
    """log(exp(x) - 1) for x > 0, without overflow for large x."""
    if x > 30.0:
        return x + np.log1p(-np.exp(-x))
    return np.log(np.expm1(x))


@njit(cache=True, nogil=True)
def score_sparse(x_indptr, x_indices, x_values, s_indptr, s_indices, s_data, tau, bias,
                 log_z_bias, bias_desc_order, top_k, out_lse, out_top, out_top_logp):
    """Normaliser and top-k of examples against sparse weights S (rows: features).

    logits_j = tau * s_j + bias_j with s = x S. Classes outside the union support U of the
    example's rows have logit bias_j, so the log-normaliser is
        logaddexp(log_z_bias, logsumexp_{j in U}(bias_j + log(expm1(tau * s_j))))
    with log_z_bias = logsumexp(bias) precomputed: no pass over all classes per example.
    Needs tau * s_j >= 0 (true of S = log1p(F / a)). out_top receives the top_k classes,
    ties broken by class index like argmax (top_k may be 0), out_top_logp their
    log-probabilities.
    """
    n_classes = bias.size
    scratch = np.zeros(n_classes)
    in_support = np.zeros(n_classes, dtype=np.bool_)
    touched = np.empty(n_classes, dtype=np.int64)
    terms = np.empty(n_classes)
    for e in range(x_indptr.size - 1):
        n_touched = 0
        for p in range(x_indptr[e], x_indptr[e + 1]):
            row = x_indices[p]
            xv = x_values[p]
            for q in range(s_indptr[row], s_indptr[row + 1]):
                j = s_indices[q]
                if not in_support[j]:
                    in_support[j] = True
                    touched[n_touched] = j
                    n_touched += 1
                scratch[j] += xv * s_data[q]
        m = -np.inf
        for t in range(n_touched):
            j = touched[t]
            ts = tau * scratch[j]
            v = bias[j] + log_expm1(ts) if ts > 0.0 else -np.inf
            terms[t] = v
            if v > m:
                m = v
        if m > -np.inf:
            acc = 0.0
            for t in range(n_touched):
                acc += np.exp(terms[t] - m)
            lse = np.logaddexp(log_z_bias, m + np.log(acc))
        else:
            lse = log_z_bias
        out_lse[e] = lse
        if top_k > 0:
            _top_k_sparse(scratch, in_support, touched, n_touched, tau, bias,
                          bias_desc_order, top_k, out_top[e])
            for slot in range(top_k):
                j = out_top[e, slot]
                if j >= 0:
                    out_top_logp[e, slot] = bias[j] + (tau * scratch[j] if in_support[j] else 0.0) - lse
        for t in range(n_touched):
            j = touched[t]
            scratch[j] = 0.0
            in_support[j] = False


@njit(cache=True, nogil=True)
def sparse_lookup(x_indptr, x_indices, x_values, targets, s_indptr, s_indices, s_data, out):
    """out[e] = sum_i x_i S[i, targets[e]] (binary search in each row's sorted classes)."""
    for e in range(x_indptr.size - 1):
        y = targets[e]
        acc = 0.0
        for p in range(x_indptr[e], x_indptr[e + 1]):
            row = x_indices[p]
            lo = s_indptr[row]
            hi = s_indptr[row + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if s_indices[mid] < y:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < s_indptr[row + 1] and s_indices[lo] == y:
                acc += x_values[p] * s_data[lo]
        out[e] = acc


@njit(cache=True, nogil=True)
def _top_k_sparse(scratch, in_support, touched, n_touched, tau, bias,
                  bias_desc_order, top_k, out):
    """The top_k classes by logit (ties by index): candidates are the support and the first
    top_k classes outside it in bias order."""
    n_cand = n_touched + top_k
    cand = np.empty(n_cand, dtype=np.int64)
    score = np.empty(n_cand)
    c = 0
    for t in range(n_touched):
        j = touched[t]
        cand[c] = j
        score[c] = bias[j] + tau * scratch[j]
        c += 1
    taken = 0
    for p in range(bias_desc_order.size):
        if taken == top_k:
            break
        j = bias_desc_order[p]
        if not in_support[j]:
            cand[c] = j
            score[c] = bias[j]
            c += 1
            taken += 1
    for slot in range(top_k):
        best = -1
        for i in range(c):
            if cand[i] < 0:
                continue
            if best < 0 or score[i] > score[best] or (score[i] == score[best] and cand[i] < cand[best]):
                best = i
        if best < 0:
            out[slot] = -1
        else:
            out[slot] = cand[best]
            cand[best] = -1
