"""Small models (issue 16): compact n-gram files, pruning and quantisation, each exactly
normalised, and the numpy-only scorer `streamfit.lite` against the full scorer.

Oracles: the full hash-table scorer of `model.ngram` (itself tested against Kneser-Ney's
definition and the block model's full softmax), sums of probabilities over the whole
vocabulary for every possible context of a tiny vocabulary, and the definitions of the
pruning rules."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

import streamfit
from streamfit import lite
from streamfit.model import compact
from streamfit.model.ngram import context_rows
from streamfit.errors import OptionError
from streamfit.solve import ngram as sn
from streamfit.solve import shrink

from conftest import write_tokens
from test_ngram import random_docs

VOCAB = 9          # random_docs' vocabulary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    train, held = random_docs(11, 150), random_docs(12, 60)
    return (write_tokens(folder / "train.parquet", train, row_group_size=40),
            write_tokens(folder / "held.parquet", held, row_group_size=40), train, held)


def held_batches(held, stats):
    return sn.token_batches([held], vocab_size=stats.n_classes)


def every_context(order: int, vocab: int) -> np.ndarray:
    """Every row of order−1 context tokens: each class (not the end token) and BOS."""
    symbols = list(range(vocab)) + [vocab + 1]
    return np.array(list(itertools.product(symbols, repeat=order - 1)), np.int64).reshape(-1, order - 1)


def sums_over_classes(model, order: int) -> np.ndarray:
    rows = every_context(order, model.vocab_size)
    C = model.n_classes
    lp = model.log_prob(np.repeat(rows, C, axis=0), np.tile(np.arange(C), rows.shape[0]))
    return np.exp(lp.reshape(rows.shape[0], C)).sum(1)


REDUCTIONS = [dict(prune_count=2), dict(prune_count=3), dict(prune_entropy=1e-3),
              dict(prune_entropy=1e9), dict(quantize="float32"), dict(quantize="float16"),
              dict(quantize="int8"), dict(prune_count=2, prune_entropy=1e-4, quantize="int8"),
              dict(prune_count=3, quantize="float16"), dict(prune_entropy=1e-3, quantize="int8")]


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("form", ["kneser-ney", "blocks"])
def test_lossless_compact_model_scores_as_the_full_model(corpus, tmp_path, order, form):
    train, held, _, held_docs = corpus
    for eos in (False, True):
        stats = streamfit.accumulate([train], order=order, eos=eos)
        hb = held_batches(held, stats) if form == "blocks" else None
        full = sn.finalize_ngram(stats, tmp_path / f"full{eos}.npy", form=form, heldout=hb)
        hb = held_batches(held, stats) if form == "blocks" else None
        small = shrink.finalize_small(stats, tmp_path / f"small{eos}.npy", form=form, heldout=hb,
                                      quantize=None)
        tokens = np.array([t for d in held_docs for t in d], np.int64)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in held_docs])]).astype(np.int64)
        context, target = context_rows(tokens, offsets, order, VOCAB, eos)
        want = full.log_prob(context, target)
        light = lite.load(tmp_path / f"small{eos}.npy")
        np.testing.assert_allclose(light.log_prob(context, target), want, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(small.log_prob(context, target), light.log_prob(context, target))
        for c in ([], [3], [3, 1], [8, 8, 8], held_docs[0][:5]):
            np.testing.assert_allclose(light.distribution(c), full.distribution(c), rtol=0, atol=1e-9)
            ids, probs = light.top_k(c, 4)
            fid, fprobs = full.top_k([c], 4)
            np.testing.assert_allclose(probs, fprobs[0], rtol=0, atol=1e-9)
            assert list(ids) == list(fid[0]) or np.allclose(probs[:-1], probs[1:])  # ties aside
        assert small.nbytes < full.nbytes


@pytest.mark.parametrize("kw", REDUCTIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("form", ["kneser-ney", "blocks"])
def test_every_reduction_is_exactly_normalised(corpus, tmp_path, kw, order, form):
    """Probabilities sum to 1 over the vocabulary (with the end token) for every possible
    context of the tiny vocabulary — seen at every level, partly seen, unseen."""
    train, held, _, _ = corpus
    stats = streamfit.accumulate([train], order=order, eos=True)
    hb = held_batches(held, stats) if form == "blocks" else None
    model = shrink.finalize_small(stats, tmp_path / "s.npy", form=form, heldout=hb, **kw)
    light = lite.load(tmp_path / "s.npy")
    sums = sums_over_classes(light, order)
    assert np.abs(sums - 1).max() < 1e-6
    np.testing.assert_array_equal(sums, sums_over_classes(model, order))
    for c in ([], [2], [5, 5]):
        assert abs(light.distribution(c).sum() - 1) < 1e-6


def test_order_four_reductions_are_normalised(corpus, tmp_path):
    train, held, _, _ = corpus
    stats = streamfit.accumulate([train], order=4)
    model = shrink.finalize_small(stats, tmp_path / "s.npy", form="blocks",
                                  heldout=held_batches(held, stats), prune_entropy=1e-4,
                                  quantize="int8")
    assert np.abs(sums_over_classes(model, 4) - 1).max() < 1e-6


def test_pruning_keeps_nested_supports_and_follows_its_rules(corpus):
    train = corpus[0]
    stats = streamfit.accumulate([train], order=3)
    levels = sn.kneser_ney(stats)
    for count, entropy in ((3, 0.0), (0, 1e-3), (2, 1e-4)):
        small, report = shrink.prune(levels, count=count, entropy=entropy)
        assert report["ngrams"] == [k.size for k in small.ng_key[1:]]
        assert sum(report["ngrams"]) < sum(report["ngrams_before"])
        top = small.order - 1
        # top level: exactly the n-grams meeting neither rule are kept
        drop = np.zeros(levels.ng_key[top].size, bool)
        if count:
            drop |= levels.adjusted[top] < count
        if entropy:
            drop |= shrink.relative_entropy(levels, top) < entropy
        assert small.ng_key[top].size == int((~drop).sum())
        # every kept n-gram's shorter n-gram (h′, y) is kept: nested supports
        for L in range(2, small.order):
            rows = shrink.parent_rows(small, L)
            want = (small.ctx_parent[L][small.ng_key[L] >> sn.TOK_BITS] << sn.TOK_BITS) | \
                (small.ng_key[L] & shrink.TMASK)
            np.testing.assert_array_equal(small.ng_key[L - 1][rows], want)
        # kept rows keep their probabilities
        keep_keys = set(zip(*decode_all(small, top)))
        old = dict(zip(zip(*decode_all(levels, top)), levels.lps[top][:, top]))
        new = dict(zip(zip(*decode_all(small, top)), small.lps[top][:, top]))
        assert all(new[k] == old[k] for k in keep_keys)


def decode_all(levels, L):
    """(tokens of the context oldest first, y) of every n-gram of level L, ids resolved."""
    def tokens(level, cid):
        out = []
        while level >= 1:
            key = levels.ctx_key[level][cid]
            out.append(int(key >> sn.CID_BITS))
            cid = int(key & ((1 << sn.CID_BITS) - 1))
            level -= 1
        return tuple(out)
    keys = levels.ng_key[L]
    return [tokens(L, int(c)) for c in keys >> sn.TOK_BITS], [int(y) for y in keys & shrink.TMASK]


def test_the_relative_entropy_is_that_of_removing_the_ngram(corpus):
    """Stolcke's D against its definition: the KL divergence of the context's distribution
    before and after removing one n-gram alone (renormalised), weighted by P(h)."""
    stats = streamfit.accumulate([corpus[0]], order=2)
    levels = sn.kneser_ney(stats)
    D = shrink.relative_entropy(levels, 1)
    C = levels.n_classes
    p0 = np.exp(levels.lps[0][:, 0])
    total = levels.ctx_raw[0][0]
    rng = np.random.default_rng(0)
    for r in rng.choice(levels.ng_key[1].size, 10, replace=False):
        c = int(levels.ng_key[1][r] >> sn.TOK_BITS)
        rows = np.flatnonzero(levels.ng_key[1] >> sn.TOK_BITS == c)
        ys = levels.ng_key[1][rows] & shrink.TMASK
        before = np.exp(levels.log_gamma[1][c]) * p0
        before[ys] = np.exp(levels.lps[1][rows, 1])
        after = before.copy()
        after[ys[rows == r]] = 0
        others = np.ones(C, bool)
        others[np.setdiff1d(ys, ys[rows == r])] = False
        after[others] = p0[others] * (1 - after[~others].sum()) / p0[others].sum()
        assert abs(after.sum() - 1) < 1e-12
        kl = levels.ctx_raw[1][c] / total * np.sum(before * (np.log(before) - np.log(after)))
        assert D[r] == pytest.approx(kl, rel=1e-6, abs=1e-15)


def test_int8_codes_are_within_half_a_step():
    rng = np.random.default_rng(1)
    x = -rng.gamma(2.0, 3.0, 1000)
    enc = compact.encode(x, "int8")
    got = compact.decoded(enc)
    step = np.repeat(enc["step"].astype(np.float64), compact.BLOCK)[:x.size]
    assert np.all(np.abs(got - x) <= step / 2 + 1e-9)
    assert enc["code"].dtype == np.uint8 and enc["lo"].size == -(-x.size // compact.BLOCK)
    np.testing.assert_array_equal(compact.decoded(compact.encode(x, "float16")),
                                  x.astype(np.float16).astype(float))
    const = np.full(70, -2.5)
    np.testing.assert_array_equal(compact.decoded(compact.encode(const, "int8")), const)
    down = rng.random(x.size) < 0.5          # rounded toward −∞ there, within a step
    for kind in ("int8", "float16"):
        got = compact.decoded(compact.encode(x, kind, down=down))
        assert np.all(got[down] <= x[down])
        assert np.abs(got - x).max() <= (step.max() if kind == "int8" else 0.01 * np.abs(x).max())


def test_compiled_search_equals_its_numpy_twin():
    rng = np.random.default_rng(2)
    keys = np.concatenate([np.sort(rng.choice(50, rng.integers(0, 20), replace=False))
                           for _ in range(30)]).astype(np.uint16)
    bounds = np.sort(rng.integers(0, keys.size + 1, (400, 2)), axis=1)
    query = rng.integers(0, 52, 400)
    got = compact.compiled_search(bounds[:, 0], bounds[:, 1], keys, query)
    np.testing.assert_array_equal(got, lite.search(bounds[:, 0], bounds[:, 1], keys, query))
    for (lo, hi), q, g in zip(bounds, query, got):   # the definition, where runs are sorted
        run = keys[lo:hi]
        if np.all(np.diff(run.astype(int)) > 0):
            assert g == (lo + int(np.flatnonzero(run == q)[0]) if q in run else -1)


def test_index_types_are_the_narrowest_that_fit(corpus, tmp_path):
    stats = streamfit.accumulate([corpus[0]], order=3)
    shrink.finalize_small(stats, tmp_path / "s.npy", form="kneser-ney", quantize="int8")
    meta = json.loads((tmp_path / "s.model.json").read_text())
    dtypes = {name: e["dtype"] for name, e in meta["arrays"].items()}
    assert dtypes["2.y"] == dtypes["2.parent"] == dtypes["2.ng_offsets"] == "uint16"
    assert dtypes["2.code"] == "uint8" and dtypes["2.gamma"] == "float32"
    assert compact.index_dtype(65535) == np.uint16 and compact.index_dtype(65536) == np.uint32
    assert compact.index_dtype(2**32) == np.uint64


def test_lite_imports_numpy_alone(corpus, tmp_path):
    stats = streamfit.accumulate([corpus[0]], order=3, eos=True)
    shrink.finalize_small(stats, tmp_path / "lm.npy", form="kneser-ney", quantize="int8")
    code = (f"import sys, streamfit.lite as L; m = L.load({str(tmp_path / 'lm')!r}); "
            "lp = m.score([1, 2, 3]); ids, p = m.top_k([1, 2], 5); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('numba', 'pyarrow', "
            "'scipy', 'tqdm', 'llvmlite', 'pandas') or k.startswith('streamfit')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['streamfit', 'streamfit.errors', 'streamfit.lite']"


def test_lite_runs_as_a_copied_file(corpus, tmp_path):
    stats = streamfit.accumulate([corpus[0]], order=2)
    model = shrink.finalize_small(stats, tmp_path / "lm.npy", form="kneser-ney")
    (tmp_path / "lite.py").write_bytes(open(lite.__file__, "rb").read())
    (tmp_path / "vocab.txt").write_text("".join(f"w{i}\n" for i in range(VOCAB)))
    out = subprocess.run([sys.executable, str(tmp_path / "lite.py"), str(tmp_path / "lm.model.json"),
                          "--vocab", str(tmp_path / "vocab.txt"), "--context", "w3", "--top-k", "3"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    ids, probs = model.top_k([[3]], 3)
    assert [r[1] for r in rows] == [f"w{i}" for i in ids[0]]
    np.testing.assert_allclose([float(r[0]) for r in rows], probs[0], atol=1e-4)


@pytest.mark.parametrize("kw, message", [(dict(prune_count=-1), "--prune-count"),
                                         (dict(prune_entropy=-1.0), "--prune-entropy"),
                                         (dict(quantize="int4"), "--quantize")])
def test_bad_size_options_are_refused_before_any_work(corpus, tmp_path, kw, message):
    stats = streamfit.accumulate([corpus[0]], order=2)
    with pytest.raises(OptionError, match=message):
        shrink.finalize_small(stats, tmp_path / "s.npy", form="kneser-ney", **kw)
    assert not list(tmp_path.iterdir())


def test_cli_finalize_small_then_evaluate_predict_info(corpus, tmp_path):
    from streamfit.cli import main
    train, held, _, _ = corpus
    stats_dir = tmp_path / "ng"
    assert main(["accumulate", str(train), "--order", "3", "--stats", str(stats_dir), "--quiet"]) == 0
    out = tmp_path / "m" / "lm.npy"
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(out), "--heldout", str(held),
                 "--prune-count", "2", "--quantize", "int8", "--quiet"]) == 0
    model = streamfit.load_model(out, check=True)
    assert isinstance(model, compact.CompactNgramModel) and model.meta["quantize"] == "int8"
    result = streamfit.evaluate(model, [held])
    assert np.isfinite(result["perplexity"]) and result["n"] > 0
    assert main(["evaluate", "--weights", str(out), str(held), "--quiet"]) == 0
    assert main(["predict", "--weights", str(out), "--context", "1 2", "--top-k", "3"]) == 0
    assert main(["info", str(out)]) == 0


# --- weights files (classifiers, window models) ------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from conftest import random_feature_rows, write_dense
    folder = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(5)
    labels, x = random_feature_rows(rng, 400, 12, 4, zero_rows=3)
    data = write_dense(folder / "train.parquet", labels, x)
    stats = streamfit.accumulate([data])
    streamfit.finalize(stats, folder / "w.npy", form="paper")
    return folder, data, labels, x


def test_row_codes_are_within_half_a_step_up_to_a_row_constant():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 2, (50, 30))
    w[7] = 1.5                                           # a constant row: step 0
    code, step = shrink.row_codes(w)
    back = code * step[:, None].astype(np.float64)
    shift = (w - back).mean(1, keepdims=True)            # the dropped per-row offset
    assert np.abs(w - back - shift).max() <= step.max() / 2 * 1.0001 + 1e-9
    assert code.dtype == np.uint8 and step[7] == 0


@pytest.mark.parametrize("quantize", ["int8", "float16"])
def test_shrunk_weights_score_alike_in_both_scorers(classifier, tmp_path, quantize):
    folder, data, labels, x = classifier
    full = streamfit.load_model(folder / "w.npy")
    small = shrink.shrink_weights(folder / "w.npy", tmp_path / "s.npy", quantize=quantize)
    light = lite.load(tmp_path / "s.npy")
    assert streamfit.load_model(tmp_path / "s.npy", check=True).row_step is not None or quantize == "float16"
    p_full = full.predict_proba(small.examples(_table(labels, x)))
    p_small = small.predict_proba(small.examples(_table(labels, x)))
    np.testing.assert_allclose(np.exp(light.log_proba(x)), p_small, rtol=0, atol=1e-9)
    # the int8 codes' error is at most half a step per weight, so logits move by ≤ τ·step/2
    gap = np.abs(np.log(p_small) - np.log(p_full)).max()
    step = float(np.asarray(small.row_step).max()) if small.row_step is not None else 1e-3 * np.abs(full.dense).max()
    assert gap <= 2 * full.tau * step / 2 * 1.01 + 1e-9
    a_full = streamfit.evaluate(full, [data])
    a_small = streamfit.evaluate(small, [data])
    assert abs(a_full["accuracy"] - a_small["accuracy"]) < 0.05
    extra = small.row_step.nbytes if small.row_step is not None else 0
    assert small.dense.nbytes + extra < full.dense.nbytes


def _table(labels, x):
    import pyarrow as pa
    return pa.table({"label": pa.array(np.asarray(labels, np.int64)),
                     "features": pa.array([list(map(float, r)) for r in x], type=pa.list_(pa.float64()))})


def test_shrink_refuses_what_it_cannot_shrink(classifier, corpus, tmp_path):
    folder = classifier[0]
    with pytest.raises(OptionError, match="input model"):
        shrink.shrink_weights(folder / "w.npy", folder / "w.npy", quantize="int8")
    small = tmp_path / "s.npy"
    shrink.shrink_weights(folder / "w.npy", small, quantize="int8")
    with pytest.raises(OptionError, match="one-layer dense float"):
        shrink.shrink_weights(small, tmp_path / "t.npy", quantize="int8")
    stats = streamfit.accumulate([corpus[0]], order=2)
    sn.finalize_ngram(stats, tmp_path / "ng.npy", form="kneser-ney")
    with pytest.raises(OptionError, match="at finalize"):
        shrink.shrink_weights(tmp_path / "ng.npy", tmp_path / "u.npy", quantize="int8")


def test_cli_shrink(classifier, tmp_path):
    from streamfit.cli import main
    folder, data, _, _ = classifier
    assert main(["shrink", str(folder / "w.npy"), "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["evaluate", "--weights", str(tmp_path / "s.npy"), str(data), "--quiet"]) == 0


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_lite_window_model_top_k_equals_the_full_scorer(corpus, tmp_path, layout):
    stats = streamfit.accumulate([corpus[0]], window=2)
    model = streamfit.finalize(stats, tmp_path / "w.npy", form="conditional", layout=layout)
    light = lite.load(tmp_path / "w.npy")
    for c in ([], [4], [1, 7], [3, 3, 8]):
        ids, probs = light.top_k(c, 5)
        fid, fprobs = model.top_k(model.context_examples([c]), 5)
        np.testing.assert_allclose(probs, fprobs[0], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(ids, fid[0])


def test_shrunk_sidecars_validate(classifier, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from pathlib import Path
    schema = json.loads((Path(__file__).parent.parent / "data_schemas/weights.schema.json").read_text())
    for q in ("int8", "float16"):
        shrink.shrink_weights(classifier[0] / "w.npy", tmp_path / f"{q}.npy", quantize=q)
        meta = json.loads((tmp_path / f"{q}.model.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(meta)
        assert meta["shrunk"]["quantize"] == q and ("row_step" in meta["arrays"]) == (q == "int8")


def test_refine_starts_from_the_decoded_int8_weights(classifier, tmp_path):
    from streamfit.train.core import dense_parameters
    folder = classifier[0]
    full = streamfit.load_model(folder / "w.npy")
    small = shrink.shrink_weights(folder / "w.npy", tmp_path / "s.npy", quantize="int8")
    w = dense_parameters(small)
    want = small.tau * np.asarray(small.dense, np.float64) * small.row_step[:, None]
    want = want + (small.bias if small.bias is not None else 0)
    np.testing.assert_allclose(w, want - want.mean(1, keepdims=True), atol=1e-9)
    gap = np.abs(w - dense_parameters(full))
    assert gap.max() <= full.tau * float(np.max(small.row_step)) * 1.01 + 1e-9
