"""Refinement of an n-gram model on its sparse support: a maximum-entropy n-gram model.

Parameters: the block model's τ (one per level and context-count bucket, `solve.ngram`) and
one weight δ per (context, word) entry with a non-zero count at each level L = 0..N−1
(level 0: every class). For a context h whose deepest seen level is m,

    logit(y | h) = Σ_j τ_j lp_j(y | h_j) + D_s(y),   D_s = Σ_{L ≤ s} δ_L(h_L, y),

s the deepest level ≤ m where (h_s, y) was seen (supports are nested, so every entry below
it exists; δ of an unseen entry is 0). δ = 0 is the block model exactly, which is where the
refinement starts.

Normaliser. The classes of the shell S_t \\ S_{t+1} (seen at level t, not at t+1) share
the closed form of the block model (`solve.ngram.Blocks`) plus their own D_t, so the group
sums over a context's support carry a factor exp(D_t) per row and log Z costs one sweep of
the supports touched (O(nnz)) plus O(order) per query — never the vocabulary per query. The
gradient of Σ w log Z with respect to δ is a second sweep: each group's rows receive
α_g·(own shell weight) and −β_g·(parent shell weight), α, β the sums over its queries of
w·e^K/Z; an entry's δ then collects what its descendants (the entries above it with the
same word) received.

Objective: the mean cross-entropy of the training n-grams — their counts are sufficient,
Σ count·log p — plus ½λ‖δ‖², L-BFGS in coordinates scaled by the diagonal curvature
(≈ an entry's count), the held-out cross-entropy evaluated after every iteration and the
best iterate kept; λ from a few candidates, the one with the best held-out point chosen.
The τ stay as fitted on held-out data unless asked (`refine_tau`): refitted on the training
counts they overfit at once (GCIDE order 3: the held-out loss rose from the first iteration).
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..errors import OptionError, StreamfitError
from ..io.files import available_memory
from ..io.jit import njit
from ..solve.ngram import (TOK_BITS, Blocks, Levels, assemble_log_z, decode_ngrams, group_sums,
                           group_tau, lookup_tables, n_params, positions, scoring_model)
from ..solve.ngram import memory_need as finalize_memory_need
from ..model.ngram import NgramModel, context_rows, find_slot

L2_CANDIDATES = (4.0, 16.0, 64.0)  # λ·n: about the pseudo-counts an entry's weight is shrunk by
MAX_ITER = 30                     # L-BFGS iterations per candidate
HISTORY = 8                       # L-BFGS correction pairs
PATIENCE = 4                      # iterations without a better held-out point before stopping


def support_parents(levels: Levels) -> tuple[np.ndarray, np.ndarray]:
    """Row offsets of each level in one flat parameter vector (level 0: the C classes) and
    every row's parent: the same word one level down (−1 at level 0)."""
    N = levels.order
    sizes = [levels.n_classes] + [levels.ng_key[L].size for L in range(1, N)]
    row_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    parent = np.full(row_off[-1], -1, np.int64)
    mask = (1 << TOK_BITS) - 1
    for L in range(1, N):
        keys = levels.ng_key[L]
        y = keys & mask
        if L == 1:
            parent[row_off[1]:row_off[2]] = y
        else:
            c = keys >> TOK_BITS
            parent[row_off[L]:row_off[L + 1]] = np.searchsorted(
                levels.ng_key[L - 1], (levels.ctx_parent[L][c] << TOK_BITS) | y)
    return row_off, parent


def cumulative(delta: np.ndarray, row_off: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """D of every row: its δ plus its parent's D."""
    D = delta.copy()
    for L in range(1, row_off.size - 1):
        lo, hi = row_off[L], row_off[L + 1]
        D[lo:hi] += D[row_off[L - 1] + parent[lo:hi]]
    return D


def to_ancestors(acc: np.ndarray, row_off: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """The adjoint of `cumulative`: every row's value plus those of all its descendants."""
    acc = acc.copy()
    for L in range(row_off.size - 2, 0, -1):
        lo, hi = row_off[L], row_off[L + 1]
        acc[row_off[L - 1]:row_off[L]] += np.bincount(parent[lo:hi], acc[lo:hi],
                                                      minlength=row_off[L] - row_off[L - 1])
    return acc


@njit(cache=True, nogil=True)
def _entry_rows(chain, deepest, target, order, ntable, nbits):
    """Per prediction, its entry row at each level L ≤ deepest where (h_L, y) was seen
    (level 0: y itself), −1 elsewhere."""
    n = target.size
    rows = np.full((n, order), -1, np.int64)
    for i in range(n):
        rows[i, 0] = target[i]
        for L in range(1, deepest[i] + 1):
            s = find_slot(ntable, nbits, (np.int64(L) << 56) | (chain[i, L] << 20) | target[i])
            if s < 0:
                break
            rows[i, L] = ntable[s, 1]
    return rows


@njit(cache=True, nogil=True)
def _sweep_back(alpha, beta, theta, D, parent, row_off, g_level, g_start, g_end, g_param,
                lp_off, lp_flat, order):
    """∂ Σ w log Z / ∂ D per row (before passing it down to the ancestors)."""
    acc = np.zeros(D.size)
    tau = np.zeros(order)
    for g in range(g_level.size):
        a, b = alpha[g], beta[g]
        if a == 0.0 and b == 0.0:
            continue
        t = g_level[g]
        Tt = group_tau(theta, g_param, g, t, tau)
        Ttm1 = Tt + (tau[t - 1] if t >= 1 else 0.0)
        base = lp_off[t]
        stride = t + 1
        for r in range(g_start[g], g_end[g]):
            p = base + r * stride
            k = row_off[t] + r
            low = 0.0
            for j in range(t - 1):
                low += tau[j] * lp_flat[p + j]
            if t >= 1:
                acc[k] += a * math.exp(low + tau[t - 1] * lp_flat[p + t - 1] + Tt * lp_flat[p + t]
                                       + D[k])
                kp = row_off[t - 1] + parent[k]
                acc[kp] -= b * math.exp(low + Ttm1 * lp_flat[p + t - 1] + D[kp])
            else:
                acc[k] += a * math.exp(Tt * lp_flat[p] + D[k])
    return acc


class MaxEnt:
    """The maximum-entropy n-gram model over a block model's levels (see the module doc)."""

    def __init__(self, blocks: Blocks):
        self.blocks = blocks
        self.levels = blocks.levels
        self.order = blocks.order
        self.row_off, self.parent = support_parents(self.levels)
        self.n_theta = n_params(self.order)

    @property
    def n_delta(self) -> int:
        return int(self.row_off[-1])

    def data(self, deepest, chain, lp, rows, weight) -> dict:
        """Predictions (weighted: counts) as the queries of their distinct deepest contexts,
        with the sufficient sums of the observed side: φ (per τ) and the entries' counts."""
        N, b = self.order, self.blocks
        P = b.param_index(chain)
        phi = np.zeros(self.n_theta)
        obs = np.zeros(self.n_delta)
        for j in range(N):
            phi += np.bincount(P[:, j], weights=weight * lp[:, j], minlength=phi.size)
            seen = rows[:, j] >= 0
            obs += np.bincount(self.row_off[j] + rows[seen, j], weights=weight[seen],
                               minlength=obs.size)
        n = deepest.size
        key = deepest * (np.int64(1) << 40) + chain[np.arange(n), deepest]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        qweight = np.bincount(inverse, weights=weight)
        q = b.queries(deepest[first], chain[first, deepest[first]])
        q.update(weight=qweight, phi=phi, obs=obs, total=float(weight.sum()),
                 n_groups=int(q["g_level"].size))
        return q

    def _sweep_args(self, q):
        b = self.blocks
        return (self.parent, self.row_off, q["g_level"], q["g_start"], q["g_end"], q["g_param"],
                b.lp_off, b.lp_flat, self.order)

    def log_z(self, theta, delta, q) -> np.ndarray:
        D = cumulative(delta, self.row_off, self.parent)
        W, WL = group_sums(theta, D, *self._sweep_args(q), False)
        logz, *_ = assemble_log_z(theta, np.zeros(0), q["deepest"], q["group"], q["log_gamma"],
                                  q["param"], W, WL, int(q["g_level"].size), self.order, False,
                                  False)
        return logz

    def cross_entropy(self, theta, delta, q) -> float:
        """Mean cross-entropy of the predictions `q` stands for."""
        logz = self.log_z(theta, delta, q)
        return float((q["weight"] @ logz - q["phi"] @ theta - q["obs"] @ delta) / q["total"])

    def value_and_grad(self, theta, delta, q, *, grad_theta: bool = True):
        """The mean cross-entropy of `q` and its gradient in (τ, δ), without the L2 term
        (the τ part zero, and not computed, without grad_theta)."""
        N = self.order
        D = cumulative(delta, self.row_off, self.parent)
        args = self._sweep_args(q)
        W, WL = group_sums(theta, D, *args, grad_theta)
        logz, E, alpha, beta = assemble_log_z(theta, q["weight"], q["deepest"], q["group"],
                                              q["log_gamma"], q["param"], W, WL, q["n_groups"],
                                              N, grad_theta, True)
        n = q["total"]
        value = (q["weight"] @ logz - q["phi"] @ theta - q["obs"] @ delta) / n
        g_theta = np.zeros(self.n_theta)
        if grad_theta:
            g_theta -= q["phi"]
            for j in range(N):
                g_theta += np.bincount(q["param"][:, j], weights=q["weight"] * E[:, j],
                                       minlength=g_theta.size)
        acc = _sweep_back(alpha, beta, theta, D, *args[:-1], N)
        g_delta = to_ancestors(acc, self.row_off, self.parent) - q["obs"]
        return value, g_theta / n, g_delta / n


def prediction_data(levels: Levels, context, target, tables=None):
    """deepest, chain, lp and entry rows of predictions (rows of context tokens, targets)."""
    tables = tables or lookup_tables(levels)
    deepest, chain, lp = positions(levels, context, target, tables)
    _, _, ntable, nbits = tables
    rows = _entry_rows(chain, deepest, np.asarray(target, np.int64), levels.order, ntable, nbits)
    return deepest, chain, lp, rows


def training_data(model: MaxEnt, stats, tables) -> dict:
    """The training n-grams of the statistics (counts as weights) as queries."""
    levels = model.levels
    context, y = decode_ngrams(stats.keys, levels.order, levels.vocab_size)
    count = np.asarray(stats.data, np.float64)
    return model.data(*prediction_data(levels, context, y, tables), count)


def heldout_data(model: MaxEnt, batches, eos: bool, tables) -> dict:
    """Every prediction of held-out token batches (TokenArrays) as queries."""
    levels = model.levels
    parts = []
    for arrays in batches:
        context, target = context_rows(arrays.tokens.astype(np.int64), arrays.doc_offsets,
                                       levels.order, levels.vocab_size, eos)
        parts.append(prediction_data(levels, context, target, tables))
    if not parts:
        raise StreamfitError("the held-out data holds no tokens")
    cols = [np.concatenate([p[i] for p in parts]) for i in range(4)]
    return model.data(*cols, np.ones(cols[0].size))


def memory_need(stats, n_delta: int, heldout_tokens: int) -> int:
    """About the peak bytes of refining: the L-BFGS history and vectors over every entry,
    the training n-grams' and held-out predictions' per-level arrays (and their queries),
    and what finalizing the same statistics holds (the levels, the model's tables)."""
    N = stats.order
    vectors = 8 * (n_delta + n_params(N)) * (2 * HISTORY + 16)
    predictions = 8 * (int(stats.nnz) + heldout_tokens) * (5 * N + 6)
    return vectors + 2 * predictions + finalize_memory_need(stats)


def check_memory(stats, n_delta: int, heldout_tokens: int) -> None:
    """Refuse up front, with the figure, what would not fit in the memory available now."""
    need, free = memory_need(stats, n_delta, heldout_tokens), available_memory()
    if free is not None and need > free:
        raise StreamfitError(
            f"refining an order-{stats.order} model of {n_delta:,} entries needs about "
            f"{need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is available: keep the block "
            f"model (finalize --form blocks), or refine a lower --order")


class _Stop(Exception):
    """Raised from the L-BFGS callback when the held-out loss stopped improving."""


def fit(model: MaxEnt, theta0: np.ndarray, train: dict, held: dict, *, l2: float,
        max_iter: int, refine_tau: bool = False, on_iteration=None) -> dict:
    """L-BFGS on train cross-entropy + ½ (l2 / n) ‖δ‖² from (θ0, δ = 0), scaled by the
    diagonal curvature; the iterate with the lowest held-out cross-entropy is returned."""
    from scipy.optimize import minimize
    n = train["total"]
    lam = l2 / n
    scale = 1.0 / np.sqrt(train["obs"] / n + lam)
    nt = model.n_theta
    fixed_theta = None if refine_tau else theta0

    def unpack(x):
        theta = x[:nt] if refine_tau else fixed_theta
        return theta, x[nt:] * scale

    def objective(x):
        theta, delta = unpack(x)
        value, g_theta, g_delta = model.value_and_grad(theta, delta, train, grad_theta=refine_tau)
        value += 0.5 * lam * float(delta @ delta)
        g_delta += lam * delta
        return value, np.concatenate([g_theta, g_delta * scale])

    start = model.cross_entropy(theta0, np.zeros(model.n_delta), held)
    best = {"heldout": start, "iteration": 0, "theta": theta0.copy(),
            "delta": np.zeros(model.n_delta)}
    log = []
    t0 = time.perf_counter()

    def callback(intermediate_result):
        x = intermediate_result.x
        theta, delta = unpack(x)
        h = model.cross_entropy(theta, delta, held)
        entry = {"iteration": len(log) + 1, "train_objective": float(intermediate_result.fun),
                 "heldout": h, "seconds": time.perf_counter() - t0}
        log.append(entry)
        if on_iteration:
            on_iteration(entry)
        if h < best["heldout"]:
            best.update(heldout=h, iteration=entry["iteration"], theta=theta.copy(),
                        delta=delta.copy())
        elif entry["iteration"] - best["iteration"] >= PATIENCE:
            raise _Stop

    x0 = np.concatenate([theta0, np.zeros(model.n_delta)])
    try:
        minimize(objective, x0, jac=True, method="L-BFGS-B", callback=callback,
                 options=dict(maxiter=max_iter, maxcor=HISTORY))
    except _Stop:
        pass
    return {**best, "start": start, "log": log, "l2": l2}


def refine_ngram(stats, blocks_meta: dict, out, *, heldout, l2s=L2_CANDIDATES,
                 max_iter: int = MAX_ITER, refine_tau: bool = False,
                 on_iteration=None) -> NgramModel:
    """Refine the Kneser-Ney or block model finalized from `stats` (its τ in
    `blocks_meta["theta"]`) into a maximum-entropy n-gram model written as an n-gram model
    file at `out`; `heldout` are token batches (TokenArrays); `l2s` the λ·n tried, the one
    with the best held-out point kept. A model with the document cache gets its weights
    fitted again over the refined model."""
    from .. import __version__
    from ..model.ngram import save_ngram_model
    from ..model.weights import sidecar_path, stem_of
    from ..solve.ngram import kneser_ney
    if max_iter < 1:
        raise OptionError(f"passes must be at least 1, not {max_iter}")
    bad = [x for x in l2s if not math.isfinite(x) or x < 0]
    if not l2s or bad:
        raise OptionError(f"l2 must be a finite number at least 0, not {bad[0] if bad else 'none'}")
    t0 = time.perf_counter()
    levels = kneser_ney(stats)
    blocks = Blocks(levels)
    model = MaxEnt(blocks)
    heldout = list(heldout)
    check_memory(stats, model.n_delta, sum(a.tokens.size for a in heldout))
    theta0 = np.asarray(blocks_meta["theta"], np.float64)
    if theta0.size != model.n_theta:
        raise StreamfitError("the model's τ do not fit these statistics: refine the block "
                             "model finalized from them")
    tables = lookup_tables(levels)
    train = training_data(model, stats, tables)
    held = heldout_data(model, heldout, stats.eos, tables)
    runs = []
    for lam in l2s:
        runs.append(fit(model, theta0, train, held, l2=lam, max_iter=max_iter,
                        refine_tau=refine_tau, on_iteration=on_iteration))
    best = min(runs, key=lambda r: r["heldout"])
    theta, delta = best["theta"], best["delta"]
    meta = {k: v for k, v in blocks_meta.items() if k not in ("arrays", "header_checksum")}
    meta.update(form="maxent", streamfit_version=__version__, theta=[float(t) for t in theta],
                refinement={"l2": best["l2"], "kept_iteration": best["iteration"],
                            "heldout_start": best["start"], "heldout": best["heldout"],
                            "refine_tau": refine_tau, "entries": model.n_delta,
                            "runs": [{"l2": r["l2"], "kept_iteration": r["iteration"],
                                      "heldout": r["heldout"], "log": r["log"]} for r in runs]})
    scoring = refined_scoring_model(model, theta, delta, meta, stats.eos)
    if "cache" in meta:   # the document cache's weights again, over the refined model
        from ..solve.cache import fit_cache
        meta["cache"] = fit_cache(scoring, heldout)
    meta["refinement"]["seconds"] = time.perf_counter() - t0
    save_ngram_model(stem_of(out), sidecar_path(out), scoring, meta)
    return scoring


def refined_scoring_model(model: MaxEnt, theta, delta, meta: dict, eos: bool) -> NgramModel:
    """The lookup tables of `model.ngram` for (τ, δ): each entry's partial logit gains its
    D, and log Z of every training context is recomputed with δ."""
    levels, N = model.levels, model.order
    deepest = np.concatenate([np.full(levels.ctx_key[L].size, L) for L in range(N)])
    ids = np.concatenate([np.arange(levels.ctx_key[L].size) for L in range(N)])
    q = model.blocks.queries(deepest, ids)
    logz = model.log_z(theta, delta, q)
    D = cumulative(delta, model.row_off, model.parent)
    extra = [D[model.row_off[L]:model.row_off[L + 1]] for L in range(N)]
    return scoring_model(model.blocks, theta, meta, eos, extra=extra, logz=logz)

