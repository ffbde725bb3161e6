"""Training in tiny subspaces (`streamfit.subspace`): random bases descent and DLDR + P-BFGS.

The oracles are plain numpy on a dense X̃ built from the raw corpus: the random directions
are materialised whole from the documented stream (Philox keyed by (seed, step), counter
(0, 0, worker, compartment), parameter-major, divided by √D_c), the snapshot basis comes from
numpy's SVD of the centred snapshots, and P-BFGS follows METHODS.md §4 step by step.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from streamfit.train import refine as R
from streamfit.train import subspace as S
from streamfit.cli import main
from streamfit.errors import StreamfitError
from streamfit.model.evaluate import iter_examples
from streamfit.data.featurize import Examples
from streamfit.model.weights import Model, load_model

from conftest import run_cli, markov_docs, random_feature_rows, write_dense, write_tokens

N_ROWS, D, C = 48, 7, 3


def feature_matrix(x_raw: np.ndarray) -> np.ndarray:
    s = x_raw.sum(axis=1, keepdims=True)
    return np.divide(x_raw, s, out=np.zeros_like(x_raw), where=s > 0)


def batch_loss_grad(w, x, y):
    """Mean cross-entropy of softmax(xW) and its gradient xᵀ(P − Y)/n."""
    z = x @ w
    n = y.size
    p = softmax(z, axis=1)
    p[np.arange(n), y] -= 1.0
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(n), y])), x.T @ p / n


def directions(seed, step, worker, comp, size, d):
    """φ (size × d), materialised whole from the documented stream."""
    gen = np.random.Generator(np.random.Philox(key=[seed, step], counter=[0, 0, worker, comp]))
    return gen.standard_normal((size, d)) / np.sqrt(size)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A dense feature corpus (one record batch, one all-zero row) and its X̃."""
    root = tmp_path_factory.mktemp("subspace")
    rng = np.random.default_rng(4)
    y, x = random_feature_rows(rng, N_ROWS, D, C, density=0.6, zero_rows=1)
    path = write_dense(root / "f.parquet", y, x)
    exs = list(iter_examples([path], task="classify", window=0, n_classes=C, n_features=D))
    assert len(exs) == 1
    return {"path": path, "x": feature_matrix(x), "y": y, "examples": exs}


def dense_model(w):
    return Model(task="classify", n_classes=C, n_features=D, tau=1.0, dense=np.array(w),
                 meta={"form": "conditional"})


def run(corpus, tmp_path, method, passes, opts, **kw):
    exs = corpus["examples"]
    tmp_path.mkdir(exist_ok=True)
    w0 = np.random.default_rng(1).normal(0, 0.5, (D, C))
    w0 -= w0.mean(axis=1, keepdims=True)   # refine starts from row-centred weights
    m = R.refine(dense_model(w0), lambda: iter(exs), tmp_path / "out.npy", method=method,
                 passes=passes, subspace=opts, **kw)
    return w0, m


# --- random directions ------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1 << 20, 5, 1])
def test_coordinates_and_update_match_the_materialised_directions(monkeypatch, block):
    monkeypatch.setattr(S, "BLOCK_ELEMS", block)  # how many normals at a time: no effect
    rng = np.random.default_rng(0)
    g, w, coef = rng.normal(size=23), rng.normal(size=23), rng.normal(size=4)
    phi = directions(7, 3, 1, 2, 23, 4)
    np.testing.assert_allclose(S.coordinates(g, 4, S.direction_stream(7, 3, 1, 2)), phi.T @ g,
                               rtol=1e-12)
    want = w + phi @ coef
    S.add_directions(w, coef, S.direction_stream(7, 3, 1, 2))
    np.testing.assert_allclose(w, want, rtol=1e-12)


def test_directions_differ_by_step_worker_and_compartment():
    keys = [(0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, 0, 0, 0)]
    draws = [S.direction_stream(*k).standard_normal(50) for k in keys]
    for i in range(len(draws)):
        for j in range(i):
            assert abs(np.corrcoef(draws[i], draws[j])[0, 1]) < 0.5


def test_compartments_split_rows_and_dims_by_size():
    assert S.compartments_of(7, 3, 5, 2) == [(0, 4, 3), (4, 7, 2)]
    assert S.compartments_of(10, 3, 7, 3) == [(0, 3, 2), (3, 7, 3), (7, 10, 2)]
    assert S.compartments_of(4, 2, 40, 1) == [(0, 4, 40)]
    assert S.compartments_of(3, 5, 3, 3) == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]


def oracle_random_bases(w0, x, y, *, lr, l2, batch_size, passes, parts, workers, seed, redraw):
    """Every round: the gradients of N consecutive batches at the same W, then each
    worker's update W_c −= lr·(D_c/d_c)·φ φᵀ g_c in worker order."""
    w = w0.copy()
    n = y.size
    batches = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    t, losses = 0, []
    for _ in range(passes):
        total = 0.0
        for r in range(0, len(batches), workers):
            grads = []
            for a, b in batches[r:r + workers]:
                loss, g = batch_loss_grad(w, x[a:b], y[a:b])
                total += loss * (b - a)
                grads.append(g + l2 * w)
            for k, g in enumerate(grads):
                for comp, (lo, hi, d) in enumerate(parts):
                    size = (hi - lo) * C
                    phi = directions(seed, t if redraw else 0, k, comp, size, d)
                    coords = phi.T @ g[lo:hi].ravel()
                    w[lo:hi] -= (lr * size / d * (phi @ coords)).reshape(hi - lo, C)
            t += 1
        losses.append(total / n)
    return w, losses


@pytest.mark.parametrize("workers,redraw,comps", [(1, True, 1), (3, True, 2), (2, False, 2)])
def test_random_bases_match_the_oracle(corpus, tmp_path, workers, redraw, comps):
    opts = S.SubspaceOptions(dims=5, compartments=comps, redraw=redraw, workers=workers,
                             processes=False)
    w0, m = run(corpus, tmp_path, "random-bases", 2, opts, lr=3.0, l2=0.01, batch_size=7,
                seed=11)
    parts = [(0, 4, 3), (4, 7, 2)] if comps == 2 else [(0, 7, 5)]
    want, losses = oracle_random_bases(w0, corpus["x"], corpus["y"], lr=3.0, l2=0.01,
                                       batch_size=7, passes=2, parts=parts, workers=workers,
                                       seed=11, redraw=redraw)
    np.testing.assert_allclose(np.asarray(m.dense, np.float64), want, rtol=1e-5, atol=1e-6)
    log = m.meta["refinement"]["log"]
    np.testing.assert_allclose([e["train_loss"] for e in log], losses, rtol=1e-10)
    steps = -(-(-(-N_ROWS // 7)) // workers)
    assert [e["steps"] for e in log] == [steps, steps]
    assert log[0]["bytes_per_step"] == 8 * (3 + 5) and log[0]["full_gradient_bytes"] == 8 * D * C
    assert m.meta["refinement"]["subspace"] == {"dims": 5, "compartments": comps,
                                                "redraw": redraw, "workers": workers}


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_processes_give_the_simulated_schedule_exactly(corpus, tmp_path, workers):
    """N forked processes exchanging only coordinates end with the very weights of one
    process simulating the same N-worker schedule (same seeds, same data order)."""
    kw = dict(lr=3.0, l2=0.01, batch_size=5, seed=3)
    sim = S.SubspaceOptions(dims=4, compartments=2, workers=workers, processes=False)
    procs = S.SubspaceOptions(dims=4, compartments=2, workers=workers, processes=True)
    _, a = run(corpus, tmp_path / "a", "random-bases", 3, sim, **kw)
    _, b = run(corpus, tmp_path / "b", "random-bases", 3, procs, **kw)
    assert np.array_equal(np.asarray(a.dense), np.asarray(b.dense))
    la, lb = a.meta["refinement"]["log"], b.meta["refinement"]["log"]
    assert [e["train_loss"] for e in la] == [e["train_loss"] for e in lb]
    # and one worker with the same seeds is a different schedule: different weights
    _, one = run(corpus, tmp_path / "c", "random-bases", 3,
                 S.SubspaceOptions(dims=4, compartments=2), **kw)
    assert np.abs(np.asarray(one.dense) - np.asarray(a.dense)).max() > 1e-4


def test_a_failing_worker_process_stops_the_run_with_its_error(corpus, tmp_path):
    ex = corpus["examples"][0]
    targets = ex.targets.copy()
    targets[3:6] = -1   # the second mini-batch, worker 1's, has no labels
    bad = Examples(ex.indptr, ex.indices, ex.values, targets)
    with pytest.raises(StreamfitError, match="labels missing"):
        R.refine(dense_model(np.zeros((D, C))), lambda: iter([bad]), tmp_path / "out.npy",
                 method="random-bases", passes=1, batch_size=3,
                 subspace=S.SubspaceOptions(dims=2, workers=3))
    assert list(tmp_path.iterdir()) == []


# --- DLDR -------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1 << 20, 3])
def test_trajectory_basis_is_the_top_principal_directions(tmp_path, monkeypatch, block):
    monkeypatch.setattr(S, "BLOCK_ELEMS", block)  # the Gram matrix summed over tiny blocks
    rng = np.random.default_rng(2)
    snaps = rng.normal(size=(6, 4, 5)) @ np.diag([3.0, 2, 1, 0.5, 0.1])
    paths = []
    for i, s in enumerate(snaps):
        np.save(tmp_path / f"s{i}.npy", s)
        paths.append(tmp_path / f"s{i}.npy")
    p = S.trajectory_basis(paths, 3, tmp_path / "basis.npy")
    assert isinstance(p, np.memmap) and p.shape == (3, 20)
    flat = snaps.reshape(6, -1)
    _, sv, vt = np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(np.abs(np.asarray(p) @ vt[:3].T), np.eye(3), atol=1e-10)
    # six snapshots span at most five centred directions
    assert S.trajectory_basis(paths, 40, tmp_path / "b2.npy").shape == (5, 20)
    with pytest.raises(StreamfitError, match="at least 2 snapshots"):
        S.trajectory_basis(paths[:1], 3, tmp_path / "b3.npy")


def oracle_dldr(w0, x, y, *, lr, l2, batch_size, phase_passes, every, dims, passes, pbfgs_batch):
    """SGD phase (l2 on the rows a batch touches, as refine's SGD), snapshots (start, every
    `every` steps, end), basis by SVD, then P-BFGS as in METHODS.md §4."""
    n = y.size
    w, snaps, t = w0.copy(), [w0.copy()], 0
    for _ in range(phase_passes):
        for lo in range(0, n, batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            touched = (xb != 0).any(axis=0)
            _, g = batch_loss_grad(w, xb, yb)
            w -= lr * (g + l2 * w * touched[:, None])
            t += 1
            if t % every == 0:
                snaps.append(w.copy())
    if not np.array_equal(snaps[-1], w):
        snaps.append(w.copy())
    flat = np.array([s.ravel() for s in snaps])
    _, sv, vt = np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)
    p = vt[:min(dims, int(np.sum(sv ** 2 > 1e-12 * sv[0] ** 2)))]
    theta0 = snaps[-1].ravel()

    def f(c, xb, yb):
        wc = (theta0 + p.T @ c).reshape(D, C)
        loss, g = batch_loss_grad(wc, xb, yb)
        return loss + 0.5 * l2 * float(wc.ravel() @ wc.ravel()), p @ (g + l2 * wc).ravel()

    c, h, prev = np.zeros(len(p)), np.eye(len(p)), None
    for _ in range(passes - phase_passes):
        for lo in range(0, n, pbfgs_batch):
            xb, yb = x[lo:lo + pbfgs_batch], y[lo:lo + pbfgs_batch]
            value, g = f(c, xb, yb)
            if prev is not None:
                s, yy = c - prev[0], g - prev[1]
                if s @ yy > 1e-20:
                    rho = 1 / (s @ yy)
                    h = (np.eye(len(c)) - rho * np.outer(s, yy)) @ h @ \
                        (np.eye(len(c)) - rho * np.outer(yy, s)) + rho * np.outer(s, s)
            step = -h @ g
            prev, alpha = (c, g), 1.0
            for _ in range(20):
                if f(c + alpha * step, xb, yb)[0] <= value + 0.4 * alpha * (g @ step):
                    c = c + alpha * step
                    break
                alpha *= 0.4
    return (theta0 + p.T @ c).reshape(D, C), len(snaps), len(p)


@pytest.mark.parametrize("l2,every,dims", [(0.0, 3, 4), (0.02, 2, 40)])
def test_dldr_matches_the_oracle(corpus, tmp_path, l2, every, dims):
    opts = S.SubspaceOptions(dims=dims, phase="sgd", phase_passes=2, snapshot_every=every,
                             pbfgs_batch=16)
    w0, m = run(corpus, tmp_path, "dldr", 4, opts, lr=5.0, l2=l2, batch_size=6)
    want, n_snaps, d = oracle_dldr(w0, corpus["x"], corpus["y"], lr=5.0, l2=l2, batch_size=6,
                                   phase_passes=2, every=every, dims=dims, passes=4,
                                   pbfgs_batch=16)
    np.testing.assert_allclose(np.asarray(m.dense, np.float64), want, rtol=1e-5, atol=1e-6)
    log = m.meta["refinement"]["log"]
    assert [e["stage"] for e in log] == ["snapshots (sgd)"] * 2 + ["p-bfgs"] * 2
    assert log[1]["snapshots"] == n_snaps and log[2]["dims"] == d == min(dims, n_snaps - 1)
    assert list(tmp_path.iterdir()) and S.work_files(tmp_path / "out.npy") == []


def test_dldr_with_a_gis_phase_snapshots_every_pass(corpus, tmp_path):
    opts = S.SubspaceOptions(dims=3, phase="gis", phase_passes=4, snapshot_every=1)
    w0, m = run(corpus, tmp_path, "dldr", 6, opts)
    log = m.meta["refinement"]["log"]
    assert [e.get("snapshots") for e in log[:4]] == [2, 3, 4, 5]
    assert log[-1]["train_loss"] < log[3]["train_loss"]  # P-BFGS goes on improving


# --- the command: token corpus, resume, errors ------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("subspace-cli")
    from streamfit import synthetic
    chain = synthetic.markov_chain(6, concentration=0.5, seed=7)
    train = write_tokens(root / "t.parquet", markov_docs(chain, 30, 30, seed=8), row_group_size=10)
    held = write_tokens(root / "th.parquet", markov_docs(chain, 10, 30, seed=9))
    assert main(["accumulate", str(train), "--stats", str(root / "stats"), "--window", "2",
                 "--quiet"]) == 0
    assert main(["finalize", "--stats", str(root / "stats"), "--out", str(root / "w.npy"),
                 "--quiet"]) == 0
    return {"train": train, "heldout": held, "weights": root / "w.npy"}


def weights_of(path) -> np.ndarray:
    return np.asarray(load_model(path).dense, dtype=np.float64)


@pytest.mark.parametrize("method,extra,kill_at", [
    ("dldr", ["--phase-passes", "2", "--snapshot-every", "3", "--dims", "6"], 1),
    ("dldr", ["--phase-passes", "2", "--snapshot-every", "3", "--dims", "6"], 3),
    ("random-bases", ["--dims", "10", "--workers", "2", "--compartments", "2", "--lr", "2"], 2),
])
def test_killed_subspace_refine_resumes_to_the_uninterrupted_result(tokens, tmp_path, method,
                                                                    extra, kill_at):
    args = ["refine", "--weights", tokens["weights"], tokens["train"], "--method", method,
            "--passes", 4, "--batch-size", 64, "--quiet", *extra]
    straight = tmp_path / "straight.npy"
    assert run_cli([*args, "--out", straight]).returncode == 0
    out = tmp_path / "refined.npy"
    killed = run_cli([*args, "--out", out], fault=f"after_checkpoint:{kill_at}")
    assert killed.returncode == -9, killed.stderr
    meta = json.loads((tmp_path / "refined.ckpt.json").read_text())
    assert meta["pass"] == kill_at
    if method == "dldr":
        assert len(S.work_files(out)) >= 3 + (kill_at > 2)   # snapshots (+ the basis)
        assert S.basis_path(out).exists() == (kill_at > 2)
    done = run_cli([*args, "--out", out, "--json"])
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(weights_of(out), weights_of(straight), rtol=0, atol=1e-6)
    log = json.loads(done.stdout)["log"]
    assert [e["pass"] for e in log] == [1, 2, 3, 4] and log[:kill_at] == meta["log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["refined.model.json", "refined.npy", "straight.model.json", "straight.npy"]


@pytest.mark.parametrize("extra,message", [
    (["--method", "dldr", "--passes", "3", "--phase-passes", "3"], "phase-passes < --passes"),
    (["--method", "dldr", "--passes", "1"], "phase-passes < --passes"),
    (["--method", "random-bases", "--dims", "2", "--compartments", "3"], "--compartments must"),
    (["--method", "random-bases", "--workers", "0"], "--workers must"),
    (["--method", "random-bases", "--dims", "0"], "--dims must"),
])
def test_bad_subspace_options_are_refused_clearly(tokens, tmp_path, capsys, extra, message):
    capsys.readouterr()
    rc = main(["refine", "--weights", str(tokens["weights"]), str(tokens["train"]),
               "--out", str(tmp_path / "r.npy"), "--quiet", *extra])
    assert rc == 1 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dldr_refuses_a_phase_that_does_not_move(tokens, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["refine", "--weights", str(tokens["weights"]), str(tokens["train"]),
               "--out", str(tmp_path / "r.npy"), "--quiet", "--method", "dldr", "--passes", "2",
               "--lr", "1e-300"])  # steps below rounding
    assert rc == 1 and "snapshots are all equal" in capsys.readouterr().err
    assert Path(tmp_path / "r.ckpt.json").exists()  # the phase's work is kept for a rerun


def test_resuming_dldr_without_its_snapshots_is_refused_clearly(tokens, tmp_path):
    args = ["refine", "--weights", tokens["weights"], tokens["train"], "--method", "dldr",
            "--passes", 4, "--phase-passes", 2, "--snapshot-every", 3, "--batch-size", 64,
            "--quiet", "--out", tmp_path / "r.npy"]
    assert run_cli(args, fault="after_checkpoint:2").returncode == -9
    S.snapshot_path(tmp_path / "r.npy", 1).unlink()
    again = run_cli(args)
    assert again.returncode == 1 and "snapshot of this dldr run is missing" in again.stderr
    assert "--restart" in again.stderr and "Traceback" not in again.stderr
    assert run_cli([*args, "--restart"]).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.model.json", "r.npy"]
