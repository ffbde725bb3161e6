"""A 200k-token vocabulary through the sparse path, never forming a V×V matrix.

The oracle: for a few examples, the full dense logit vector over all 200k classes, built
by hand from the counts (W_ij = log(F_ij + a) − log(f_i + a·V) averaged over the window,
plus the per-class term), and a plain logsumexp over it.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa

import streamfit
from streamfit.model.evaluate import iter_examples
from streamfit.solve.forms import class_log_totals

V = 200_000


def _corpus(rng, n_docs, doc_len):
    # Zipf-like ids spread over the whole vocabulary, so rows and classes are far apart.
    ids = np.minimum(rng.zipf(1.3, size=(n_docs, doc_len)) * 7919 % V, V - 1)
    return pa.table({"tokens": pa.array([row.astype(np.int32) for row in ids],
                                        type=pa.list_(pa.int32()))})


def test_sparse_path_200k_vocabulary(tmp_path):
    rng = np.random.default_rng(0)
    train, test = _corpus(rng, 200, 100), _corpus(rng, 20, 50)
    acc = streamfit.Accumulator("lm", window=2, vocab_size=V)
    acc.update(train)
    stats = acc.stats()
    assert stats.n_classes == V and stats.n_features == 2 * (V + 1)

    import pyarrow.parquet as pq
    pq.write_table(test, tmp_path / "test.parquet")
    tracemalloc.start()
    heldout = iter_examples([tmp_path / "test.parquet"], task="lm", window=2, n_classes=V,
                            n_features=stats.n_features)
    model = streamfit.finalize(stats, tmp_path / "w.npy", form="calibrated", smoothing=0.1,
                               heldout=heldout, layout="sparse")
    from streamfit.model.evaluate import evaluate
    result = evaluate(model, [tmp_path / "test.parquet"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A dense V×V float32 matrix would be 160 GB; the whole sparse run stays far below 1 GB.
    assert peak < 1 << 30

    # Oracle on the first examples: dense logits over all V classes, from the counts.
    ex = model.examples(test.slice(0, 1).to_batches()[0])
    nll, top, _ = model.score(ex, top_k=3)
    counts = stats.csr()
    a = model.meta["smoothing"]
    f = stats.feature_totals()
    bias = -model.meta["beta"] * class_log_totals(stats, a)
    for e in range(ex.n):
        rows = ex.indices[ex.indptr[e]:ex.indptr[e + 1]]
        w = np.zeros(V)
        for r in rows:
            w += (np.log(counts[r].toarray()[0] + a) - np.log(f[r] + a * V)) / len(rows)
        z = model.meta["tau"] * w + bias
        lse = np.logaddexp.reduce(z)
        assert np.isclose(nll[e], lse - z[ex.targets[e]], rtol=1e-6, atol=1e-6)
        expected_top = np.lexsort((np.arange(V), -z))[:3]
        assert np.array_equal(top[e], expected_top) or np.allclose(z[top[e]], z[expected_top])
    assert np.isfinite(result["cross_entropy"]) and result["n"] == 20 * 50
