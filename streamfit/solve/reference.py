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


def block_newton(theta: np.ndarray, param: np.ndarray, lp: np.ndarray,
                 target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy of the n-gram block model, its gradient and Hessian in τ, by the
    full softmax: param (n, C, N) the τ index and lp (n, C, N) the log P_j of every class
    and level of each prediction; logits Σ_j τ[param] lp."""
    n, C, N = lp.shape
    phi = np.zeros((n, C, theta.size))
    for j in range(N):
        np.add.at(phi, (np.arange(n)[:, None], np.arange(C)[None, :], param[:, :, j]), lp[:, :, j])
    logits = phi @ theta
    logp = logits - logsumexp(logits, axis=1, keepdims=True)
    p = np.exp(logp)
    rows = np.arange(n)
    mean = np.einsum("nc,nck->nk", p, phi)
    value = -logp[rows, target].mean()
    grad = (mean - phi[rows, target]).mean(0)
    hess = (np.einsum("nc,nck,ncl->kl", p, phi, phi) - mean.T @ mean) / n
    return float(value), grad, hess
