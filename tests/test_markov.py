"""Known answers from a first-order Markov chain.

The bigram explicit solution (window 1, conditional form) is the maximum-likelihood estimate
of the transition matrix, so it must recover the chain up to sampling error, and its
held-out cross-entropy must approach the best any model can do: the chain's entropy rate
(plus, for each document's first token, the entropy of the stationary distribution).

Sampling noise is measured, not guessed: documents start from the stationary distribution
and are independent, so per-document losses are i.i.d. and their standard error is the
noise of a held-out mean. All bounds are 5 standard errors (or a union bound at 1e-6).
"""
from __future__ import annotations

import numpy as np
import pytest

import streamfit
from streamfit import synthetic
from streamfit.model import evaluate
from streamfit.solve import explicit as solve

N_STATES = 8
N_DOCS = 400
DOC_LEN = 200


@pytest.fixture
def chain(markov_corpus):
    corpus = markov_corpus(N_STATES, n_docs=N_DOCS, doc_len=DOC_LEN, concentration=1.0,
                           chain_seed=0)
    return corpus


def expected_entropy(transition: np.ndarray, doc_len: int) -> float:
    """Per-token entropy of documents that start from the stationary distribution: the
    first token costs H(pi), every later one the entropy rate."""
    pi = synthetic.stationary(transition)
    h_pi = float(-(pi * np.log(pi)).sum())
    return (h_pi + (doc_len - 1) * synthetic.entropy_rate(transition)) / doc_len


def true_doc_losses(transition: np.ndarray, docs) -> np.ndarray:
    """Mean per-token loss of the true chain on each document."""
    pi = synthetic.stationary(transition)
    out = []
    for d in docs:
        d = np.asarray(d)
        out.append((-np.log(pi[d[0]]) - np.log(transition[d[:-1], d[1:]]).sum()) / d.size)
    return np.array(out)


def model_doc_losses(model, path) -> np.ndarray:
    """Mean per-token loss of a model on each (equal-length) document."""
    nll = np.concatenate([model.score(ex)[0] for ex in evaluate.model_examples(model, [path])])
    return nll.reshape(-1, DOC_LEN).mean(axis=1)


def test_bigram_recovers_transition_matrix(chain):
    stats = streamfit.accumulate([chain.train], window=1)
    assert stats.n_classes == N_STATES
    model = solve.finalize(stats, form="conditional", smoothing=1e-3, dtype="float64")
    estimate = np.exp(np.asarray(model.dense)[:N_STATES])  # rows 0..V-1; row V is BOS

    # Oracle 1: the empirical transition frequencies, counted here from the documents.
    counts = np.zeros((N_STATES, N_STATES))
    for d in chain.train_docs:
        np.add.at(counts, (d[:-1], d[1:]), 1)
    visits = counts.sum(axis=1)
    a = 1e-3
    np.testing.assert_allclose(estimate, (counts + a) / (visits[:, None] + a * N_STATES),
                               rtol=1e-9, atol=0)

    # Oracle 2: the true chain. Given n_i transitions out of state i, each estimated entry is
    # a mean of n_i i.i.d. Bernoulli(T_ij) draws (strong Markov property), so by Hoeffding
    # P(|est - T_ij| > eps_i) <= 2 exp(-2 n_i eps_i^2); a union bound over the C^2 entries
    # at total probability 1e-6 gives eps_i = sqrt(log(2 C^2 / 1e-6) / (2 n_i)). The
    # smoothing moves an entry by at most a*C / n_i, negligible here (~1e-6).
    eps = np.sqrt(np.log(2 * N_STATES ** 2 / 1e-6) / (2 * visits)) + a * N_STATES / visits
    err = np.abs(estimate - chain.transition)
    assert visits.min() > 2000  # so the bound (~0.04) is informative
    assert (err <= eps[:, None]).all(), (err.max(axis=1), eps)
    # the rows are probability distributions
    np.testing.assert_allclose(estimate.sum(axis=1), 1.0, rtol=1e-12)


def test_bigram_heldout_cross_entropy_approaches_entropy_rate(chain):
    stats = streamfit.accumulate([chain.train], window=1)
    model = solve.finalize(stats, form="conditional", smoothing=0.01)
    ce = evaluate.evaluate(model, [chain.heldout])["cross_entropy"]

    h = expected_entropy(chain.transition, DOC_LEN)
    true_losses = true_doc_losses(chain.transition, chain.heldout_docs)
    noise = true_losses.std(ddof=1) / np.sqrt(true_losses.size)  # ~0.0025 nats
    n_train = stats.n_examples
    # The expected excess loss of a maximum-likelihood multinomial with C outcomes fitted on
    # n draws is (C - 1) / (2 n) nats; summed over rows weighted by visit frequency that is
    # C (C - 1) / (2 N) for N training transitions (~3.5e-4 here). Allow four times it.
    excess = 4 * N_STATES * (N_STATES - 1) / (2 * n_train)
    assert h - 5 * noise <= ce <= h + excess + 5 * noise, (ce, h, noise, excess)

    # Paired with the true chain on the same held-out documents, most of the noise cancels:
    # the model pays only its estimation error over the true chain.
    model_losses = model_doc_losses(model, chain.heldout)
    assert model_losses.mean() == pytest.approx(ce, rel=1e-12)
    diff = model_losses - true_losses
    paired_noise = diff.std(ddof=1) / np.sqrt(diff.size)
    assert -5 * paired_noise <= diff.mean() <= excess + 5 * paired_noise, \
        (diff.mean(), paired_noise, excess)
    assert excess + 5 * paired_noise < 0.01  # the check is tight, not vacuous


@pytest.mark.parametrize("form", ["conditional", "paper", "calibrated"])
def test_window_two_cannot_beat_first_order_chain(chain, form):
    """A second context token adds no information about a first-order chain: whatever the
    form, a window-2 model is no better than the entropy rate beyond sampling noise."""
    stats = streamfit.accumulate([chain.train], window=2)
    heldout = None
    if form == "calibrated":
        heldout = evaluate.iter_examples([chain.train], task="lm", window=2,
                                         n_classes=stats.n_classes, n_features=stats.n_features)
    model = solve.finalize(stats, form=form, smoothing=0.01, heldout=heldout)
    ce = evaluate.evaluate(model, [chain.heldout])["cross_entropy"]
    h = expected_entropy(chain.transition, DOC_LEN)
    true_losses = true_doc_losses(chain.transition, chain.heldout_docs)
    noise = true_losses.std(ddof=1) / np.sqrt(true_losses.size)
    assert ce >= h - 5 * noise, (ce, h, noise)
    diff = model_doc_losses(model, chain.heldout) - true_losses
    assert diff.mean() >= -5 * diff.std(ddof=1) / np.sqrt(diff.size)
