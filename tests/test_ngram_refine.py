"""Refinement of n-gram models on their sparse support (the maximum-entropy n-gram model,
`train.ngram`), and the shared context-chain kernel.

Oracles: the softmax over every class computed densely per training context, with the
parameters looked up by their definition (a dict of the seen entries), for the value, the
gradient and the probabilities; finite differences for the gradient; the scorer of the
finalized model for the start; the numpy twin of the context-chain kernel.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import streamfit
from streamfit.errors import StreamfitError
from streamfit.model import ngram as mn
from streamfit.model.weights import load_model
from streamfit.solve import ngram as sn
from streamfit.train import ngram as tn

from conftest import cli as in_process_cli, write_tokens
from test_ngram import random_docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ngram_refine")
    train, held = random_docs(1, 120), random_docs(2, 60)
    return (write_tokens(folder / "train.parquet", train, row_group_size=25),
            write_tokens(folder / "held.parquet", held, row_group_size=25))


def setup(path, order, eos):
    stats = streamfit.accumulate([path], order=order, eos=eos)
    levels = sn.kneser_ney(stats)
    model = tn.MaxEnt(sn.Blocks(levels))
    return stats, levels, model, sn.lookup_tables(levels)


def random_point(model, seed):
    rng = np.random.default_rng(seed)
    theta = sn.kneser_ney_theta(model.order) + rng.normal(0, 0.2, model.n_theta)
    return theta, rng.normal(0, 0.3, model.n_delta)


def dense_oracle(stats, levels, theta, delta):
    """Mean cross-entropy of the training n-grams and its gradient, from the full softmax of
    each context: logit(c) = Σ_j τ_j lp_j(c) + Σ_L δ of the seen entries (L, h_L, c)."""
    order, C = levels.order, levels.n_classes
    index = {}
    off = C
    for c in range(C):
        index[(0, 0, c)] = c
    for L in range(1, order):
        for r, key in enumerate(levels.ng_key[L]):
            index[(L, int(key >> sn.TOK_BITS), int(key & ((1 << sn.TOK_BITS) - 1)))] = off + r
        off += levels.ng_key[L].size
    blocks = sn.Blocks(levels)
    context, y = sn.decode_ngrams(stats.keys, order, levels.vocab_size)
    count = np.asarray(stats.data, np.float64)
    n = count.sum()
    value, g_theta, g_delta = 0.0, np.zeros(theta.size), np.zeros(delta.size)
    classes = np.arange(C)
    for ctx, target, w in zip(context, y, count):
        deepest, chain, lp = sn.positions(levels, np.tile(ctx, (C, 1)), classes)
        P = blocks.param_index(chain)
        active = [[index[(L, int(chain[c, L]), c)] for L in range(deepest[c] + 1)
                   if (L, int(chain[c, L]), c) in index] for c in classes]
        logits = (theta[P] * lp).sum(1) + np.array([delta[a].sum() for a in active])
        p = np.exp(logits - np.logaddexp.reduce(logits))
        value -= w * np.log(p[target])
        for c in classes:
            g_delta[active[c]] += w * (p[c] - (c == target))
            for j in range(order):
                g_theta[P[c, j]] += w * (p[c] - (c == target)) * lp[c, j]
    return value / n, g_theta / n, g_delta / n


@pytest.mark.parametrize("order,eos", [(1, False), (2, True), (3, False), (3, True)])
def test_value_and_gradient_equal_the_dense_softmax(corpus, order, eos):
    stats, levels, model, tables = setup(corpus[0], order, eos)
    train = tn.training_data(model, stats, tables)
    theta, delta = random_point(model, order)
    value, g_theta, g_delta = model.value_and_grad(theta, delta, train)
    want_value, want_theta, want_delta = dense_oracle(stats, levels, theta, delta)
    assert abs(value - want_value) < 1e-12
    np.testing.assert_allclose(g_theta, want_theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g_delta, want_delta, rtol=0, atol=1e-12)
    _, no_theta, same_delta = model.value_and_grad(theta, delta, train, grad_theta=False)
    assert not no_theta.any()
    np.testing.assert_allclose(same_delta, g_delta, rtol=0, atol=1e-15)


@pytest.mark.parametrize("order", [2, 4])
def test_gradient_matches_finite_differences(corpus, order):
    stats, levels, model, tables = setup(corpus[0], order, True)
    train = tn.training_data(model, stats, tables)
    theta, delta = random_point(model, 10 + order)
    _, g_theta, g_delta = model.value_and_grad(theta, delta, train)
    f = lambda t, d: model.value_and_grad(t, d, train)[0]
    rng = np.random.default_rng(order)
    for k in rng.choice(model.n_delta, 12, replace=False):
        e = np.zeros(model.n_delta)
        e[k] = 1e-6
        fd = (f(theta, delta + e) - f(theta, delta - e)) / 2e-6
        assert abs(fd - g_delta[k]) <= 1e-7, k
    for k in np.flatnonzero(g_theta):
        e = np.zeros(model.n_theta)
        e[k] = 1e-6
        fd = (f(theta + e, delta) - f(theta - e, delta)) / 2e-6
        assert abs(fd - g_theta[k]) <= 1e-7, k


@pytest.mark.parametrize("order", [2, 3])
def test_refined_scorer_is_normalised_and_equals_the_dense_softmax(corpus, order):
    stats, levels, model, tables = setup(corpus[0], order, True)
    theta, delta = random_point(model, order)
    scorer = tn.refined_scoring_model(model, theta, delta, {}, True)
    held = random_docs(2, 60)
    for c in [d[:k] for d in held[:10] for k in range(len(d) + 1)] + [[8, 8, 8], [0] * 4]:
        assert abs(scorer.distribution(c).sum() - 1) < 1e-9, c
    # the scorer's log p of training n-grams against the dense softmax's
    context, y = sn.decode_ngrams(stats.keys, order, levels.vocab_size)
    got = scorer.log_prob(context, y) @ np.asarray(stats.data, np.float64) / stats.data.sum()
    assert abs(-got - dense_oracle(stats, levels, theta, delta)[0]) < 1e-12


def test_the_start_is_the_finalized_model(corpus, tmp_path):
    train, held = corpus
    stats, levels, model, tables = setup(train, 3, False)
    batches = sn.token_batches([held], vocab_size=stats.n_classes)
    start = sn.finalize_ngram(stats, tmp_path / "b.npy", form="blocks", heldout=batches)
    scorer = tn.refined_scoring_model(model, np.array(start.meta["theta"]),
                                      np.zeros(model.n_delta), {}, False)
    context, y = sn.decode_ngrams(stats.keys, 3, levels.vocab_size)
    np.testing.assert_allclose(scorer.log_prob(context, y), start.log_prob(context, y),
                               rtol=0, atol=1e-12)


def training_loglik(model, stats):
    context, y = sn.decode_ngrams(stats.keys, stats.order, stats.n_classes)
    return float(model.log_prob(context, y) @ np.asarray(stats.data, np.float64))


@pytest.mark.parametrize("refine_tau", [False, True])
def test_refinement_raises_the_training_likelihood(corpus, tmp_path, refine_tau):
    """Held-out data = the training documents: the kept point must beat the start there."""
    train, _ = corpus
    stats = streamfit.accumulate([train], order=3)
    batches = list(sn.token_batches([train], vocab_size=stats.n_classes))
    start = sn.finalize_ngram(stats, tmp_path / "b.npy", form="blocks", heldout=batches)
    refined = tn.refine_ngram(stats, start.meta, tmp_path / "r.npy", heldout=batches,
                              l2s=[0.5], max_iter=8, refine_tau=refine_tau)
    info = refined.meta["refinement"]
    assert info["kept_iteration"] >= 1 and info["heldout"] < info["heldout_start"]
    reread = load_model(tmp_path / "r.npy")
    assert reread.meta["form"] == "maxent"
    assert training_loglik(reread, stats) > training_loglik(start, stats)
    assert abs(-training_loglik(reread, stats) / stats.data.sum() - info["heldout"]) < 1e-9


def test_refusal_up_front_when_memory_cannot_hold_it(corpus, tmp_path, monkeypatch):
    train, held = corpus
    stats = streamfit.accumulate([train], order=2)
    meta = sn.finalize_ngram(stats, tmp_path / "k.npy", form="kneser-ney").meta
    monkeypatch.setattr(tn, "available_memory", lambda: 1000)
    with pytest.raises(StreamfitError, match=r"needs about .* GiB .* available: keep the block"):
        tn.refine_ngram(stats, meta, tmp_path / "r.npy",
                        heldout=sn.token_batches([held], vocab_size=stats.n_classes))
    assert not list(tmp_path.glob("r.*"))


def test_cli_refines_an_ngram_model(corpus, tmp_path, capsys):
    cli = functools.partial(in_process_cli, capsys)
    train, held = corpus
    s, other = tmp_path / "s", tmp_path / "s2"
    assert cli("accumulate", "--order", 3, "--stats", s, "--quiet", train)[0] == 0
    assert cli("accumulate", "--order", 2, "--stats", other, "--quiet", train)[0] == 0
    assert cli("finalize", "--stats", s, "--form", "blocks", "--heldout", held, "--quiet",
               "--out", tmp_path / "b.npy")[0] == 0
    code, out, err = cli("refine", "--weights", tmp_path / "b.npy", s, "--heldout", held,
                         "--passes", 4, "--l2", 2, "--quiet", "--out", tmp_path / "r.npy")
    assert code == 0, err
    assert "maximum-entropy" in out and "held-out perplexity" in out
    refined = load_model(tmp_path / "r.npy", check=True)
    before = streamfit.evaluate(load_model(tmp_path / "b.npy"), [held])["cross_entropy"]
    after = streamfit.evaluate(refined, [held])["cross_entropy"]
    assert after <= before + 1e-12   # kept pass 0 (the block fit is optimal on held): equal to rounding
    assert abs(after - refined.meta["refinement"]["heldout"]) < 1e-9
    code, out, err = cli("info", tmp_path / "r.npy")
    assert code == 0 and "maximum entropy over" in out, err
    for args, message in [
            ((tmp_path / "b.npy", s), "--heldout"),
            ((tmp_path / "b.npy", other, "--heldout", held), "not the statistics"),
            ((tmp_path / "b.npy", train, "--heldout", held), "statistics directory"),
            ((tmp_path / "b.npy", s, "--heldout", held, "--method", "sgd"), "L-BFGS"),
            ((tmp_path / "r.npy", s, "--heldout", held), "maxent model"),
            ((tmp_path / "b.npy", s, "--heldout", held, "--passes", 0), "at least 1"),
            ((tmp_path / "b.npy", s, "--heldout", held, "--l2", -1), "at least 0"),
            ((tmp_path / "b.npy", s, "--heldout", held, "--l2", "nan"), "finite"),
    ]:
        code, _, err = cli("refine", "--weights", *args, "--quiet", "--out", tmp_path / "x.npy")
        assert code == 1 and message in err, (args, err)
    assert not list(tmp_path.glob("x.*"))


def test_context_chain_kernel_matches_its_numpy_twin(corpus):
    stats, levels, model, tables = setup(corpus[0], 4, True)
    ctable, cbits, _, _ = tables
    ids = {}
    for L in range(1, 4):
        for c, key in enumerate(levels.ctx_key[L]):
            ids[(L, int(key >> sn.CID_BITS), int(key & ((1 << sn.CID_BITS) - 1)))] = c
    rng = np.random.default_rng(5)
    context = rng.integers(0, levels.vocab_size + 2, size=(400, 3))
    context[:50, :2] = levels.vocab_size + 1   # document starts
    deepest, slots = mn.context_chains(ctable, cbits, context, 4)
    chain = np.where(slots >= 0, ctable[np.maximum(slots, 0), 1], -1)
    chain[:, 0] = -1
    want_deepest, want_chain = mn.context_chains_reference(ids, context, 4)
    np.testing.assert_array_equal(deepest, want_deepest)
    np.testing.assert_array_equal(chain, want_chain)
    assert len(set(deepest.tolist())) >= 3
