"""Calibration: the smoothing and (tau, beta) of the explicit solution, fixed by the form or
fitted on held-out data by minimising its cross-entropy (convex in (tau, beta)) on a bounded
uniform sample gathered in one streaming pass."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..count.stats import Statistics
from ..data.featurize import Examples, concat_examples, take_examples
from ..errors import OptionError, StreamfitError
from .forms import SMOOTHING_BOUNDS, SMOOTHING_GRID, Solution, class_log_totals, form_parameters
from .kernels import expand_support, loss_grad

CALIBRATION_ENTRIES = 4_000_000


def choose(stats: Statistics, form: str, smoothing: float | str,
           heldout: Iterable[Examples] | None) -> Solution:
    """Fix the smoothing and (tau, beta): directly, or by fitting on held-out data."""
    needs_data = form == "calibrated" or smoothing == "auto"
    if not needs_data:
        a = float(smoothing)
        if not a > 0 or not math.isfinite(a):
            raise OptionError(f"smoothing must be a positive number, not {smoothing!r}")
        return Solution(form, a, *form_parameters(stats, form))
    if heldout is None:
        raise StreamfitError(f"form {form!r} with smoothing {smoothing!r} fits on held-out "
                             f"data: pass held-out paths (--heldout)")
    sample = CalibrationSample.collect(stats, heldout)
    grid = list(SMOOTHING_GRID if smoothing == "auto" else (float(smoothing),))
    results = []

    def fit(a: float) -> None:
        s = sample.at_smoothing(a)
        if form == "calibrated":
            tau, beta, nll = s.fit()
        else:
            tau, beta = form_parameters(stats, form)
            nll = s.loss(tau, beta)[0]
        results.append({"smoothing": a, "tau": tau, "beta": beta, "cross_entropy": nll})

    for a in grid:
        fit(a)
    best = min(results, key=lambda r: r["cross_entropy"])
    if smoothing == "auto":
        # An optimum at an edge of the grid says the grid was too narrow: extend it by the
        # grid's outer ratio, step by step, until the best value is inside (or a bound).
        while True:
            values = sorted(r["smoothing"] for r in results)
            if best["smoothing"] == values[-1] and values[-1] < SMOOTHING_BOUNDS[1]:
                fit(values[-1] * SMOOTHING_GRID[-1] / SMOOTHING_GRID[-2])
            elif best["smoothing"] == values[0] and values[0] > SMOOTHING_BOUNDS[0]:
                fit(values[0] * SMOOTHING_GRID[0] / SMOOTHING_GRID[1])
            else:
                break
            best = min(results, key=lambda r: r["cross_entropy"])
    return Solution(form, best["smoothing"], best["tau"], best["beta"],
                    {"examples": sample.n, "stride": sample.stride, "grid": results})


class CalibrationSample:
    """A bounded, uniform sample of held-out examples, gathered against F in one pass."""

    def __init__(self, stats: Statistics, examples: Examples, stride: int):
        self.stats = stats
        self.stride = stride
        self.n = examples.n
        # F in place (memory-mapped, its own dtype): only the sampled examples' rows are
        # read, never a float64 copy of all of it.
        (self.entry_slot, self.entry_x, self.entry_f, self.slot_class, self.slot_ptr,
         self.target_slot) = expand_support(examples.indptr, examples.indices, examples.values,
                                            examples.targets, np.asarray(stats.indptr),
                                            np.asarray(stats.indices), np.asarray(stats.data),
                                            stats.n_classes)
        self.targets = examples.targets

    @classmethod
    def collect(cls, stats: Statistics, heldout: Iterable[Examples],
                max_entries: int = CALIBRATION_ENTRIES) -> "CalibrationSample":
        """Keep every stride-th example; when the kept examples' gathered size passes
        `max_entries`, double the stride and drop every other kept one."""
        row_nnz = np.diff(np.asarray(stats.indptr))
        kept: list[tuple[Examples, np.ndarray]] = []  # (examples, their positions in the stream)
        stride, seen, size = 1, 0, 0
        for ex in heldout:
            if ex.n == 0:
                continue
            idx = np.arange(seen, seen + ex.n)
            seen += ex.n
            take = np.flatnonzero((idx % stride == 0) & (ex.targets >= 0))
            part = take_examples(ex, take)
            kept.append((part, idx[take]))
            size += _gathered(part, row_nnz)
            while size > max_entries and stride < 1 << 40:
                stride *= 2
                kept = [(take_examples(k, np.flatnonzero(pos % stride == 0)), pos[pos % stride == 0])
                        for k, pos in kept]
                size = sum(_gathered(k, row_nnz) for k, _ in kept)
        if sum(k.n for k, _ in kept) == 0:
            raise StreamfitError("the held-out data has no examples to calibrate on")
        return cls(stats, concat_examples([k for k, _ in kept]), stride)

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
        return loss_grad(tau, beta, self.s, self.l_slot, self.slot_ptr, self.target_slot,
                         self.target_l, log_z, zl)

    def fit(self) -> tuple[float, float, float]:
        """Minimise the held-out NLL over (tau > 0, beta): convex, two variables."""
        import scipy.optimize  # only a calibrating command pays for it

        def f(v):
            nll, gt, gb = self.loss(v[0], v[1])
            return nll, np.array([gt, gb])
        res = scipy.optimize.minimize(f, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                                      bounds=[(1e-3, 1e4), (-1e4, 1e4)])
        return float(res.x[0]), float(res.x[1]), float(res.fun)


def _gathered(ex: Examples, row_nnz: np.ndarray) -> int:
    return int(row_nnz[ex.indices].sum())
