"""Shared helpers: small corpora written to Parquet, and pure-Python oracles.

The oracles (`lm_count_oracle`, `classify_mass_oracle`) are written as plain loops over
Python lists, independently of the package, so that a test comparing the package with them
checks the package against the definition in DESIGN.md rather than against itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamfit import synthetic


# --- writing corpora ----------------------------------------------------------------------
def write_tokens(path: Path, docs: list[list[int]], *, row_group_size: int | None = None,
                 value_type: pa.DataType = pa.int32(), column: str = "tokens") -> Path:
    """A token corpus: one list<integer> row per document."""
    table = pa.table({column: pa.array(docs, type=pa.list_(value_type))})
    pq.write_table(table, path, row_group_size=row_group_size or max(len(docs), 1))
    return path


def write_dense(path: Path, labels, features, *, row_group_size: int | None = None,
                value_type: pa.DataType = pa.float64()) -> Path:
    """A feature corpus with a dense list<float> `features` column."""
    rows = [list(map(float, r)) for r in features]
    table = pa.table({"label": pa.array(np.asarray(labels, dtype=np.int64)),
                      "features": pa.array(rows, type=pa.list_(value_type))})
    pq.write_table(table, path, row_group_size=row_group_size or max(len(rows), 1))
    return path


def write_sparse(path: Path, labels, indices, values, *, row_group_size: int | None = None,
                 with_label: bool = True) -> Path:
    """A feature corpus with sparse `indices` + `values` list columns."""
    cols = {}
    if with_label:
        cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    cols["indices"] = pa.array([list(map(int, r)) for r in indices], type=pa.list_(pa.int64()))
    cols["values"] = pa.array([list(map(float, r)) for r in values], type=pa.list_(pa.float64()))
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size or max(len(indices), 1))
    return path


# --- Markov corpora -----------------------------------------------------------------------
@dataclass
class MarkovCorpus:
    transition: np.ndarray       # the true chain
    train: Path
    heldout: Path
    train_docs: list[list[int]]
    heldout_docs: list[list[int]]

    @property
    def n_states(self) -> int:
        return self.transition.shape[0]


def markov_docs(transition: np.ndarray, n_docs: int, doc_len: int, seed: int) -> list[list[int]]:
    tokens, offsets = synthetic.sample_documents(transition, n_docs, doc_len, seed=seed)
    return [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(n_docs)]


@pytest.fixture
def markov_corpus(tmp_path):
    """Factory: a first-order Markov chain and train / held-out Parquet files sampled from
    it, each written in several row groups."""
    def make(n_states: int = 8, *, n_docs: int = 200, doc_len: int = 100,
             heldout_docs: int | None = None, concentration: float = 1.0, chain_seed: int = 0,
             row_group_size: int = 37) -> MarkovCorpus:
        transition = synthetic.markov_chain(n_states, concentration=concentration, seed=chain_seed)
        train = markov_docs(transition, n_docs, doc_len, seed=chain_seed + 1)
        held = markov_docs(transition, heldout_docs or n_docs, doc_len, seed=chain_seed + 2)
        tdir = tmp_path / f"markov{n_states}-{chain_seed}"
        tdir.mkdir(exist_ok=True)
        return MarkovCorpus(transition,
                            write_tokens(tdir / "train.parquet", train, row_group_size=row_group_size),
                            write_tokens(tdir / "heldout.parquet", held, row_group_size=row_group_size),
                            train, held)
    return make


# --- feature corpora ----------------------------------------------------------------------
def random_feature_rows(rng: np.random.Generator, n_rows: int, n_features: int, n_classes: int,
                        *, density: float = 0.4, zero_rows: int = 0):
    """Dense non-negative rows that depend on the label (so a classifier has something to
    learn), some entries zero, `zero_rows` rows all zero."""
    labels = rng.integers(0, n_classes, size=n_rows)
    centre = rng.gamma(1.0, size=(n_classes, n_features))
    x = rng.gamma(2.0, size=(n_rows, n_features)) * centre[labels]
    x *= rng.random((n_rows, n_features)) < density
    x[rng.choice(n_rows, size=zero_rows, replace=False)] = 0.0
    return labels, x


def dense_examples(x: np.ndarray, y: np.ndarray, rows: int | None = None) -> list:
    """Dense rows as featurize.Examples (CSR, zeros left out), in batches of `rows` (one batch
    when None)."""
    from streamfit.data.featurize import Examples

    out = []
    rows = rows or y.size
    for lo in range(0, y.size, rows):
        part = x[lo:lo + rows]
        nz = part != 0
        indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
        out.append(Examples(indptr, np.nonzero(nz)[1].astype(np.int64), part[nz],
                            y[lo:lo + rows].astype(np.int64)))
    return out


def dense_to_sparse(x: np.ndarray):
    indices = [np.flatnonzero(r).tolist() for r in x]
    values = [r[np.flatnonzero(r)].tolist() for r in x]
    return indices, values


# --- oracles ------------------------------------------------------------------------------
def lm_count_oracle(docs: list[list[int]], window: int, vocab_size: int) -> np.ndarray:
    """F for a token corpus, by definition: for every token t of every document and every
    position k < window, F[k*(V+1) + context, t] += 1, context = the token k+1 places
    before t, or V (BOS) before the document's start."""
    v = vocab_size
    f = np.zeros((window * (v + 1), v), dtype=np.int64)
    for doc in docs:
        for t, target in enumerate(doc):
            for k in range(window):
                ctx = doc[t - 1 - k] if t - 1 - k >= 0 else v
                f[k * (v + 1) + ctx, target] += 1
    return f


def classify_mass_oracle(labels, indices, values, n_features: int, n_classes: int) -> np.ndarray:
    """F for a feature corpus, by definition: each row adds x / sum(x) at (feature, label);
    an all-zero row adds nothing."""
    f = np.zeros((n_features, n_classes))
    for y, idx, val in zip(labels, indices, values):
        total = float(sum(val))
        if total <= 0:
            continue
        for i, v in zip(idx, val):
            f[i, y] += v / total
    return f


# --- processes ----------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `streamfit ARGS` in-process: (exit code, stdout, stderr)."""
    from streamfit.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def ok(*args) -> None:
    """Run a command in-process that must succeed (in fixtures, where capsys is not available)."""
    from streamfit.cli import main
    assert main([str(a) for a in args]) == 0, args


def run_cli(args, fault=None) -> subprocess.CompletedProcess:
    """`python -m streamfit ARGS` in a subprocess, with STREAMFIT_FAULT set to `fault` (a
    fault point that SIGKILLs the process, e.g. "after_checkpoint:2") or unset."""
    env = dict(os.environ)
    env.pop("STREAMFIT_FAULT", None)
    if fault:
        env["STREAMFIT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "streamfit", *map(str, args)], env=env,
                          capture_output=True, text=True)
