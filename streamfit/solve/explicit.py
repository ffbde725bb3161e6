"""Solving: the explicit solution from statistics, in the forms of METHODS.md §1.

All forms share W_ij = log(F_ij + a) − log(f_i + a·C) (each row a smoothed log P(class |
feature)) and differ in two numbers: logits = tau · (x̃ · W) − beta · log(c_j + a·D).

- conditional: tau = 1, beta = 0. For one-hot inputs (a bigram) the maximum-likelihood
  solution itself: its cross-entropy gradient vanishes at a = 0.
- paper: tau = K, beta = K − 1 with K the mean L1 norm of the raw inputs (the window for a
  language model): the naive-Bayes form of Williams & Zhao.
- calibrated: (tau, beta) — and the smoothing a, when asked — fitted on held-out data in
  one streaming pass, by minimising the held-out cross-entropy on a bounded uniform sample.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import scipy.optimize
from numba import njit

from ..errors import StreamfitError
from ..data.featurize import Examples
from ..count.kernels import _log_expm1
from ..model.weights import Model, load_model, write_model
from ..count.stats import Statistics

FORMS = ("conditional", "paper", "calibrated")
SMOOTHING_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_SMOOTHING = 0.01
BLOCK_BYTES = 64 << 20
CALIBRATION_ENTRIES = 4_000_000


@dataclass
class Solution:
    """The numbers that pick one explicit solution out of the family."""

    form: str
    smoothing: float
    tau: float
    beta: float
    calibration: dict = field(default_factory=dict)


def form_parameters(stats: Statistics, form: str) -> tuple[float, float]:
    """(tau, beta) of a fixed form."""
    if form == "conditional":
        return 1.0, 0.0
    if form == "paper":
        k = stats.priming_number
        return k, k - 1.0
    raise ValueError(f"form {form!r} has no fixed parameters")


def class_log_totals(stats: Statistics, smoothing: float) -> np.ndarray:
    """log(c_j + a·D), the smoothed class totals of the per-class term."""
    return np.log(stats.class_totals() + smoothing * stats.n_features)


def _dense_blocks(stats: Statistics, smoothing: float, dtype: str) -> Iterator[tuple[int, np.ndarray]]:
    c = stats.n_classes
    rows_per_block = max(1, BLOCK_BYTES // (8 * max(c, 1)))
    log_row = np.log(smoothing) - np.log(stats.feature_totals() + smoothing * c)
    for lo in range(0, stats.n_features, rows_per_block):
        hi = min(stats.n_features, lo + rows_per_block)
        block = np.repeat(log_row[lo:hi, None], c, axis=1)
        p0, p1 = stats.indptr[lo], stats.indptr[hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(stats.indptr[lo:hi + 1]))
        block[rows, stats.indices[p0:p1]] += np.log1p(np.asarray(stats.data[p0:p1], np.float64) / smoothing)
        yield lo, block.astype(dtype)


def sparse_data_blocks(stats: Statistics, smoothing: float, dtype: str = "float32",
                       block: int = 1 << 22) -> Iterator[np.ndarray]:
    """S = log1p(F / a) on F's support, a block of entries at a time (CSR data, in the
    order of the statistics' indptr / indices)."""
    for lo in range(0, stats.nnz, block):
        yield np.log1p(np.asarray(stats.data[lo:lo + block], np.float64) / smoothing).astype(dtype)


def finalize(stats: Statistics, out: str | os.PathLike | None = None, *,
             form: str = "conditional", smoothing: float | str = DEFAULT_SMOOTHING,
             heldout: Iterable[Examples] | None = None, layout: str = "dense",
             dtype: str = "float32", source: dict | None = None) -> Model:
    """The explicit solution of `stats` as a Model, written to `out` (STEM.npy + STEM.json)
    when given, else kept in memory. smoothing="auto" (or form="calibrated") needs
    `heldout`: an iterable of Examples, e.g. from `evaluate.iter_examples`."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if layout not in ("dense", "sparse"):
        raise ValueError(f"layout must be 'dense' or 'sparse', not {layout!r}")
    if dtype not in ("float32", "float16", "float64"):
        raise ValueError(f"dtype must be float32, float16 or float64, not {dtype!r}")
    if dtype == "float16" and layout == "sparse":  # the scoring kernels take float32/64
        raise ValueError("dtype float16 is for the dense layout; use float32 for sparse")
    if stats.n_examples - stats.empty_rows <= 0 or stats.nnz == 0:
        raise StreamfitError("the statistics are empty: nothing to solve")
    solution = choose(stats, form, smoothing, heldout)
    a = solution.smoothing
    bias = None if solution.beta == 0 else -solution.beta * class_log_totals(stats, a)
    header = {"task": stats.task, "window": stats.window, "n_classes": stats.n_classes,
              "n_features": stats.n_features, "form": solution.form, "smoothing": a,
              "tau": solution.tau, "beta": solution.beta, "dtype": dtype,
              "calibration": solution.calibration,
              "statistics": {"n_examples": stats.n_examples, "nnz": stats.nnz, **(source or {})}}
    if stats.task == "lm":
        header["vocab_size"] = stats.n_classes
    if out is not None:
        if layout == "dense":
            path = write_model(out, header, dense={"dtype": dtype,
                                                   "blocks": _dense_blocks(stats, a, dtype)},
                               bias=bias)
        else:
            path = write_model(out, header, bias=bias, sparse=(
                np.asarray(stats.indptr), np.asarray(stats.indices),
                sparse_data_blocks(stats, a, dtype)))
        return load_model(path)
    common = dict(task=stats.task, n_classes=stats.n_classes, n_features=stats.n_features,
                  tau=solution.tau, bias=bias, window=stats.window, meta=header)
    if layout == "dense":
        w = np.empty((stats.n_features, stats.n_classes), dtype=dtype)
        for lo, block in _dense_blocks(stats, a, dtype):
            w[lo:lo + block.shape[0]] = block
        return Model(dense=w, **common)
    data = np.concatenate(list(sparse_data_blocks(stats, a, dtype))) if stats.nnz else \
        np.zeros(0, dtype)
    return Model(sparse=(np.asarray(stats.indptr), np.asarray(stats.indices), data), **common)


def choose(stats: Statistics, form: str, smoothing: float | str,
           heldout: Iterable[Examples] | None) -> Solution:
    """Fix the smoothing and (tau, beta): directly, or by fitting on held-out data."""
    needs_data = form == "calibrated" or smoothing == "auto"
    if not needs_data:
        a = float(smoothing)
        if not a > 0 or not math.isfinite(a):
            raise ValueError(f"smoothing must be a positive number, not {smoothing!r}")
        return Solution(form, a, *form_parameters(stats, form))
    if heldout is None:
        raise StreamfitError(f"form {form!r} with smoothing {smoothing!r} fits on held-out "
                             f"data: pass held-out paths (--heldout)")
    sample = CalibrationSample.collect(stats, heldout)
    grid = SMOOTHING_GRID if smoothing == "auto" else (float(smoothing),)
    results = []
    for a in grid:
        s = sample.at_smoothing(a)
        if form == "calibrated":
            tau, beta, nll = s.fit()
        else:
            tau, beta = form_parameters(stats, form)
            nll = s.loss(tau, beta)[0]
        results.append({"smoothing": a, "tau": tau, "beta": beta, "cross_entropy": nll})
    best = min(results, key=lambda r: r["cross_entropy"])
    return Solution(form, best["smoothing"], best["tau"], best["beta"],
                    {"examples": sample.n, "stride": sample.stride, "grid": results})


@njit(cache=True)
def _expand(x_indptr, x_indices, x_values, targets, f_indptr, f_indices, f_data, n_classes):
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
def _loss_grad(tau, beta, s, l_slot, slot_ptr, target_slot, target_l, log_z, zl):
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
            v = -beta * l_slot[q] - log_z + _log_expm1(tau * s[q])
            if v > m:
                m = v
        acc = math.exp(-m)  # the bias-only term exp(0 - m)
        for q in range(lo, hi):
            acc += math.exp(-beta * l_slot[q] - log_z + _log_expm1(tau * s[q]) - m)
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


class CalibrationSample:
    """A bounded, uniform sample of held-out examples, gathered against F in one pass."""

    def __init__(self, stats: Statistics, examples: Examples, stride: int):
        self.stats = stats
        self.stride = stride
        self.n = examples.n
        (self.entry_slot, self.entry_x, self.entry_f, self.slot_class, self.slot_ptr,
         self.target_slot) = _expand(examples.indptr, examples.indices, examples.values,
                                     examples.targets, np.asarray(stats.indptr),
                                     np.asarray(stats.indices), np.asarray(stats.data, np.float64),
                                     stats.n_classes)
        self.targets = examples.targets

    @classmethod
    def collect(cls, stats: Statistics, heldout: Iterable[Examples],
                max_entries: int = CALIBRATION_ENTRIES) -> "CalibrationSample":
        """Keep every stride-th example; when the kept examples' gathered size passes
        `max_entries`, double the stride and drop every other kept one."""
        row_nnz = np.diff(np.asarray(stats.indptr))
        kept: list[Examples] = []
        stride, seen, size = 1, 0, 0
        for ex in heldout:
            if ex.n == 0:
                continue
            idx = np.arange(seen, seen + ex.n)
            seen += ex.n
            take = np.flatnonzero((idx % stride == 0) & (ex.targets >= 0))
            part = _select(ex, take, idx[take])
            kept.append(part)
            size += _gathered(part, row_nnz)
            while size > max_entries and stride < 1 << 40:
                stride *= 2
                kept = [_select(k, np.flatnonzero(k.global_index % stride == 0),
                                k.global_index[k.global_index % stride == 0]) for k in kept]
                size = sum(_gathered(k, row_nnz) for k in kept)
        if not kept or sum(k.n for k in kept) == 0:
            raise StreamfitError("the held-out data has no examples to calibrate on")
        return cls(stats, _concat(kept), stride)

    def at_smoothing(self, a: float) -> "_Fit":
        s = np.bincount(self.entry_slot, weights=self.entry_x * np.log1p(self.entry_f / a),
                        minlength=self.slot_class.size)
        big_l = class_log_totals(self.stats, a)
        return _Fit(s, big_l[self.slot_class], self.slot_ptr, self.target_slot,
                    big_l[self.targets], big_l)


@dataclass
class _Fit:
    s: np.ndarray
    l_slot: np.ndarray
    slot_ptr: np.ndarray
    target_slot: np.ndarray
    target_l: np.ndarray
    big_l: np.ndarray

    def loss(self, tau: float, beta: float) -> tuple[float, float, float]:
        b = -beta * self.big_l
        log_z = float(np.logaddexp.reduce(b))
        zl = float(np.exp(b - log_z) @ self.big_l)
        return _loss_grad(tau, beta, self.s, self.l_slot, self.slot_ptr, self.target_slot,
                          self.target_l, log_z, zl)

    def fit(self) -> tuple[float, float, float]:
        """Minimise the held-out NLL over (tau > 0, beta): convex, two variables."""
        def f(v):
            nll, gt, gb = self.loss(v[0], v[1])
            return nll, np.array([gt, gb])
        res = scipy.optimize.minimize(f, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                                      bounds=[(1e-3, 1e4), (-1e4, 1e4)])
        return float(res.x[0]), float(res.x[1]), float(res.fun)


def _select(ex: Examples, rows: np.ndarray, global_index: np.ndarray) -> Examples:
    starts, ends = ex.indptr[rows], ex.indptr[rows + 1]
    counts = ends - starts
    pos = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out = Examples(indptr, ex.indices[pos], ex.values[pos], ex.targets[rows])
    out.global_index = global_index
    return out


def _gathered(ex: Examples, row_nnz: np.ndarray) -> int:
    return int(row_nnz[ex.indices].sum())


def _concat(parts: list[Examples]) -> Examples:
    offsets = np.cumsum([0] + [p.indices.size for p in parts])
    indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return Examples(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]),
                    np.concatenate([p.values for p in parts]),
                    np.concatenate([p.targets for p in parts]))
