"""The explicit solution is a stationary point of the cross-entropy for one-hot inputs.

The gradient G = X̃ᵀ(Ŷ − Y) / n is computed here with plain numpy from the model's dense
logits on the training examples; it must vanish (up to the tiny smoothing) at the explicit
solution, and must not vanish once W is perturbed (so the check can fail).
"""
from __future__ import annotations

import numpy as np
import pytest

import streamfit
from streamfit.model import evaluate
from streamfit.solve import explicit as solve
from streamfit.model.weights import Model

from conftest import write_dense, write_sparse


def cross_entropy_gradient(model: Model, examples) -> np.ndarray:
    """X̃ᵀ(softmax(Z) − Y) / n over all examples, by plain numpy."""
    grad = np.zeros((model.n_features, model.n_classes))
    n = 0
    for ex in examples:
        z = model.logits(ex)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(ex.n), ex.targets] -= 1.0                  # Ŷ − Y
        row_of = np.repeat(np.arange(ex.n), np.diff(ex.indptr))
        np.add.at(grad, ex.indices, ex.values[:, None] * p[row_of])  # X̃ᵀ (Ŷ − Y)
        n += ex.n
    return grad / n


def perturbed(model: Model, seed: int = 0, scale: float = 0.3) -> Model:
    rng = np.random.default_rng(seed)
    w = np.asarray(model.dense, dtype=np.float64)
    return Model(task=model.task, n_classes=model.n_classes, n_features=model.n_features,
                 tau=model.tau, bias=model.bias, window=model.window,
                 dense=w + rng.normal(scale=scale, size=w.shape))


def examples_of(stats, paths, batch_rows=50):
    return list(evaluate.iter_examples(paths, task=stats.task, window=stats.window,
                                       n_classes=stats.n_classes, n_features=stats.n_features,
                                       batch_rows=batch_rows))


def test_bigram_gradient_vanishes_at_explicit_solution(markov_corpus):
    corpus = markov_corpus(6, n_docs=60, doc_len=80, concentration=0.5, chain_seed=3)
    stats = streamfit.accumulate([corpus.train], window=1)
    model = solve.finalize(stats, form="conditional", smoothing=1e-12, dtype="float64")
    examples = examples_of(stats, [corpus.train])
    assert sum(ex.n for ex in examples) == 60 * 80  # every token, the first ones from BOS

    grad = cross_entropy_gradient(model, examples)
    assert np.abs(grad).max() < 1e-6
    grad_off = cross_entropy_gradient(perturbed(model), examples)
    assert np.abs(grad_off).max() > 1e-3


def test_bigram_gradient_does_not_vanish_with_large_smoothing(markov_corpus):
    """The stationary point is the unsmoothed MLE: heavy smoothing moves away from it, so
    the vanishing above is a property of the solution and not of the gradient code."""
    corpus = markov_corpus(6, n_docs=60, doc_len=80, concentration=0.5, chain_seed=3)
    stats = streamfit.accumulate([corpus.train], window=1)
    model = solve.finalize(stats, form="conditional", smoothing=5.0, dtype="float64")
    assert np.abs(cross_entropy_gradient(model, examples_of(stats, [corpus.train]))).max() > 1e-3


@pytest.mark.parametrize("layout", ["sparse_columns", "dense_column"])
def test_one_hot_classify_gradient_vanishes_at_explicit_solution(tmp_path, layout):
    """One non-zero feature per row, of any positive size (x̃ is one-hot after
    normalisation), labels that depend on it; plus a few all-zero rows, which add nothing."""
    rng = np.random.default_rng(7)
    n, n_features, n_classes = 1500, 10, 4
    feature = rng.integers(0, n_features, size=n)
    prefs = rng.dirichlet(np.full(n_classes, 0.7), size=n_features)
    labels = np.array([rng.choice(n_classes, p=prefs[f]) for f in feature])
    size = rng.choice([0.5, 1.0, 3.0, 17.25], size=n)
    dense = np.zeros((n, n_features))
    dense[np.arange(n), feature] = size
    dense[:5] = 0.0  # empty rows
    path = tmp_path / "onehot.parquet"
    if layout == "dense_column":
        write_dense(path, labels, dense, row_group_size=400)
    else:
        idx = [[int(f)] if r >= 5 else [] for r, f in enumerate(feature)]
        val = [[float(s)] if r >= 5 else [] for r, s in enumerate(size)]
        write_sparse(path, labels, idx, val, row_group_size=400)

    stats = streamfit.accumulate([path])
    assert stats.task == "classify" and stats.empty_rows == 5
    model = solve.finalize(stats, form="conditional", smoothing=1e-12, dtype="float64")
    examples = examples_of(stats, [path], batch_rows=300)
    grad = cross_entropy_gradient(model, examples)
    assert np.abs(grad).max() < 1e-6
    assert np.abs(cross_entropy_gradient(perturbed(model, seed=1), examples)).max() > 1e-3
