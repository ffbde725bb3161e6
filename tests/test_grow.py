"""Growing (`streamfit.grow`, `streamfit grow`) and 2-layer models.

Oracles are plain numpy from the raw corpora: X̃ row by row (features divided by their sum),
h = relu(X̃A + a₀), the loss and g = softmax − onehot by definition; the closed-form step
against least-squares solves (numpy.linalg.lstsq) and finite differences of that loss; the
single-layer optimum by scipy's L-BFGS on an independent objective; stored models read back
with plain numpy.load.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.optimize
from scipy.special import logsumexp, softmax

from streamfit.train import grow as G
from streamfit.cli import main
from streamfit.errors import StreamfitError
from streamfit.model.evaluate import iter_examples
from streamfit.data.featurize import Examples
from streamfit.model.weights import load_model
from streamfit.train.refine import refine

from conftest import cli, dense_examples, markov_docs, random_feature_rows, write_dense, write_sparse, write_tokens

jsonschema = pytest.importorskip("jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402

SCHEMAS = Path(__file__).resolve().parents[1] / "data_schemas"
from test_refine import feature_matrix  # noqa: E402  (X̃ of a feature corpus)


# --- oracles -------------------------------------------------------------------------------
def with_one(m: np.ndarray) -> np.ndarray:
    return np.hstack([m, np.ones((m.shape[0], 1))])


def forward(a, a0, w, x):
    """[h; 1] and the logits of the 2-layer model by definition; w includes the bias row."""
    b = with_one(np.maximum(x @ a + a0, 0.0))
    return b, b @ w


def mean_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(y.size), y]))


def layers_loss(layers: G.Layers, x, y) -> float:
    return mean_loss(forward(layers.A, layers.a0, layers.W, x)[1], y)


def random_layers(rng, d: int, k: int, c: int) -> G.Layers:
    return G.Layers(rng.normal(0, 3.0, (d, k)), rng.normal(0, 0.3, k), rng.normal(0, 1.0, (k + 1, c)))


examples_of = dense_examples   # X̃ (dense, rows already summing to 1) as Examples


def grow_in_memory(x, y, out, **kw):
    c = int(y.max()) + 1
    batches = examples_of(x, y, 64)
    kw.setdefault("tune_passes", 0)   # growth alone; the tuning passes are tested apart
    return G.grow(lambda: iter(batches), out, task="classify", window=0, n_features=x.shape[1],
                  n_classes=c, **kw)


@pytest.fixture(scope="module")
def corpus():
    """A small dense feature corpus (d = 7, C = 4) with an all-zero row."""
    rng = np.random.default_rng(3)
    y, x_raw = random_feature_rows(rng, 150, 7, 4, density=0.6, zero_rows=1)
    return {"x": feature_matrix(x_raw), "y": y, "x_raw": x_raw}


# --- 1. the statistics pass -----------------------------------------------------------------
@pytest.mark.parametrize("block_rows", [None, 7])
def test_growth_pass_matches_numpy(corpus, monkeypatch, block_rows):
    if block_rows:
        monkeypatch.setattr(G, "BLOCK_ROWS", block_rows)
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(0), 7, 5, 4)
    got = G.growth_pass(layers, examples_of(x, y, 40))
    b, z = forward(layers.A, layers.a0, layers.W, x)
    g = softmax(z, axis=1) - np.eye(4)[y]
    x1 = with_one(x)
    assert got.n == y.size
    assert got.loss == pytest.approx(mean_loss(z, y) * y.size, rel=1e-12)
    assert got.correct == int(np.sum(z.argmax(axis=1) == y))
    for name, want in (("S", b.T @ b), ("M", b.T @ g), ("S2", x1.T @ x1), ("M2", x1.T @ g),
                       ("P", x1.T @ b)):
        np.testing.assert_allclose(getattr(got, name), want, rtol=1e-10, atol=1e-12, err_msg=name)
    assert got.g2 == pytest.approx(float(np.sum(g * g)), rel=1e-12)
    # the hidden layer's gradient: g₁ = ∂ℓ/∂(x̃A + a₀) by the chain rule through the relu
    g1 = (g @ layers.W[:-1].T) * (x @ layers.A + layers.a0 > 0)
    np.testing.assert_allclose(got.M1, x1.T @ g1, rtol=1e-10, atol=1e-12)
    lite = G.growth_pass(layers, examples_of(x, y, 40), full=False)
    assert lite.S is None and lite.S2 is None and lite.P is None
    np.testing.assert_allclose(lite.M, b.T @ g, rtol=1e-10, atol=1e-12)


def test_shards_of_a_pass_add_up_to_the_whole_pass(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(1), 7, 3, 4)
    batches = examples_of(x, y, 20)
    whole = G.growth_pass(layers, batches)
    total = G.growth_pass(layers, batches[0::3]) + G.growth_pass(layers, batches[1::3]) + \
        G.growth_pass(layers, batches[2::3])
    assert (total.n, total.correct) == (whole.n, whole.correct)
    assert total.loss == pytest.approx(whole.loss, rel=1e-12)
    assert total.g2 == pytest.approx(whole.g2, rel=1e-12)
    for name in ("S", "M", "S2", "M2", "P", "M1"):
        np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-12,
                                   atol=1e-12, err_msg=name)


# --- 2. the closed-form step -------------------------------------------------------------------
def test_best_update_and_new_units_are_least_squares_solutions(corpus):
    """Δ regresses −g on [h; 1]; with every direction kept, Σ αωᵀ regresses what Δ leaves
    (v_proj = −g − Δᵀb) on [x̃; 1]; the gains are the explained mean squares."""
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(2), 7, 3, 4)
    step = G.growth_step(G.growth_pass(layers, examples_of(x, y, 50)), max_directions=10,
                         ridge=0.0)
    b, z = forward(layers.A, layers.a0, layers.W, x)
    g = softmax(z, axis=1) - np.eye(4)[y]
    delta = np.linalg.lstsq(b, -g, rcond=None)[0]
    np.testing.assert_allclose(step.delta, delta, rtol=1e-7, atol=1e-9)
    assert step.linear_gain == pytest.approx(np.mean(np.sum((b @ delta) ** 2, axis=1)), rel=1e-8)
    assert step.bottleneck == pytest.approx(np.mean(np.sum((-g - b @ delta) ** 2, axis=1)),
                                            rel=1e-7)
    x1 = with_one(x)
    v_proj = -g - b @ delta
    beta = np.linalg.lstsq(x1, v_proj, rcond=None)[0]
    # x̃ sums to 1 (but for the all-zero row), so x1 has full column rank: beta is unique
    assert np.linalg.matrix_rank(x1) == 8
    np.testing.assert_allclose(step.alpha @ step.omega, beta, rtol=1e-6, atol=1e-8)
    assert step.unit_gain == pytest.approx(np.mean(np.sum((x1 @ beta) ** 2, axis=1)), rel=1e-7)
    assert step.alpha.shape[1] == 3  # rank of N ≤ C − 1: g sums to 0 over the classes
    np.testing.assert_allclose(step.rms, np.sqrt(np.mean((x1 @ step.alpha) ** 2, axis=0)),
                               rtol=1e-8)


def test_the_largest_directions_are_kept_first(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(4), 7, 2, 4)
    sums = G.growth_pass(layers, examples_of(x, y))
    full, one = G.growth_step(sums, 10, ridge=0.0), G.growth_step(sums, 1, ridge=0.0)
    assert one.alpha.shape[1] == 1 and np.all(np.diff(full.lambdas) <= 0)
    assert one.unit_gain == pytest.approx(full.lambdas[0] ** 2, rel=1e-10)
    np.testing.assert_allclose(one.alpha @ one.omega, full.alpha[:, :1] @ full.omega[:1],
                               rtol=1e-8, atol=1e-10)


def test_first_order_gains_match_finite_differences(corpus):
    x, y = corpus["x"], corpus["y"]
    # along Δ, from any weights: L(W + tΔ) = L(W) − t·tr(Mᵀ S⁺ M) + O(t²)
    layers = random_layers(np.random.default_rng(5), 7, 3, 4)
    step = G.growth_step(G.growth_pass(layers, examples_of(x, y)), 10, ridge=0.0)
    t = 1e-6
    moved = G.Layers(layers.A, layers.a0, layers.W + t * step.delta)
    slope = (layers_loss(moved, x, y) - layers_loss(layers, x, y)) / t
    assert slope == pytest.approx(-step.linear_gain, rel=1e-4)
    # from no units with the bias at the class log-frequencies (M = 0, so Δ = 0): adding the
    # unit pairs at amplitude γ changes the loss by −γ²·Σλ² to first order
    prior = np.log(np.bincount(y, minlength=4) / y.size)
    empty = G.Layers(np.zeros((7, 0)), np.zeros(0), prior[None, :])
    step = G.growth_step(G.growth_pass(empty, examples_of(x, y)), 10, ridge=0.0)
    assert np.abs(step.delta).max() < 1e-12 and step.linear_gain < 1e-20
    for t in (1e-5, 1e-6):
        slope = (layers_loss(G.grown(empty, step, t), x, y) - layers_loss(empty, x, y)) / t
        assert slope == pytest.approx(-step.unit_gain, rel=1e-3)


def test_the_hidden_layer_move_regresses_its_gradient_and_its_gain_is_the_slope(corpus):
    """Δ_A regresses −g₁ on [x̃; 1] (ridge 0); with a ridge it is still a descent direction
    whose first-order gain tr(M₁ᵀ(S₂ + ρI)⁻¹M₁) is the loss's slope along it."""
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(11), 7, 5, 4)
    sums = G.growth_pass(layers, examples_of(x, y, 40))
    step = G.growth_step(sums, 0, ridge=0.0)
    b, z = forward(layers.A, layers.a0, layers.W, x)
    g1 = ((softmax(z, axis=1) - np.eye(4)[y]) @ layers.W[:-1].T) * (b[:, :-1] > 0)
    x1 = with_one(x)
    want = np.linalg.lstsq(x1, -g1, rcond=None)[0]
    np.testing.assert_allclose(step.delta_a, want, rtol=1e-6, atol=1e-8)
    assert step.hidden_gain == pytest.approx(np.mean(np.sum((x1 @ want) ** 2, axis=1)), rel=1e-7)
    assert step.alpha.shape[1] == 0
    for ridge in (0.0, 0.5):
        step = G.growth_step(sums, 0, ridge=ridge)
        t = 1e-6
        slope = (layers_loss(G.moved(layers, step, t), x, y) - layers_loss(layers, x, y)) / t
        assert step.hidden_gain > 0
        assert slope == pytest.approx(-step.hidden_gain, rel=1e-4)
    np.testing.assert_array_equal(G.moved(layers, step, 0.3).W, layers.W)


def test_grown_adds_unit_pairs_that_change_the_logits_exactly_as_planned(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(6), 7, 2, 4)
    step = G.growth_step(G.growth_pass(layers, examples_of(x, y)), 2, ridge=0.5)
    t = 0.37
    new = G.grown(layers, step, t)
    assert new.width == layers.width + 4
    np.testing.assert_array_equal(new.A[:, :2], layers.A)
    x1 = with_one(x)
    b = forward(layers.A, layers.a0, layers.W, x)[0]
    want = b @ (layers.W + t * step.delta) + t * (x1 @ step.alpha) @ step.omega
    np.testing.assert_allclose(forward(new.A, new.a0, new.W, x)[1], want, rtol=1e-9, atol=1e-9)
    # each new unit's pre-activation has mean square 1
    pre = x @ new.A[:, 2:] + new.a0[2:]
    np.testing.assert_allclose(np.mean(pre ** 2, axis=0), 1.0, rtol=1e-8)


def test_line_search_evaluates_every_candidate_in_one_pass(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(7), 7, 2, 4)
    step = G.growth_step(G.growth_pass(layers, examples_of(x, y)), 3, ridge=0.1)
    grid = (0.01, 0.1, 1.0, 10.0)
    calls = []

    def batches():
        calls.append(1)
        yield from examples_of(x, y, 30)

    got, hidden = G.line_search(layers, step, batches(), grid, hidden=True, hidden_grid=grid[1:])
    assert len(calls) == 1 and list(got) == [0.0, *grid] and list(hidden) == [0.0, *grid[1:]]
    assert got[0.0] == pytest.approx(layers_loss(layers, x, y), rel=1e-12)
    assert hidden[0.0] == pytest.approx(layers_loss(layers, x, y), rel=1e-12)
    for t in grid:
        assert got[t] == pytest.approx(layers_loss(G.grown(layers, step, t), x, y), rel=1e-9)
    for s in grid[1:]:
        assert hidden[s] == pytest.approx(layers_loss(G.moved(layers, step, s), x, y), rel=1e-9)
    assert G.line_search(layers, step, examples_of(x, y), grid)[1] == {}


def test_the_output_layer_is_solved_to_the_regularised_optimum(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(8), 7, 4, 4)
    l2 = 1e-3
    b = forward(layers.A, layers.a0, layers.W, x)[0]
    mask = np.ones_like(layers.W)
    mask[-1] = 0

    def objective(flat):
        w = flat.reshape(layers.W.shape)
        z = b @ w
        f = mean_loss(z, y) + 0.5 * l2 * float(np.sum(mask * w * w))
        return f, (b.T @ (softmax(z, axis=1) - np.eye(4)[y]) / y.size + l2 * mask * w).ravel()

    ref = scipy.optimize.minimize(objective, np.zeros(layers.W.size), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
    batches = examples_of(x, y, 50)
    solved, sums, used = G.solve_output(
        layers, lambda lay, full, inputs: G.growth_pass(lay, batches, full=full, inputs=inputs), 200, l2)
    assert used <= 201
    assert objective(solved.W.ravel())[0] == pytest.approx(ref.fun, abs=1e-8)
    assert sums.mean_loss == pytest.approx(mean_loss(b @ solved.W, y), rel=1e-12)
    np.testing.assert_array_equal(solved.A, layers.A)


# --- 3. growing ----------------------------------------------------------------------------------
def xor_like(rng, n: int):
    """Two uniform coordinates u, v as non-negative features [u, 1−u, v, 1−v]; the class is
    whether exactly one of them exceeds 0.3: no linear softmax can draw that boundary."""
    u, v = rng.random(n), rng.random(n)
    return feature_matrix(np.stack([u, 1 - u, v, 1 - v], axis=1)), \
        ((u > 0.3) != (v > 0.3)).astype(np.int64)


def single_layer_optimum(x, y, c) -> np.ndarray:
    """softmax(x̃ W) fitted by scipy to (near) its unregularised optimum."""
    d = x.shape[1]

    def objective(flat):
        w = flat.reshape(d, c)
        z = x @ w
        return mean_loss(z, y), (x.T @ (softmax(z, axis=1) - np.eye(c)[y]) / y.size).ravel()

    return scipy.optimize.minimize(objective, np.zeros(d * c), jac=True, method="L-BFGS-B",
                                   options={"maxiter": 2000}).x.reshape(d, c)


def test_growth_beats_the_single_layer_on_an_xor_like_problem(tmp_path):
    rng = np.random.default_rng(0)
    x, y = xor_like(rng, 600)
    xv, yv = xor_like(rng, 400)
    w = single_layer_optimum(x, y, 2)
    linear = float(np.mean((xv @ w).argmax(axis=1) == yv))
    assert linear < 0.72
    held = examples_of(xv, yv, 100)
    model = grow_in_memory(x, y, tmp_path / "xor.npy", heldout=lambda: iter(held),
                           units_per_step=4, max_width=16, l2=1e-4, ridge=0.0)
    z = model.logits(examples_of(xv, yv)[0])
    grown_acc = float(np.mean(z.argmax(axis=1) == yv))
    assert grown_acc > linear + 0.1, (grown_acc, linear)
    log = model.meta["growth"]["log"]
    assert log[-1]["heldout_accuracy"] == pytest.approx(grown_acc)
    assert log[-1]["heldout_loss"] < mean_loss(xv @ w, yv)


def test_grow_steps_widths_log_and_stopping(corpus, tmp_path):
    x, y = corpus["x"], corpus["y"]
    steps = []
    model = grow_in_memory(x, y, tmp_path / "g.npy", units_per_step=4, max_width=10,
                           min_gain=0.0, on_step=steps.append)
    log = model.meta["growth"]["log"]
    assert steps == log
    assert [e["width"] for e in log] == [0, 4, 8, 10]  # the last step is cut to fit
    assert model.hidden[0].shape == (7, 10) and model.meta["hidden"]["units"] == 10
    assert model.meta["growth"]["stopped"] == "maximum width 10"
    passes = [e["passes"] for e in log]
    assert all(b > a for a, b in zip(passes, passes[1:]))
    assert log[0]["train_loss"] == pytest.approx(
        mean_loss(np.log(np.bincount(y, minlength=4) / y.size)[None, :].repeat(y.size, 0), y),
        abs=1e-6)  # width 0: the class log-frequencies
    assert all(b["train_loss"] < a["train_loss"] for a, b in zip(log, log[1:]))
    # a gain threshold no step can reach: nothing is added
    stopped = grow_in_memory(x, y, tmp_path / "s.npy", min_gain=1e9)
    assert [e["width"] for e in stopped.meta["growth"]["log"]] == [0]
    assert stopped.meta["growth"]["stopped"].startswith("first-order gain")
    with pytest.raises(ValueError, match="at least 2"):
        grow_in_memory(x, y, tmp_path / "bad.npy", units_per_step=1)


def test_growth_continues_from_a_grown_model(corpus, tmp_path):
    x, y = corpus["x"], corpus["y"]
    first = grow_in_memory(x, y, tmp_path / "a.npy", units_per_step=4, max_width=4, min_gain=0)
    more = grow_in_memory(x, y, tmp_path / "b.npy", units_per_step=4, max_width=8, min_gain=0,
                          start=first, hidden_moves=0)
    np.testing.assert_array_equal(np.asarray(more.hidden[0])[:, :4], np.asarray(first.hidden[0]))
    log = more.meta["growth"]["log"]
    assert [e["width"] for e in log] == [0, 4, 8]
    assert log[:2] == first.meta["growth"]["log"]
    # with hidden moves the existing units move too, by the logged steps
    moving = grow_in_memory(x, y, tmp_path / "c.npy", units_per_step=4, max_width=8, min_gain=0,
                            start=first, hidden_moves=3)
    entry = moving.meta["growth"]["log"][-1]
    assert entry["hidden_gain"] > 0 and 1 <= len(entry["hidden_steps"]) <= 3
    assert np.abs(np.asarray(moving.hidden[0])[:, :4] - np.asarray(first.hidden[0])).max() > 0
    assert entry["train_loss"] < log[-1]["train_loss"]


def test_a_supplied_pass_function_that_sums_shards_gives_the_same_model(corpus, tmp_path):
    x, y = corpus["x"], corpus["y"]
    batches = examples_of(x, y, 16)
    calls = []

    def sharded(layers, full, inputs):
        calls.append(full)
        parts = [G.growth_pass(layers, batches[i::4], full=full, inputs=inputs) for i in range(4)]
        return parts[0] + parts[1] + parts[2] + parts[3]

    kw = dict(task="classify", window=0, n_features=7, n_classes=4, units_per_step=4,
              max_width=8, min_gain=0.0, heldout=lambda: iter(batches[:3]), tune_passes=0)
    plain = G.grow(lambda: iter(batches), tmp_path / "p.npy", **kw)
    shard = G.grow(lambda: iter(()), tmp_path / "s.npy", pass_fn=sharded, **kw)
    assert calls.count(True) >= 2 and calls.count(False) > 2
    for a, b in zip((*plain.hidden, plain.dense, plain.bias), (*shard.hidden, shard.dense, shard.bias)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_growing_refuses_large_inputs_and_missing_labels(tmp_path, capsys):
    with pytest.raises(StreamfitError, match="above the limit of 4,096"):
        G.grow(lambda: iter(()), tmp_path / "x.npy", task="lm", window=2, n_features=2 * 50_001,
               n_classes=50_000)
    docs = [[int(t) for t in np.random.default_rng(0).integers(0, 5000, 30)]]
    path = write_tokens(tmp_path / "big.parquet", docs)
    rc = main(["grow", str(path), "--out", str(tmp_path / "g.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "above the limit" in err and "smaller vocabulary or window" in err
    assert not list(tmp_path.glob("g*"))
    unlabelled = [Examples(np.array([0, 1]), np.array([0]), np.array([1.0]), np.array([-1]))]
    with pytest.raises(StreamfitError, match="labels missing"):
        G.grow(lambda: iter(unlabelled), tmp_path / "u.npy", task="classify", window=0,
               n_features=3, n_classes=2)


# --- 4. 2-layer model files --------------------------------------------------------------------
def test_a_written_model_predicts_like_the_layers_in_memory(corpus, tmp_path):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(9), 7, 6, 4)
    header = G.model_header("classify", 0, 7, 4, layers, {})
    model = load_model(G.write_layers(tmp_path / "m.npy", layers, header), check=True)
    assert model.layers == 2 and model.layout == "dense"
    stored = {k: np.load(tmp_path / f"m{s}.npy") for k, s in
              (("A", ".A"), ("a0", ".a0"), ("W", ""), ("bias", ".bias"))}
    assert stored["A"].shape == (7, 6) and stored["W"].shape == (6, 4)
    assert stored["A"].dtype == np.float32 and stored["a0"].dtype == np.float64
    w1 = np.vstack([stored["W"], stored["bias"][None, :]]).astype(np.float64)
    _, want = forward(stored["A"].astype(np.float64), stored["a0"], w1, x)
    _, exact = forward(layers.A, layers.a0, layers.W, x)
    np.testing.assert_allclose(want, exact, rtol=1e-5, atol=1e-5)  # float32 storage
    ex = examples_of(x, y)[0]
    np.testing.assert_allclose(model.logits(ex), want, rtol=1e-10, atol=1e-10)
    nll, top, top_logp = model.score(ex, top_k=2)
    lse = logsumexp(want, axis=1)
    np.testing.assert_allclose(nll, lse - want[np.arange(y.size), y], rtol=1e-9, atol=1e-12)
    order = np.argsort(-want, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(top, order)
    np.testing.assert_allclose(top_logp, np.take_along_axis(want, order, 1) - lse[:, None],
                               rtol=1e-9, atol=1e-12)
    # a stem with dots names its own files
    dotted = load_model(G.write_layers(tmp_path / "m-0.001.npy", layers, header))
    assert sorted(p.name for p in tmp_path.glob("m-0.001*")) == [
        "m-0.001.A.npy", "m-0.001.a0.npy", "m-0.001.bias.npy", "m-0.001.model.json", "m-0.001.npy"]
    np.testing.assert_array_equal(dotted.logits(ex), model.logits(ex))
    # an Arrow batch goes through the model's own featurizing
    path = write_dense(tmp_path / "f.parquet", y, corpus["x_raw"])
    np.testing.assert_allclose(model.predict_proba(pq.read_table(path)), softmax(want, axis=1),
                               rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grow-cli")
    rng = np.random.default_rng(21)
    y, x = random_feature_rows(rng, 200, 9, 3, density=0.6, zero_rows=1)
    idx = [np.flatnonzero(r).tolist() for r in x]
    val = [r[np.flatnonzero(r)].tolist() for r in x]
    schema = json.loads((SCHEMAS / "weights.schema.json").read_text())
    return {"train": write_sparse(root / "train.parquet", y[:140], idx[:140], val[:140],
                                  row_group_size=50),
            "valid": write_sparse(root / "valid.parquet", y[140:], idx[140:], val[140:]),
            "x_valid": feature_matrix(x[140:]), "y_valid": y[140:],
            "x_train": feature_matrix(x[:140]), "y_train": y[:140],
            "validator": Draft202012Validator(schema)}


def stored_forward(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of a 2-layer model file, read with numpy.load only."""
    meta = json.loads(path.with_suffix(".model.json").read_text())
    arr = {k: np.load(path.parent / v["file"]).astype(np.float64) for k, v in meta["arrays"].items()}
    return forward(arr["A"], arr["a0"], np.vstack([arr["W"], arr["bias"][None, :]]), x)[1]


def test_cli_grow_evaluate_predict_refine_info(cli_data, tmp_path, capsys):
    out = tmp_path / "grown.npy"
    rc, stdout, err = cli(capsys, "grow", cli_data["train"], "--validation", cli_data["valid"],
                          "--out", out, "--max-width", 12, "--units-per-step", 4, "--min-gain", 0,
                          "--hidden-moves", 2, "--tune-passes", 3, "--json", "--quiet")
    assert rc == 0, err
    printed = json.loads(stdout)
    meta = json.loads(out.with_suffix(".model.json").read_text())
    assert [e.message for e in cli_data["validator"].iter_errors(meta)] == []
    assert meta["form"] == "grown" and meta["layers"] == 2 and meta["n_features"] == 9
    assert printed["log"] == meta["growth"]["log"] and meta["growth"]["amplitude_on"] == "heldout"
    assert [e["width"] for e in printed["log"]] == [0, 4, 8, 12, 12, 12, 12]
    assert [e.get("tune") for e in printed["log"]] == [None] * 4 + [1, 2, 3]
    assert meta["growth"]["hidden_moves"] == 2 and "hidden_steps" not in printed["log"][1]
    assert all(1 <= len(e["hidden_steps"]) <= 2 for e in printed["log"][2:4])
    tuned = printed["log"][4:]   # the written model: the tuning pass of the best held-out accuracy
    best = max(tuned, key=lambda e: (e["heldout_accuracy"], -e["heldout_loss"]))
    assert meta["growth"]["kept_step"] == best["step"]
    assert set(meta["arrays"]) == {"A", "a0", "W", "bias"}

    xv, yv = cli_data["x_valid"], cli_data["y_valid"]
    z = stored_forward(out, xv)
    rc, stdout, err = cli(capsys, "evaluate", "--weights", out, cli_data["valid"], "--json", "--quiet")
    assert rc == 0, err
    result = json.loads(stdout)
    assert result["n"] == yv.size
    assert result["cross_entropy"] == pytest.approx(mean_loss(z, yv), rel=1e-9)
    assert result["accuracy"] == pytest.approx(np.mean(z.argmax(axis=1) == yv))
    assert result["cross_entropy"] == pytest.approx(best["heldout_loss"], rel=1e-5)

    pred = tmp_path / "pred.parquet"
    rc, stdout, err = cli(capsys, "predict", "--weights", out, cli_data["valid"], "--out", pred,
                          "--top-k", 2, "--quiet")
    assert rc == 0, err
    table = pq.read_table(pred)
    top = np.array(table.column("top_classes").to_pylist())
    np.testing.assert_array_equal(top[:, 0], z.argmax(axis=1))
    np.testing.assert_allclose(np.array(table.column("top_probabilities").to_pylist())[:, 0],
                               softmax(z, axis=1).max(axis=1), rtol=1e-6)

    rc, stdout, err = cli(capsys, "info", out, "--check")
    assert rc == 0 and "12 relu units" in stdout and "4 steps" in stdout and "checksums: ok" in stdout

    refined = tmp_path / "refined.npy"
    rc, stdout, err = cli(capsys, "refine", "--weights", out, cli_data["train"], "--method",
                          "lbfgs", "--passes", 5, "--out", refined, "--quiet")
    assert rc == 0, err
    rmeta = json.loads(refined.with_suffix(".model.json").read_text())
    assert [e.message for e in cli_data["validator"].iter_errors(rmeta)] == []
    assert rmeta["form"] == "refined" and rmeta["refinement"]["from"] == "grown"
    assert rmeta["growth"] == meta["growth"]
    assert rmeta["arrays"]["A"]["sha256"] == meta["arrays"]["A"]["sha256"]  # hidden layer frozen
    assert rmeta["arrays"]["W"]["sha256"] != meta["arrays"]["W"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("refined")) == \
        ["refined.A.npy", "refined.a0.npy", "refined.bias.npy", "refined.model.json", "refined.npy"]
    for method in (["gis"], ["dldr", "--phase", "gis"]):
        rc, stdout, err = cli(capsys, "refine", "--weights", out, cli_data["train"], "--method",
                              *method, "--out", tmp_path / "gis.npy", "--quiet")
        assert rc == 1 and "sum to 1" in err
    assert not any(p.name.startswith("gis") for p in tmp_path.iterdir())
    rc, stdout, err = cli(capsys, "refine", "--weights", out, cli_data["train"], "--method",
                          "newton", "--passes", 3, "--out", tmp_path / "newton.npy", "--quiet")
    assert rc == 0, err
    assert load_model(tmp_path / "newton.npy").hidden is not None


def test_refining_a_2_layer_model_reaches_the_output_layer_optimum(cli_data, tmp_path):
    out = tmp_path / "grown.npy"
    assert main(["grow", str(cli_data["train"]), "--out", str(out), "--max-width", "6",
                 "--units-per-step", "6", "--min-gain", "0", "--output-passes", "2",
                 "--quiet"]) == 0
    model = load_model(out)
    x, y = cli_data["x_train"], cli_data["y_train"]
    b = with_one(model.hidden_features(examples_of(x, y)[0]))
    l2 = 1e-3

    def objective(flat):
        w = flat.reshape(b.shape[1], 3)
        z = b @ w
        return (mean_loss(z, y) + 0.5 * l2 * float(np.sum(w * w)),
                (b.T @ (softmax(z, axis=1) - np.eye(3)[y]) / y.size + l2 * w).ravel())

    ref = scipy.optimize.minimize(objective, np.zeros(b.shape[1] * 3), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})
    files = [cli_data["train"]]
    refined = refine(model, lambda: iter_examples(files, task="classify", window=0, n_classes=3,
                                                  n_features=9),
                     tmp_path / "r.npy", method="lbfgs", passes=200, l2=l2)
    w = np.vstack([np.asarray(refined.dense, np.float64), np.asarray(refined.bias)[None, :]])
    assert objective(w.ravel())[0] == pytest.approx(ref.fun, abs=1e-6)
    np.testing.assert_array_equal(np.asarray(refined.hidden[0]), np.asarray(model.hidden[0]))


def test_grow_a_small_language_model(tmp_path, capsys):
    from streamfit import synthetic

    chain = synthetic.markov_chain(5, concentration=0.5, seed=3)
    train = write_tokens(tmp_path / "t.parquet", markov_docs(chain, 30, 40, seed=4))
    held = write_tokens(tmp_path / "h.parquet", markov_docs(chain, 10, 40, seed=5))
    out = tmp_path / "lm.npy"
    rc, stdout, err = cli(capsys, "grow", train, "--window", 2, "--validation", held, "--out", out,
                          "--max-width", 8, "--units-per-step", 4, "--min-gain", 0, "--quiet")
    assert rc == 0, err
    model = load_model(out)
    assert (model.task, model.window, model.n_features, model.n_classes) == ("lm", 2, 12, 5)
    assert model.meta["vocab_size"] == 5
    log = model.meta["growth"]["log"]
    assert log[-1]["heldout_loss"] < log[0]["heldout_loss"] - 0.05
    top, probs = model.top_k(model.context_examples([[1, 2]]), 5)
    assert sorted(top[0].tolist()) == [0, 1, 2, 3, 4]
    assert probs[0].sum() == pytest.approx(1.0, rel=1e-9)


def test_grow_on_a_file_without_rows_is_refused_and_writes_nothing(tmp_path, capsys):
    empty = write_dense(tmp_path / "empty.parquet", np.zeros(0, dtype=np.int64), np.zeros((0, 4)))
    out = tmp_path / "grown.npy"
    assert main(["grow", str(empty), "--out", str(out), "--classes", "3", "--n-features", "4",
                 "--quiet"]) == 1
    assert "no training examples" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("grown")]


@pytest.mark.parametrize("option", [["--l2", "-1"], ["--ridge", "nan"], ["--min-gain", "-1"],
                                    ["--output-passes", "-1"], ["--max-width", "-2"]])
def test_grow_bad_numbers_are_refused_and_write_nothing(tmp_path, capsys, option):
    rng = np.random.default_rng(0)
    y, x = random_feature_rows(rng, 40, 5, 3)
    path = write_dense(tmp_path / "f.parquet", y, x)
    out = tmp_path / "grown.npy"
    assert main(["grow", str(path), "--out", str(out), "--quiet", *option]) == 1
    assert "must be" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("grown")]


# --- 6. the speed-ups and the tuning passes ------------------------------------------------------
def test_without_inputs_a_pass_leaves_out_s2_only_and_output_pass_matches_numpy(corpus):
    x, y = corpus["x"], corpus["y"]
    layers = random_layers(np.random.default_rng(4), 7, 5, 4)
    whole = G.growth_pass(layers, examples_of(x, y, 40))
    part = G.growth_pass(layers, examples_of(x, y, 40), inputs=False)
    assert part.S2 is None
    for name in ("S", "M", "M2", "P", "M1"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name), err_msg=name)
    # the output layer's pass from hidden features computed beforehand: numpy by definition
    b, z = forward(layers.A, layers.a0, layers.W, x)
    got = G.output_pass(layers.W, [(b[:60], y[:60]), (b[60:], y[60:])])
    assert got.n == y.size and got.correct == int(np.sum(z.argmax(axis=1) == y))
    assert got.loss == pytest.approx(mean_loss(z, y) * y.size, rel=1e-12)
    np.testing.assert_allclose(got.M, b.T @ (softmax(z, axis=1) - np.eye(4)[y]), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("limit", [1 << 30, 100])
def test_a_block_cache_gives_the_streamed_passes_and_streams_past_its_limit(corpus, limit):
    x, y = corpus["x"], corpus["y"]
    batches = examples_of(x, y, 40)
    reads = []

    def source():
        reads.append(1)
        return iter(batches)
    cache = G.BlockCache(source, 7, limit)
    layers = random_layers(np.random.default_rng(5), 7, 3, 4)
    want = G.growth_pass(layers, batches)
    for _ in range(3):
        got = G.growth_pass(layers, cache())
        for name in ("S", "M", "S2", "M2", "P", "M1"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12,
                                       atol=1e-12, err_msg=name)
        assert (got.n, got.correct) == (want.n, want.correct)
    assert len(reads) == (1 if limit > 100 else 3)   # kept once read, or streamed every pass
    assert (cache.blocks is None) == (limit == 100)


def tune_reference(layers, x, y, s2_inv, s, step, damping, l2, rows):
    """tune_pass by its formulas, row slice by row slice, in plain numpy."""
    a, a0, w = layers.A.copy(), layers.a0.copy(), layers.W.copy()
    c, k = w.shape[1], a.shape[1]
    pen = np.diag(np.r_[np.ones(k), 0.0])

    def damped_inv(f):
        return np.linalg.inv(f + (damping * np.trace(f) / len(f) + 1e-12) * np.eye(len(f)))
    for lo in range(0, y.size, rows):
        xb, yb = x[lo:lo + rows], y[lo:lo + rows]
        pre = xb @ a + a0
        b = with_one(np.maximum(pre, 0))
        g = (softmax(b @ w, axis=1) - np.eye(c)[yb]) / yb.size
        w = w - step * damped_inv(0.5 * s + l2 * pen) @ (b.T @ g + l2 * pen @ w)
        g = (softmax(b @ w, axis=1) - np.eye(c)[yb]) / yb.size
        g1 = (g @ w[:-1].T) * (pre > 0)
        move = -step * s2_inv @ (with_one(xb).T @ g1) @ damped_inv(0.5 * w[:-1] @ w[:-1].T)
        a, a0 = a + move[:-1], a0 + move[-1]
    return a, a0, w


def test_a_tuning_pass_takes_the_preconditioned_steps_of_its_formulas(corpus):
    x, y = corpus["x"], corpus["y"]
    rng = np.random.default_rng(6)
    layers = random_layers(rng, 7, 5, 4)
    x1 = with_one(x)
    s2_inv = np.linalg.inv(x1.T @ x1 / y.size + 0.1 * np.eye(8))
    b = forward(layers.A, layers.a0, layers.W, x)[0]
    s = b.T @ b / y.size
    got, sums = G.tune_pass(layers, examples_of(x, y, 64), s2_inv, s, step=0.3, damping=0.1,
                            l2=1e-2, batch_rows=16)
    # Examples of 64 rows cut in 16-row mini-batches: the same slices as 16 rows at a time
    a, a0, w = tune_reference(layers, x, y, s2_inv, s, 0.3, 0.1, 1e-2, 16)
    for name, have, want in (("A", got.A, a), ("a0", got.a0, a0), ("W", got.W, w)):
        np.testing.assert_allclose(have, want, rtol=1e-9, atol=1e-12, err_msg=name)
    assert sums.n == y.size and sums.S.shape == (6, 6)
    assert np.all(np.isfinite(sums.S)) and sums.loss > 0


def test_tuning_passes_solve_the_xor_like_problem_and_keep_the_best_pass(tmp_path):
    """XOR-like classes from two ± unit pairs: growth alone makes the units, the tuning
    passes (each layer given the other) bring held-out accuracy near 1."""
    rng = np.random.default_rng(0)
    x, y = xor_like(rng, 800)
    xv, yv = xor_like(rng, 400)
    held = examples_of(xv, yv, 100)
    kw = dict(heldout=lambda: iter(held), units_per_step=4, max_width=8, l2=1e-4, ridge=0.0)
    plain = grow_in_memory(x, y, tmp_path / "g.npy", **kw)
    tuned = grow_in_memory(x, y, tmp_path / "t.npy", tune_passes=8, **kw)
    acc = {name: float(np.mean(m.logits(examples_of(xv, yv)[0]).argmax(axis=1) == yv))
           for name, m in (("plain", plain), ("tuned", tuned))}
    log = tuned.meta["growth"]["log"]
    passes = [e for e in log if "tune" in e]
    assert [e["tune"] for e in passes] == list(range(1, 9)) and all(e["width"] == 8 for e in passes)
    best = max(passes, key=lambda e: (e["heldout_accuracy"], -e["heldout_loss"]))
    assert tuned.meta["growth"]["kept_step"] == best["step"]
    assert acc["tuned"] == pytest.approx(best["heldout_accuracy"])
    assert acc["tuned"] >= 0.95 and acc["tuned"] > acc["plain"], acc


def test_tuning_options_are_checked(corpus, tmp_path):
    x, y = corpus["x"], corpus["y"]
    for bad in (dict(tune_passes=-1), dict(tune_step=0.0), dict(tune_damping=float("nan"))):
        with pytest.raises(ValueError, match="tuning passes"):
            grow_in_memory(x, y, tmp_path / "bad.npy", **bad)
    assert not (tmp_path / "bad.npy").exists()


def test_keeping_rows_in_memory_changes_no_number(corpus, tmp_path):
    """A run whose memory budget keeps nothing (every pass reads the source) writes the same
    model and log as one that keeps the rows and the hidden features."""
    x, y = corpus["x"], corpus["y"]
    held = examples_of(x[:50], y[:50], 20)
    kw = dict(units_per_step=4, max_width=8, heldout=lambda: iter(held), tune_passes=2)
    kept = grow_in_memory(x, y, tmp_path / "k.npy", **kw)
    streamed = grow_in_memory(x, y, tmp_path / "s.npy", cache_bytes=0, **kw)
    for a, b in zip((*kept.hidden, kept.dense, kept.bias), (*streamed.hidden, streamed.dense, streamed.bias)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    for e, f in zip(kept.meta["growth"]["log"], streamed.meta["growth"]["log"]):
        assert e["heldout_loss"] == pytest.approx(f["heldout_loss"], rel=1e-9)
