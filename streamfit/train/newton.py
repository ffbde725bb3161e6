"""Newton's method for the softmax layer, with the Hessian as a streaming sum.

The Hessian of the cross-entropy of logits x̃ · W is Σ_t (diag(p_t) − p_t p_tᵀ) ⊗ x̃_t x̃_tᵀ:
a sum over examples like E and F, so one pass gives the loss, the gradient and the whole
Hessian. Each pass after the first also does the line search, so no pass is spent on a
rejected step: the direction Δ solves (H/n + l2 + λ·h̄) Δ = −g at the current point (h̄ the
mean of H/n's diagonal), and the pass computes the loss and gradient at W + αΔ for
α ∈ STEPS and the Hessian at the full step. The best candidate becomes the current point —
with its own Hessian if it is the full step (then λ shrinks), else with the last one (then λ
grows). From the explicit solution a few passes reach the optimum of the same model that
L-BFGS needs tens of passes for.

Memory and time: the Hessian is (d·C)² float64 and one pass costs about n·(d·C)²/2 flops, so
this suits moderate d·C (pixels × 10 classes: 7,850² = 0.5 GB), not language models.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..errors import StreamfitError
from ..data.featurize import Examples, distinct_inputs, slice_examples
from .core import PassResult, l2_penalty

HESSIAN_LIMIT_BYTES = 2 << 30
BLOCK_BYTES = 32 << 20   # the dense rows of one block: 4,096 rows of 784 pixels
STEPS = (1.0, 0.5, 0.25, 0.125, 1 / 32, 1 / 128)
DAMPING_START = 1e-3
DAMPING_MIN = 1e-9


def check_size(n_features: int, n_classes: int) -> None:
    """Refuse, before any pass, problems whose Hessian does not fit the limit."""
    size = (n_features * n_classes) ** 2 * 8
    if size > HESSIAN_LIMIT_BYTES:
        raise StreamfitError(
            f"newton needs the {n_features * n_classes:,}² Hessian in memory ({size / 2**30:.1f} GiB, "
            f"limit {HESSIAN_LIMIT_BYTES / 2**30:.0f} GiB): use --method lbfgs for this model")


@dataclass
class HessianSums:
    """Sums of one pass at several candidate weights (add shards with +): n, per candidate
    the loss, the correct count and the gradient X̃ᵀ(Ŷ − Y), and the Hessian at the first
    candidate, indexed like W.ravel() (feature-major)."""

    n: int
    loss: np.ndarray
    correct: np.ndarray
    grad: np.ndarray
    hess: np.ndarray

    def __add__(self, other: HessianSums) -> HessianSums:
        return HessianSums(self.n + other.n, self.loss + other.loss, self.correct + other.correct,
                           self.grad + other.grad, self.hess + other.hess)


HessianFn = Callable[[list[np.ndarray]], HessianSums]
"""candidate weights -> the sums of one pass over the training data."""


def hessian_pass(candidates: list[np.ndarray], batches: Iterable[Examples]) -> HessianSums:
    """One pass over the batches at several weight matrices (see HessianSums). Identical
    inputs are scored once."""
    d, c = candidates[0].shape
    k = len(candidates)
    loss, correct = np.zeros(k), np.zeros(k, dtype=np.int64)
    grad = np.zeros((k, d, c))
    hess = np.zeros((d, c, d, c))
    n = 0
    for ex in batches:
        if np.any(ex.targets < 0):
            raise StreamfitError("refining needs a target for every example (labels missing)")
        inputs, inverse = distinct_inputs(ex)
        weight = np.bincount(inverse, minlength=inputs.n).astype(np.float64)
        observed = np.zeros((inputs.n, c))
        np.add.at(observed, (inverse, ex.targets), 1.0)
        rows_per_block = max(1, BLOCK_BYTES // (8 * d))
        for lo in range(0, inputs.n, rows_per_block):
            hi = min(inputs.n, lo + rows_per_block)
            sub = slice_examples(inputs, lo, hi)
            x = np.zeros((sub.n, d))
            rows = np.repeat(np.arange(sub.n), np.diff(sub.indptr))
            np.add.at(x, (rows, sub.indices), sub.values)
            wt, obs = weight[lo:hi], observed[lo:hi]
            for i, w in enumerate(candidates):
                z = x @ w
                z -= z.max(axis=1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                p = np.exp(logp)
                loss[i] -= float((obs * logp).sum())
                correct[i] += int(obs[np.arange(sub.n), logp.argmax(axis=1)].sum())
                grad[i] += x.T @ (p * wt[:, None] - obs)
                if i == 0:
                    _add_hessian(hess, x, wt, p)
        n += ex.n
    for j in range(c):
        for m in range(j + 1, c):
            hess[:, m, :, j] = hess[:, j, :, m].T
    return HessianSums(n, loss, correct, grad, hess.reshape(d * c, d * c))


def _add_hessian(hess: np.ndarray, x: np.ndarray, wt: np.ndarray, p: np.ndarray) -> None:
    """Class blocks (j, m ≥ j) of Σ w (diag(p) − p pᵀ) ⊗ x xᵀ: X̃ᵀ diag(w p_j (δ_jm − p_m)) X̃,
    one BLAS product of d × rows by rows × d each — C(C+1)/2 weighted Gram matrices, the
    whole cost of a Newton pass (no rows × C·d temporary). The products run in float32 (twice
    the speed; the sums stay float64): the Hessian only sets the damped step's direction."""
    c = p.shape[1]
    x32 = x.astype(np.float32)
    for j in range(c):
        xj = (x32 * (wt * p[:, j]).astype(np.float32)[:, None]).T
        for m in range(j, c):
            v = (1.0 - p[:, j]) if m == j else -p[:, m]
            hess[:, j, :, m] += xj @ (x32 * v.astype(np.float32)[:, None])


def _mean(hess: np.ndarray, n: int) -> np.ndarray:
    """H / n in place: the pass's sum is not used again, and a copy is another (d·C)² array."""
    hess /= n
    return hess


def _damped(h: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """H + diag(`diagonal`) in a fresh array (the solvers overwrite it; no (d·C)² identity),
    handed over in Fortran order (its transpose: it is symmetric), which LAPACK takes as is."""
    a = h.copy()
    a[np.diag_indices_from(a)] += diagonal
    return a.T


def newton(w: np.ndarray, train: Callable[[], Iterable[Examples]], passes: int, l2,
           record: Callable, checkpoint: Callable, start_pass: int = 0,
           arrays: dict | None = None, hessian_fn: HessianFn | None = None) -> np.ndarray:
    """Newton with a one-pass line search from W until pass `passes`.
    `record(pass, W, PassResult, extra)` logs the current point after each pass;
    `checkpoint(pass, W, arrays)` saves it with its objective, gradient, the damping and
    the weights the Hessian in use was taken at — not the (d·C)² Hessian itself, which a
    resumed run (`arrays`) sums again there in one extra pass (the same sum, so it continues
    exactly; a checkpoint stays the size of W). `hessian_fn` computes
    the passes (default: hessian_pass over train() here; a distributed run sums shards).
    Returns the current W."""
    if hessian_fn is None:
        def hessian_fn(candidates):
            return hessian_pass(candidates, train())
    arrays = arrays or {}
    damping = float(arrays.get("damping", DAMPING_START))
    # at W: objective, mean gradient, mean Hessian (possibly from an earlier point), and the
    # pass sums (n, loss, correct) for the log
    here, hessian_at = None, None
    if "hessian_at" in arrays:
        hessian_at = arrays["hessian_at"]
        again = hessian_fn([hessian_at])
        here = (float(arrays["objective"]), arrays["gradient"], _mean(again.hess, again.n))
    sums = tuple(arrays["sums"]) if "sums" in arrays else None
    d, c = w.shape
    for p in range(start_pass, passes):
        if here is None:
            steps, candidates = (0.0,), [w]
        else:
            _, g, h = here
            diagonal = damping * max(float(np.trace(h)) / (d * c), 1e-300) \
                + np.broadcast_to(l2, (d, c)).ravel()
            try:
                delta = scipy.linalg.solve(_damped(h, diagonal), -g.ravel(), assume_a="pos",
                                           check_finite=False, overwrite_a=True)
            except np.linalg.LinAlgError:
                delta = scipy.linalg.lstsq(_damped(h, diagonal), -g.ravel(), check_finite=False,
                                           overwrite_a=True)[0]
            steps = STEPS
            candidates = [w + s * delta.reshape(d, c) for s in steps]
        r = hessian_fn(candidates)
        n, loss, correct, grad, hess = r.n, r.loss, r.correct, r.grad, r.hess
        if n == 0:
            raise StreamfitError("no training examples")
        objectives = [loss[i] / n + l2_penalty(l2, v)[0] for i, v in enumerate(candidates)]
        best = int(np.argmin(objectives))
        step = steps[best]
        if here is None or (best == 0 and objectives[0] < here[0]):
            if here is not None:
                damping = max(DAMPING_MIN, damping / 3)
            here = (objectives[0], grad[0] / n + l2_penalty(l2, candidates[0])[1], _mean(hess, n))
            hessian_at = candidates[0]
        elif objectives[best] < here[0]:   # a shorter step: keep the last Hessian
            damping *= 3
            here = (objectives[best], grad[best] / n + l2_penalty(l2, candidates[best])[1], here[2])
        else:                               # no step helped: stay, damp more
            damping *= 10
            best, step = -1, 0.0
        if best >= 0:
            w, sums = candidates[best], (n, float(loss[best]), int(correct[best]))
        record(p + 1, w, PassResult(int(sums[0]), float(sums[1]), int(sums[2])),
               {"objective": here[0], "step": step, "damping": damping})
        checkpoint(p + 1, w, {"damping": np.array(damping), "objective": np.array(here[0]),
                              "gradient": here[1], "hessian_at": hessian_at,
                              "sums": np.array(sums)})
    return w
