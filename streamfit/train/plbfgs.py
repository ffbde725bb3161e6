"""Preconditioned L-BFGS in streaming passes, after one whitened Adam pass: what `refine
--method auto` runs on dense classifiers of up to a few thousand features.

Why. On inputs x̃ = x/Σx (images, tables) the curvature of the cross-entropy differs by
orders of magnitude between directions; full-batch L-BFGS from a scaled identity crawls, and
even whitened it needs hundreds of passes where examples saturate. Here every pass gives one
full gradient (a streaming sum) and the curvature model that turns it into a step comes from
a small in-memory sample instead of more passes:

1. Pass 1: Adam over mini-batches of BATCH rows in whitened coordinates z = (x̃ − sμ)·M
   (μ the mean of x̃, s = Σx̃, M·Mᵀ the pseudo-inverse of x̃'s covariance with its exact null
   directions dropped: the same model with unit-variance inputs, where Adam's default step
   is the one it is meant for). Many cheap steps take the explicit start most of the way;
   the pass also fills a reservoir of RESERVOIR_ROWS uniformly sampled rows.
2. Every later pass: the full loss and gradient, then an L-BFGS direction (MEMORY pairs,
   γ = sᵀy/yᵀH₀y) whose initial inverse Hessian H₀ is block-diagonal by class —
   B_j = E_R[p_j(1 − p_j) x̃x̃ᵀ] + diag(λ) + δ_j·I on the reservoir at the current weights
   (δ_j = DAMPING·tr(B_j)/d: damping relative to the curvature itself), refreshed every
   pass — a step length by Armijo backtracking on the reservoir, and the next pass
   evaluates the step at α, α/2 and α/4 on all rows at once (one forward product each for W
   and the direction) and continues from the best of them.

Cost (Fashion-MNIST, 54,000 × 784, 10 classes; a 10-pass run took 20.3 s of CPU, now
9.9 s): the C blocks were half of it, the passes' products most of the rest. So the
blocks sum only the reservoir rows that hold BLOCK_MASS of each class's weights (about half:
most rows are classified confidently), the products run in float32 BLAS (2.5× float64's
speed; the softmax and every sum stay float64: the loss after 10 passes was no worse), and
the rows of the first pass stay in memory as float32 when they fit (Rows): later passes
re-read and re-decode no file (decoding Fashion-MNIST's Parquet took 1.5 s of CPU a pass,
more than the pass's products).

The weights after pass k ≥ 2 are the step proposed from that pass's gradient; its loss on
all rows is measured by the next pass (the logged train loss is the one of the point the pass
evaluated). A resumed run continues from the checkpointed weights with a gradient pass and
fresh curvature pairs.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import scipy.linalg
from scipy.linalg import blas
from scipy.special import log_softmax

from ..data.featurize import Examples, slice_examples
from ..errors import StreamfitError
from ..io.files import available_memory
from .core import FeatureMoments, PassResult, example_matrix, l2_penalty

BATCH = 64                 # Adam's mini-batch (rows)
ADAM_LR = 1e-3             # Adam's default step, meant for unit-scale inputs (whitened here)
RESERVOIR_ROWS = 8192      # rows sampled for the curvature blocks and the Armijo search
MEMORY = 20                # L-BFGS pairs
DAMPING = 1e-4             # δ_j relative to the mean diagonal of B_j
NULL_DIRECTION = 1e-10     # covariance eigenvalues below this fraction of the largest: dropped
ARMIJO_STEPS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01)
BLOCK_LIMIT_BYTES = 2 << 30  # the C blocks of d × d (float64): above this auto picks L-BFGS
STAGE_PASSES = 2           # passes at each κ of a held-out choice of l2 (L2Path)
CHUNK_ROWS = 4096          # rows made dense at once (a record batch may hold many more)
BLOCK_MASS = 0.995         # a class's block sums the heaviest reservoir rows holding this share
                           # of its weights p_j(1 − p_j) (most rows are confident: about half)
CACHE_SHARE = 0.25         # the training rows stay in memory (float32) up to this share of the
                           # memory available at the start: later passes re-read no file


def fits(n_features: int, n_classes: int) -> bool:
    """Whether the C per-class d × d curvature blocks fit the budget."""
    return n_classes * n_features * n_features * 8 <= BLOCK_LIMIT_BYTES


class WhiteBasis:
    """Coordinates (V, c) with W = M·V + 1·(c − μᵀM·V)ᵀ, M = U·diag(1/√(ν + floor)) over the
    covariance's eigenpairs (U, ν) that are not exactly null. Then x̃·W = z·V + s·c with
    z = (x̃ − sμ)·M and s = Σx̃ (exact for any input), and z has unit variance per coordinate
    on the training rows. Null directions (constant sums such as x/Σx's ones vector, or the
    pairs of complement coding) carry no information and would give Adam huge, useless
    coordinates."""

    def __init__(self, moments: FeatureMoments, floor: float = 1e-3):
        mu = moments.mean
        cov = moments.gram - np.outer(mu, mu)
        nu, u = np.linalg.eigh(cov)
        keep = nu > NULL_DIRECTION * max(float(nu[-1]), 1e-300)
        nu, u = nu[keep], u[:, keep]
        eps = floor * max(float(np.trace(cov)) / len(mu), 1e-300)
        root = np.sqrt(nu + eps)
        self.mean, self.m, self.m_pinv = mu, u / root[None, :], (u * root[None, :]).T
        self.m32 = self.m.astype(np.float32)

    def coordinates(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.m_pinv @ w, self.mean @ w

    def weights(self, v: np.ndarray, c: np.ndarray) -> np.ndarray:
        mv = self.m @ v
        return mv + (c - self.mean @ mv)[None, :]

    def gradient(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradient in (V, c) of a function whose gradient in W is g."""
        col = g.sum(axis=0)
        return self.m.T @ (g - np.outer(self.mean, col)), col


class Reservoir:
    """A uniform sample of up to `size` rows of a stream (dense float32) with their targets."""

    def __init__(self, size: int, n_features: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.x = np.zeros((size, n_features), np.float32)
        self.y = np.zeros(size, np.int64)
        self.size, self.seen = size, 0

    def offer(self, x: np.ndarray, y: np.ndarray) -> None:
        n = len(y)
        free = max(0, min(n, self.size - self.seen))
        self.x[self.seen:self.seen + free], self.y[self.seen:self.seen + free] = x[:free], y[:free]
        if free < n:  # Algorithm R: row t replaces a random slot with probability size/(t+1)
            t = self.seen + np.arange(free, n)
            slot = (self.rng.random(n - free) * (t + 1)).astype(np.int64)
            hit = slot < self.size
            self.x[slot[hit]], self.y[slot[hit]] = x[free:][hit], y[free:][hit]
        self.seen += n

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        m = min(self.size, self.seen)
        return self.x[:m], self.y[:m]


def _chunks(batches: Iterator[Examples]) -> Iterator[Examples]:
    """The examples in slices of at most CHUNK_ROWS, each with a target."""
    for ex in batches:
        if np.any(ex.targets < 0):
            raise StreamfitError("refining needs a target for every example (labels missing)")
        for lo in range(0, ex.n, CHUNK_ROWS):
            yield slice_examples(ex, lo, min(ex.n, lo + CHUNK_ROWS))


def _matrix(ex: Examples, d: int):
    """The chunk's inputs as float32: dense where they are (pixels: BLAS beats sparse
    products), else CSR."""
    x = example_matrix(ex, d)
    if x.nnz > 0.1 * ex.n * d:
        return x.toarray().astype(np.float32)
    return x.astype(np.float32)


class Rows:
    """The training rows of every pass as (x, y) chunks of float32 inputs (see _matrix).
    The first complete pass keeps them in memory when they fit in `budget` bytes; later
    passes then neither re-read nor re-decode the files (on Fashion-MNIST's Parquet,
    decoding alone cost more CPU than a pass's products)."""

    def __init__(self, train: Callable[[], Iterator[Examples]], n_features: int,
                 budget: int | None = None):
        if budget is None:
            free = available_memory()
            budget = int(CACHE_SHARE * free) if free is not None else 1 << 30
        self.train, self.d, self.budget = train, n_features, budget
        self.kept: list | None = None

    def __call__(self) -> Iterator[tuple]:
        if self.kept is not None:
            yield from self.kept
            return
        kept, size = [], 0
        for ex in _chunks(self.train()):
            x = _matrix(ex, self.d)
            if kept is not None:
                size += x.nbytes if isinstance(x, np.ndarray) else \
                    x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
                if size <= self.budget:
                    kept.append((x, ex.targets))
                else:
                    kept = None
            yield x, ex.targets
        self.kept = kept


def _dense(x) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.toarray()


def _softmax_loss(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(probabilities, summed cross-entropy, correct predictions)."""
    logp = log_softmax(logits, axis=1)
    rows = np.arange(len(y))
    return np.exp(logp), -float(logp[rows, y].sum()), int(np.sum(logp.argmax(axis=1) == y))


def adam_pass(w: np.ndarray, rows: Iterator[tuple], basis: WhiteBasis, l2,
              reservoir: Reservoir | None, seed: int) -> tuple[np.ndarray, PassResult]:
    """One pass of Adam steps (BATCH rows each, shuffled inside each record batch) in the
    whitened coordinates; the summed loss is each mini-batch's before its step."""
    d, _ = w.shape
    rng = np.random.default_rng(seed)
    v, c = basis.coordinates(w)
    state = [np.zeros_like(v), np.zeros_like(v), np.zeros_like(c), np.zeros_like(c)]
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    out = PassResult()
    for x, targets in rows:
        x = _dense(x)
        n = len(targets)
        if reservoir is not None:
            reservoir.offer(x, targets)
        s = x.sum(axis=1, dtype=np.float64)
        # float32: the whitening product is the pass's largest (n·d·d); steps need no more
        z = (x - (s[:, None] * basis.mean[None, :]).astype(np.float32)) @ basis.m32
        # the L2 gradient moves slowly: once per chunk, not per step
        pv, pc = basis.gradient(l2_penalty(l2, basis.weights(v, c))[1])
        for batch in np.array_split(rng.permutation(n), max(1, -(-n // BATCH))):
            y = targets[batch]
            p, loss, correct = _softmax_loss(z[batch] @ v + s[batch, None] * c[None, :], y)
            out.n, out.loss, out.correct = out.n + len(batch), out.loss + loss, out.correct + correct
            p[np.arange(len(batch)), y] -= 1.0
            t += 1
            for i, (param, g) in enumerate(((v, z[batch].T @ p / len(batch) + pv),
                                            (c, s[batch] @ p / len(batch) + pc))):
                m1, m2 = state[2 * i], state[2 * i + 1]
                m1 *= b1
                m1 += (1 - b1) * g
                m2 *= b2
                m2 += (1 - b2) * g * g
                param -= ADAM_LR * (m1 / (1 - b1 ** t)) / (np.sqrt(m2 / (1 - b2 ** t)) + eps)
    return basis.weights(v, c), out


def candidates_pass(w: np.ndarray, direction: np.ndarray | None, steps: tuple[float, ...],
                    rows: Iterator[tuple], l2, reservoir: Reservoir | None
                    ) -> list[tuple[float, np.ndarray, PassResult]]:
    """One pass: (objective, gradient, sums) at w + a·direction for every a in `steps`
    (w itself when direction is None); x̃·w and x̃·direction are formed once per chunk.
    The products run in float32 BLAS (2.5× float64's speed on these shapes), the softmax
    and the sums in float64."""
    d, k = w.shape
    steps = steps if direction is not None else (0.0,)
    grads = [np.zeros((d, k)) for _ in steps]
    sums = [PassResult() for _ in steps]
    w32 = w.astype(np.float32)
    d32 = direction.astype(np.float32) if direction is not None else None
    for x, y in rows:
        n = len(y)
        if reservoir is not None:
            reservoir.offer(_dense(x), y)
        base = np.asarray(x @ w32, np.float64)
        move = np.asarray(x @ d32, np.float64) if d32 is not None else None
        for i, a in enumerate(steps):
            p, loss, correct = _softmax_loss(base if move is None else base + a * move, y)
            p[np.arange(n), y] -= 1.0
            grads[i] += np.asarray(x.T @ p.astype(np.float32))
            sums[i].n += n
            sums[i].loss += loss
            sums[i].correct += correct
    out = []
    for a, g, r in zip(steps, grads, sums):
        point = w if direction is None else w + a * direction
        penalty, penalty_grad = l2_penalty(l2, point)
        out.append((r.mean_loss + penalty, g / max(r.n, 1) + penalty_grad, r))
    return out


def class_blocks(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2,
                 logits: np.ndarray | None = None) -> Callable:
    """H₀: G ↦ column j solved with B_j = E[p_j(1 − p_j) x̃x̃ᵀ] + diag(λ) + δ_j·I over the
    sample x (float32 rows), one Cholesky factor per class. Each B_j sums only the rows
    that hold BLOCK_MASS of its weights (the rest, confidently classified, add almost
    nothing): about half the rows of a float32 SYRK. `logits`: x·w when already formed."""
    m, d = x.shape
    if logits is None:
        logits = np.asarray(x @ w.astype(np.float32), np.float64)
    p, _, _ = _softmax_loss(logits, y)
    lam = np.broadcast_to(np.ravel(np.asarray(l2, np.float64)), (d,)) if np.ndim(l2) \
        else np.full(d, float(l2))
    factors = []
    for j in range(w.shape[1]):
        weight = p[:, j] * (1.0 - p[:, j]) / m
        order = np.argsort(weight)[::-1]
        mass = np.cumsum(weight[order])
        top = order[:int(np.searchsorted(mass, BLOCK_MASS * mass[-1])) + 1]
        scale = np.sqrt(weight[top]).astype(np.float32)
        # the upper triangle is all the Cholesky factorisation reads
        block = blas.ssyrk(1.0, np.asfortranarray((x[top] * scale[:, None]).T)).astype(np.float64)
        diag = np.diag_indices(d)
        block[diag] += lam + DAMPING * max(float(np.trace(block)) / d, 1e-12)
        factors.append(scipy.linalg.cho_factor(block, lower=False, overwrite_a=True,
                                               check_finite=False))

    def apply(g: np.ndarray) -> np.ndarray:
        out = np.empty_like(g)
        for j, f in enumerate(factors):
            out[:, j] = scipy.linalg.cho_solve(f, g[:, j], check_finite=False)
        return out
    return apply


def two_loop(g: np.ndarray, pairs: list, h0: Callable) -> np.ndarray:
    """−H·g by the L-BFGS two-loop recursion from H₀ scaled by γ = sᵀy / yᵀH₀y."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        rho = 1.0 / np.vdot(y, s)
        a = rho * np.vdot(s, q)
        q -= a * y
        alphas.append((rho, a))
    gamma = 1.0
    if pairs:
        s, y = pairs[-1]
        gamma = np.vdot(s, y) / np.vdot(y, h0(y))
    r = gamma * h0(q)
    for (s, y), (rho, a) in zip(pairs, reversed(alphas)):
        r += (a - rho * np.vdot(y, r)) * s
    return -r


class L2Path:
    """κ chosen on held-out data along a grid, largest first (the best-conditioned problem
    first: later ones start warm from it): `stage` passes at each κ, one more at the first
    (which starts from the Adam pass: with two, MNIST-5k's best κ, 1e-2, lost to 3e-3 by
    0.0002 in held-out loss, unconverged, and with three won); the descent stops at
    the first κ whose lowest held-out loss is no lower than the previous κ's, and the run
    goes on with the best κ so far — from its best point when that was an earlier κ. One
    pass's data gradient serves every κ (the penalty is quadratic), so a switch of κ keeps
    the L-BFGS pairs, each corrected exactly: y += Δλ·s."""

    def __init__(self, grid: list, stage: int, arrays: dict | None = None):
        self.grid, self.stage = grid, stage
        self.index, self.decided, self.done = 0, len(grid) < 2, 0
        self.losses = np.full(len(grid), np.inf)
        self.points: list = [None] * len(grid)
        if arrays and "l2_path" in arrays:          # a resumed run
            self.index, decided, self.done = (int(v) for v in arrays["l2_path"])
            self.decided = bool(decided)
            self.losses = np.array(arrays["l2_losses"], np.float64)
            self.points = [arrays["l2_points"][i] if np.isfinite(v) else None
                           for i, v in enumerate(self.losses)]

    @property
    def kappa(self) -> float:
        return self.grid[self.index][0]

    @property
    def l2(self):
        return self.grid[self.index][1]

    def observe(self, loss: float | None, point: np.ndarray) -> np.ndarray | None:
        """The held-out loss of a pass's weights at the current κ. Returns the weights to
        continue from when the choice goes back to an earlier κ, else None."""
        if self.decided or loss is None:
            return None
        i = self.index
        if loss < self.losses[i]:
            self.losses[i], self.points[i] = loss, point.copy()
        self.done += 1
        if self.done < self.stage + (i == 0):
            return None
        if (i == 0 or self.losses[i] < self.losses[i - 1]) and i + 1 < len(self.grid):
            self.index, self.done = i + 1, 0
            return None
        self.decided = True
        self.index = int(np.argmin(self.losses[:i + 1]))
        return None if self.index == i else self.points[self.index]

    def arrays(self) -> dict:
        d_c = next((p.shape for p in self.points if p is not None), (0, 0))
        return {"l2_path": np.array([self.index, int(self.decided), self.done]),
                "l2_losses": self.losses,
                "l2_points": np.stack([p if p is not None else np.zeros(d_c)
                                       for p in self.points])}


def plbfgs(w: np.ndarray, train: Callable[[], Iterator[Examples]], passes: int, l2,
           moments: FeatureMoments, record, checkpoint, start_pass: int,
           seed: int = 0, *, l2_grid: list | None = None,
           arrays: dict | None = None) -> np.ndarray:
    """Refine w by `passes` streaming passes (see the module docstring); record(k, W, sums,
    extra) and checkpoint(k, W, arrays) after every pass. Returns the last weights.
    `l2_grid`: [(κ, l2), ...], largest κ first, to choose among on held-out data (the
    held-out loss is what record returns in its entry's "heldout_loss"; see L2Path); each
    pass's entry then says its κ ("l2"). `arrays`: a checkpoint's, for a resumed run."""
    d, _ = w.shape
    reservoir = Reservoir(RESERVOIR_ROWS, d, seed)
    rows = Rows(train, d)
    path = None
    if l2_grid:
        stage = max(1, min(STAGE_PASSES, (passes - 2) // len(l2_grid)))
        path = L2Path(list(l2_grid), stage, arrays)
        l2 = path.l2

    def said(extra: dict) -> dict:
        return {**extra, "l2": path.kappa} if path else extra

    def saved() -> dict:
        return path.arrays() if path else {}
    done = start_pass
    if done == 0 and passes > 0:
        w, sums = adam_pass(w, rows(), WhiteBasis(moments), l2, reservoir, seed)
        done = 1
        record(done, w, sums, said({"step": "adam"}))
        checkpoint(done, w, saved())
    pairs: list = []
    direction, step, f, g = None, 0.0, None, None
    while done < passes:
        if path and path.l2 is not l2:           # the next κ of the path: the same pairs
            delta = path.l2 - l2
            if f is not None:
                f += 0.5 * float((delta * w * w).sum())
                g = g + delta * w
                pairs = [(s, y + delta * s) for s, y in pairs]
            l2 = path.l2
        fill = reservoir if reservoir.seen == 0 else None   # a resumed run samples here
        steps = (step, step / 2, step / 4)
        evaluated = candidates_pass(w, direction, steps, rows(), l2, fill)
        done += 1
        best = min(range(len(evaluated)), key=lambda i: evaluated[i][0])
        if direction is not None and evaluated[best][0] > f:
            best = len(evaluated) - 1           # none lowered the loss: the shortest step
        f_new, g_new, sums = evaluated[best]
        if direction is not None:
            s = steps[best] * direction
            y = g_new - g
            if np.vdot(s, y) > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
                pairs = (pairs + [(s, y)])[-MEMORY:]
            w = w + s
        f, g = f_new, g_new
        xr, yr = reservoir.rows()
        logits = np.asarray(xr @ w.astype(np.float32), np.float64)
        direction = two_loop(g, pairs, class_blocks(xr, yr, w, l2, logits))
        direction -= direction.mean(axis=1, keepdims=True)   # per-row constants: no change
        step = _armijo(w, direction, g, xr, yr, l2, logits)
        proposed = w + step * direction
        entry = record(done, proposed, sums, said({"objective": f, "step": step}))
        back = path.observe((entry or {}).get("heldout_loss"), proposed) if path else None
        if back is not None:                    # an earlier κ won: on from its best point
            w, direction, step, f, g, pairs, l2 = back, None, 0.0, None, None, [], path.l2
        checkpoint(done, proposed if back is None else back, saved())
    return w + step * direction if direction is not None else w


def _armijo(w, direction, g, x, y, l2, logits=None) -> float:
    """The first of ARMIJO_STEPS with sufficient decrease of the reservoir's objective (else
    the best of them, else the smallest/10); x·w (`logits` when given) and x·direction
    are formed once."""
    base = logits if logits is not None else np.asarray(x @ w.astype(np.float32), np.float64)
    move = np.asarray(x @ direction.astype(np.float32), np.float64)

    def objective(a):
        _, loss, _ = _softmax_loss(base + a * move, y)
        return loss / max(len(y), 1) + l2_penalty(l2, w + a * direction)[0]
    f0, slope = objective(0.0), float(np.vdot(g, direction))
    best = (f0, 0.0)
    for a in ARMIJO_STEPS:
        fa = objective(a)
        if fa < best[0]:
            best = (fa, a)
        if fa <= f0 + 1e-4 * a * slope:
            return a
    return best[1] if best[1] > 0 else ARMIJO_STEPS[-1] / 10
