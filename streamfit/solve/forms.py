"""The family of explicit solutions (METHODS.md §1) and the numbers that pick one of it.

All forms share W_ij = log(F_ij + a) − log(f_i + a·C) (each row a smoothed log P(class |
feature)) and differ in two numbers: logits = tau · (x̃ · W) − beta · log(c_j + a·D).

- conditional: tau = 1, beta = 0. For one-hot inputs (a bigram) the maximum-likelihood
  solution itself: its cross-entropy gradient vanishes at a = 0.
- paper: tau = K, beta = K − 1 with K the mean L1 norm of the raw inputs (the window for a
  language model): the naive-Bayes form of Williams & Zhao.
- calibrated: (tau, beta) — and the smoothing a, when asked — fitted on held-out data
  (`streamfit.solve.calibrate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..count.stats import Statistics
from ..defaults import DEFAULT_SMOOTHING, FORMS  # noqa: F401 (used by importers)

SMOOTHING_GRID = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
# --smoothing auto extends the grid past an edge where the optimum lies, within these bounds.
SMOOTHING_BOUNDS = (1e-12, 1e6)


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
