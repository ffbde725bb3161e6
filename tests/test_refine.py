"""Refining (`streamfit.refine`, `streamfit refine`): GIS, L-BFGS, SGD and Adam by streaming
passes over dense weights.

The oracles are written here with plain numpy from the raw corpora, never through the
package's featurizing or scoring: X̃ is built row by row (feature rows divided by their sum,
token windows one-hot at k·(V+1) + context with weight 1/window, one row per token — no
merging of identical contexts), and the loss, E = X̃ᵀP, F = X̃ᵀY, the gradient, the optimizer
updates and the L-BFGS optimum (scipy on an independent objective) follow by definition.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
from scipy.special import logsumexp, softmax

import streamfit
from streamfit.train import core, refine as R
from streamfit import synthetic
from streamfit.solve import explicit as solve
from streamfit.errors import StreamfitError
from streamfit.model.evaluate import iter_examples
from streamfit.data.featurize import distinct_inputs
from streamfit.model.weights import Model, load_model

from conftest import (cli, ok, run_cli, markov_docs, random_feature_rows, write_dense, write_sparse,
                      write_tokens)

jsonschema = pytest.importorskip("jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402

SCHEMAS = Path(__file__).resolve().parents[1] / "data_schemas"


# --- oracles -------------------------------------------------------------------------------
def feature_matrix(x_raw: np.ndarray) -> np.ndarray:
    """X̃ of a feature corpus: each row divided by its sum; an all-zero row stays zero."""
    x_raw = np.asarray(x_raw, dtype=np.float64)
    s = x_raw.sum(axis=1, keepdims=True)
    return np.divide(x_raw, s, out=np.zeros_like(x_raw), where=s > 0)


def token_matrix(docs, window: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    """X̃ and targets of a token corpus, one row per token (identical contexts NOT merged):
    1/window at k·(V+1) + (the token k+1 places back, or V before the document start)."""
    rows, targets = [], []
    for doc in docs:
        for t, tok in enumerate(doc):
            r = np.zeros(window * (v + 1))
            for k in range(window):
                ctx = doc[t - 1 - k] if t - 1 - k >= 0 else v
                r[k * (v + 1) + ctx] += 1.0 / window
            rows.append(r)
            targets.append(tok)
    return np.array(rows), np.array(targets, dtype=np.int64)


def centred(w: np.ndarray) -> np.ndarray:
    """W with each row centred: refine's starting point (same predictions, smaller l2)."""
    return w - w.mean(axis=1, keepdims=True)


def one_hot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[y]


def oracle_pass(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """Summed loss, correct count, E = X̃ᵀ softmax(X̃W), F = X̃ᵀY."""
    z = x @ w
    p = softmax(z, axis=1)
    n = y.size
    return {"n": n, "loss": float(np.sum(logsumexp(z, axis=1) - z[np.arange(n), y])),
            "correct": int(np.sum(np.argmax(z, axis=1) == y)),
            "E": x.T @ p, "F": x.T @ one_hot(y, w.shape[1])}


def mean_ce(w, x, y) -> float:
    z = x @ w
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(y.size), y]))


def objective_and_grad(flat, x, y, l2, shape):
    """Mean cross-entropy of softmax(X̃W) + l2/2·‖W‖² and its gradient."""
    w = flat.reshape(shape)
    z = x @ w
    n = y.size
    f = float(np.mean(logsumexp(z, axis=1) - z[np.arange(n), y])) + 0.5 * l2 * float(np.sum(w * w))
    g = x.T @ (softmax(z, axis=1) - one_hot(y, shape[1])) / n + l2 * w
    return f, g.ravel()


def examples_list(paths, task, window, n_classes, n_features, batch_rows=4096):
    return list(iter_examples(paths, task=task, window=window, n_classes=n_classes,
                              n_features=n_features, batch_rows=batch_rows))


def dense_model(w: np.ndarray, task: str = "classify", window: int = 0) -> Model:
    return Model(task=task, n_classes=w.shape[1], n_features=w.shape[0], tau=1.0,
                 dense=np.asarray(w, dtype=np.float64), window=window, meta={"form": "conditional"})


def weights_of(path) -> np.ndarray:
    return np.asarray(load_model(path).dense, dtype=np.float64)


def files_named(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(prefix)
                  or p.name.startswith("." + prefix))


# --- corpora -------------------------------------------------------------------------------
D, C = 9, 4   # the uneven feature corpus


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """A sparse feature corpus whose rows have 0 to 6 non-zeros (an all-zero row, a row
    with an explicit zero value) and feature 8 never present; several record batches."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(11)
    n = 45
    x = np.zeros((n, D))
    indices, values = [], []
    for r in range(n):
        k = int(rng.integers(1, 7)) if r != 3 else 0
        idx = rng.choice(D - 1, size=k, replace=False)          # feature D-1: never present
        val = rng.gamma(2.0, size=k) * (rng.random(k) < 0.9)   # some explicit zeros
        x[r, idx] = val
        indices.append(idx.tolist())
        values.append(val.tolist())
    assert any(0.0 in v for v in values) and len({len(i) for i in indices}) == 7
    y = rng.integers(0, C, size=n)
    path = write_sparse(root / "uneven.parquet", y, indices, values, row_group_size=20)
    single = write_sparse(root / "single.parquet", y, indices, values)  # one row group
    return {"path": path, "single": single, "x": feature_matrix(x), "y": y, "n": n}


@pytest.fixture(scope="module")
def bigram(tmp_path_factory):
    """A token corpus of uneven documents over V = 5 (window 1: contexts repeat a lot)."""
    root = tmp_path_factory.mktemp("bigram")
    rng = np.random.default_rng(5)
    v = 5
    docs = [rng.integers(0, v, size=int(rng.integers(5, 30))).tolist() for _ in range(14)]
    path = write_tokens(root / "bigram.parquet", docs, row_group_size=4)
    x, y = token_matrix(docs, 1, v)
    return {"path": path, "docs": docs, "v": v, "x": x, "y": y, "n": y.size}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A small dense random feature corpus (d = 6, C = 3) with two all-zero rows."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(1)
    y, x = random_feature_rows(rng, 120, 6, 3, density=0.6, zero_rows=2)
    path = write_dense(root / "f.parquet", y, x, row_group_size=50)
    return {"path": path, "x": feature_matrix(x), "y": y, "d": 6, "c": 3,
            "examples": examples_list([path], "classify", 0, 3, 6, batch_rows=50)}


# --- 1. full_pass ----------------------------------------------------------------------------
def check_full_pass(w, batches, x, y):
    got = core.full_pass(w, batches, expected=True, observed=True)
    want = oracle_pass(w, x, y)
    assert got.n == want["n"]
    assert got.loss == pytest.approx(want["loss"], rel=1e-12)
    assert got.correct == want["correct"]
    np.testing.assert_allclose(got.expected, want["E"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.observed, want["F"], rtol=1e-10, atol=1e-12)
    assert got.mean_loss == pytest.approx(want["loss"] / want["n"], rel=1e-12)
    assert got.accuracy == want["correct"] / want["n"]


@pytest.mark.parametrize("block_rows", [None, 3])
def test_full_pass_feature_corpus_matches_numpy(uneven, monkeypatch, block_rows):
    if block_rows:  # several blocks of rows per batch
        monkeypatch.setattr(core, "BLOCK_BYTES", 8 * C * block_rows)
    batches = examples_list([uneven["path"]], "classify", 0, C, D, batch_rows=7)
    assert len(batches) > 3
    w = np.random.default_rng(0).normal(0, 2.0, (D, C))
    check_full_pass(w, batches, uneven["x"], uneven["y"])


@pytest.mark.parametrize("block_rows", [None, 2])
def test_full_pass_token_window_1_weights_merged_contexts(bigram, monkeypatch, block_rows):
    v = bigram["v"]
    if block_rows:
        monkeypatch.setattr(core, "BLOCK_BYTES", 8 * v * block_rows)
    batches = examples_list([bigram["path"]], "lm", 1, v, v + 1, batch_rows=4)
    # the path under test: identical contexts are scored once and weighted by their count
    assert any(distinct_inputs(ex)[0].n < ex.n for ex in batches)
    w = np.random.default_rng(1).normal(0, 2.0, (v + 1, v))
    check_full_pass(w, batches, bigram["x"], bigram["y"])


def test_pass_results_of_shards_add_up_to_the_whole_pass(uneven):
    """A pass split into shards (processes, machines) sums to the single pass."""
    batches = examples_list([uneven["path"]], "classify", 0, C, D, batch_rows=7)
    w = np.random.default_rng(2).normal(0, 2.0, (D, C))
    parts = [core.full_pass(w, batches[i::3], expected=True, observed=True) for i in range(3)]
    total = parts[0] + parts[1] + parts[2]
    want = oracle_pass(w, uneven["x"], uneven["y"])
    assert (total.n, total.correct) == (want["n"], want["correct"])
    assert total.loss == pytest.approx(want["loss"], rel=1e-12)
    np.testing.assert_allclose(total.expected, want["E"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total.observed, want["F"], rtol=1e-10, atol=1e-12)


# --- 2. GIS --------------------------------------------------------------------------------
@pytest.mark.parametrize("corpus", ["features", "bigram"])
def test_one_gis_pass_from_zeros_is_the_conditional_explicit_solution(request, tmp_path, corpus):
    data = request.getfixturevalue(corpus)
    if corpus == "features":
        stats = streamfit.accumulate([data["path"]])
    else:
        stats = streamfit.accumulate([data["path"]], window=1)
    a = core.GIS_SMOOTHING
    explicit = solve.finalize(stats, form="conditional", smoothing=a, dtype="float64")
    exs = examples_list([data["path"]], stats.task, stats.window, stats.n_classes,
                        stats.n_features)
    refined = R.refine(explicit, lambda: iter(exs), tmp_path / "gis.npy", method="gis",
                       passes=1, init="zeros")
    w = np.asarray(refined.dense, dtype=np.float64)
    # each row's softmax is the smoothed conditional (F_ij + a) / (f_i + C·a), F from the data
    f = data["x"].T @ one_hot(data["y"], stats.n_classes)
    want = (f + a) / (f.sum(axis=1, keepdims=True) + stats.n_classes * a)
    np.testing.assert_allclose(softmax(w, axis=1), want, rtol=1e-5, atol=1e-12)
    # and so the model's probabilities equal the explicit solution's
    for ex in exs:
        np.testing.assert_allclose(softmax(refined.logits(ex), axis=1),
                                   softmax(explicit.logits(ex), axis=1), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(softmax(data["x"] @ w, axis=1),
                               softmax(data["x"] @ np.asarray(explicit.dense), axis=1),
                               rtol=1e-5, atol=1e-12)
    log = refined.meta["refinement"]["log"]
    assert len(log) == 1 and log[0]["train_loss"] == pytest.approx(np.log(stats.n_classes),
                                                                    rel=1e-12)


def test_gis_passes_match_hand_computation(uneven, tmp_path):
    """W ← W + log((F + a) / (E + a)), E = X̃ᵀ softmax(X̃W) recomputed every pass; feature
    D−1, never present (F = E = 0), keeps its row."""
    x, y, a = uneven["x"], uneven["y"], core.GIS_SMOOTHING
    exs = examples_list([uneven["path"]], "classify", 0, C, D, batch_rows=7)
    w0 = centred(np.random.default_rng(8).normal(0, 1.0, (D, C)))
    refined = R.refine(dense_model(w0), lambda: iter(exs), tmp_path / "gis.npy", method="gis",
                       passes=2)
    w, losses = w0.copy(), []
    for _ in range(2):
        o = oracle_pass(w, x, y)
        losses.append(o["loss"] / o["n"])
        w = w + np.log((o["F"] + a) / (o["E"] + a))
    got = np.asarray(refined.dense, np.float64)
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-5)
    assert np.array_equal(got[D - 1], w0[D - 1].astype(np.float32))
    np.testing.assert_allclose([e["train_loss"] for e in refined.meta["refinement"]["log"]],
                               losses, rtol=1e-12)


def test_gis_never_increases_the_training_loss(tmp_path):
    rng = np.random.default_rng(3)
    y, x_raw = random_feature_rows(rng, 150, 7, 4, density=0.5, zero_rows=1)
    path = write_dense(tmp_path / "f.parquet", y, x_raw)
    x = feature_matrix(x_raw)
    exs = examples_list([path], "classify", 0, 4, 7, batch_rows=40)
    start = np.random.default_rng(4).normal(0, 1.0, (7, 4))
    refined = R.refine(dense_model(start), lambda: iter(exs), tmp_path / "gis.npy",
                       method="gis", passes=5)
    losses = [e["train_loss"] for e in refined.meta["refinement"]["log"]]
    assert len(losses) == 5
    # entry k is the loss of the weights going into pass k: the first is the start's
    assert losses[0] == pytest.approx(mean_ce(start, x, y), rel=1e-12)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 1e-3  # it does move
    final = mean_ce(np.asarray(refined.dense, np.float64), x, y)
    assert final <= losses[-1] + 1e-6  # the fifth update too (float32 weights)


# --- 3. L-BFGS -----------------------------------------------------------------------------
def test_lbfgs_reaches_the_regularised_optimum(features, tmp_path):
    x, y, d, c = features["x"], features["y"], features["d"], features["c"]
    l2 = 1e-3
    ref = scipy.optimize.minimize(objective_and_grad, np.zeros(d * c), args=(x, y, l2, (d, c)),
                                  jac=True, method="L-BFGS-B",
                                  options={"maxiter": 10_000, "gtol": 1e-12, "ftol": 1e-15})
    # the reference is a stationary point of the (strictly convex) objective
    assert np.abs(objective_and_grad(ref.x, x, y, l2, (d, c))[1]).max() < 1e-7

    stats = streamfit.accumulate([features["path"]])
    explicit = solve.finalize(stats, form="conditional", smoothing=0.01, dtype="float64")
    exs = features["examples"]
    refined = R.refine(explicit, lambda: iter(exs), tmp_path / "lbfgs.npy", method="lbfgs",
                       passes=80, l2=l2)
    log = refined.meta["refinement"]["log"]
    w = np.asarray(refined.dense, np.float64)
    best = min(e["objective"] for e in log)
    assert abs(best - ref.fun) < 1e-6
    assert abs(objective_and_grad(w.ravel(), x, y, l2, (d, c))[0] - ref.fun) < 1e-6
    # the first evaluation is at the explicit solution it started from
    w0 = centred(np.asarray(explicit.dense, np.float64))
    assert log[0]["train_loss"] == pytest.approx(mean_ce(w0, x, y), rel=1e-12)
    assert log[0]["objective"] == pytest.approx(
        objective_and_grad(w0.ravel(), x, y, l2, (d, c))[0], rel=1e-12)
    assert mean_ce(w, x, y) < mean_ce(w0, x, y) - 1e-3


# --- 4. SGD and Adam -----------------------------------------------------------------------
def oracle_minibatch(w0, x, y, *, method, lr, l2, batch_size, passes):
    """Mini-batch steps in order, each updating only the rows (features) present in its
    batch: g = X̃_Bᵀ(P − Y)/B + l2·W; sgd W −= lr·g; adam with bias correction, eps 1e-8.
    Returns the weights and the mean loss before each step per pass."""
    w = w0.copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    t = 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    losses = []
    for _ in range(passes):
        total = 0.0
        for lo in range(0, y.size, batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            z = xb @ w
            total += float(np.sum(logsumexp(z, axis=1) - z[np.arange(yb.size), yb]))
            rows = np.flatnonzero((xb != 0).any(axis=0))
            g = (xb.T @ (softmax(z, axis=1) - one_hot(yb, w.shape[1])) / yb.size + l2 * w)[rows]
            t += 1
            if method == "sgd":
                w[rows] -= lr * g
                continue
            m[rows] = b1 * m[rows] + (1 - b1) * g
            v[rows] = b2 * v[rows] + (1 - b2) * g * g
            w[rows] -= lr * (m[rows] / (1 - b1 ** t)) / (np.sqrt(v[rows] / (1 - b2 ** t)) + eps)
        losses.append(total / y.size)
    return w, losses


@pytest.mark.parametrize("method,lr", [("sgd", 5.0), ("adam", 0.05)])
@pytest.mark.parametrize("batch_size,passes", [(1000, 1), (16, 2)])
def test_minibatch_updates_match_hand_computation(uneven, tmp_path, method, lr, batch_size,
                                                  passes):
    x, y = uneven["x"], uneven["y"]
    exs = examples_list([uneven["single"]], "classify", 0, C, D)
    assert len(exs) == 1  # mini-batches are slices of one record batch, as in the oracle
    w0 = centred(np.random.default_rng(2).normal(0, 1.0, (D, C)))
    l2 = 0.01
    refined = R.refine(dense_model(w0), lambda: iter(exs), tmp_path / "mb.npy", method=method,
                       passes=passes, lr=lr, l2=l2, batch_size=batch_size)
    want, losses = oracle_minibatch(w0, x, y, method=method, lr=lr, l2=l2,
                                    batch_size=batch_size, passes=passes)
    got = np.asarray(refined.dense, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[D - 1], w0[D - 1].astype(np.float32))  # never present: untouched
    assert np.abs(got - w0).max() > 10 * lr * 1e-3  # and the others moved
    log = refined.meta["refinement"]["log"]
    assert [e["pass"] for e in log] == list(range(1, passes + 1))
    np.testing.assert_allclose([e["train_loss"] for e in log], losses, rtol=1e-12)


def test_adam_first_step_is_lr_times_sign(uneven, tmp_path):
    """Bias-corrected Adam's first step is lr·g/(|g| + eps): lr·sign(g) where |g| ≫ eps."""
    x, y = uneven["x"], uneven["y"]
    exs = examples_list([uneven["single"]], "classify", 0, C, D)
    w0 = centred(np.random.default_rng(6).normal(0, 1.0, (D, C)))
    lr = 0.01
    refined = R.refine(dense_model(w0), lambda: iter(exs), tmp_path / "a.npy", method="adam",
                       passes=1, lr=lr, batch_size=10_000)
    g = x.T @ (softmax(x @ w0, axis=1) - one_hot(y, C)) / y.size
    rows = np.flatnonzero((x != 0).any(axis=0))
    big = np.zeros_like(g, dtype=bool)
    big[rows] = np.abs(g[rows]) > 1e-4
    assert big.sum() > 0.8 * rows.size * C
    step = w0 - np.asarray(refined.dense, np.float64)
    np.testing.assert_allclose(step[big], lr * np.sign(g[big]), rtol=1e-3, atol=1e-6)


# --- 5. dense_parameters ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def explicit_models(tmp_path_factory):
    """Paper and calibrated explicit solutions (tau ≠ 1, a bias), dense and sparse, of a
    feature corpus and of a window-2 token corpus, with training examples of each."""
    root = tmp_path_factory.mktemp("explicit")
    rng = np.random.default_rng(9)
    y, x = random_feature_rows(rng, 150, 8, 5, density=0.5, zero_rows=2)
    x *= 3.0  # raw rows summing to far from 1: the paper form's K (tau) is not 1
    fpath = write_dense(root / "f.parquet", y[:100], x[:100])
    fheld = write_dense(root / "fh.parquet", y[100:], x[100:])
    chain = synthetic.markov_chain(5, concentration=0.5, seed=2)
    tpath = write_tokens(root / "t.parquet", markov_docs(chain, 20, 25, seed=3))
    theld = write_tokens(root / "th.parquet", markov_docs(chain, 10, 25, seed=4))
    out = []
    for name, path, held, window in (("features", fpath, fheld, None), ("tokens", tpath, theld, 2)):
        stats = streamfit.accumulate([path], **({"window": window} if window else {}))
        exs = examples_list([path], stats.task, stats.window, stats.n_classes, stats.n_features)
        hexs = examples_list([held], stats.task, stats.window, stats.n_classes, stats.n_features)
        for form in ("paper", "calibrated"):
            for layout in ("dense", "sparse"):
                m = solve.finalize(stats, form=form, smoothing=0.05, heldout=iter(hexs),
                                   layout=layout, dtype="float64")
                out.append((f"{name}-{form}-{layout}", stats, m, exs))
    return out


def test_dense_parameters_fold_tau_and_bias(explicit_models):
    for name, stats, model, exs in explicit_models:
        assert model.tau != pytest.approx(1.0, abs=1e-3), name
        assert model.bias is not None and np.ptp(model.bias) > 1e-3, name
        w = core.dense_parameters(model)
        assert w.shape == (model.n_features, model.n_classes) and w.dtype == np.float64
        np.testing.assert_allclose(w.mean(axis=1), 0.0, atol=1e-9)   # rows centred
        # the explicit solution by definition, from the counts: logits = tau·(x̃·W) + bias,
        # W = log(F + a) − log(f + a·C), bias = −beta·log(c_j + a·D)
        a, tau, beta = model.meta["smoothing"], model.meta["tau"], model.meta["beta"]
        f = stats.csr().toarray()
        w_def = np.log(f + a) - np.log(f.sum(axis=1, keepdims=True) + a * stats.n_classes)
        bias_def = -beta * np.log(f.sum(axis=0) + a * stats.n_features)
        for ex in exs:
            x = np.zeros((ex.n, model.n_features))
            rows = np.repeat(np.arange(ex.n), np.diff(ex.indptr))
            np.add.at(x, (rows, ex.indices), ex.values)
            # the fold needs x̃ to sum to 1: all-zero rows are left out here (see below)
            full = np.diff(ex.indptr) > 0
            p = softmax(x @ w, axis=1)[full]
            np.testing.assert_allclose(p, softmax(model.logits(ex), axis=1)[full], rtol=1e-9,
                                       atol=1e-14, err_msg=name)
            np.testing.assert_allclose(p, softmax(tau * (x @ w_def) + bias_def, axis=1)[full],
                                       rtol=1e-9, atol=1e-14, err_msg=name)


def test_refined_model_keeps_the_class_term_for_rows_without_features(explicit_models,
                                                                    tmp_path):
    """W alone gives x̃ = 0 uniform probabilities; the refined model is written with the
    starting model's bias unfolded, so an all-zero feature row keeps softmax(bias), and
    every other row gets softmax(x̃·W) of the refined W."""
    name, stats, model, exs = explicit_models[0]  # features, paper form, dense
    ex = exs[0]
    empty = np.flatnonzero(np.diff(ex.indptr) == 0)
    assert empty.size and model.bias is not None and np.ptp(model.bias) > 1e-3
    x = np.zeros((ex.n, model.n_features))
    rows = np.repeat(np.arange(ex.n), np.diff(ex.indptr))
    np.add.at(x, (rows, ex.indices), ex.values)
    w = core.dense_parameters(model)
    # what refining needs: W alone is the model wherever x̃ sums to 1 ...
    full = np.setdiff1d(np.arange(ex.n), empty)
    np.testing.assert_allclose(softmax(x @ w, axis=1)[full], softmax(model.logits(ex), axis=1)[full],
                               rtol=1e-9)
    # ... and the refined file keeps the class term where it does not
    refined = R.refine(model, lambda: iter(exs), tmp_path / "r.npy", method="gis", passes=1)
    assert refined.bias is not None
    np.testing.assert_allclose(softmax(refined.logits(ex), axis=1)[empty],
                               softmax(model.logits(ex), axis=1)[empty], rtol=1e-6)
    w1 = core.dense_parameters(refined)   # folds the bias back: W of the refinement
    np.testing.assert_allclose(softmax(refined.logits(ex), axis=1)[full],
                               softmax(x @ w1, axis=1)[full], rtol=1e-5, atol=1e-7)
    log = refined.meta["refinement"]["log"]
    assert core.full_pass(w1, exs, expected=False).mean_loss < log[0]["train_loss"]


# --- 6. the command --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    """Through the CLI: a window-2 token corpus with paper weights (tau 2, a bias) and a
    dense feature corpus with conditional weights, each with held-out data."""
    root = tmp_path_factory.mktemp("refine-cli")
    chain = synthetic.markov_chain(6, concentration=0.5, seed=7)
    tdocs = markov_docs(chain, 30, 30, seed=8)
    hdocs = markov_docs(chain, 12, 30, seed=9)
    tokens = {"train": write_tokens(root / "t.parquet", tdocs, row_group_size=10),
              "heldout": write_tokens(root / "th.parquet", hdocs),
              "weights": root / "tw.npy", "n_heldout": sum(map(len, hdocs))}
    ok("accumulate", tokens["train"], "--stats", root / "tstats", "--window", 2, "--quiet")
    ok("finalize", "--stats", root / "tstats", "--out", tokens["weights"], "--form", "paper",
       "--quiet")
    rng = np.random.default_rng(12)
    y, x = random_feature_rows(rng, 160, 7, 3, density=0.6, zero_rows=1)
    feats = {"train": write_dense(root / "f.parquet", y[:110], x[:110], row_group_size=40),
             "heldout": write_dense(root / "fh.parquet", y[110:], x[110:]),
             "weights": root / "fw.npy", "n_heldout": 50}
    ok("accumulate", feats["train"], "--stats", root / "fstats", "--quiet")
    ok("finalize", "--stats", root / "fstats", "--out", feats["weights"], "--form", "conditional",
       "--quiet")
    schema = json.loads((SCHEMAS / "weights.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return {"tokens": tokens, "features": feats, "validator": Draft202012Validator(schema)}


LR = {"sgd": ["--lr", "20"], "adam": ["--lr", "0.05"], "gis": [], "lbfgs": ["--l2", "1e-4"],
      "auto": [], "plbfgs": [],
      "newton": ["--l2", "1e-4"],
      "random-bases": ["--lr", "2", "--dims", "16"],
      "dldr": ["--lr", "20", "--phase-passes", "2", "--snapshot-every", "2", "--dims", "4"]}


@pytest.mark.parametrize("corpus", ["tokens", "features"])
@pytest.mark.parametrize("method", R.METHODS)
def test_cli_refine_then_evaluate_and_predict(cli_data, capsys, tmp_path, corpus, method):
    import pyarrow.parquet as pq

    data = cli_data[corpus]
    out = tmp_path / "refined.npy"
    passes = 3
    rc, stdout, err = cli(capsys, "refine", "--weights", data["weights"], data["train"],
                          "--method", method, "--passes", passes, "--out", out,
                          "--heldout", data["heldout"], "--json", "--quiet", *LR[method])
    assert rc == 0, err
    printed = json.loads(stdout)
    log = printed["log"]
    assert printed["method"] == method and Path(printed["out"]) == out.with_suffix(".model.json")
    assert len(log) == passes
    assert [e["pass"] for e in log] == list(range(1, len(log) + 1))
    for e in log:
        assert np.isfinite(e["train_loss"]) and np.isfinite(e["heldout_loss"])
        assert 0.0 <= e["heldout_accuracy"] <= 1.0
    meta = json.loads(out.with_suffix(".model.json").read_text())
    assert [e.message for e in cli_data["validator"].iter_errors(meta)] == []
    assert meta["form"] == "refined" and meta["layout"] == "dense"
    assert (meta["tau"], meta["beta"], meta["smoothing"]) == (1.0, 0.0, None)
    assert meta["refinement"]["method"] == method and meta["refinement"]["log"] == log
    assert meta["refinement"]["from"] == ("paper" if corpus == "tokens" else "conditional")
    # the paper form has a class term, which the refined file keeps for rows without features
    has_bias = load_model(data["weights"]).bias is not None
    assert has_bias == (corpus == "tokens")
    assert set(meta["arrays"]) == ({"W", "bias"} if has_bias else {"W"})
    assert files_named(tmp_path, "refined") == (["refined.bias.npy"] if has_bias else []) + \
        ["refined.model.json", "refined.npy"]  # no checkpoint

    rc, stdout, err = cli(capsys, "evaluate", "--weights", out, data["heldout"], "--json",
                          "--quiet")
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["n"] == data["n_heldout"]
    # with held-out data the written model is the point of lowest held-out loss, the start
    # included: never worse on it than the start
    start = printed["start"]
    final = min([start, *log], key=lambda e: e["heldout_loss"])
    assert printed["kept_pass"] == (0 if final is start else final["pass"])
    assert result["cross_entropy"] == pytest.approx(final["heldout_loss"], abs=1e-5)
    assert result["cross_entropy"] <= start["heldout_loss"] + 1e-6
    assert abs(result["accuracy"] - final["heldout_accuracy"]) <= 2 / result["n"]
    assert ("chosen" in printed) == (method == "auto")
    # the refined model improved on the weights it started from (on its training data)
    rc, stdout, err = cli(capsys, "evaluate", "--weights", data["weights"], data["train"],
                          "--json", "--quiet")
    assert log[-1]["train_loss"] < json.loads(stdout)["cross_entropy"]

    pred = tmp_path / "pred.parquet"
    rc, stdout, err = cli(capsys, "predict", "--weights", out, data["heldout"], "--out", pred,
                          "--top-k", 2, "--quiet")
    assert rc == 0, err
    table = pq.read_table(pred)
    assert table.num_rows == data["n_heldout"]
    probs = np.array(table.column("top_probabilities").to_pylist())
    assert probs.shape == (data["n_heldout"], 2) and np.all(probs[:, 0] >= probs[:, 1])


# --- 7. resume -------------------------------------------------------------------------------
def checkpoint_files(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("")
    return Path(f"{stem}.ckpt.npy"), Path(f"{stem}.ckpt.json")


def straight_and_killed(cli_data, tmp_path, method, extra, fault):
    """A 4-pass refine of the token corpus run through, and the same SIGKILLed at `fault`:
    its arguments (without --out), the straight output and the killed run's output path."""
    data = cli_data["tokens"]
    args = ["refine", "--weights", data["weights"], data["train"], "--method", method,
            "--passes", 4, "--quiet", *extra]
    straight = tmp_path / "straight.npy"
    ok(*args, "--out", straight)
    out = tmp_path / "refined.npy"
    killed = run_cli([*args, "--out", out], fault=fault)
    assert killed.returncode == -9, killed.stderr
    return args, straight, out


@pytest.mark.parametrize("method,extra", [("gis", []), ("adam", ["--lr", "0.05",
                                                                 "--batch-size", "128"]),
                                          ("newton", ["--l2", "1e-4"])])
def test_killed_refine_resumes_to_the_uninterrupted_result(cli_data, tmp_path, method, extra):
    # SIGKILL right after pass 2's checkpoint
    args, straight, out = straight_and_killed(cli_data, tmp_path, method, extra,
                                              "after_checkpoint:2")
    npy, meta = checkpoint_files(out)
    assert npy.exists() and meta.exists() and not out.exists()
    state = json.loads(meta.read_text())
    assert state["pass"] == 2 and len(state["log"]) == 2
    if method == "adam":
        with np.load(npy) as z:
            assert {"w", "m", "v"} <= set(z.files) and np.abs(z["m"]).max() > 0
        assert state["t"] > 2  # several mini-batch steps per pass
    if method == "newton":   # the (d·C)² Hessian is summed again on resume, not saved
        w = weights_of(straight)
        with np.load(npy) as z:
            assert "hessian_at" in z.files and max(
                z[k].size for k in z.files if k != "__state__") == w.size

    # What a kill inside a checkpoint's atomic write leaves: its temporary files (torture
    # runs found them left over after the resumed run had finished)
    for path in (npy, meta):
        path.with_name(f".{path.name}.tmp-99999-0badf00d").write_bytes(b"half")
    ok(*args, "--out", out)
    np.testing.assert_allclose(weights_of(out), weights_of(straight), rtol=0, atol=1e-6)
    log = load_model(out).meta["refinement"]["log"]
    assert [e["pass"] for e in log] == [1, 2, 3, 4]
    assert log[:2] == state["log"]  # resumed: the first two passes were not redone
    assert not npy.exists() and not meta.exists()
    assert files_named(tmp_path, "refined") == ["refined.bias.npy", "refined.model.json", "refined.npy"]


@pytest.mark.parametrize("method,extra", [("gis", []), ("newton", ["--l2", "1e-4"])])
def test_a_kill_between_a_checkpoints_two_files_resumes_to_the_same_result(cli_data, tmp_path,
                                                                          method, extra):
    """Killed after pass 2's arrays were written but before its state file: the state kept
    inside the arrays' file is pass 2's, so no pass is run twice (with the state file alone,
    the resume paired pass 2's weights with pass 1's state: tools/torture.py found it)."""
    args, straight, out = straight_and_killed(cli_data, tmp_path, method, extra,
                                              "mid_checkpoint:2")
    assert json.loads(checkpoint_files(out)[1].read_text())["pass"] == 1  # the stale state file
    ok(*args, "--out", out)
    np.testing.assert_allclose(weights_of(out), weights_of(straight), rtol=0, atol=1e-6)
    assert [e["pass"] for e in load_model(out).meta["refinement"]["log"]] == [1, 2, 3, 4]


def test_a_damaged_checkpoint_is_a_one_line_error_and_restart_starts_over(cli_data, tmp_path):
    data = cli_data["tokens"]
    args = ["refine", "--weights", data["weights"], data["train"], "--method", "gis",
            "--passes", 2, "--quiet", "--out", tmp_path / "r.npy"]
    assert run_cli(args, fault="after_checkpoint:1").returncode == -9
    npy = checkpoint_files(tmp_path / "r.npy")[0]
    with open(npy, "r+b") as fh:
        fh.truncate(npy.stat().st_size // 2)
    again = run_cli(args)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and len(lines) == 1, again.stderr
    assert "damaged checkpoint" in lines[0] and "--restart" in lines[0]
    ok(*args, "--restart")
    assert not npy.exists()


def test_restart_ignores_a_checkpoint_and_other_settings_are_refused(cli_data, tmp_path, capsys):
    data = cli_data["features"]
    args = ["refine", "--weights", data["weights"], data["train"], "--method", "gis",
            "--quiet"]
    out = tmp_path / "refined.npy"
    assert run_cli([*args, "--passes", 4, "--out", out], fault="after_checkpoint:2").returncode != 0
    npy, meta = checkpoint_files(out)
    assert npy.exists() and meta.exists()

    # other settings: refused, clearly, and nothing is written or removed
    rc, stdout, err = cli(capsys, *args, "--passes", 3, "--out", out)
    assert rc == 1
    assert "checkpoint of another refinement" in err and str(meta) in err
    assert not out.exists() and not out.with_suffix(".model.json").exists()
    assert npy.exists() and meta.exists()

    # a checkpoint of the same settings whose weights were replaced: resuming uses them,
    # --restart ignores them
    with np.load(npy) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["w"] = np.zeros_like(arrays["w"])
    with open(npy, "wb") as fh:
        np.savez(fh, **arrays)
    saved = (npy.read_bytes(), meta.read_bytes())
    straight = tmp_path / "straight.npy"
    ok(*args, "--passes", 4, "--out", straight)
    ok(*args, "--passes", 4, "--out", out, "--restart")
    np.testing.assert_allclose(weights_of(out), weights_of(straight), rtol=0, atol=1e-6)
    assert not npy.exists() and not meta.exists()

    resumed = tmp_path / "resumed.npy"
    for content, dst in zip(saved, checkpoint_files(resumed)):
        dst.write_bytes(content)
    ok(*args, "--passes", 4, "--out", resumed)
    assert np.abs(weights_of(resumed) - weights_of(straight)).max() > 1e-3


# --- 8. bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("option", [["--l2", "nan"], ["--l2", "-1"], ["--lr", "0"], ["--lr", "inf"]])
def test_refine_bad_numbers_are_refused_and_write_nothing(cli_data, tmp_path, capsys, option):
    data = cli_data["features"]
    rc, stdout, err = cli(capsys, "refine", "--weights", data["weights"], data["train"],
                          "--method", "newton", "--passes", 2, "--out", tmp_path / "refined.npy",
                          "--quiet", *option)
    assert rc == 1 and ("l2 must be" in err or "learning rate must be" in err)
    assert files_named(tmp_path, "refined") == []


@pytest.mark.parametrize("method", ["lbfgs", "gis", "adam"])
def test_refine_refuses_up_front_what_memory_cannot_hold(cli_data, tmp_path, capsys,
                                                        monkeypatch, method):
    """The need is checked before any weights are allocated: the figure, and what to do."""
    per = 14 * 6 * 8  # window 2 over 6 tokens: 2·(6 + 1) features × 6 classes, float64
    monkeypatch.setattr(R, "available_memory", lambda: 5 * per)
    data = cli_data["tokens"]
    rc, stdout, err = cli(capsys, "refine", "--weights", data["weights"], data["train"],
                          "--method", method, "--passes", 2, "--out", tmp_path / "refined.npy",
                          "--quiet")
    if R.DENSE_MATRICES[method] <= 5:
        assert rc == 0, err
        return
    assert rc == 1 and "GiB" in err and "--order N" in err
    assert "--method sgd" in err  # the cheaper method that fits
    assert files_named(tmp_path, "refined") == []


@pytest.mark.parametrize("method", R.METHODS)
def test_refine_on_files_without_rows_is_refused_and_writes_nothing(cli_data, tmp_path, capsys,
                                                                   method):
    empty = write_sparse(tmp_path / "empty.parquet", np.zeros(0, dtype=np.int64), [], [])
    out = tmp_path / "refined.npy"
    rc, stdout, err = cli(capsys, "refine", "--weights", cli_data["features"]["weights"], empty,
                          "--method", method, "--passes", 2, "--out", out, "--quiet")
    assert rc == 1 and "no training examples" in err
    assert files_named(tmp_path, "refined") == []


def test_refine_without_labels_is_refused(cli_data, tmp_path, capsys):
    rng = np.random.default_rng(0)
    _, x = random_feature_rows(rng, 20, 7, 3)
    idx = [np.flatnonzero(r).tolist() for r in x]
    val = [r[np.flatnonzero(r)].tolist() for r in x]
    unlabelled = write_sparse(tmp_path / "nolabel.parquet", None, idx, val, with_label=False)
    out = tmp_path / "refined.npy"
    for method in ("gis", "adam"):
        rc, stdout, err = cli(capsys, "refine", "--weights", cli_data["features"]["weights"],
                              unlabelled, "--method", method, "--out", out, "--quiet")
        assert rc == 1
        assert "error" in err and "'label'" in err and "nolabel.parquet" in err
        assert files_named(tmp_path, "refined") == []

    # through the Python API, examples without targets (read for prediction)
    model = load_model(cli_data["features"]["weights"])
    for method in R.METHODS:
        with pytest.raises(StreamfitError, match="labels missing"):
            R.refine(model, lambda: iter_examples([unlabelled], task="classify", window=0,
                                                  n_classes=3, n_features=7, need_label=False),
                     out, method=method, passes=2)
        assert files_named(tmp_path, "refined") == []


@pytest.mark.parametrize("passes", ["0", "-2"])
def test_refine_refuses_fewer_than_one_pass(cli_data, tmp_path, capsys, passes):
    out = tmp_path / "refined.npy"
    rc, stdout, err = cli(capsys, "refine", "--weights", cli_data["features"]["weights"],
                          cli_data["features"]["train"], "--method", "gis", "--passes", passes,
                          "--out", out, "--quiet")
    assert rc == 1 and "passes must be at least 1" in err
    assert files_named(tmp_path, "refined") == []
