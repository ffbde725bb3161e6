"""Newton's method with the streamed Hessian: the sums against numpy, the optimum against
scipy, a killed run resumed, and a clear refusal when the Hessian cannot fit."""
# ruff: noqa: F811
from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from scipy.special import softmax

import streamfit
from streamfit.train import newton as N
from streamfit.train import core, refine as R
from streamfit.solve import explicit as solve
from streamfit.errors import StreamfitError

# the fixtures `bigram` and `features` are shared with test_refine (pytest finds them here)
from test_refine import (bigram, dense_model, examples_list, features,  # noqa: F401
                         mean_ce, objective_and_grad, oracle_pass)


def oracle_hessian(w, x, y):
    """Σ_t (diag(p_t) − p_t p_tᵀ) ⊗ x_t x_tᵀ, one example at a time, feature-major."""
    d, c = w.shape
    p = softmax(x @ w, axis=1)
    h = np.zeros((d * c, d * c))
    for t in range(y.size):
        h += np.kron(np.outer(x[t], x[t]), np.diag(p[t]) - np.outer(p[t], p[t]))
    return h


@pytest.mark.parametrize("rows", [None, 7])
def test_hessian_pass_matches_numpy(features, monkeypatch, rows):
    if rows:
        monkeypatch.setattr(N, "BLOCK_BYTES", rows * 8 * features["d"])   # blocks of `rows` rows
    x, y = features["x"], features["y"]
    rng = np.random.default_rng(3)
    ws = [rng.normal(0, 1.5, (features["d"], features["c"])) for _ in range(3)]
    r = N.hessian_pass(ws, features["examples"])
    n, loss, correct, grad, hess = r.n, r.loss, r.correct, r.grad, r.hess
    assert n == y.size
    for i, w in enumerate(ws):   # loss and gradient at every candidate
        want = oracle_pass(w, x, y)
        assert correct[i] == want["correct"]
        assert loss[i] == pytest.approx(want["loss"], rel=1e-12)
        np.testing.assert_allclose(grad[i], want["E"] - want["F"], atol=1e-12)
    want_h = oracle_hessian(ws[0], x, y)   # at the first candidate; products in float32:
    np.testing.assert_allclose(hess, want_h, atol=1e-6 * np.abs(want_h).max())  # to their precision
    # and it is the derivative of the gradient: a central difference along a direction
    w = ws[0]
    v = rng.normal(size=w.shape)
    eps = 1e-5
    g = [objective_and_grad((w + s * eps * v).ravel(), x, y, 0.0, w.shape)[1] for s in (1, -1)]
    np.testing.assert_allclose(hess @ v.ravel() / n, (g[0] - g[1]) / (2 * eps), atol=1e-7)


def test_hessian_sums_of_shards_add_up(features):
    exs = features["examples"]
    ws = [np.random.default_rng(7).normal(0, 1.0, (features["d"], features["c"])) for _ in range(2)]
    whole = N.hessian_pass(ws, exs)
    parts = [N.hessian_pass(ws, exs[i::2]) for i in range(2)]
    total = parts[0] + parts[1]
    assert total.n == whole.n and np.array_equal(total.correct, whole.correct)
    for a, b in ((total.loss, whole.loss), (total.grad, whole.grad), (total.hess, whole.hess)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_hessian_pass_merges_identical_contexts(bigram):
    v = bigram["v"]
    batches = examples_list([bigram["path"]], "lm", 1, v, v + 1, batch_rows=4)
    w = np.random.default_rng(5).normal(0, 1.0, (v + 1, v))
    r = N.hessian_pass([w], batches)
    n, loss, correct, grad, hess = r.n, r.loss, r.correct, r.grad, r.hess
    want = oracle_pass(w, bigram["x"], bigram["y"])
    assert (n, correct[0]) == (want["n"], want["correct"])
    assert loss[0] == pytest.approx(want["loss"], rel=1e-12)
    np.testing.assert_allclose(grad[0], want["E"] - want["F"], atol=1e-10)
    np.testing.assert_allclose(hess, oracle_hessian(w, bigram["x"], bigram["y"]), atol=1e-10)


def reference_optimum(x, y, l2, shape):
    ref = scipy.optimize.minimize(objective_and_grad, np.zeros(shape[0] * shape[1]),
                                  args=(x, y, l2, shape), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 10_000, "gtol": 1e-12, "ftol": 1e-15})
    assert np.abs(objective_and_grad(ref.x, x, y, l2, shape)[1]).max() < 1e-7
    return ref.fun


def test_newton_reaches_the_regularised_optimum_in_a_few_passes(features, tmp_path):
    x, y, d, c = features["x"], features["y"], features["d"], features["c"]
    l2 = 1e-3
    best = reference_optimum(x, y, l2, (d, c))
    explicit = solve.finalize(streamfit.accumulate([features["path"]]), form="conditional",
                              smoothing=0.01, dtype="float64")
    exs = features["examples"]
    refined = R.refine(explicit, lambda: iter(exs), tmp_path / "newton.npy", method="newton",
                       passes=8, l2=l2)
    log = refined.meta["refinement"]["log"]
    assert len(log) == 8 and log[0]["step"] == 0.0   # pass 1 evaluates the start
    objectives = [e["objective"] for e in log]
    assert all(b <= a for a, b in zip(objectives, objectives[1:]))   # never worse
    assert objectives[-1] - best < 1e-9
    w = np.asarray(refined.dense, np.float64)   # float32 on disk
    assert objective_and_grad(w.ravel(), x, y, l2, (d, c))[0] - best < 1e-6
    # L-BFGS with the same number of passes is still far from it
    lb = R.refine(explicit, lambda: iter(exs), tmp_path / "lbfgs.npy", method="lbfgs",
                  passes=8, l2=l2)
    assert min(e["objective"] for e in lb.meta["refinement"]["log"]) - best > 1e-6


def test_the_line_search_takes_a_shorter_step_when_the_full_one_overshoots(features, tmp_path):
    """Without l2, full Newton steps from a sharp start (saturated softmax: a tiny Hessian)
    overshoot: the same pass finds a shorter step better, takes it and damps the next
    direction more."""
    x, y, exs = features["x"], features["y"], features["examples"]
    start = np.random.default_rng(0).normal(0, 10.0, (features["d"], features["c"]))
    refined = R.refine(dense_model(start), lambda: iter(exs), tmp_path / "n.npy",
                       method="newton", passes=12)
    log = refined.meta["refinement"]["log"]
    short = [i for i, e in enumerate(log) if 0 < e["step"] < 1]
    assert short, [e["step"] for e in log]
    i = short[0]
    assert log[i]["damping"] == pytest.approx(log[i - 1]["damping"] * 3)
    objectives = [e["objective"] for e in log]
    assert all(b <= a for a, b in zip(objectives, objectives[1:]))
    for e in log[1:]:   # the objective logged is the oracle's at the point kept (float64 run)
        assert e["train_loss"] == pytest.approx(e["objective"], rel=1e-12)
    final = objective_and_grad(np.asarray(refined.dense, np.float64).ravel(), x, y, 0.0,
                               start.shape)[0]
    assert final == pytest.approx(objectives[-1], rel=1e-5)
    assert final < mean_ce(core.dense_parameters(dense_model(start)), x, y) - 1.0


def test_newton_refuses_a_hessian_too_large(features, tmp_path, monkeypatch):
    monkeypatch.setattr(N, "HESSIAN_LIMIT_BYTES", 1000)
    w = np.zeros((features["d"], features["c"]))
    with pytest.raises(StreamfitError, match="lbfgs"):
        R.refine(dense_model(w), lambda: iter(features["examples"]), tmp_path / "x.npy",
                 method="newton", passes=2)
    assert not list(tmp_path.iterdir())
