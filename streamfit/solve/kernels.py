"""Numba kernels of the held-out calibration: gather each example's rows of F, and the mean
cross-entropy of the family with its gradient in (tau, beta). Their numpy twins are in
`streamfit.solve.reference`."""
from __future__ import annotations

import math

import numpy as np

from ..io.jit import njit
from ..model.kernels import log_expm1


@njit(cache=True)
def expand_support(x_indptr, x_indices, x_values, targets, f_indptr, f_indices, f_data, n_classes):
    """Gather each example's rows of F: entries (slot, x_i, F_ij) where a slot is one
    (example, class) of the example's support; returns slot classes, the slot pointer per
    example and the target's slot (-1 when the target is outside the support)."""
    total = 0
    for p in range(x_indices.size):
        r = x_indices[p]
        total += f_indptr[r + 1] - f_indptr[r]
    entry_slot = np.empty(total, np.int64)
    entry_x = np.empty(total)
    entry_f = np.empty(total)
    slot_class = np.empty(total, np.int64)
    slot_ptr = np.zeros(targets.size + 1, np.int64)
    target_slot = np.full(targets.size, -1, np.int64)
    slot_of = np.full(n_classes, -1, np.int64)
    n_entries = 0
    n_slots = 0
    for e in range(targets.size):
        first = n_slots
        for p in range(x_indptr[e], x_indptr[e + 1]):
            r = x_indices[p]
            for q in range(f_indptr[r], f_indptr[r + 1]):
                j = f_indices[q]
                if slot_of[j] < 0:
                    slot_of[j] = n_slots
                    slot_class[n_slots] = j
                    n_slots += 1
                entry_slot[n_entries] = slot_of[j]
                entry_x[n_entries] = x_values[p]
                entry_f[n_entries] = f_data[q]
                n_entries += 1
        target_slot[e] = slot_of[targets[e]]
        for s in range(first, n_slots):
            slot_of[slot_class[s]] = -1
        slot_ptr[e + 1] = n_slots
    return entry_slot, entry_x, entry_f, slot_class[:n_slots], slot_ptr, target_slot


@njit(cache=True)
def loss_grad(tau, beta, s, l_slot, slot_ptr, target_slot, target_l, log_z, zl):
    """Mean held-out NLL of logits tau*s_j - beta*L_j and its gradient in (tau, beta).
    log_z = logsumexp(-beta*L) over all classes, zl = sum softmax(-beta*L)_j L_j."""
    n = target_slot.size
    total = 0.0
    g_tau = 0.0
    g_beta = 0.0
    for e in range(n):
        lo, hi = slot_ptr[e], slot_ptr[e + 1]
        m = 0.0  # the part outside the support, relative to log_z, is log(1) = 0 at most
        for q in range(lo, hi):
            v = -beta * l_slot[q] - log_z + log_expm1(tau * s[q])
            if v > m:
                m = v
        acc = math.exp(-m)  # the bias-only term exp(0 - m)
        for q in range(lo, hi):
            acc += math.exp(-beta * l_slot[q] - log_z + log_expm1(tau * s[q]) - m)
        lse = log_z + m + math.log(acc)
        ts = 0.0
        if target_slot[e] >= 0:
            ts = s[target_slot[e]]
        total += lse - (tau * ts - beta * target_l[e])
        # gradients: p_j over the support, plus the bias-only classes outside it
        dtau = 0.0
        pl_support = 0.0
        ql_support = 0.0
        for q in range(lo, hi):
            pj = math.exp(tau * s[q] - beta * l_slot[q] - lse)
            dtau += pj * s[q]
            pl_support += pj * l_slot[q]
            ql_support += math.exp(-beta * l_slot[q] - log_z) * l_slot[q]
        outside = math.exp(log_z - lse) * (zl - ql_support)
        g_tau += dtau - ts
        g_beta += -(pl_support + outside) + target_l[e]
    return total / n, g_tau / n, g_beta / n
