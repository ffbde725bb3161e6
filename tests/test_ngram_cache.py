"""The document cache of n-gram models (`model.cache`, `solve.cache`, `finalize --cache`).

Oracles: the numpy twin of the document-count kernel; a grid over λ for the held-out fit
(its likelihood is concave, so the fitted λ must beat every grid point); the mixture written
out per document from the n-gram model's full distribution over the classes (every class
scored, the document's counts recounted in Python), against which evaluate, score, predict
and the normalisation are checked.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

import streamfit
from streamfit.errors import OptionError
from streamfit.model import cache as mc
from streamfit.model.ngram import context_rows
from streamfit.model.weights import load_model
from streamfit.solve import cache as sc
from streamfit.solve import ngram as sn
from streamfit.train import ngram as tn

from conftest import cli, write_tokens

VOCAB = 10


def topical_docs(seed: int, n_docs: int, max_len: int = 30) -> list[list[int]]:
    """Documents that each repeat a few tokens of their own, among background tokens: what
    a cache can predict and an n-gram context cannot."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        own = rng.choice(VOCAB, size=2, replace=False)
        n = int(rng.integers(0, max_len))
        docs.append([int(own[rng.integers(2)]) if rng.random() < 0.5 else int(rng.integers(VOCAB))
                     for _ in range(n)])
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ngram_cache")
    train, held, test = topical_docs(1, 150), topical_docs(2, 80), topical_docs(3, 40)
    return {"train": write_tokens(folder / "train.parquet", train, row_group_size=40),
            "held": write_tokens(folder / "held.parquet", held, row_group_size=30),
            "test": write_tokens(folder / "test.parquet", test, row_group_size=16),
            "test_docs": test, "folder": folder}


def flat(docs):
    tokens = np.array([t for d in docs for t in d], dtype=np.int64)
    return tokens, np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)


def oracle_log_probs(model, docs, eos: bool) -> list[np.ndarray]:
    """Per document, log p of each prediction: w0 p_ngram + w1 c(y)/t + w2 c(x, y)/c(x •)
    written out, with p_ngram from the model's full distribution over every class (which
    must sum to 1) and the document's counts recounted."""
    weights = np.asarray(model.meta["cache"]["weights"])
    C, bos = model.n_classes, model.vocab_size + 1
    out = []
    for doc in docs:
        targets = list(doc) + ([model.vocab_size] if eos else [])
        lps = []
        for t, y in enumerate(targets):
            ctx = ([bos] * (model.order - 1) + list(doc[:t]))[t:] if model.order > 1 else []
            rows = np.tile(np.array(ctx, np.int64), (C, 1)).reshape(C, model.order - 1)
            p = np.exp(model.log_prob(rows, np.arange(C)))
            assert abs(p.sum() - 1) < 1e-9
            after = [doc[j] for j in range(1, t) if doc[j - 1] == doc[t - 1]]
            b = 0 if t == 0 else min(1 + int(math.floor(math.log2(t))), mc.N_BUCKETS - 1)
            w = weights[2 * b + (len(after) > 0)]
            mixed = w[0] * p
            if t:
                mixed = mixed + w[1] * np.array([doc[:t].count(c) / t for c in range(C)])
            if after:
                mixed = mixed + w[2] * np.array([after.count(c) / len(after) for c in range(C)])
            assert abs(mixed.sum() - 1) < 1e-9
            lps.append(math.log(mixed[y]))
        out.append(np.array(lps))
    return out


# --- kernels ------------------------------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(st.lists(st.lists(st.integers(0, 5), max_size=12), max_size=8), st.booleans())
def test_document_counts_match_their_numpy_twin(docs, eos):
    tokens, offsets = flat(docs)
    _, target = context_rows(tokens, offsets, 2, 6, eos)
    bounds = mc.prediction_offsets(offsets, eos)
    got = mc.document_counts(target, bounds, 7)
    want = mc.document_counts_reference(target, bounds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_document_counts_of_long_documents_match_their_numpy_twin():
    rng = np.random.default_rng(4)   # many distinct pairs: the pair table's probing is exercised
    target = rng.integers(0, 60, 2600)
    offsets = np.array([0, 1, 1800, 1801, 2600])
    for g, w in zip(mc.document_counts(target, offsets, 60),
                    mc.document_counts_reference(target, offsets)):
        np.testing.assert_array_equal(g, w)


def test_compiled_mixture_matches_its_numpy_twin():
    rng = np.random.default_rng(5)
    n = 3000
    seen = rng.integers(0, 5000, n)
    seen[:50] = 0
    count = np.minimum(rng.integers(0, 30, n), seen)
    follows = np.minimum(rng.integers(0, 5, n), np.maximum(seen - 1, 0))
    pairs = np.minimum(rng.integers(0, 3, n), follows)
    weights = rng.dirichlet(np.ones(3), 2 * mc.N_BUCKETS)
    weights[0::2, 0] += weights[0::2, 2]
    weights[0::2, 2] = 0
    log_p = np.log(rng.uniform(1e-6, 1, n))
    counts = (seen, count, follows, pairs)
    np.testing.assert_allclose(mc.mixed(log_p, *counts, weights), mc.mix(log_p, counts, weights),
                               rtol=0, atol=1e-12)


def test_bucket_of_the_tokens_seen():
    seen = np.array([0, 1, 2, 3, 4, 7, 8, 1 << 20])
    np.testing.assert_array_equal(mc.cache_bucket(seen), [0, 1, 2, 2, 3, 3, 4, mc.N_BUCKETS - 1])


def test_fitted_weights_beat_every_grid_point():
    rng = np.random.default_rng(0)
    n = 6000
    seen = rng.integers(0, 40, n)
    count = np.where(seen > 0, rng.binomial(np.maximum(seen, 1), 0.2), 0)
    follows = np.where(seen > 1, rng.integers(0, 4, n), 0)
    pairs = np.where(follows > 0, rng.binomial(follows, 0.4), 0)
    counts = (seen, count, follows, pairs)
    log_p = np.log(rng.uniform(0.01, 0.5, n))
    weights = sc.fit_weights(log_p, counts)
    np.testing.assert_allclose(weights.sum(1), 1, atol=1e-12)
    np.testing.assert_array_equal(weights[0], [1, 0, 0])   # no token before: the n-gram alone
    assert (weights[0::2, 2] == 0).all()                     # no bigram cache: no weight for it
    group = mc.cache_group(seen, follows)
    logs = mc.parts(log_p, *counts)
    grid = [(a, b, max(0.0, 1 - a - b)) for a in np.linspace(0, 1, 51) for b in np.linspace(0, 1, 51)
            if a + b <= 1 + 1e-12]
    for g in range(2, 2 * mc.N_BUCKETS):
        at = group == g
        if not at.any():   # no held-out predictions: the bucket below's weights
            np.testing.assert_array_equal(weights[g], weights[g - 2])
            continue
        def loglik(w):
            with np.errstate(divide="ignore"):
                return np.logaddexp.reduce(np.log(w) + logs[at], axis=1).sum()
        best = max(loglik(np.array(w)) for w in grid if g % 2 or w[2] == 0)
        assert loglik(weights[g]) >= best - 1e-6, g
        assert weights[g, 1] > 0


# --- the model: every path against the mixture written out ---------------------------------
@pytest.mark.parametrize("order,eos,form", [(2, False, "blocks"), (3, True, "blocks"),
                                             (3, False, "kneser-ney")])
def test_evaluate_score_and_predict_apply_the_cache(corpus, tmp_path, order, eos, form):
    stats = streamfit.accumulate([corpus["train"]], order=order, eos=eos)
    held = sn.token_batches([corpus["held"]], vocab_size=stats.n_classes)
    sn.finalize_ngram(stats, tmp_path / "c.npy", form=form, heldout=held, cache=True)
    model = load_model(tmp_path / "c.npy")
    docs = corpus["test_docs"]
    want = oracle_log_probs(model, docs, eos)
    words = np.concatenate([w[:len(d)] for w, d in zip(want, docs)])
    res = streamfit.evaluate(model, [corpus["test"]])
    assert res["n"] == words.size
    assert res["cross_entropy"] == pytest.approx(-words.mean(), abs=1e-12)
    if eos:
        every = np.concatenate(want)
        assert res["perplexity_with_eos"] == pytest.approx(math.exp(-every.mean()), rel=1e-12)
    table = model.score_documents(pq.read_table(corpus["test"]))
    np.testing.assert_allclose(table.column("log_prob").to_numpy(),
                               [w[:len(d)].sum() for w, d in zip(want, docs)], rtol=0, atol=1e-10)
    for doc, w in zip(docs[:6], want[:6]):   # predict: the context is the document so far
        for t in range(len(doc)):
            p = model.distribution(doc[:t])
            assert abs(p.sum() - 1) < 1e-12
            assert math.log(p[doc[t]]) == pytest.approx(w[t], abs=1e-12)
    info = model.meta["cache"]
    assert info["cross_entropy"] < info["cross_entropy_without"]   # these documents repeat
    weights = np.asarray(info["weights"])
    assert weights[:, 1].max() > 0.05 and weights[1::2, 2].max() > 0.01


def test_the_cache_fit_records_its_heldout_figures(corpus, tmp_path):
    stats = streamfit.accumulate([corpus["train"]], order=2)
    sn.finalize_ngram(stats, tmp_path / "b.npy", form="blocks", cache=True,
                      heldout=sn.token_batches([corpus["held"]], vocab_size=stats.n_classes))
    sn.finalize_ngram(stats, tmp_path / "p.npy", form="blocks",
                      heldout=sn.token_batches([corpus["held"]], vocab_size=stats.n_classes))
    cached, plain = load_model(tmp_path / "b.npy"), load_model(tmp_path / "p.npy")
    assert "cache" not in plain.meta   # a model without it scores as before
    assert cached.meta["theta"] == plain.meta["theta"]
    info = cached.meta["cache"]
    assert info["cross_entropy"] == pytest.approx(
        streamfit.evaluate(cached, [corpus["held"]])["cross_entropy"], abs=1e-12)
    assert info["cross_entropy_without"] == pytest.approx(
        streamfit.evaluate(plain, [corpus["held"]])["cross_entropy"], abs=1e-12)


def test_refine_fits_the_cache_again(corpus, tmp_path):
    stats = streamfit.accumulate([corpus["train"]], order=2)
    sn.finalize_ngram(stats, tmp_path / "b.npy", form="blocks", cache=True,
                      heldout=sn.token_batches([corpus["held"]], vocab_size=stats.n_classes))
    blocks = load_model(tmp_path / "b.npy")
    tn.refine_ngram(stats, blocks.meta, tmp_path / "r.npy", l2s=[4.0], max_iter=5,
                    heldout=sn.token_batches([corpus["held"]], vocab_size=stats.n_classes))
    refined = load_model(tmp_path / "r.npy")
    info = refined.meta["cache"]
    assert info["cross_entropy_without"] == pytest.approx(refined.meta["refinement"]["heldout"],
                                                          abs=1e-9)
    assert info["cross_entropy"] == pytest.approx(
        streamfit.evaluate(refined, [corpus["held"]])["cross_entropy"], abs=1e-12)


def test_cache_needs_heldout_data(corpus, tmp_path):
    stats = streamfit.accumulate([corpus["train"]], order=2)
    with pytest.raises(OptionError, match="--heldout"):
        sn.finalize_ngram(stats, tmp_path / "k.npy", form="kneser-ney", cache=True)
    assert not list(tmp_path.iterdir())


# --- the commands -----------------------------------------------------------------------
def test_cli_finalize_cache_evaluate_predict_score(corpus, tmp_path, capsys):
    s = tmp_path / "s"
    assert cli(capsys, "accumulate", corpus["train"], "--order", 3, "--stats", s, "--quiet")[0] == 0
    rc, out, err = cli(capsys, "finalize", "--stats", s, "--out", tmp_path / "c.npy",
                       "--heldout", corpus["held"], "--cache", "--quiet")
    assert rc == 0, err
    assert "document cache" in out
    model = load_model(tmp_path / "c.npy")
    rc, out, _ = cli(capsys, "evaluate", "--weights", tmp_path / "c.npy", corpus["test"], "--json")
    assert json.loads(out)["perplexity"] == pytest.approx(
        streamfit.evaluate(model, [corpus["test"]])["perplexity"], rel=1e-12)
    doc = corpus["test_docs"][0][:7]
    rc, out, _ = cli(capsys, "predict", "--weights", tmp_path / "c.npy", "--context",
                     " ".join(map(str, doc)), "--json", "--top-k", VOCAB)
    top = json.loads(out)["top"]
    p = model.distribution(doc)
    assert {r["id"]: r["probability"] for r in top} == pytest.approx(dict(enumerate(p)))
    rc, out, _ = cli(capsys, "info", tmp_path / "c.npy")
    assert rc == 0 and "document cache (unigram and bigram)" in out
    rc, _, err = cli(capsys, "score", "--weights", tmp_path / "c.npy", corpus["test"], "--out",
                     tmp_path / "scored", "--quiet")
    assert rc == 0, err
    got = pq.read_table(next((tmp_path / "scored").glob("*.parquet")))
    np.testing.assert_allclose(got.column("log_prob").to_numpy(), model.score_documents(
        pq.read_table(corpus["test"])).column("log_prob").to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("extra,message", [
    ([], "--heldout"),
    (["--heldout", "HELD", "--compact"], "compact"),
])
def test_cli_refuses_cache_it_cannot_apply(corpus, tmp_path, capsys, extra, message):
    s = tmp_path / "s"
    assert cli(capsys, "accumulate", corpus["train"], "--order", 2, "--stats", s, "--quiet")[0] == 0
    extra = [corpus["held"] if a == "HELD" else a for a in extra]
    rc, _, err = cli(capsys, "finalize", "--stats", s, "--out", tmp_path / "m.npy", "--cache", *extra)
    assert rc == 1 and message in err
    assert not list(tmp_path.glob("m.*"))


def test_cli_refuses_cache_for_window_statistics(corpus, tmp_path, capsys):
    s = tmp_path / "w"
    assert cli(capsys, "accumulate", corpus["train"], "--window", 2, "--stats", s, "--quiet")[0] == 0
    rc, _, err = cli(capsys, "finalize", "--stats", s, "--out", tmp_path / "m.npy", "--cache")
    assert rc == 1 and "--order N" in err
    assert not list(tmp_path.glob("m.*"))
