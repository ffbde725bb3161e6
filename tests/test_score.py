"""`streamfit score` and `model.score_documents`: per-document scores.

Oracles: for window models, the softmax computed here in numpy from the weight arrays
(dense W, or sparse S made dense) over the window features built here; for n-gram models,
the model's probability function `distribution(context)` over the whole vocabulary, one
context at a time from the document's own prefix; and `evaluate`'s cross-entropy, which the
documents' log-probabilities must add up to. Classifiers: argmax of the full softmax.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamfit
from streamfit.cli import main
from streamfit.errors import OptionError, StreamfitError
from streamfit.model.weights import load_model
from streamfit.solve.ngram import finalize_ngram, token_batches

from conftest import write_dense

V = 7


def docs_of(seed: int, n: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.6))
    return [rng.choice(V, size=int(rng.integers(0, 12)), p=p).tolist() for _ in range(n)]


def write_docs(path, docs, row_group_size=9):
    pq.write_table(pa.table({"tokens": pa.array(docs, pa.list_(pa.int32())),
                             "doc_id": pa.array([f"d{i}" for i in range(len(docs))]),
                             "length": pa.array([len(d) for d in docs], pa.int64())}),
                   path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score")
    train, held, test = docs_of(1, 120), docs_of(2, 40), docs_of(3, 30)
    test[4] = []  # a document without tokens
    return dict(folder=folder, train=write_docs(folder / "train.parquet", train),
                held=write_docs(folder / "held.parquet", held),
                test=write_docs(folder / "test.parquet", test), test_docs=test)


def window_oracle(model, docs) -> np.ndarray:
    """Σ log p(token | window) per document, from the weight arrays in numpy."""
    m, v = model.window, model.n_classes
    if model.dense is not None:
        w = np.asarray(model.dense, np.float64)
    else:
        indptr, indices, data = model.sparse
        w = np.zeros((model.n_features, v))
        for r in range(model.n_features):
            w[r, indices[indptr[r]:indptr[r + 1]]] = data[indptr[r]:indptr[r + 1]]
    bias = np.zeros(v) if model.bias is None else np.asarray(model.bias, np.float64)
    out = []
    for d in docs:
        total = 0.0
        for t, y in enumerate(d):
            x = np.zeros(model.n_features)
            for k in range(m):
                x[k * (v + 1) + (d[t - 1 - k] if t - 1 - k >= 0 else v)] += 1.0 / m
            z = model.tau * (x @ w) + bias
            total += z[y] - np.log(np.exp(z - z.max()).sum()) - z.max()
        out.append(total)
    return np.array(out)


def ngram_oracle(model, docs) -> np.ndarray:
    """Σ log p(token | prefix) per document, each from the model's full distribution."""
    out = []
    for d in docs:
        total = 0.0
        for t, y in enumerate(d):
            p = model.distribution(d[:t])
            assert p.sum() == pytest.approx(1.0, abs=1e-6)   # compact: values as stored
            total += np.log(p[y])
        out.append(total)
    return np.array(out)


def check_scores(table: pa.Table, docs, expected: np.ndarray, model, test_path):
    n = np.array([len(d) for d in docs])
    assert table["n_tokens"].to_pylist() == n.tolist()
    np.testing.assert_allclose(table["log_prob"].to_numpy(), expected, rtol=1e-9, atol=1e-9)
    ppl = table["perplexity"].to_pylist()
    for i in range(len(docs)):
        if n[i] == 0:
            assert ppl[i] is None and expected[i] == 0
        else:
            assert ppl[i] == pytest.approx(np.exp(-expected[i] / n[i]), rel=1e-9)
    ev = streamfit.evaluate(model, [test_path])
    assert -expected.sum() / n.sum() == pytest.approx(ev["cross_entropy"], rel=1e-9)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("form", ["conditional", "paper"])
def test_window_model_document_scores(corpus, tmp_path, layout, form):
    stats = streamfit.accumulate([corpus["train"]], window=2, vocab_size=V)
    model = streamfit.finalize(stats, tmp_path / "w.npy", form=form, layout=layout,
                               dtype="float32")
    model = load_model(tmp_path / "w.npy")
    table = model.score_documents(pq.read_table(corpus["test"]))
    check_scores(table, corpus["test_docs"], window_oracle(model, corpus["test_docs"]), model,
                 corpus["test"])


@pytest.mark.parametrize("form", ["kneser-ney", "blocks", "compact int8"])
def test_ngram_document_scores(corpus, tmp_path, form):
    stats = streamfit.accumulate([corpus["train"]], order=3)
    held = token_batches([corpus["held"]], vocab_size=stats.n_classes) if form != "kneser-ney" else None
    if form == "compact int8":   # a compact, pruned and quantised model (issue 16)
        from streamfit.solve.shrink import finalize_small

        finalize_small(stats, tmp_path / "n.npy", form="blocks", heldout=held, prune_count=2,
                       quantize="int8")
        model = load_model(tmp_path / "n.npy")
        assert type(model).__name__ == "CompactNgramModel"
    else:
        model = finalize_ngram(stats, tmp_path / "n.npy", form=form, heldout=held)
    batch = pq.read_table(corpus["test"]).combine_chunks().to_batches()[0]   # a RecordBatch
    table = model.score_documents(batch)
    check_scores(table, corpus["test_docs"], ngram_oracle(model, corpus["test_docs"]), model,
                 corpus["test"])


def test_classifier_scores_are_the_argmax(tmp_path):
    rng = np.random.default_rng(0)
    labels, x = rng.integers(0, 3, 50), rng.random((50, 4))
    path = write_dense(tmp_path / "c.parquet", labels, x)
    model = streamfit.finalize(streamfit.accumulate([path]), form="paper")
    table = model.score_documents(pq.read_table(path))
    p = model.predict_proba(pq.read_table(path))
    assert table["predicted"].to_pylist() == np.argmax(p, axis=1).tolist()
    np.testing.assert_allclose(table["probability"].to_numpy(), p.max(axis=1), rtol=1e-9)
    streamfit.finalize(streamfit.accumulate([path]), tmp_path / "m.npy", form="paper")
    assert main(["score", "--weights", str(tmp_path / "m.npy"), str(path), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 0
    out = pq.read_table(tmp_path / "o" / "c.parquet")
    assert out.column_names == ["label", "predicted", "probability"]
    assert out["predicted"].to_pylist() == table["predicted"].to_pylist()


def test_score_command_writes_beside_the_other_columns(corpus, tmp_path, capsys):
    stats = streamfit.accumulate([corpus["train"]], order=3)
    finalize_ngram(stats, tmp_path / "n.npy", form="kneser-ney")
    model = load_model(tmp_path / "n.npy")
    expected = model.score_documents(pq.read_table(corpus["test"]))
    sub = corpus["folder"] / "more"
    sub.mkdir(exist_ok=True)
    second = write_docs(sub / "test.parquet", corpus["test_docs"][:7], row_group_size=3)
    args = ["score", "--weights", str(tmp_path / "n.npy"), str(corpus["test"]), str(second),
            "--quiet"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    out = pq.read_table(tmp_path / "one" / "test.parquet")
    assert out.column_names == ["doc_id", "length", "n_tokens", "log_prob", "perplexity"]
    assert out.select(["n_tokens", "log_prob", "perplexity"]).equals(expected)
    assert out["doc_id"].to_pylist() == [f"d{i}" for i in range(len(corpus["test_docs"]))]
    assert pq.read_table(tmp_path / "one" / "more" / "test.parquet")["n_tokens"].to_pylist() == \
        expected["n_tokens"].to_pylist()[:7]
    manifest = json.loads((tmp_path / "one" / "score.json").read_text())
    assert manifest["documents"] == len(corpus["test_docs"]) + 7
    assert manifest["tokens"] == sum(map(len, corpus["test_docs"])) + sum(map(len, corpus["test_docs"][:7]))
    # --jobs 2 writes the same rows in the same order
    assert main(args + ["--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    for name in ("test.parquet", "more/test.parquet"):
        assert pq.read_table(tmp_path / "two" / name).equals(pq.read_table(tmp_path / "one" / name))
    # --max-perplexity keeps exactly the rows at or under it; --id-column keeps only that
    limit = float(np.nanmedian(np.array(expected["perplexity"].to_pylist(), dtype=float)))
    assert main(args + ["--out", str(tmp_path / "kept"), "--max-perplexity", str(limit),
                        "--id-column", "doc_id"]) == 0
    kept = pq.read_table(tmp_path / "kept" / "test.parquet")
    assert kept.column_names == ["doc_id", "n_tokens", "log_prob", "perplexity"]
    want = [f"d{i}" for i, p in enumerate(expected["perplexity"].to_pylist())
            if p is not None and p <= limit]
    assert kept["doc_id"].to_pylist() == want and 0 < len(want) < len(corpus["test_docs"])
    # refusals, before any work
    assert main(args + ["--out", str(tmp_path / "one")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--out", str(corpus["folder"])]) == 1
    assert "did not write" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--id-column", "nope"]) == 1
    assert "nope" in capsys.readouterr().err and not (tmp_path / "x").exists()
    pq.write_table(pa.table({"tokens": pa.array([[1]], pa.list_(pa.int32())),
                             "perplexity": [1.0]}), tmp_path / "clash.parquet")
    with pytest.raises(OptionError, match="perplexity"):
        streamfit.score(tmp_path / "n.npy", [tmp_path / "clash.parquet"], tmp_path / "y")
    pq.write_table(pa.table({"tokens": pa.array([[1], [V + 3]], pa.list_(pa.int32()))}),
                   tmp_path / "bad.parquet")
    with pytest.raises(StreamfitError, match="bad.parquet.*row 1"):
        streamfit.score(tmp_path / "n.npy", [tmp_path / "bad.parquet"], tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_outputs_have_the_columns_corpus_schemas_lists(corpus, tmp_path):
    """data_schemas/corpus_schemas.json: document_scores and tokenized_text, name and type."""
    from pathlib import Path

    schemas = json.loads((Path(__file__).resolve().parents[1] / "data_schemas" /
                          "corpus_schemas.json").read_text())
    types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(),
             "list<int32>": pa.list_(pa.int32())}
    finalize_ngram(streamfit.accumulate([corpus["train"]], order=2), tmp_path / "n.npy",
                   form="kneser-ney")
    streamfit.score(tmp_path / "n.npy", [corpus["test"]], tmp_path / "s", id_column="doc_id")
    got = pq.read_table(tmp_path / "s" / "test.parquet").schema
    listed = schemas["document_scores"]["columns_lm"]
    assert got.names == ["doc_id", *listed]
    assert all(got.field(n).type == types[c["type"]] for n, c in listed.items())
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("one two\nthree\n")
    streamfit.tokenize([tmp_path / "t"], tmp_path / "tok")
    got = pq.read_table(tmp_path / "tok" / "tokens.parquet").schema
    listed = schemas["tokenized_text"]["columns"]
    assert got.names == list(listed)
    assert all(got.field(n).type == types[c["type"]] for n, c in listed.items())
    rng = np.random.default_rng(0)
    path = write_dense(tmp_path / "c.parquet", rng.integers(0, 3, 20), rng.random((20, 4)))
    streamfit.finalize(streamfit.accumulate([path]), tmp_path / "c.npy")
    streamfit.score(tmp_path / "c.npy", [path], tmp_path / "cs")
    got = pq.read_table(tmp_path / "cs" / "c.parquet").schema
    listed = schemas["document_scores"]["columns_classify"]
    assert got.names == ["label", *listed]
    assert all(got.field(n).type == types[c["type"]] for n, c in listed.items())
