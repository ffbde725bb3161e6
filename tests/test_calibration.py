"""The calibration kernels against their numpy twins (streamfit.solve.reference), and their
gradient against finite differences of the loss."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from streamfit.count.stats import Statistics
from streamfit.data.featurize import Examples
from streamfit.solve import reference as ref
from streamfit.solve.calibrate import CalibrationSample
from streamfit.solve.forms import class_log_totals


def random_problem(seed: int, n_features: int = 9, n_classes: int = 7, n: int = 40):
    rng = np.random.default_rng(seed)
    f = sp.random(n_features, n_classes, density=0.3, random_state=seed, format="csr",
                  data_rvs=lambda k: rng.integers(1, 20, k).astype(np.float64))
    f.sort_indices()
    stats = Statistics(task="classify", n_classes=n_classes, n_features=n_features,
                       indptr=f.indptr.astype(np.int64), indices=f.indices.astype(np.int32),
                       data=f.data, n_examples=int(f.sum()), l1_sum=float(f.sum()))
    x = sp.random(n, n_features, density=0.35, random_state=seed + 1, format="csr")
    x = x[np.asarray(x.sum(axis=1)).ravel() > 0]
    x = sp.csr_matrix(x.multiply(1.0 / x.sum(axis=1)))
    x.sort_indices()
    targets = rng.integers(0, n_classes, x.shape[0])  # some outside their example's support
    ex = Examples(x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data, targets)
    return stats, ex


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("a", [0.01, 1.0])
def test_loss_and_gradient_match_the_dense_twin(seed, a):
    stats, ex = random_problem(seed)
    fit = CalibrationSample(stats, ex, stride=1).at_smoothing(a)
    s = ref.support_scores(ex.indptr, ex.indices, ex.values, np.asarray(stats.indptr),
                           np.asarray(stats.indices), stats.data, stats.n_classes, a)
    big_l = class_log_totals(stats, a)
    assert (fit.target_slot < 0).any()  # the bias-only branch is exercised
    for tau, beta in [(1.0, 0.0), (2.5, 0.7), (0.3, -1.2)]:
        got = fit.loss(tau, beta)
        want = ref.loss_grad(tau, beta, s, big_l, ex.targets)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_gradient_is_the_derivative_of_the_loss(seed):
    stats, ex = random_problem(seed)
    fit = CalibrationSample(stats, ex, stride=1).at_smoothing(0.1)
    tau, beta, h = 1.7, 0.4, 1e-6
    _, g_tau, g_beta = fit.loss(tau, beta)
    d_tau = (fit.loss(tau + h, beta)[0] - fit.loss(tau - h, beta)[0]) / (2 * h)
    d_beta = (fit.loss(tau, beta + h)[0] - fit.loss(tau, beta - h)[0]) / (2 * h)
    np.testing.assert_allclose([g_tau, g_beta], [d_tau, d_beta], rtol=1e-6, atol=1e-8)


def test_fit_minimises_the_twin_loss():
    stats, ex = random_problem(7, n=200)
    fit = CalibrationSample(stats, ex, stride=1).at_smoothing(0.1)
    tau, beta, nll = fit.fit()
    s = ref.support_scores(ex.indptr, ex.indices, ex.values, np.asarray(stats.indptr),
                           np.asarray(stats.indices), stats.data, stats.n_classes, 0.1)
    big_l = class_log_totals(stats, 0.1)
    assert nll == pytest.approx(ref.loss_grad(tau, beta, s, big_l, ex.targets)[0], rel=1e-9)
    for dt, db in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
        assert ref.loss_grad(tau + dt, beta + db, s, big_l, ex.targets)[0] >= nll - 1e-9
