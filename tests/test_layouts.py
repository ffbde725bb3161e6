"""Dense W and sparse S = log1p(F / a) give the same predictions.

W = S + (a constant per feature row), and each example's normalised features sum to 1, so
the two layouts' logits differ by one constant per example, which cancels in the softmax.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import logsumexp

import streamfit
from streamfit.model import evaluate
from streamfit.model import reference as ref
from streamfit.solve import explicit as solve
from streamfit.model.weights import load_model

from conftest import dense_to_sparse, random_feature_rows, write_dense, write_sparse

FORMS = ["conditional", "paper", "calibrated"]
CORPORA = ["lm-window1", "lm-window3", "classify-dense", "classify-sparse"]


@pytest.fixture
def corpus(request, tmp_path, markov_corpus):
    """(kind, train path, held-out path, accumulate options, priming number K) of one kind
    of corpus; K, the mean L1 norm of the raw inputs, computed here from the data."""
    kind = request.param
    if kind.startswith("lm"):
        c = markov_corpus(12, n_docs=40, doc_len=60, concentration=0.5, chain_seed=4,
                          row_group_size=7)
        window = int(kind[-1])
        return kind, c.train, c.heldout, {"window": window}, float(window)
    rng = np.random.default_rng(2)
    labels, x = random_feature_rows(rng, 400, 7, 5, zero_rows=3)
    paths = []
    for name, part in (("train", slice(0, 300)), ("heldout", slice(300, 400))):
        path = tmp_path / f"{name}.parquet"
        if kind == "classify-dense":
            write_dense(path, labels[part], x[part], row_group_size=64)
        else:
            write_sparse(path, labels[part], *dense_to_sparse(x[part]), row_group_size=64)
        paths.append(path)
    sums = x[:300].sum(axis=1)
    return (kind, *paths, {}, float(sums[sums > 0].mean()))


def heldout_of(stats, path):
    return evaluate.iter_examples([path], task=stats.task, window=stats.window,
                                  n_classes=stats.n_classes, n_features=stats.n_features,
                                  batch_rows=50)


def solve_both(stats, heldout_path, form, dtype="float32", tmp_path=None):
    models = {}
    for layout in ("dense", "sparse"):
        heldout = heldout_of(stats, heldout_path) if form == "calibrated" else None
        out = None if tmp_path is None else tmp_path / f"{layout}-{form}.npy"
        models[layout] = solve.finalize(stats, out, form=form, smoothing=0.01, heldout=heldout,
                                        layout=layout, dtype=dtype)
    return models


def assert_same_top(top_a, top_b, z, tol=1e-5):
    """Top-k lists are equal, except that classes whose logits are equal within `tol`
    (ties up to rounding, which the layouts may break differently) may swap."""
    rows = np.arange(z.shape[0])[:, None]
    same = (top_a == top_b).all(axis=1)
    if not same.all():
        za, zb = z[rows, top_a], z[rows, top_b]
        np.testing.assert_allclose(za[~same], zb[~same], atol=tol, rtol=0)
    assert same.mean() > 0.95  # near-ties are the exception


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("corpus", CORPORA, indirect=True)
def test_dense_and_sparse_layouts_predict_alike(corpus, form, tmp_path):
    kind, train, heldout, options, k = corpus
    stats = streamfit.accumulate([train], **options)
    models = solve_both(stats, heldout, form)
    dense, sparse = models["dense"], models["sparse"]
    assert (dense.tau, dense.layout, sparse.layout) == (sparse.tau, "dense", "sparse")
    if form == "paper":  # tau = K, bias_j = -(K - 1) log(c_j + a D), c_j the class totals
        assert dense.tau == pytest.approx(k, rel=1e-12)
        f = stats.csr().toarray()
        want_bias = -(k - 1) * np.log(f.sum(axis=0) + 0.01 * f.shape[0])
        for model in (dense, sparse):
            np.testing.assert_allclose(0.0 if model.bias is None else model.bias, want_bias,
                                       rtol=1e-9, atol=1e-12)
    top_k = min(5, stats.n_classes)
    n_compared = 0
    for ex in heldout_of(stats, heldout):
        nll_d, top_d, logp_d = dense.score(ex, top_k=top_k)
        nll_s, top_s, logp_s = sparse.score(ex, top_k=top_k)
        np.testing.assert_allclose(nll_s, nll_d, rtol=1e-5, atol=1e-6)
        z = sparse.logits(ex)
        assert_same_top(top_d, top_s, z)
        np.testing.assert_allclose(logp_s, logp_d, rtol=1e-5, atol=1e-6)
        # and both agree with numpy on the dense logits: the probability of the target
        zd = dense.logits(ex)
        np.testing.assert_allclose(nll_d, logsumexp(zd, axis=1) - zd[np.arange(ex.n), ex.targets],
                                   rtol=1e-9, atol=1e-9)
        n_compared += ex.n
    assert n_compared >= 100
    ev_d, ev_s = evaluate.evaluate(dense, [heldout]), evaluate.evaluate(sparse, [heldout])
    assert ev_d["cross_entropy"] == pytest.approx(ev_s["cross_entropy"], rel=1e-6)
    assert ev_d["accuracy"] == pytest.approx(ev_s["accuracy"], abs=0.01)

    # written to disk and memory-mapped back, the models predict exactly as in memory
    on_disk = solve_both(stats, heldout, form, tmp_path=tmp_path)
    ex = next(iter(heldout_of(stats, heldout)))
    for layout, model in on_disk.items():
        assert isinstance(model.dense if layout == "dense" else model.sparse[2], np.memmap)
        for got, want in zip(model.score(ex, top_k=top_k), models[layout].score(ex, top_k=top_k)):
            np.testing.assert_array_equal(got, want)
        reloaded = load_model(tmp_path / f"{layout}-{form}.model.json", check=True)
        np.testing.assert_array_equal(reloaded.score(ex)[0], models[layout].score(ex)[0])


@pytest.mark.parametrize("form", ["conditional", "paper"])
@pytest.mark.parametrize("corpus", ["lm-window3", "classify-dense"], indirect=True)
def test_float16_dense_is_close_to_float32(corpus, form):
    """float16 rounds each weight by at most |W| * 2^-11, so each logit moves by at most
    tau * max|W| * 2^-11 (normalised inputs sum to 1) and a log-probability by twice that."""
    kind, train, heldout, options, _ = corpus
    stats = streamfit.accumulate([train], **options)
    full = solve.finalize(stats, form=form, smoothing=0.01, dtype="float32")
    half = solve.finalize(stats, form=form, smoothing=0.01, dtype="float16")
    assert np.asarray(half.dense).dtype == np.float16
    bound = 2 * full.tau * np.abs(np.asarray(full.dense)).max() * (2.0 ** -11 + 2.0 ** -24)
    assert bound < 0.1
    for ex in heldout_of(stats, heldout):
        nll_full, _, _ = full.score(ex)
        nll_half, _, _ = half.score(ex)
        diff = np.abs(nll_half - nll_full)
        assert diff.max() <= bound
        assert diff.max() > 0  # it is a different model, only a close one
    ce_full = evaluate.evaluate(full, [heldout])["cross_entropy"]
    ce_half = evaluate.evaluate(half, [heldout])["cross_entropy"]
    assert abs(ce_half - ce_full) <= bound


@pytest.mark.parametrize("corpus", ["lm-window3", "classify-sparse"], indirect=True)
def test_predict_proba_rows_are_distributions(corpus):
    kind, train, heldout, options, _ = corpus
    stats = streamfit.accumulate([train], **options)
    table = pq.read_table(heldout)
    if kind.startswith("classify"):
        table = table.drop_columns(["label"])  # predicting needs no labels
    ex = next(iter(heldout_of(stats, heldout)))
    probas = {}
    for layout, model in solve_both(stats, heldout, "paper").items():
        p = model.predict_proba(table)
        n = table.num_rows if kind.startswith("classify") else sum(map(len, table["tokens"].to_pylist()))
        assert p.shape == (n, stats.n_classes)
        assert (p >= 0).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        # the probability of the target is exp(-nll) from score
        nll, _, _ = model.score(ex)
        np.testing.assert_allclose(p[np.arange(ex.n), ex.targets], np.exp(-nll), rtol=1e-9)
        probas[layout] = p
    np.testing.assert_allclose(probas["dense"], probas["sparse"], rtol=1e-5, atol=1e-9)


def test_predict_writes_top_classes(tmp_path, markov_corpus):
    """The top classes written by `evaluate.predict` are those of logits computed here from
    the documents and the weights matrix, by definition."""
    c = markov_corpus(9, n_docs=15, doc_len=30, concentration=0.5, chain_seed=8, row_group_size=4)
    stats = streamfit.accumulate([c.train], window=2)
    model = solve.finalize(stats, form="paper", smoothing=0.01)
    out = tmp_path / "pred.parquet"
    assert evaluate.predict(model, [c.heldout], out, top_k=3, batch_rows=5) == 15 * 30
    got = pq.read_table(out)
    top = np.array(got["top_classes"].to_pylist())
    prob = np.array(got["top_probabilities"].to_pylist())

    v, w = 9, np.asarray(model.dense, dtype=np.float64)
    z = []
    for doc in c.heldout_docs:
        for t in range(len(doc)):
            rows = [k * (v + 1) + (doc[t - 1 - k] if t - 1 - k >= 0 else v) for k in range(2)]
            z.append(model.tau * (w[rows[0]] + w[rows[1]]) / 2 + model.bias)
    z = np.array(z)
    _, _, want = ref.score_dense(z, np.zeros(len(z), dtype=np.int64), 3)
    assert_same_top(top, want, z)
    logp = z - logsumexp(z, axis=1, keepdims=True)
    np.testing.assert_allclose(prob, np.exp(np.take_along_axis(logp, top, axis=1)), rtol=1e-5)
    assert (np.diff(prob, axis=1) <= 1e-7).all()  # most probable first


def test_predict_feature_file_without_labels(tmp_path):
    rng = np.random.default_rng(4)
    labels, x = random_feature_rows(rng, 120, 6, 3)
    x[x.sum(axis=1) == 0, 0] = 1.0
    train = write_dense(tmp_path / "train.parquet", labels, x, row_group_size=50)
    unlabelled = tmp_path / "new.parquet"
    pq.write_table(pa.table({"features": pa.array(x[:40].tolist(), pa.list_(pa.float64()))}),
                   unlabelled, row_group_size=16)
    model = solve.finalize(streamfit.accumulate([train]), form="conditional", smoothing=0.01,
                           layout="sparse")
    out = tmp_path / "pred.parquet"
    assert evaluate.predict(model, [unlabelled], out, top_k=2) == 40
    top = np.array(pq.read_table(out)["top_classes"].to_pylist())
    # by definition: x / sum(x) times W, W = log P(class | feature) smoothed
    f = streamfit.accumulate([train]).csr().toarray()
    w = np.log(f + 0.01) - np.log(f.sum(axis=1, keepdims=True) + 0.01 * 3)
    xt = x[:40] / x[:40].sum(axis=1, keepdims=True)
    z = xt @ w
    _, _, want = ref.score_dense(z, np.zeros(40, dtype=np.int64), 2)
    assert_same_top(top, want, z)


def test_float16_sparse_is_refused_up_front(markov_corpus):
    """The sparse scoring kernel cannot read float16; finalize says so instead of writing
    weights that fail when scored."""
    c = markov_corpus(5, n_docs=5, doc_len=10)
    stats = streamfit.accumulate([c.train])
    with pytest.raises(ValueError, match="float16"):
        solve.finalize(stats, form="conditional", layout="sparse", dtype="float16")


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_model_names_with_dots_keep_their_files_apart(markov_corpus, tmp_path, layout):
    """`weights.v1.npy` and `weights.v2.npy` are two models: every file of each (sidecar
    included) starts with its own full stem, never with a shortened one."""
    from streamfit.model.weights import load_model, sidecar_path

    stats = streamfit.accumulate([markov_corpus().train], window=1)
    out = tmp_path / "models"
    out.mkdir()
    written = {}
    for name, smoothing in (("weights.v1.npy", 0.01), ("weights.v2.npy", 1.0)):
        solve.finalize(stats, out / name, form="conditional", smoothing=smoothing,
                       layout=layout)
        written[name] = sidecar_path(out / name)
    assert {p.name for p in written.values()} == {"weights.v1.model.json", "weights.v2.model.json"}
    assert not (out / "weights.model.json").exists() and not (out / "weights.npy").exists()
    smoothings = {name: load_model(out / name).meta["smoothing"] for name in written}
    assert smoothings == {"weights.v1.npy": 0.01, "weights.v2.npy": 1.0}
    assert all(p.name.startswith(("weights.v1.", "weights.v2.")) for p in out.iterdir())


def test_sidecar_name_cannot_be_clobbered_and_old_name_still_reads(markov_corpus, tmp_path, capsys):
    """The sidecar is STEM.model.json, so `evaluate … --json > STEM.json` leaves the model
    whole; a model written by an earlier version (sidecar STEM.json) still loads, and
    rewriting it leaves one sidecar, the new one."""
    from streamfit.cli import main

    stats = streamfit.accumulate([markov_corpus().train], window=1)
    tmp_path = tmp_path / "models"
    tmp_path.mkdir()
    solve.finalize(stats, tmp_path / "m.npy", form="conditional")
    assert (tmp_path / "m.model.json").exists() and not (tmp_path / "m.json").exists()
    (tmp_path / "m.json").write_text('{"perplexity": 1.0}')  # what `--json > m.json` writes
    assert load_model(tmp_path / "m.npy").n_classes == stats.n_classes

    (tmp_path / "m.json").unlink()
    (tmp_path / "m.model.json").rename(tmp_path / "m.json")  # an earlier version's model
    assert load_model(tmp_path / "m.npy").n_classes == stats.n_classes
    assert main(["info", str(tmp_path / "m.npy")]) == 0
    capsys.readouterr()
    solve.finalize(stats, tmp_path / "m.npy", form="conditional", smoothing=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.model.json", "m.npy"]
    assert load_model(tmp_path / "m.npy").meta["smoothing"] == 1.0
