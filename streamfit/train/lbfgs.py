"""Full-batch L-BFGS on the mean cross-entropy + ½ Σ_i λ_i ‖W_i‖², one streaming pass per
function evaluation: the reference optimum of the single-layer model, and (preconditioned)
refine's default method.

Preconditioning. Inputs x̃ = x/Σx are badly scaled (features of very different variances,
strongly correlated pixels), which is why plain L-BFGS crawls on images. Rows of x̃ sum to 1,
so logits = x̃·W can be written exactly as (x̃ − μ)·M·V + 1·cᵀ with W = M·V + 1·(c − μᵀM·V)ᵀ,
μ the mean of x̃ and M·Mᵀ the inverse of its covariance (whitening; M diagonal,
1/sd, when the covariance is too large; the covariance's diagonal is raised by
WHITENING_FLOOR times its mean first): the same model, with features of unit variance in
the coordinates (V, c) L-BFGS moves in. μ and the covariance come from one moments pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

from .core import FeatureMoments, l2_penalty

# Eigenvalues of the covariance are floored at this fraction of the mean variance.
WHITENING_FLOOR = 1e-3


class _PassesSpent(Exception):
    """Raised inside scipy's objective when the passes asked for are spent."""


@dataclass
class Whitening:
    """The reparametrisation W = M·V + 1·(c − μᵀM·V)ᵀ (see the module docstring)."""

    mean: np.ndarray
    m: np.ndarray          # d × d (full) or d (diagonal)
    m_inverse: np.ndarray  # its inverse, same shape

    @classmethod
    def of(cls, moments: FeatureMoments) -> "Whitening":
        mu = moments.mean
        if moments.gram is not None:
            # Any M with M·Mᵀ = (cov + floor·I)⁻¹ whitens: M = L⁻ᵀ from the Cholesky factor L
            # (several times cheaper than an eigendecomposition)
            cov = moments.gram - np.outer(mu, mu)
            floor = WHITENING_FLOOR * max(float(np.trace(cov)) / len(mu), 1e-300)
            cov[np.diag_indices_from(cov)] += floor
            chol = np.linalg.cholesky(cov)
            m = scipy.linalg.solve_triangular(chol, np.eye(len(mu)), lower=True).T
            return cls(mu, m, chol.T.copy())
        var = moments.variance
        floor = WHITENING_FLOOR * max(float(var.mean()), 1e-300)
        sd = np.sqrt(var + floor)
        return cls(mu, 1.0 / sd, sd)

    @property
    def kind(self) -> str:
        return "full covariance" if self.m.ndim == 2 else "diagonal"

    def _mul(self, a, v):
        return a @ v if a.ndim == 2 else a[:, None] * v

    def to_w(self, v: np.ndarray, c: np.ndarray) -> np.ndarray:
        mv = self._mul(self.m, v)
        return mv + (c - self.mean @ mv)[None, :]

    def from_w(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._mul(self.m_inverse, w), self.mean @ w

    def grad(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        col = g.sum(axis=0)
        mt = self.m.T if self.m.ndim == 2 else self.m
        return self._mul(mt, g - np.outer(self.mean, col)), col


def lbfgs(w, pass_fn, passes, l2, record, checkpoint, start_pass,
          whitening: Whitening | None = None):
    """scipy's L-BFGS-B; every function evaluation is one streaming pass, exactly `passes`
    of them at most. `l2` is a number or a (d, 1) column of per-feature strengths; with
    `whitening` it moves in whitened coordinates (same model, same objective). Returns the
    best point evaluated."""
    if passes <= 0:
        return w
    d, c = w.shape
    count = [start_pass]
    observed: list[np.ndarray] = []
    best: list = [np.inf, w]

    def weights(flat):
        if whitening is None:
            return flat.reshape(d, c)
        return whitening.to_w(flat[:d * c].reshape(d, c), flat[d * c:])

    def fun(flat):
        if count[0] - start_pass == passes:
            raise _PassesSpent  # scipy may evaluate once more than maxfun
        cur = weights(flat)
        r = pass_fn(cur, True, not observed)
        if not observed:
            observed.append(r.observed)
        penalty, penalty_grad = l2_penalty(l2, cur)
        grad = (r.expected - observed[0]) / r.n + penalty_grad
        objective = r.mean_loss + penalty
        count[0] += 1
        if objective < best[0]:
            best[:] = [objective, cur.copy()]
        record(count[0], cur, r, {"objective": objective})
        checkpoint(count[0], cur, {})
        if whitening is None:
            return objective, grad.ravel()
        gv, gc = whitening.grad(grad)
        return objective, np.concatenate([gv.ravel(), gc])

    if whitening is None:
        x0 = w.ravel()
    else:
        v0, c0 = whitening.from_w(w)
        x0 = np.concatenate([v0.ravel(), c0])
    try:
        scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                options={"maxfun": passes, "maxiter": passes, "gtol": 1e-10,
                                         "ftol": 1e-14,
                                         "maxcor": 10 if whitening is None else 20})
    except _PassesSpent:
        pass
    return best[1]
