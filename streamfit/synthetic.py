"""Synthetic corpora with known answers, for tests and benchmarks.

A first-order Markov chain's transition matrix is exactly what the bigram explicit solution
estimates, and its entropy rate is the lowest per-token cross-entropy any model can reach.
"""
from __future__ import annotations

import numpy as np


def markov_chain(n_states: int, *, concentration: float = 0.3, seed: int = 0) -> np.ndarray:
    """A random row-stochastic transition matrix (rows drawn from a Dirichlet)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(n_states, concentration), size=n_states)


def stationary(transition: np.ndarray, tol: float = 1e-15, max_steps: int = 100_000) -> np.ndarray:
    """The stationary distribution by power iteration (O(V²) a step; a dense
    eigendecomposition would be O(V³), minutes at V = 8192)."""
    pi = np.full(transition.shape[0], 1.0 / transition.shape[0])
    for _ in range(max_steps):
        nxt = pi @ transition
        nxt /= nxt.sum()
        if np.abs(nxt - pi).sum() < tol:
            return nxt
        pi = nxt
    raise ValueError("the chain did not reach its stationary distribution (periodic or reducible?)")


def entropy_rate(transition: np.ndarray) -> float:
    """Per-token entropy (nats) of the chain in its stationary regime."""
    pi = stationary(transition)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(transition > 0, transition * np.log(transition), 0.0).sum(axis=1)
    return float(pi @ h)


def sample_documents(transition: np.ndarray, n_docs: int, doc_len: int, *, seed: int = 1,
                     dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """n_docs documents of doc_len tokens, each starting from the stationary distribution.
    Returns (tokens, doc_offsets). Vectorised across documents: one step per position."""
    rng = np.random.default_rng(seed)
    n_states = transition.shape[0]
    # Row i's CDF shifted by i makes one increasing array: a single searchsorted samples
    # the next state of every document at once.
    cdf = np.cumsum(transition, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(n_states)[:, None]).ravel()
    out = np.empty((n_docs, doc_len), dtype=dtype)
    state = rng.choice(n_states, size=n_docs, p=stationary(transition))
    for t in range(doc_len):
        out[:, t] = state
        nxt = np.searchsorted(flat, state + rng.random(n_docs), side="right") - state * n_states
        state = np.minimum(nxt, n_states - 1)
    offsets = np.arange(0, n_docs * doc_len + 1, doc_len, dtype=np.int64)
    return out.ravel(), offsets
