"""Growing: hidden units added where the output layer cannot follow the functional gradient.

The model is softmax(W · [h; 1]), h = relu(Aᵀ x̃ + a₀) (METHODS.md §5, seed 003), and grows
from no hidden units (W then holds only the class bias). Each growth step:

1. one streaming pass (`growth_pass`) sums, with the weights frozen and g = softmax − onehot
   per example, b = [h; 1] and x = [x̃; 1]: S = Σ b bᵀ, M = Σ b gᵀ, S₂ = Σ x xᵀ, M₂ = Σ x gᵀ,
   P = Σ x bᵀ, M₁ = Σ x g₁ᵀ with g₁ = (W g) ⊙ relu'(Aᵀx̃ + a₀) the gradient at the hidden
   pre-activations, Σ‖g‖², the loss and a count — float64 sums that add across shards;
2. closed form (`growth_step`): the best move of the output weights Δ = −S⁺M (first-order
   gain tr(Mᵀ S⁺ M)), the part of the desired change it cannot express N = −M₂ + P S⁺ M, and
   the SVD S₂^{−1/2} N = U diag(λ) Vᵀ: new units with incoming α = √λ S₂^{−1/2} u (last entry:
   the bias) and outgoing ω = √λ v, first-order gain Σ λ²; and the best move of the existing
   hidden layer Δ_A = −S₂⁻¹M₁ (first-order gain tr(M₁ᵀ S₂⁻¹ M₁); S₂ with the same ridge);
3. the amplitudes of the units and of Δ_A: every candidate evaluated in one pass over
   held-out data;
4. the output layer re-solved on the frozen hidden features: L-BFGS passes of its convex
   cross-entropy (the same streaming passes, gradient M / n);
5. `hidden_moves` − 1 further moves of the hidden layer (a pass, Δ_A, its amplitude, the
   output layer re-solved): new units alone soon have a vanishing first-order gain, while
   moving the existing ones keeps lowering the loss (measured in docs/growth.md).

At the last width, `tune_passes` passes of `tune_pass` move both layers many times per pass:
on mini-batches, a step of the output layer given the hidden one, then of the hidden layer
given the output one, each preconditioned by a bound of its curvature (Böhning's ½S for the
output layer; S₂ ⊗ ½W_hW_hᵀ for the hidden one, Kronecker-factored), the step decayed linearly
over the passes, the pass of the best held-out accuracy (then loss) kept. The closed-form hidden moves
above are one such step per full pass; on Fashion-MNIST frozen units and 10 tuning passes
reached 0.8915 test accuracy (docs/classify.md) where 3 hidden moves per step and no tuning
had 0.854 in issue 14, so the default grows with frozen units and tunes at the end.

Speed (issue 14, part 3, profiled on 10,000 Fashion-MNIST rows): re-summing S₂ sparsely in
every full pass took 44% of the time and decoding Parquet on every pass a third. S₂ is now
summed once per run, dense blocks use BLAS, the decoded blocks are kept in memory while they
fit (`cache_bytes`) and the output layer's passes reuse the frozen hidden features.

Choices, measured in docs/growth.md. Each direction becomes a pair of units (α, ω) and
(−α, −ω): relu(t) − relu(−t) = t, so the pair adds exactly the linear change the first-order
theory asks for, and the re-solved output layer then weighs its two halves apart (which is
where the non-linearity comes from). The output layer reads [h; 1] with no skip connection
from x̃ and no per-example normalisation: a skip makes the new units' first-order gain zero
once the output layer is solved (its projection already spans x̃), and dividing h by its sum
would make a new unit's effect non-linear in its weights, which breaks the closed form.

S₂ is (d+1) × (d+1): growth refuses inputs above MAX_INPUT_FEATURES (large vocabularies × window),
with a message that says so.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import log_softmax

from ..errors import OptionError, StreamfitError
from ..data.featurize import Examples
from ..io.parquet import DEFAULT_BATCH_ROWS
from ..model.weights import Model, load_model, locks_output, sidecar_path, write_model
from .core import PassMeans, example_matrix

MAX_INPUT_FEATURES = 4096
BLOCK_ROWS = 2048
EIGEN_FLOOR = 1e-10      # eigenvalues of S₂ below this × the largest are dropped (pseudo-inverse)
DIRECTION_FLOOR = 1e-3   # singular values λ below this × λ₁ are noise: no unit is made of them
GAMMA_GRID = tuple(2.0 ** k for k in range(-8, 7))   # candidate γ² (step along Δ and the units)
HIDDEN_GRID = tuple(2.0 ** k for k in range(-4, 11))  # candidate steps s along Δ_A


@dataclass
class Layers:
    """The parameters as plain float64 arrays: A (d × k), a0 (k), W ((k + 1) × C, the last row
    the output bias)."""

    A: np.ndarray
    a0: np.ndarray
    W: np.ndarray

    @property
    def width(self) -> int:
        return int(self.a0.size)

    def hidden(self, x: sp.csr_matrix) -> np.ndarray:
        """[h; 1] per row of x̃: n × (k + 1)."""
        h = np.maximum(np.asarray(x @ self.A) + self.a0, 0.0) if self.width else \
            np.zeros((x.shape[0], 0))
        return np.hstack([h, np.ones((x.shape[0], 1))])

    @classmethod
    def empty(cls, n_features: int, n_classes: int) -> "Layers":
        return cls(np.zeros((n_features, 0)), np.zeros(0), np.zeros((1, n_classes)))

    @classmethod
    def of(cls, model: Model) -> "Layers":
        """The layers of a 2-layer model."""
        if model.hidden is None:
            raise StreamfitError("growth continues a grown (2-layer) model; a single-layer model "
                                 "has no hidden layer to grow (start from no units instead)")
        a, a0 = model.hidden
        w = np.asarray(model.dense, np.float64) * model.tau
        bias = np.zeros(model.n_classes) if model.bias is None else np.asarray(model.bias, np.float64)
        return cls(np.asarray(a, np.float64), np.asarray(a0, np.float64), np.vstack([w, bias[None, :]]))


@dataclass
class GrowthSums(PassMeans):
    """Sums over one pass (divide by n for means). `full=False` passes fill only n, loss,
    correct and M (the output layer's gradient times n)."""

    n: int = 0
    loss: float = 0.0
    correct: int = 0
    M: np.ndarray | None = None    # Σ b gᵀ        (k+1) × C
    S: np.ndarray | None = None    # Σ b bᵀ        (k+1) × (k+1)
    S2: np.ndarray | None = None   # Σ x xᵀ        (d+1) × (d+1)
    M2: np.ndarray | None = None   # Σ x gᵀ        (d+1) × C
    P: np.ndarray | None = None    # Σ x bᵀ        (d+1) × (k+1)
    g2: float = 0.0                # Σ ‖g‖²
    M1: np.ndarray | None = None   # Σ x g₁ᵀ       (d+1) × k, g₁ = ∂ℓ/∂(Aᵀx̃ + a₀)

    def __add__(self, other: "GrowthSums") -> "GrowthSums":
        """The sums of two shards of a pass."""
        def add(a, b):
            return None if a is None else a + b
        return GrowthSums(self.n + other.n, self.loss + other.loss, self.correct + other.correct,
                          add(self.M, other.M), add(self.S, other.S), add(self.S2, other.S2),
                          add(self.M2, other.M2), add(self.P, other.P), self.g2 + other.g2,
                          add(self.M1, other.M1))


DENSE_FRACTION = 0.25    # blocks with at least this share of non-zero inputs go dense (BLAS)


def _blocks(batches: Iterable[Examples], d: int) -> Iterator[tuple[np.ndarray | sp.csr_matrix,
                                                                    np.ndarray]]:
    """(x̃, targets) per block of at most BLOCK_ROWS rows: a dense float64 array where the
    rows are dense (pixels: BLAS products instead of sparse ones), else CSR. Blocks (what a
    BlockCache gives) are already cut."""
    if isinstance(batches, Blocks):
        yield from batches.blocks
        return
    for ex in batches:
        if np.any(ex.targets < 0):
            raise StreamfitError("growing needs a target for every example (labels missing)")
        x = example_matrix(ex, d)
        for lo in range(0, ex.n, BLOCK_ROWS):
            xb = x[lo:lo + BLOCK_ROWS]
            if xb.nnz >= DENSE_FRACTION * xb.shape[0] * d:
                xb = xb.toarray()
            yield xb, ex.targets[lo:lo + BLOCK_ROWS]


class Blocks:
    """Blocks (x̃, targets) already cut, as `_blocks` yields them: a pass takes them as they
    are."""

    def __init__(self, blocks: Iterable):
        self.blocks = blocks


class Budget:
    """Bytes of memory left to the caches of one run (training and held-out blocks, hidden
    features), shared so that together they stay within it."""

    def __init__(self, limit_bytes: int):
        self.left = int(limit_bytes)


class BlockCache:
    """The blocks of a data set kept in memory, read once: later passes skip Parquet decoding
    (a third of the time before, see the module's docstring). The blocks are kept only while
    they fit in the `budget` (a Budget, or a number of bytes); past it the source is
    streamed on every pass."""

    def __init__(self, source: Callable[[], Iterator[Examples]], d: int, budget: Budget | int):
        self.source, self.d = source, d
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)
        self.blocks: list | None = None
        self.failed = self.budget.left <= 0
        self.n_rows = 0

    def __call__(self) -> Iterable:
        """What a pass iterates: the kept blocks, or the source streamed (keeping its blocks
        the first time, while they fit)."""
        if self.blocks is not None:
            return Blocks(self.blocks)
        if self.failed:
            return self.source()
        return Blocks(self._filling())

    def _filling(self) -> Iterator:
        kept, size = [], 0
        for x, y in _blocks(self.source(), self.d):
            if kept is not None:
                size += (x.nbytes if isinstance(x, np.ndarray) else
                         x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) + y.nbytes
                if size <= self.budget.left:
                    kept.append((x, y))
                else:
                    kept = None
            yield x, y
        if kept is None:
            self.failed = True
        else:
            self.blocks = kept
            self.budget.left -= size
            self.n_rows = sum(y.size for _, y in kept)


def _add_output(out: "GrowthSums", b: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Adds a block's count, loss, correct predictions and M = Σ b gᵀ to `out`; returns g."""
    logp = log_softmax(b @ w, axis=1)
    rows = np.arange(y.size)
    out.n += y.size
    out.loss -= float(logp[rows, y].sum())
    out.correct += int(np.sum(logp.argmax(axis=1) == y))
    g = np.exp(logp)
    g[rows, y] -= 1.0
    out.M += b.T @ g
    return g


def output_pass(w: np.ndarray, hidden: Iterable[tuple[np.ndarray, np.ndarray]]) -> GrowthSums:
    """growth_pass(full=False) from the hidden features [h; 1] of every block, already
    computed: the output layer's passes while the hidden layer is frozen cost n·k·C instead
    of n·d·k."""
    out = GrowthSums(M=np.zeros((w.shape[0], w.shape[1])))
    for b, y in hidden:
        _add_output(out, b, y, w)
    return out


def growth_pass(layers: Layers, batches: Iterable[Examples], *, full: bool = True,
                inputs: bool = True) -> GrowthSums:
    """The sums of one pass over `batches` with the weights frozen (see GrowthSums).
    `inputs=False` leaves out S₂ = Σ x xᵀ, which depends on the data only (a run sums it
    once: it was the largest cost of a full pass)."""
    d, c, k1 = layers.A.shape[0], layers.W.shape[1], layers.W.shape[0]
    out = GrowthSums(M=np.zeros((k1, c)))
    if full:
        out.S, out.P = np.zeros((k1, k1)), np.zeros((d + 1, k1))
        out.S2 = np.zeros((d + 1, d + 1)) if inputs else None
        out.M2 = np.zeros((d + 1, c))
        out.M1 = np.zeros((d + 1, k1 - 1))
    for x, y in _blocks(batches, d):
        b = layers.hidden(x)
        g = _add_output(out, b, y, layers.W)
        if full:
            out.S += b.T @ b
            if inputs:
                xx = x.T @ x
                out.S2[:d, :d] += xx if isinstance(xx, np.ndarray) else xx.toarray()
                xsum = np.asarray(x.sum(axis=0)).ravel()
                out.S2[:d, d] += xsum
                out.S2[d, :d] += xsum
                out.S2[d, d] += y.size
            out.M2[:d] += np.asarray(x.T @ g)
            out.M2[d] += g.sum(axis=0)
            out.P[:d] += np.asarray(x.T @ b)
            out.P[d] += b.sum(axis=0)
            out.g2 += float(np.sum(g * g))
            g1 = (g @ layers.W[:-1].T) * (b[:, :-1] > 0)   # relu'(pre) = 1 where h > 0
            out.M1[:d] += np.asarray(x.T @ g1)
            out.M1[d] += g1.sum(axis=0)
    return out


def _pinv_psd(a: np.ndarray, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """((a + ρI)⁺, (a + ρI)^{+1/2}) of a symmetric positive semi-definite matrix by eigh,
    ρ = ridge × the mean eigenvalue, dropping eigenvalues at most EIGEN_FLOOR × the largest."""
    vals, vecs = np.linalg.eigh(a)
    vals = vals + ridge * max(float(np.trace(a)) / max(a.shape[0], 1), 0.0)
    keep = vals > EIGEN_FLOOR * max(vals.max(initial=0.0), 0.0)
    v, s = vecs[:, keep], vals[keep]
    return (v / s) @ v.T, (v / np.sqrt(s)) @ v.T


@dataclass
class Step:
    """The closed-form growth step from one pass's sums (means, not sums)."""

    delta: np.ndarray          # best move of W ((k+1) × C)
    alpha: np.ndarray          # incoming weights of the new directions ((d+1) × r; last row: bias)
    omega: np.ndarray          # outgoing weights (r × C)
    lambdas: np.ndarray        # singular values of S₂^{-1/2} N (all of them, descending)
    rms: np.ndarray            # root mean square of each new direction's pre-activation αᵀx
    linear_gain: float         # tr(Mᵀ S⁺ M): first-order loss decrease along Δ
    unit_gain: float           # Σ λ² over the kept directions
    bottleneck: float          # E‖g‖² − tr(Mᵀ S⁺ M): what no change of W can express
    delta_a: np.ndarray        # best move of the hidden layer [A; a₀] ((d+1) × k)
    hidden_gain: float         # tr(M₁ᵀ S₂⁺ M₁): first-order loss decrease along Δ_A


def whitening(sums: GrowthSums, ridge: float = 0.0) -> np.ndarray:
    """(S₂/n + ρI)^{-1/2}: it depends on the inputs only, so a run computes it once."""
    return _pinv_psd(sums.S2 / sums.n, ridge)[1]


def growth_step(sums: GrowthSums, max_directions: int, ridge: float = 0.0,
                s2_isqrt: np.ndarray | None = None) -> Step:
    """Δ = −S⁺M and new units from N = −M₂ + P S⁺ M, all divided by n (METHODS.md §5).
    `ridge` > 0 replaces S₂ by S₂ + ρI in the whitening (ρ = ridge × its mean eigenvalue):
    reduced-rank ridge regression of the residual on the inputs, which keeps rarely active
    inputs (border pixels) from dominating the new units. `s2_isqrt`: whitening(sums, ridge)
    when already known."""
    n = sums.n
    s_inv, _ = _pinv_psd(sums.S / n)
    m = sums.M / n
    s_inv_m = s_inv @ m
    linear_gain = float(np.sum(m * s_inv_m))
    n_mat = -sums.M2 / n + (sums.P / n) @ s_inv_m
    if s2_isqrt is None:
        s2_isqrt = whitening(sums, ridge)
    u, lam, vt = np.linalg.svd(s2_isqrt @ n_mat, full_matrices=False)
    r = int(np.sum(lam > DIRECTION_FLOOR * lam[0])) if lam.size and lam[0] > 0 else 0
    r = min(r, max_directions)
    root = np.sqrt(lam[:r])
    alpha = (s2_isqrt @ u[:, :r]) * root
    rms = np.sqrt(np.maximum(np.einsum("ir,ij,jr->r", alpha, sums.S2 / n, alpha), 1e-300))
    m1 = sums.M1 / n if sums.M1 is not None else np.zeros((s2_isqrt.shape[0], 0))
    delta_a = -s2_isqrt @ (s2_isqrt @ m1)
    return Step(delta=-s_inv_m, alpha=alpha, omega=root[:, None] * vt[:r], lambdas=lam, rms=rms,
                linear_gain=linear_gain, unit_gain=float(np.sum(lam[:r] ** 2)),
                bottleneck=sums.g2 / n - linear_gain, delta_a=delta_a,
                hidden_gain=float(-np.sum(m1 * delta_a)))


def moved(layers: Layers, step: Step, s: float) -> Layers:
    """The layers with the hidden layer moved by s·Δ_A (the output layer unchanged)."""
    d = layers.A.shape[0]
    return Layers(layers.A + s * step.delta_a[:d], layers.a0 + s * step.delta_a[d], layers.W)


def grown(layers: Layers, step: Step, t: float) -> Layers:
    """The layers with Δ applied at t = γ² and each direction added as the unit pair
    ±(α/r, t·r·ω), r = the pre-activation's rms: the output changes by t(Δᵀb + Σ ω αᵀx)
    exactly (relu is positively homogeneous, so only the product of the two scales
    matters). Every unit's pre-activation has mean square 1 over the training data, which
    gives the output layer's l2 the same meaning for every unit."""
    d = layers.A.shape[0]
    alpha = np.hstack([step.alpha / step.rms, -step.alpha / step.rms])
    omega = t * np.concatenate([step.rms, step.rms])[:, None] * np.vstack([step.omega, -step.omega])
    w = layers.W + t * step.delta
    return Layers(np.hstack([layers.A, alpha[:d]]), np.concatenate([layers.a0, alpha[d]]),
                  np.vstack([w[:-1], omega, w[-1:]]))


def line_search(layers: Layers, step: Step, batches: Iterable[Examples],
                grid: Iterable[float] = GAMMA_GRID, hidden: bool = False,
                hidden_grid: Iterable[float] = HIDDEN_GRID
                ) -> tuple[dict[float, float], dict[float, float]]:
    """Mean losses from one pass over `batches`, at 0 (no change) and every candidate of
    `grid`: of the output move and new units at t = γ² (the logits are affine in t,
    z(t) = z₀ + t (Δᵀb + Σ ω relu(αᵀx) − ω relu(−αᵀx))), and, with `hidden`, of the hidden
    layer moved by s·Δ_A for s in `hidden_grid` (`moved`; empty without)."""
    grid, hidden_grid = (0.0, *grid), (0.0, *hidden_grid)
    d = layers.A.shape[0]
    loss, loss_a = np.zeros(len(grid)), np.zeros(len(hidden_grid) if hidden else 0)
    n = 0
    for x, y in _blocks(batches, d):
        b = layers.hidden(x)
        pre = np.asarray(x @ step.alpha[:d]) + step.alpha[d]
        z0 = b @ layers.W
        dz = b @ step.delta + (np.maximum(pre, 0) - np.maximum(-pre, 0)) @ step.omega
        rows = np.arange(y.size)
        for i, t in enumerate(grid):
            loss[i] -= float(log_softmax(z0 + t * dz, axis=1)[rows, y].sum())
        if hidden:
            pre_h = np.asarray(x @ layers.A) + layers.a0
            da = np.asarray(x @ step.delta_a[:d]) + step.delta_a[d]
            for i, s in enumerate(hidden_grid):
                z = np.maximum(pre_h + s * da, 0.0) @ layers.W[:-1] + layers.W[-1]
                loss_a[i] -= float(log_softmax(z, axis=1)[rows, y].sum())
        n += y.size
    return ({t: v / max(n, 1) for t, v in zip(grid, loss)},
            {s: v / max(n, 1) for s, v in zip(hidden_grid, loss_a)})


PassFn = Callable[[Layers, bool, bool], GrowthSums]
"""(layers, full, inputs) -> the sums of one pass over the training data (growth_pass's
flags)."""


def _nonempty(sums: GrowthSums) -> GrowthSums:
    if sums.n == 0:
        raise StreamfitError("no training examples: the files hold no rows")
    return sums


def solve_output(layers: Layers, pass_fn: PassFn, passes: int,
                 l2: float) -> tuple[Layers, GrowthSums, int]:
    """The output layer re-solved on frozen hidden features: L-BFGS on the mean cross-entropy
    + l2/2·‖W‖² (bias row not penalised), warm-started, one pass per evaluation. Returns the
    layers, the sums of a pass at them and the passes used."""
    shape = layers.W.shape
    mask = np.ones(shape)
    mask[-1] = 0.0
    seen: list[tuple[np.ndarray, GrowthSums]] = []

    def fun(flat):
        w = flat.reshape(shape)
        r = _nonempty(pass_fn(Layers(layers.A, layers.a0, w), False, False))
        seen.append((flat.copy(), r))
        return (r.mean_loss + 0.5 * l2 * float(np.sum(mask * w * w)),
                (r.M / r.n + l2 * mask * w).ravel())

    w = layers.W
    if passes > 0:
        w = scipy.optimize.minimize(fun, w.ravel(), jac=True, method="L-BFGS-B",
                                    options={"maxfun": passes, "maxiter": passes, "gtol": 1e-9,
                                             "ftol": 1e-12}).x.reshape(shape)
    out = Layers(layers.A, layers.a0, w)
    match = [r for flat, r in seen if np.array_equal(flat, w.ravel())]
    if match:
        return out, match[-1], len(seen)
    return out, pass_fn(out, False, False), len(seen) + 1


TUNE_BATCH = 512
TUNE_STEP = 0.6        # the first tuning pass's fraction of the preconditioned step, decayed linearly to 0
TUNE_DAMPING = 0.1     # δ of the tuning preconditioners, × each factor's mean eigenvalue
CACHE_BYTES = 2 << 30  # training blocks kept in memory up to this size (else streamed per pass)


@dataclass
class TuneSums(PassMeans):
    """What a tuning pass sums on the way: the loss and accuracy of each mini-batch before its
    steps, and S = Σ b bᵀ (the next pass's preconditioner of the output layer)."""

    n: int = 0
    loss: float = 0.0
    correct: int = 0
    S: np.ndarray | None = None


def tune_pass(layers: Layers, batches: Iterable, s2_inv: np.ndarray, s: np.ndarray, *,
              step: float, damping: float, l2: float,
              batch_rows: int = TUNE_BATCH) -> tuple[Layers, TuneSums]:
    """One pass of alternating preconditioned steps on mini-batches of `batch_rows` rows: the
    output layer given the hidden one, W ← W − step·(½S + δI)⁻¹ ∇_W (½S bounds the
    softmax cross-entropy's curvature in W, Böhning's bound, S = E[b bᵀ] of the previous
    pass), then the hidden layer given the new output layer, [A; a₀] ← [A; a₀] −
    step·S₂⁻¹ ∇_A (½ W_h W_hᵀ + δI)⁻¹ (the input covariance and the same bound through the
    output weights W_h: a Kronecker-factored curvature of this layer alone; ∇_A = E[x g₁ᵀ]
    as in M₁). δ is `damping` × the mean eigenvalue of each factor; `s` is S/n, `s2_inv`
    (S₂/n + δI)⁻¹, fixed for the run. Returns the layers and the pass's sums."""
    d, k = layers.A.shape
    a, a0, w = layers.A.copy(), layers.a0.copy(), layers.W.copy()
    mask = np.ones((k + 1, 1))
    mask[-1] = 0.0

    def inverse(f: np.ndarray) -> np.ndarray:
        return np.linalg.inv(f + (damping * float(np.trace(f)) / len(f) + 1e-12) * np.eye(len(f)))
    p_out = inverse(0.5 * s + l2 * np.diag(mask[:, 0]))
    out = TuneSums(S=np.zeros((k + 1, k + 1)))
    for x, y in _blocks(batches, d):
        for lo in range(0, y.size, batch_rows):
            xb, yb = x[lo:lo + batch_rows], y[lo:lo + batch_rows]
            m, rows = yb.size, np.arange(yb.size)
            pre = np.asarray(xb @ a) + a0
            b = np.hstack([np.maximum(pre, 0.0), np.ones((m, 1))])
            logp = log_softmax(b @ w, axis=1)
            out.n += m
            out.loss -= float(logp[rows, yb].sum())
            out.correct += int(np.sum(logp.argmax(axis=1) == yb))
            out.S += b.T @ b
            g = np.exp(logp)
            g[rows, yb] -= 1.0
            w -= step * (p_out @ (b.T @ g / m + l2 * mask * w))
            g = np.exp(log_softmax(b @ w, axis=1))
            g[rows, yb] -= 1.0
            g1 = (g @ w[:-1].T) * (pre > 0) / m
            grad = np.vstack([np.asarray(xb.T @ g1), g1.sum(axis=0)[None, :]])
            if k:
                move = -step * (s2_inv @ grad) @ inverse(0.5 * w[:-1] @ w[:-1].T)
                a += move[:d]
                a0 += move[d]
    return Layers(a, a0, w), out


def check_input_size(n_features: int) -> None:
    """Growth keeps S₂ = Σ x xᵀ ((d+1)²) in memory and eigendecomposes it: refuse large d."""
    if n_features > MAX_INPUT_FEATURES:
        raise StreamfitError(
            f"growth needs the {n_features + 1:,} × {n_features + 1:,} input covariance S₂ "
            f"({(n_features + 1) ** 2 * 8 / 2**30:.1f} GiB, eigendecomposed): "
            f"{n_features:,} input features is above the limit of {MAX_INPUT_FEATURES:,}. "
            f"For a token corpus (features = window × (vocabulary + 1)) use a smaller "
            f"vocabulary or window; for features, fewer of them")


def model_header(task: str, window: int, n_features: int, n_classes: int, layers: Layers,
            extra: dict) -> dict:
    return {"task": task, "window": window, "n_classes": n_classes, "n_features": n_features,
            "form": "grown", "smoothing": None, "tau": 1.0, "beta": 0.0, "dtype": "float32",
            "calibration": {}, "statistics": {"n_examples": 0, "nnz": 0}, "layers": 2,
            "hidden": {"units": layers.width, "activation": "relu"}, **extra}


def write_layers(out: str | os.PathLike, layers: Layers, header: dict) -> Path:
    """A 2-layer model file (A, a0, W, bias memory-mapped .npy files and one sidecar)."""
    w = layers.W.astype(np.float32)
    return write_model(out, header, dense={"dtype": "float32", "blocks": iter([(0, w[:-1])])},
                       bias=layers.W[-1].astype(np.float64),
                       hidden=(layers.A.astype(np.float32), layers.a0.astype(np.float64)))


@locks_output
def grow(train: Callable[[], Iterator[Examples]], out: str | os.PathLike, *, task: str,
         window: int, n_features: int, n_classes: int,
         heldout: Callable[[], Iterator[Examples]] | None = None, start: Model | None = None,
         units_per_step: int = 18, max_width: int = 256, min_gain: float = 0.0,
         output_passes: int = 5, l2: float = 1e-3, ridge: float = 1.0,
         hidden_moves: int = 0, pass_fn: PassFn | None = None,
         on_step: Callable[[dict], None] | None = None, encoding: str = "normalised",
         tune_passes: int = 10, tune_step: float = TUNE_STEP, tune_damping: float = TUNE_DAMPING,
         cache_bytes: int = CACHE_BYTES) -> Model:
    """Grow a 2-layer model on `train()` (a fresh iterator of Examples per call) from no
    hidden units, or from `start` (a grown model), until `max_width` units or until the new
    units' first-order gain Σλ² is below `min_gain`. Each step adds up to `units_per_step`
    units (pairs ±, so an even number), moves the existing hidden layer up to `hidden_moves`
    times along its closed-form best move Δ_A (stopping early when no amplitude lowers the
    search loss), and writes the model to `out` (a killed run leaves the
    last finished step). `heldout()` chooses the amplitude and is logged (without it, the
    training data chooses); `pass_fn(layers, full, inputs)` computes the training passes
    (default: growth_pass over train() here, its blocks kept in memory after the first pass
    while they fit in `cache_bytes`, and the held-out data's too; a distributed run supplies
    one that sums shards). Then, at the last width, `tune_passes` passes of `tune_pass`
    (alternating preconditioned mini-batch steps of the two layers, read here from train()),
    each logged; with `heldout`, the pass of the best held-out accuracy is kept (of those,
    the lowest held-out loss).
    `on_step(entry)` sees every log entry; the seconds logged exclude the held-out
    evaluation, the model write and on_step itself."""
    check_input_size(n_features)
    if units_per_step < 2 or max_width < 0 or hidden_moves < 0:
        raise OptionError(f"units per step must be at least 2 (units come in ± pairs), the "
                         f"maximum width and hidden moves non-negative, not {units_per_step}, "
                         f"{max_width} and {hidden_moves}")
    for name, value in (("l2", l2), ("ridge", ridge), ("the minimum gain", min_gain)):
        if not (math.isfinite(value) and value >= 0):
            raise OptionError(f"{name} must be a finite number ≥ 0, not {value}")
    if output_passes < 0:
        raise OptionError(f"output passes must be non-negative, not {output_passes}")
    if tune_passes < 0 or not (math.isfinite(tune_step) and tune_step > 0) or \
            not (math.isfinite(tune_damping) and tune_damping > 0):
        raise OptionError(f"tuning passes must be non-negative, its step and damping finite "
                          f"numbers > 0, not {tune_passes}, {tune_step} and {tune_damping}")
    budget = Budget(cache_bytes)
    train = BlockCache(train, n_features, budget)
    if heldout is not None:
        heldout = BlockCache(heldout, n_features, budget)
    if pass_fn is None:
        features: dict = {"bytes": 0}   # the hidden features of the kept blocks, for one layer

        def pass_fn(layers, full, inputs):
            if not full and train.blocks is not None:
                same = features.get("A") is layers.A and features.get("a0") is layers.a0
                need = train.n_rows * (layers.width + 1) * 8
                if not same and need <= budget.left + features["bytes"]:
                    budget.left += features["bytes"] - need
                    features.update(A=layers.A, a0=layers.a0, bytes=need,  # identity: the key
                                    hidden=[(layers.hidden(x), y) for x, y in train.blocks])
                    same = True
                if same:
                    return output_pass(layers.W, features["hidden"])
            return growth_pass(layers, train(), full=full, inputs=inputs)
    search = heldout if heldout is not None else train
    settings = {"units_per_step": units_per_step, "max_width": max_width, "min_gain": min_gain,
                "output_passes": output_passes, "l2": l2, "ridge": ridge,
                "hidden_moves": hidden_moves, "amplitude_on": "heldout" if heldout is not None else "train",
                "tune_passes": tune_passes, "tune_step": tune_step, "tune_damping": tune_damping}
    t0 = time.perf_counter()
    overhead = [0.0]   # held-out evaluation and writing after each step: not training time
    if start is not None:
        if (start.n_features, start.n_classes) != (n_features, n_classes):
            raise StreamfitError(f"the starting model has {start.n_features} features × "
                                 f"{start.n_classes} classes, the data {n_features} × {n_classes}")
        layers = Layers.of(start)
        log = list(start.meta.get("growth", {}).get("log", []))
        passes = log[-1]["passes"] if log else 0
        t0 -= log[-1]["seconds"] if log else 0.0   # passes and seconds continue
    else:
        layers, last, passes = solve_output(Layers.empty(n_features, n_classes), pass_fn,
                                            output_passes, l2)
        log = []
    extra = {"vocab_size": n_classes} if task == "lm" else {}
    if encoding != "normalised":   # how train() read the rows: recorded for the readers
        extra["encoding"] = encoding
    stopped = f"maximum width {max_width}"

    kept: list = []   # the step of the layers written, when not the last logged

    def save() -> None:
        step = kept[-1] if kept else (log[-1]["step"] if log else 0)
        write_layers(out, layers, model_header(task, window, n_features, n_classes, layers, {
            **extra, "growth": {**settings, "log": log, "stopped": stopped, "kept_step": step}}))

    def record(entry: dict, result: GrowthSums) -> None:
        t1 = time.perf_counter()
        entry.update(width=layers.width, train_loss=result.mean_loss,
                     train_accuracy=result.accuracy, passes=passes,
                     seconds=t1 - t0 - overhead[0])
        if heldout is not None:
            h = growth_pass(layers, heldout(), full=False)
            entry.update(heldout_loss=h.mean_loss, heldout_accuracy=h.accuracy)
        log.append(entry)
        save()
        if on_step:
            on_step(entry)
        overhead[0] += time.perf_counter() - t1

    if start is None:
        record({"step": 0}, last)
    s2 = None

    def full_pass(layers: Layers) -> GrowthSums:
        """The statistics at `layers`; S₂ summed by the run's first pass only."""
        nonlocal s2
        sums = _nonempty(pass_fn(layers, True, s2 is None))
        if s2 is None:
            s2 = (sums.S2, whitening(sums, ridge))
        sums.S2 = s2[0]
        return sums

    while layers.width + 2 <= max_width:
        sums = full_pass(layers)
        passes += 1
        step = growth_step(sums, min(units_per_step, max_width - layers.width) // 2, ridge, s2[1])
        if step.omega.shape[0] == 0 or step.unit_gain < min_gain:
            stopped = f"first-order gain {step.unit_gain:.3g} below {min_gain:g}"
            break
        hidden = hidden_moves > 0 and layers.width > 0
        losses, losses_a = line_search(layers, step, search(), hidden=hidden)
        t = min((v, t) for t, v in losses.items() if t > 0)[1]
        s_a = min((v, s) for s, v in losses_a.items())[1] if hidden else 0.0
        entry = {"step": len(log), "added": 2 * step.omega.shape[0],
                 "linear_gain": step.linear_gain, "unit_gain": step.unit_gain,
                 "bottleneck": step.bottleneck, "gamma2": t, "search_loss": losses[t],
                 "search_loss_before": losses[0.0]}
        if hidden:
            entry.update(hidden_gain=step.hidden_gain, hidden_steps=[s_a])
        layers, last, used = solve_output(grown(moved(layers, step, s_a), step, t), pass_fn,
                                          output_passes, l2)
        passes += used
        for _ in range(hidden_moves - 1 if hidden else 0):   # further moves of the hidden layer
            sums = full_pass(layers)
            step = growth_step(sums, 0, ridge, s2[1])
            losses_a = line_search(layers, step, search(), grid=(), hidden=True)[1]
            s_a = min((v, s) for s, v in losses_a.items())[1]
            passes += 1
            if s_a == 0.0:
                break
            layers, last, used = solve_output(moved(layers, step, s_a), pass_fn, output_passes, l2)
            passes += used
            entry["hidden_steps"].append(s_a)
        record(entry, last)
    if tune_passes and layers.width:
        sums = full_pass(layers)   # S for the first tuning pass
        passes += 1
        s2_inv = _pinv_psd(s2[0] / sums.n, tune_damping)[0]
        s_out, best = sums.S / sums.n, None
        for i in range(tune_passes):
            layers, result = tune_pass(layers, train(), s2_inv, s_out,
                                       step=tune_step * (tune_passes - i) / tune_passes,
                                       damping=tune_damping, l2=l2)
            _nonempty(result)
            s_out = result.S / result.n
            passes += 1
            record({"step": len(log), "tune": i + 1}, result)
            entry = log[-1]
            score = (entry["heldout_accuracy"], -entry["heldout_loss"]) if heldout else None
            if score is not None and (best is None or score > best[0]):   # ties: lower loss
                best = (score, i + 1, layers, log[-1]["step"])
        if best is not None and best[1] < tune_passes:
            layers = best[2]
            kept.append(best[3])
            stopped += (f"; tuning pass {best[1]} of {tune_passes} kept (best held-out "
                        f"accuracy, then loss)")
    save()
    return load_model(sidecar_path(out))


def data_shape(paths, *, task: str | None = None, window: int | None = None,
               vocab_size: int | None = None, n_classes: int | None = None,
               n_features: int | None = None, progress: bool = False,
               batch_rows: int = DEFAULT_BATCH_ROWS, **columns) -> dict:
    """task, window, n_features and n_classes of a corpus, detected where not given by one
    validating pass that counts nothing (memory: one batch) and stops at the first batch
    whose inputs are more than growth takes (check_input_size): what a model grown from
    nothing needs, the same sizes as its statistics would have."""
    from tqdm.auto import tqdm

    from ..count.accumulate import accumulator_for
    from ..data.featurize import feature_rows, token_arrays
    from ..errors import InputError
    from ..io.parquet import iter_batches, open_parquet, resolve_paths

    files = resolve_paths(paths)
    acc = accumulator_for(files, task, vocab_size=vocab_size, n_classes=n_classes,
                          n_features=n_features, table_bits=10,
                          **({"window": window} if window else {}), **columns)
    c = acc.columns
    top_id, top_label, width, dense_width = -1, -1, 0, None

    def shape() -> dict:
        if acc.task == "lm":
            v = acc.n_classes if acc.n_classes is not None else top_id + 1
            return {"n_features": acc.window * (v + 1), "n_classes": v}
        return {"n_features": acc.n_features_fixed if acc.n_features_fixed is not None else
                max(width, top_id + 1),
                "n_classes": acc.n_classes if acc.n_classes is not None else top_label + 1}
    check_input_size(shape()["n_features"])
    total = sum(open_parquet(p).metadata.num_rows for p in files)
    with tqdm(total=total, unit="docs" if acc.task == "lm" else "rows", unit_scale=True,
              desc="sizes", disable=None if progress else True) as bar:
        for p in files:
            for b in iter_batches(p, acc.input_columns, batch_rows=batch_rows):
                try:
                    if acc.task == "lm":
                        arrays = token_arrays(b.data, c["column"], acc.n_classes)
                        if arrays.n_tokens:
                            top_id = max(top_id, int(arrays.tokens.max()))
                    else:
                        dense = c["features"] is not None
                        fixed = acc.n_features_fixed if acc.n_features_fixed is not None or \
                            not dense else dense_width
                        rows = feature_rows(b.data, label=c["label"], features=c["features"],
                                            indices=c["indices"], values=c["values"],
                                            n_features=fixed, n_classes=acc.n_classes)
                        if dense and dense_width is None and rows.n_rows:
                            dense_width = rows.n_features
                        if rows.n_rows:
                            top_label = max(top_label, int(rows.labels.max()))
                        used = rows.indices[rows.values != 0]  # as the statistics' rows
                        if used.size:
                            top_id = max(top_id, int(used.max()))
                        width = max(width, rows.n_features)
                except InputError as exc:
                    raise exc.located(path=str(p), row_group=b.row_group,
                                      row_offset=b.row_offset) from None
                check_input_size(shape()["n_features"])
                bar.update(b.data.num_rows)
    return {"task": acc.task, "window": acc.window, **shape()}
