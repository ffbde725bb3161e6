"""The parts of plbfgs (refine's default on dense classifiers) against numpy oracles: the
whitened basis, the reservoir, the candidate pass, the per-class curvature blocks; and
never worse than the start on held-out data."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from streamfit.train import core
from streamfit.train import plbfgs as P
from streamfit.train import refine as R

from conftest import dense_examples, write_dense  # noqa: F401  (fixture module)


def examples_of(x: np.ndarray, y: np.ndarray) -> list:
    """Dense rows as Examples in batches of 37 rows (an odd size: partial batches)."""
    return dense_examples(x, y, 37)


def objective(w, x, y, lam):
    z = x @ w
    n = len(y)
    f = float(np.mean(logsumexp(z, axis=1) - z[np.arange(n), y])) \
        + 0.5 * float((lam[:, None] * w * w).sum())
    g = x.T @ (softmax(z, axis=1) - np.eye(w.shape[1])[y]) / n + lam[:, None] * w
    return f, g


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    n, d, c = 300, 10, 4
    y = rng.integers(0, c, n)
    raw = rng.random((n, d)) * np.logspace(0, 1.5, d) + 0.5 * (y[:, None] == np.arange(d) % c)
    x = raw / raw.sum(axis=1, keepdims=True)
    return x, y, c


def test_white_basis_is_exact_for_sums_to_one_and_complement_coding(problem):
    x, y, c = problem
    rng = np.random.default_rng(1)
    u = x / x.max()
    complement = np.hstack([u, 1 - u]) / u.shape[1]      # constant sum, null pairs
    for inputs in (x, complement):
        d = inputs.shape[1]
        m = core.feature_moments(iter(examples_of(inputs, y)), d, full=True, double=True)
        basis = P.WhiteBasis(m)
        # null directions dropped: the ones vector; for complement coding the pairs
        # u_i + (1 − u_i) and the ones vector of u (u = x / max x sums to a constant too)
        assert basis.m.shape[1] == (d - 1 if inputs is x else d // 2 - 1)
        w = rng.normal(size=(d, c))
        v, cc = basis.coordinates(w)
        np.testing.assert_allclose(inputs @ basis.weights(v, cc), inputs @ w, atol=1e-8)
        s = inputs.sum(axis=1)
        z = (inputs - s[:, None] * basis.mean[None, :]) @ basis.m
        np.testing.assert_allclose(z @ v + s[:, None] * cc, inputs @ w, atol=1e-8)
        cov = np.cov(z.T, bias=True)      # unit variance up to the floor
        assert np.all(np.diag(cov) < 1.0) and np.median(np.diag(cov)) > 0.9
        g, dv, dc = rng.normal(size=(d, c)), rng.normal(size=v.shape), rng.normal(size=c)
        gv, gc = basis.gradient(g)
        eps = 1e-6
        numeric = (np.sum(g * basis.weights(v + eps * dv, cc + eps * dc))
                   - np.sum(g * basis.weights(v, cc))) / eps
        assert numeric == pytest.approx(np.sum(gv * dv) + gc @ dc, rel=1e-5)


def test_reservoir_is_a_uniform_sample():
    size, n, trials = 8, 40, 3000
    counts = np.zeros(n)
    for t in range(trials):
        r = P.Reservoir(size, 1, seed=t)
        for lo in range(0, n, 7):
            ids = np.arange(lo, min(n, lo + 7))
            r.offer(ids[:, None].astype(np.float32), ids)
        x, y = r.rows()
        assert len(set(y)) == size and np.array_equal(x[:, 0], y)
        counts[y] += 1
    expected = trials * size / n                            # 600 each
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    small = P.Reservoir(100, 1, seed=0)
    small.offer(np.zeros((5, 1), np.float32), np.arange(5))
    assert small.rows()[1].tolist() == [0, 1, 2, 3, 4]


def test_candidates_pass_matches_the_objective(problem):
    x, y, c = problem
    d = x.shape[1]
    rng = np.random.default_rng(2)
    lam = 1e-2 * x.var(axis=0)
    w, direction = rng.normal(size=(d, c)), rng.normal(size=(d, c))
    res = P.Reservoir(50, d, seed=0)
    rows = P.Rows(lambda: iter(examples_of(x, y)), d)
    got = P.candidates_pass(w, direction, (1.0, 0.5, 0.25), rows(), lam[:, None], res)
    for a, (f, g, sums) in zip((1.0, 0.5, 0.25), got):
        f_ref, g_ref = objective(w + a * direction, x, y, lam)
        # float32 products: float32's precision, not float64's
        assert f == pytest.approx(f_ref, rel=1e-6)
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6 * np.abs(g_ref).max())
        assert sums.n == len(y)
        logits = x @ (w + a * direction)
        top2 = np.sort(logits, axis=1)[:, -2:]
        sure = top2[:, 1] - top2[:, 0] > 1e-4        # ties within float32 error may go either way
        assert np.sum((logits.argmax(axis=1) == y)[sure]) <= sums.correct \
            <= np.sum((logits.argmax(axis=1) == y)[sure]) + np.sum(~sure)
    assert res.seen == len(y)
    (f0, g0, _), = P.candidates_pass(w, None, (1.0,), rows(), lam[:, None], None)
    assert f0 == pytest.approx(objective(w, x, y, lam)[0], rel=1e-6)


def test_rows_are_kept_in_memory_when_they_fit(problem):
    """The first complete pass keeps the rows; later ones read no file. Over the budget,
    every pass reads again. Either way the rows are the data's, in order."""
    x, y, c = problem
    d = x.shape[1]
    reads = []

    def train():
        reads.append(1)
        return iter(examples_of(x, y))
    for budget, expected_reads in ((1 << 20, 1), (1000, 3)):
        reads.clear()
        rows = P.Rows(train, d, budget)
        for _ in range(3):
            got = list(rows())
            np.testing.assert_allclose(np.vstack([P._dense(a) for a, _ in got]), x, rtol=1e-7)
            assert np.concatenate([b for _, b in got]).tolist() == y.tolist()
        assert len(reads) == expected_reads
    sparse = np.where(x > np.quantile(x, 0.95), x, 0.0)       # 5% non-zero: kept as CSR
    got = list(P.Rows(lambda: iter(examples_of(sparse, y)), d)())
    assert not isinstance(got[0][0], np.ndarray) and got[0][0].dtype == np.float32


def test_class_blocks_solve_with_the_per_class_hessian_blocks(problem, monkeypatch):
    x, y, c = problem
    d = x.shape[1]
    rng = np.random.default_rng(3)
    w, g = rng.normal(size=(d, c)), rng.normal(size=(d, c))
    lam = 1e-3 * np.ones(d)
    p = softmax(x @ w, axis=1)
    monkeypatch.setattr(P, "BLOCK_MASS", 1.0)          # every row: the blocks themselves
    apply = P.class_blocks(x.astype(np.float32), y, w, lam[:, None])
    blocks = []
    for j in range(c):
        block = (x * (p[:, j] * (1 - p[:, j]))[:, None]).T @ x / len(y)
        block += np.diag(lam) + P.DAMPING * np.trace(block) / d * np.eye(d)
        np.testing.assert_allclose(apply(g)[:, j], np.linalg.solve(block, g[:, j]), rtol=2e-3)
        blocks.append(block)
    # the rows holding BLOCK_MASS of a class's weights: B_j·u − g = D·u for the dropped
    # rows' part D, whose norm is at most the dropped weight (≤ (1 − mass)·Σ weights, the
    # damping above follows the trace: relative 1 − mass too) times the largest ‖x̃‖²
    mass = 0.9
    monkeypatch.setattr(P, "BLOCK_MASS", mass)
    apply = P.class_blocks(x.astype(np.float32), y, w, lam[:, None])
    biggest = float((x * x).sum(axis=1).max())
    for j in range(c):
        u = apply(g)[:, j]
        weights = float(np.mean(p[:, j] * (1 - p[:, j])))
        bound = (1 - mass) * weights * biggest * (1 + P.DAMPING) * np.linalg.norm(u)
        assert np.linalg.norm(blocks[j] @ u - g[:, j]) <= bound + 1e-3 * np.linalg.norm(g[:, j])
        assert not np.allclose(u, np.linalg.solve(blocks[j], g[:, j]), rtol=1e-6)  # rows dropped


def test_two_loop_without_pairs_is_the_preconditioned_gradient():
    g = np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(P.two_loop(g, [], lambda a: 2 * a), -2 * g)
    # with one pair (s, y) and H₀ = I the direction satisfies the secant equation: H·y = s
    s, yv = np.array([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]]), np.array([[2.0, 0.1], [1.0, 3.0], [0.2, 4.0]])
    np.testing.assert_allclose(-P.two_loop(yv, [(s, yv)], lambda a: a), s, atol=1e-12)


def test_plbfgs_never_ends_worse_than_its_start_on_heldout(problem, tmp_path):
    """Held-out rows with flipped labels: every pass is worse there, so the start is kept."""
    from streamfit.model.weights import Model
    x, y, c = problem
    d = x.shape[1]
    start = Model(task="classify", n_classes=c, n_features=d, tau=1.0,
                  dense=np.zeros((d, c)), meta={"form": "conditional"})
    held = examples_of(x[:60], (y[:60] + 1) % c)
    out = R.refine(start, lambda: iter(examples_of(x, y)), tmp_path / "r.npy", method="auto",
                   passes=4, l2_relative=1e-3, heldout=lambda: iter(held))
    info = out.meta["refinement"]
    assert info["chosen"].startswith("plbfgs")
    start_loss = info["start"]["heldout_loss"]
    assert start_loss == pytest.approx(np.log(c))
    got = core.heldout_loss(core.dense_parameters(out), iter(held))[0]
    assert got <= start_loss + 1e-9 and info["kept_pass"] == 0
    assert [e["pass"] for e in info["log"]] == [1, 2, 3, 4]
    assert info["log"][-1]["train_loss"] < np.log(c) - 0.05   # training did progress


def test_heldout_scores_give_rows_without_features_the_class_term(problem, tmp_path):
    """The written model gives an empty row its starting model's class term; the held-out
    losses that choose the kept pass must score it the same way."""
    from scipy.special import log_softmax
    from streamfit.model.weights import Model
    x, y, c = problem
    d = x.shape[1]
    bias = np.array([2.0, -1.0, 0.5, -1.5])
    start = Model(task="classify", n_classes=c, n_features=d, tau=1.0, dense=np.zeros((d, c)),
                  bias=bias, meta={"form": "calibrated"})
    xh, yh = x[:40].copy(), y[:40].copy()
    xh[:5] = 0.0                                   # five rows without features
    held = examples_of(xh, yh)
    out = R.refine(start, lambda: iter(examples_of(x, y)), tmp_path / "e.npy", method="auto",
                   passes=3, l2_relative=1e-3, heldout=lambda: iter(held))
    info = out.meta["refinement"]
    logits = xh @ np.asarray(out.dense, np.float64) + np.asarray(out.bias)
    written = -log_softmax(logits, axis=1)[np.arange(len(yh)), yh].mean()
    kept = min([info["start"], *info["log"]], key=lambda e: e["heldout_loss"])
    assert written == pytest.approx(kept["heldout_loss"], rel=1e-5)
    start_loss = -log_softmax(bias)[yh].mean()    # the start: its class term on every row
    assert info["start"]["heldout_loss"] == pytest.approx(start_loss, rel=1e-9)


def test_l2_path_descends_while_heldout_improves_then_keeps_the_best():
    """The rule, on scripted held-out losses: stage passes per κ, largest first; stop at
    the first κ no better than the one before; go back to the best κ's best point."""
    grid = [(1e-2, "a"), (3e-3, "b"), (1e-3, "c")]

    def run(losses, stage=2):
        path, points, back = P.L2Path(grid, stage), [], None
        for i, loss in enumerate(losses):
            points.append(np.full((2, 2), float(i)))
            kappa = path.kappa
            back = path.observe(loss, points[-1])
            yield kappa, back, path.decided
    # the middle κ is best: 1e-3's stage is worse, so back to 3e-3's best point (pass 4);
    # the first κ, started from the Adam pass, has one pass more
    steps = list(run([0.9, 0.8, 0.75, 0.6, 0.62, 0.66, 0.7, 0.5]))
    assert [k for k, _, _ in steps] == [1e-2] * 3 + [3e-3] * 2 + [1e-3] * 2 + [3e-3]
    back = steps[6][1]
    assert back is not None and back[0, 0] == 3.0 and steps[6][2]
    assert all(b is None for _, b, _ in steps[:6] + steps[7:])
    # improving all the way: the last κ, no jump
    steps = list(run([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]))
    assert steps[-1][0] == 1e-3 and steps[-1][1] is None and steps[-1][2]
    # the first κ is best: stop after the second stage, back to pass 2's point
    steps = list(run([0.5, 0.4, 0.45, 0.6, 0.45]))
    assert steps[-1][2] and steps[-1][1][0, 0] == 1.0
    # a restored path continues where it was
    path = P.L2Path(grid, 1)
    path.observe(0.5, np.ones((2, 2)))
    path.observe(0.6, np.zeros((2, 2)))
    again = P.L2Path(grid, 1, path.arrays())
    assert again.kappa == 3e-3 and again.losses[0] == 0.5 and again.points[0][0, 0] == 1.0


@pytest.mark.parametrize("spread, best", [(3.0, 1e-2), (1.0, 1e-3)])
def test_heldout_choice_of_l2_matches_scipy_optima(spread, best, tmp_path):
    """Few noisy rows (spread 3: the largest κ is best on held-out rows, by far) or clean
    ones (spread 1: the smallest): brute force with scipy — each κ's optimum and its
    held-out loss — says which κ is best; refine with held-out data chooses it, and ends
    no worse on held-out data than that optimum."""
    import scipy.optimize
    from streamfit.model.weights import Model
    rng = np.random.default_rng(0)
    n, d, c = 60, 20, 3
    y_all = rng.integers(0, c, n + 400)
    raw = rng.random((n + 400, d)) * spread + rng.random((c, d))[y_all]
    x_all = raw / raw.sum(axis=1, keepdims=True)
    x, y, xh, yh = x_all[:n], y_all[:n], x_all[n:], y_all[n:]

    def heldout_ce(w):
        z = xh @ w
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(yh)), yh]))
    scores = {}
    for kappa in R.L2_GRID:
        lam = kappa * x.var(axis=0)
        ref = scipy.optimize.minimize(lambda f: (lambda v: (v[0], v[1].ravel()))(
            objective(f.reshape(d, c), x, y, lam)), np.zeros(d * c), jac=True,
            method="L-BFGS-B", options={"maxiter": 20_000, "gtol": 1e-12, "ftol": 1e-15})
        scores[kappa] = heldout_ce(ref.x.reshape(d, c))
    assert min(scores, key=scores.get) == best
    start = Model(task="classify", n_classes=c, n_features=d, tau=1.0,
                  dense=np.zeros((d, c)), meta={"form": "conditional"})
    out = R.refine(start, lambda: iter(examples_of(x, y)), tmp_path / "k.npy", method="auto",
                   passes=10, l2_relative="auto", heldout=lambda: iter(examples_of(xh, yh)))
    info = out.meta["refinement"]
    assert info["l2_chosen"] == best and f"l2 {best:g} chosen" in info["chosen"]
    assert [e["l2"] for e in info["log"]][:2] == [1e-2, 1e-2]
    assert heldout_ce(core.dense_parameters(out)) <= scores[best] + 1e-3


def test_a_killed_run_resumes_its_l2_path(problem, tmp_path, monkeypatch):
    """Killed after pass 4 (the first κ's stage: the Adam pass and three): the resumed run
    goes on with the second κ, as the uninterrupted one does, instead of starting over."""
    from streamfit.model.weights import Model
    x, y, c = problem
    d = x.shape[1]
    start = Model(task="classify", n_classes=c, n_features=d, tau=1.0,
                  dense=np.zeros((d, c)), meta={"form": "conditional"})
    held = examples_of(x[:100], y[:100])

    def run(out):
        return R.refine(start, lambda: iter(examples_of(x, y)), out, method="auto", passes=10,
                        l2_relative="auto", heldout=lambda: iter(held))
    straight = [e["l2"] for e in run(tmp_path / "s.npy").meta["refinement"]["log"]]
    assert straight[:5] == [1e-2] * 4 + [3e-3]
    calls = []

    def killed(name):
        calls.append(name)
        if len(calls) == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr(core, "fault_point", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "k.npy")
    monkeypatch.undo()
    resumed = [e["l2"] for e in run(tmp_path / "k.npy").meta["refinement"]["log"]]
    assert resumed[:5] == straight[:5]
