"""Pure-numpy twins of the calibration kernels: the oracles the tests compare
`streamfit.solve.kernels` with. Dense over all classes, so only for small tests."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp


def support_scores(x_indptr, x_indices, x_values, f_indptr, f_indices, f_data, n_classes: int,
                   smoothing: float) -> np.ndarray:
    """s = x · log1p(F / a) for every example and class, dense (zero outside the support)."""
    n_features = f_indptr.size - 1
    x = sp.csr_matrix((x_values, x_indices, x_indptr), shape=(x_indptr.size - 1, n_features))
    log_f = sp.csr_matrix((np.log1p(f_data / smoothing), f_indices, f_indptr),
                          shape=(n_features, n_classes))
    return (x @ log_f).toarray()


def loss_grad(tau: float, beta: float, s: np.ndarray, big_l: np.ndarray,
              targets: np.ndarray) -> tuple[float, float, float]:
    """Mean NLL of logits tau·s − beta·L over all classes, and its gradient in (tau, beta)."""
    z = tau * s - beta * big_l[None, :]
    logp = z - logsumexp(z, axis=1, keepdims=True)
    p = np.exp(logp)
    rows = np.arange(targets.size)
    nll = -logp[rows, targets].mean()
    g_tau = ((p * s).sum(axis=1) - s[rows, targets]).mean()
    g_beta = (-(p @ big_l) + big_l[targets]).mean()
    return float(nll), float(g_tau), float(g_beta)
