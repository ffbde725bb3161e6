"""refine's default method (plbfgs at these sizes; whitened L-BFGS above), the L2 relative to each
feature's variance, keeping the best held-out point, and --smoothing auto past its grid.

Oracles are plain numpy/scipy on X̃ built here from the raw rows (each divided by its sum).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.optimize
from scipy.special import logsumexp, softmax

import streamfit
from streamfit.cli import main
from streamfit.model.evaluate import iter_examples
from streamfit.solve import calibrate
from streamfit.solve import explicit as solve
from streamfit.train import core
from streamfit.train import refine as R
from streamfit.train.lbfgs import Whitening

from conftest import write_dense


def normalised(x_raw):
    s = x_raw.sum(axis=1, keepdims=True)
    return np.divide(x_raw, s, out=np.zeros_like(x_raw), where=s > 0)


def objective(flat, x, y, lam, shape):
    """Mean cross-entropy of softmax(X̃W) + ½ Σ_i lam_i ‖W_i‖² and its gradient."""
    w = flat.reshape(shape)
    z = x @ w
    n = y.size
    f = float(np.mean(logsumexp(z, axis=1) - z[np.arange(n), y])) \
        + 0.5 * float((lam[:, None] * w * w).sum())
    g = x.T @ (softmax(z, axis=1) - np.eye(shape[1])[y]) / n + lam[:, None] * w
    return f, g.ravel()


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Dense rows whose features have very different scales (1 to 1000) and are correlated:
    what makes plain L-BFGS on x/Σx slow."""
    root = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(4)
    n, d, c = 400, 12, 3
    y = rng.integers(0, c, n)
    base = rng.gamma(2.0, size=(n, 4)) + 0.3 * y[:, None]
    mix = rng.random((4, d))
    x = (base @ mix) * np.logspace(0, 2, d)[None, :] + rng.random((n, d))
    x[:, 0] += 2.0 * (y == 1)
    path = write_dense(root / "train.parquet", y, x, row_group_size=97)
    held = write_dense(root / "valid.parquet", y[:80], x[:80] * 1.1)
    common = dict(task="classify", window=0, n_classes=c, n_features=d, batch_rows=64)
    return {"x": normalised(x), "y": y, "d": d, "c": c, "path": path, "held": held,
            "examples": list(iter_examples([path], **common)),
            "held_examples": list(iter_examples([held], **common)), "root": root}


def test_whitening_is_a_reparametrisation(skewed):
    x, d, c = skewed["x"], skewed["d"], skewed["c"]
    m = core.feature_moments(iter(skewed["examples"]), d)
    assert m.n == len(skewed["y"])
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(m.variance, x.var(axis=0), rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(m.gram, x.T @ x / len(x), rtol=1e-5)  # float32 per batch
    rng = np.random.default_rng(1)
    for wh in (Whitening.of(m), Whitening.of(core.FeatureMoments(m.n, m.mean, m.square))):
        w = rng.normal(size=(d, c))
        v, cc = wh.from_w(w)
        np.testing.assert_allclose(x @ wh.to_w(v, cc), x @ w, rtol=1e-8, atol=1e-10)
        # the gradient in (V, c) is the chain rule of W's: compare a directional derivative
        g = rng.normal(size=(d, c))     # any linear function tr(Gᵀ W(V, c))
        dv, dc = rng.normal(size=(d, c)), rng.normal(size=c)
        gv, gc = wh.grad(g)
        eps = 1e-6
        numeric = (np.sum(g * wh.to_w(v + eps * dv, cc + eps * dc)) - np.sum(g * wh.to_w(v, cc))) / eps
        assert numeric == pytest.approx(np.sum(gv * dv) + gc @ dc, rel=1e-5)


def test_auto_reaches_the_relative_l2_optimum_faster(skewed, tmp_path):
    """auto (plbfgs at this size) against scipy's optimum of the same objective."""
    x, y, d, c = skewed["x"], skewed["y"], skewed["d"], skewed["c"]
    kappa = 1e-2
    lam = kappa * x.var(axis=0)
    ref = scipy.optimize.minimize(objective, np.zeros(d * c), args=(x, y, lam, (d, c)),
                                  jac=True, method="L-BFGS-B",
                                  options={"maxiter": 20_000, "gtol": 1e-12, "ftol": 1e-15})
    stats = streamfit.accumulate([skewed["path"]])
    start = solve.finalize(stats, form="conditional", smoothing=0.01, dtype="float64")
    gaps = {}
    for method, passes in (("auto", 10), ("lbfgs", 10), ("auto", 30)):
        out = R.refine(start, lambda: iter(skewed["examples"]), tmp_path / f"{method}.npy",
                       method=method, passes=passes, l2_relative=kappa)
        w = np.asarray(out.dense, np.float64)
        gaps[method, passes] = objective(w.ravel(), x, y, lam, (d, c))[0] - ref.fun
        info = out.meta["refinement"]
        assert ("chosen" in info) == (method == "auto")
        if method == "auto":
            assert info["chosen"].startswith("plbfgs")
    # an ill-conditioned problem (scipy needed thousands of iterations for the reference)
    assert gaps["auto", 10] < 1e-3 * ref.fun
    assert gaps["lbfgs", 10] > 100 * gaps["auto", 10] > 0
    assert abs(gaps["auto", 30]) < 1e-4


def test_the_start_is_kept_when_no_pass_helps_on_heldout(skewed, tmp_path):
    """Held-out data drawn differently from training: every pass may be worse on it; then
    the written model is the start, and never worse than the start."""
    stats = streamfit.accumulate([skewed["path"]])
    start = solve.finalize(stats, form="conditional", smoothing=0.01, dtype="float64")
    held = lambda: iter(skewed["held_examples"])  # noqa: E731
    start_loss = core.heldout_loss(core.dense_parameters(start), held())[0]
    out = R.refine(start, lambda: iter(skewed["examples"]), tmp_path / "k.npy", method="lbfgs",
                   passes=30, heldout=held)
    info = out.meta["refinement"]
    assert info["start"]["heldout_loss"] == pytest.approx(start_loss)
    losses = [start_loss] + [e["heldout_loss"] for e in info["log"]]
    assert info["kept_pass"] == int(np.argmin(losses))
    got = core.heldout_loss(core.dense_parameters(out), held())[0]
    assert got == pytest.approx(min(losses), abs=1e-5) and got <= start_loss + 1e-6


def test_wine_refined_for_50_passes_is_not_worse_on_heldout(tmp_path, capsys):
    """scikit-learn's wine, min-max scaled: 50 L-BFGS passes without l2 overfit badly; with
    --heldout the written model is never worse there than the start, and the default l2
    (relative to the features' variances) keeps the test loss near the start's."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_wine(return_X_y=True)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    order = np.random.default_rng(0).permutation(len(y))
    parts = {"test": order[:36], "valid": order[36:64], "train": order[64:]}
    paths = {k: write_dense(tmp_path / f"{k}.parquet", y[i], x[i]) for k, i in parts.items()}

    def run(*args):
        assert main([*map(str, args), "--quiet"]) == 0
        return capsys.readouterr().out

    def test_loss(weights, split="test"):
        return json.loads(run("evaluate", "--weights", weights, paths[split], "--json"))["cross_entropy"]

    run("accumulate", paths["train"], "--stats", tmp_path / "st")
    run("finalize", "--stats", tmp_path / "st", "--out", tmp_path / "w.npy",
        "--heldout", paths["valid"])
    start = {s: test_loss(tmp_path / "w.npy", s) for s in ("valid", "test")}
    common = ("refine", "--weights", tmp_path / "w.npy", paths["train"], "--method", "lbfgs",
              "--passes", 50)
    run(*common, "--l2", 0, "--out", tmp_path / "none.npy")
    run(*common, "--l2", 0, "--heldout", paths["valid"], "--out", tmp_path / "held.npy")
    run(*common, "--out", tmp_path / "default.npy")
    assert test_loss(tmp_path / "held.npy", "valid") <= start["valid"] + 1e-6
    overfit = test_loss(tmp_path / "none.npy")
    assert overfit > 3 * start["test"]
    assert test_loss(tmp_path / "default.npy") < min(2 * start["test"], overfit / 3)


def test_smoothing_grid_extends_past_an_edge(tmp_path, monkeypatch):
    from conftest import random_feature_rows
    rng = np.random.default_rng(3)
    y, x = random_feature_rows(rng, 260, 40, 4, density=0.08)
    train = write_dense(tmp_path / "t.parquet", y[:200], x[:200])
    common = dict(task="classify", window=0, n_classes=4, n_features=40, batch_rows=64)
    held = list(iter_examples([write_dense(tmp_path / "h.parquet", y[200:], x[200:])], **common))
    stats = streamfit.accumulate([train])
    wide = calibrate.choose(stats, "conditional", "auto", iter(held))
    tried = sorted(g["smoothing"] for g in wide.calibration["grid"])
    assert tried[0] < wide.smoothing < tried[-1]         # an interior optimum
    # a grid that misses the optimum on one side reaches it step by step
    for far in (wide.smoothing * 1e3, wide.smoothing * 1e-3):
        monkeypatch.setattr(calibrate, "SMOOTHING_GRID", (far, far * 10))
        narrow = calibrate.choose(stats, "conditional", "auto", iter(held))
        tried = sorted(g["smoothing"] for g in narrow.calibration["grid"])
        assert len(tried) > 3 and tried[0] < narrow.smoothing < tried[-1]
        assert wide.smoothing / 10 < narrow.smoothing < wide.smoothing * 10
