"""The numba kernels against their pure-numpy twins in streamfit.count.reference and streamfit.model.reference.

Counting starts from a 4-slot table (capacity_bits=2, at most 2 entries before growing),
so nearly every call stops early, grows the table and resumes mid-document.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp

from streamfit.count import kernels
from streamfit.count import reference as ref
from streamfit.model import reference as scoring_ref
from streamfit.count.accumulate import CountTable
from streamfit.data.featurize import Examples, FeatureRows
from streamfit.model.weights import Model

SETTINGS = settings(max_examples=40, deadline=None)

# Small ids collide a lot (many repeated keys); the largest allowed id checks the packing.
token_ids = st.one_of(st.integers(0, 5), st.just(kernels.MAX_TOKEN_ID))
documents = st.lists(st.lists(token_ids, min_size=0, max_size=12), min_size=0, max_size=8)


def as_arrays(docs, dtype):
    tokens = np.array([t for d in docs for t in d], dtype=dtype)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    return tokens, offsets


@SETTINGS
def assert_windows_counted_as_reference(tokens, offsets, window) -> np.ndarray:
    """The kernel's table of windows equals the numpy reference's; its counts."""
    table = CountTable(np.int64, capacity_bits=2)
    table.add_windows(tokens, offsets, window)
    keys, counts = table.items()
    want_keys, want_counts = ref.count_windows(tokens, offsets, window)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(counts, want_counts)
    return counts


@settings(deadline=None)  # the first example may load compiled kernels
@given(docs=documents, window=st.integers(1, 4), dtype=st.sampled_from([np.int32, np.int64]))
def test_count_windows_matches_reference(docs, window, dtype):
    tokens, offsets = as_arrays(docs, dtype)
    counts = assert_windows_counted_as_reference(tokens, offsets, window)
    # every token is counted once per position
    assert counts.sum() == tokens.size * window


@SETTINGS
@given(first=documents, second=documents, window=st.integers(1, 4))
def test_count_windows_over_two_batches_is_one_count(first, second, window):
    """Adding batch after batch into one table (growing in between) equals counting all the
    documents at once."""
    table = CountTable(np.int64, capacity_bits=2)
    for docs in (first, second):
        table.add_windows(*as_arrays(docs, np.int64), window)
    keys, counts = table.items()
    want_keys, want_counts = ref.count_windows(*as_arrays(first + second, np.int64), window)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_array_equal(counts, want_counts)


@SETTINGS
@given(keys=st.lists(st.integers(-2**62, 2**62), unique=True, max_size=200), lo=st.integers(0, 3))
def test_heapsort_sorts_a_slice_with_its_values(keys, lo):
    keys = np.array([0] * lo + keys, dtype=np.int64)
    vals = keys * 3 + 1
    kernels._heapsort(keys, vals, lo, keys.size)
    np.testing.assert_array_equal(keys[lo:], np.sort(keys[lo:]))
    np.testing.assert_array_equal(vals, keys * 3 + 1)


@pytest.mark.parametrize("window", [1, 3])
def test_count_windows_with_long_rows_matches_reference(window):
    """Rows of hundreds of distinct targets (sorted by the heapsort, not the insertion sort
    of short rows) and rows of a few, in one table."""
    rng = np.random.default_rng(5)
    pairs = np.stack([rng.integers(0, 5, 2000), rng.integers(0, 300, 2000)], axis=1).ravel()
    tokens = np.concatenate([pairs, rng.integers(0, 3, 500)]).astype(np.int32)
    offsets = np.array([0, 10, 2500, 4000, 4500], dtype=np.int64)
    rows = np.unique(ref.count_windows(tokens, offsets, window)[0] >> kernels.TOKEN_BITS,
                     return_counts=True)[1]
    assert rows.max() > 100 and rows.min() <= 16  # both sorts are used
    assert_windows_counted_as_reference(tokens, offsets, window)


@SETTINGS
@given(docs=documents, window=st.integers(1, 4), order=st.integers(1, 4), eos=st.booleans(),
       dtype=st.sampled_from([np.int32, np.int64]), path=st.sampled_from(["partitioned", "sorted"]))
def test_key_building_paths_match_reference(docs, window, order, eos, dtype, path):
    """Keys built (kernels.window_keys / ngram_keys), then ordered by hash and inserted
    (partition_by_hash, add_keys) or sorted into runs (run_lengths, merge_runs), count what
    the numpy twins count."""
    tokens, offsets = as_arrays(docs, dtype)
    if order > 1 and tokens.size and tokens.max() > kernels.MAX_TOKEN_ID // 2 ** 8:
        tokens = tokens % 1000  # n-gram ids must fit 63 // order bits
    table = CountTable(np.int64, capacity_bits=2)
    table.force_path = path
    table.add_windows(tokens, offsets, window)
    np.testing.assert_array_equal(np.stack(table.items()), np.stack(ref.count_windows(tokens, offsets, window)))
    table = CountTable(np.int64, capacity_bits=2, ngram=True)
    table.force_path = path
    table.add_ngrams(tokens, offsets, order, eos)
    np.testing.assert_array_equal(np.stack(table.items()),
                                  np.stack(ref.count_ngrams(tokens, offsets, order, eos)))


sorted_keys = st.lists(st.integers(-2**62, 2**62), max_size=300).map(sorted)


@SETTINGS
@given(keys=st.one_of(sorted_keys, st.lists(st.integers(0, 4), max_size=50).map(sorted)))
def test_run_lengths_matches_reference(keys):
    keys = np.array(keys + [7], dtype=np.int64)  # a key past the end stays out
    out_keys, out_counts = np.full(keys.size, -1, dtype=np.int64), np.full(keys.size, -1, dtype=np.int64)
    m = kernels.run_lengths(keys, keys.size - 1, out_keys, out_counts)
    want_keys, want_counts = ref.run_lengths(keys[:-1])
    np.testing.assert_array_equal(out_keys[:m], want_keys)
    np.testing.assert_array_equal(out_counts[:m], want_counts)


@SETTINGS
@given(docs=st.lists(st.lists(st.integers(0, 5), max_size=12), max_size=8),
       window=st.integers(1, 4), extra=st.one_of(st.none(), st.integers(0, 3)))
def test_window_csr_kernels_match_reference(docs, window, extra):
    """Rows (k, context; the document start in each block's last row) and columns of the
    sorted keys, with the vocabulary given (`extra` ids past the largest) or found."""
    keys, _ = ref.count_windows(*as_arrays(docs, np.int32), window)
    cols = np.full(keys.size, -1, dtype=np.int32)
    top = kernels.window_targets(keys, cols)
    v = top + 1 if extra is None else top + 1 + extra
    indptr = np.zeros(window * (v + 1) + 1, dtype=np.int64)
    kernels.window_row_counts(keys, v, indptr)
    np.cumsum(indptr, out=indptr)
    want_indptr, want_cols, want_v = ref.window_csr(keys, window, None if extra is None else v)
    assert v == want_v
    np.testing.assert_array_equal(indptr, want_indptr)
    np.testing.assert_array_equal(cols, want_cols)


distinct_run = st.lists(st.integers(0, 40), unique=True, max_size=30).map(sorted)


@SETTINGS
@given(a=distinct_run, b=distinct_run, data=st.data())
def test_merge_runs_matches_reference(a, b, data):
    a_vals = np.array(data.draw(st.lists(st.integers(1, 2**40), min_size=len(a), max_size=len(a))),
                      dtype=np.int64)
    b_vals = np.array(data.draw(st.lists(st.integers(1, 2**40), min_size=len(b), max_size=len(b))),
                      dtype=np.int64)
    a, b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
    out_keys = np.full(a.size + b.size, -1, dtype=np.int64)
    out_vals = out_keys.copy()
    m = kernels.merge_runs(a, a_vals, b, b_vals, out_keys, out_vals)
    want_keys, want_vals = ref.merge_runs(a, a_vals, b, b_vals)
    np.testing.assert_array_equal(out_keys[:m], want_keys)
    np.testing.assert_array_equal(out_vals[:m], want_vals)


@SETTINGS
@given(batches=st.lists(st.tuples(documents, st.sampled_from([None, "hashing", "partitioned", "sorted"])),
                        min_size=1, max_size=6),
       window=st.integers(1, 3), order=st.integers(0, 3), spill=st.booleans())
def test_switching_paths_mid_stream_counts_as_hashing(batches, window, order, spill):
    """Batches counted by any sequence of paths (each forced, or picked by the table), in
    tiny tables and sort buffers that grow, spill and flush mid-batch, give the statistics
    of the hashing path: the same keys with the same integer counts."""
    from streamfit.count import accumulate

    def counted(paths):
        runs = []
        table = CountTable(np.int64, capacity_bits=2, max_bits=5 if spill else None,
                           ngram=bool(order))
        if spill:
            table.spill = lambda k, v: runs.append((k.copy(), v.copy()))
        for (docs, _), path in zip(batches, paths):
            tokens, offsets = as_arrays(docs, np.int64)
            table.force_path = path
            if order:
                table.add_ngrams(tokens % 1000, offsets, order, False)
            else:
                table.add_windows(tokens, offsets, window)
        runs.append(table.items())
        keys, inverse = np.unique(np.concatenate([k for k, _ in runs]), return_inverse=True)
        counts = np.zeros(keys.size, dtype=np.int64)
        np.add.at(counts, inverse, np.concatenate([v for _, v in runs]))
        return keys, counts

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accumulate, "PARTITION_MIN_BITS", 4)
        mp.setattr(accumulate, "SORT_CHUNK_KEYS", 8)
        hashed = counted(["hashing"] * len(batches))
        mixed = counted([path for _, path in batches])
    np.testing.assert_array_equal(mixed[0], hashed[0])
    np.testing.assert_array_equal(mixed[1], hashed[1])


@SETTINGS
@given(docs=documents, order=st.integers(1, 4), eos=st.booleans(), bits=st.integers(2, 9))
def test_ngram_table_items_equal_the_argsort_of_its_slots(docs, order, eos, bits):
    """An n-gram table's items (kernels.occupied_keys, a sort, kernels.values_of) are the
    argsort of its occupied slots (reference.table_items), and the n-grams of the numpy
    twin, at table sizes from 4 slots (many collisions, growth mid-group) up."""
    tokens, offsets = as_arrays(docs, np.int64)
    tokens = tokens % 1000  # n-gram ids must fit 63 // order bits
    table = CountTable(np.int64, capacity_bits=bits, ngram=True)
    table.force_path = "hashing"
    table.add_ngrams(tokens, offsets, order, eos)
    keys, counts = table.items()
    want = ref.table_items(table.slots, table.vals)
    np.testing.assert_array_equal(keys, want[0])
    np.testing.assert_array_equal(counts, want[1])
    np.testing.assert_array_equal(np.stack((keys, counts)),
                                  np.stack(ref.count_ngrams(tokens, offsets, order, eos)))


@SETTINGS
@given(keys=st.lists(st.integers(0, 2**62), max_size=300), bits=st.integers(1, 12))
def test_partition_by_hash_is_a_stable_sort_by_the_hash_top_bits(keys, bits):
    keys = np.array(keys, dtype=np.int64)
    out = np.full(keys.size + 3, -7, dtype=np.int64)
    kernels.partition_by_hash(keys, keys.size, bits, out)
    top = (keys.astype(np.uint64) * kernels.HASH_MULT) >> np.uint64(64 - bits)
    np.testing.assert_array_equal(out[:keys.size], keys[np.argsort(top, kind="stable")])
    assert (out[keys.size:] == -7).all()


def test_the_path_is_picked_by_the_share_of_new_keys(monkeypatch):
    """With the table "past the caches" from 2^6 slots: spread documents (most keys new) go
    by the sorted path, a repeated document (no new keys) back by the hashing kernel; sort
    buffers of 1024 keys, growing and spilling in the middle of chunks, counts exact."""
    from streamfit.count import accumulate

    monkeypatch.setattr(accumulate, "PARTITION_MIN_BITS", 6)
    rng = np.random.default_rng(2)
    spread = rng.integers(0, 5000, 6000)
    tokens = np.concatenate([spread, np.tile(spread[:50], 120)]).astype(np.int64)
    offsets = np.array([0, 3000, 6000, 7500, 9000, 10500, 12000], dtype=np.int64)
    runs = []
    table = CountTable(np.int64, capacity_bits=2, max_bits=12)
    table.spill = lambda k, v: runs.append((k.copy(), v.copy()))  # views into the table
    table.add_windows(tokens, offsets, 2)
    runs.append(table.items())
    keys = np.concatenate([k for k, _ in runs])
    counts = np.concatenate([v for _, v in runs])
    uniq, inverse = np.unique(keys, return_inverse=True)
    want_keys, want_counts = ref.count_windows(tokens, offsets, 2)
    np.testing.assert_array_equal(uniq, want_keys)
    np.testing.assert_array_equal(np.bincount(inverse, weights=counts).astype(np.int64), want_counts)
    assert len(runs) > 2 and table.chunks["sorted"] > 2 and table.chunks["hashing"] > 2, \
        (len(runs), table.chunks)


@pytest.mark.parametrize("bits, share, path", [(5, 1.0, "hashing"), (6, 0.2, "hashing"),
                                               (6, 0.3, "partitioned"), (6, 0.6, "sorted")])
def test_next_path_rule(monkeypatch, bits, share, path):
    """Small tables hash; past the caches a quarter of new keys partitions, half sorts."""
    from streamfit.count import accumulate

    monkeypatch.setattr(accumulate, "PARTITION_MIN_BITS", 6)
    table = CountTable(np.int64, capacity_bits=bits)
    table.new_share = share
    assert table.next_path() == path


def test_count_windows_small_exact_example():
    """A worked example, by hand: documents [3, 1, 3] and [1], window 2."""
    tokens, offsets = as_arrays([[3, 1, 3], [1]], np.int64)
    table = CountTable(np.int64, capacity_bits=2)
    table.add_windows(tokens, offsets, 2)
    keys, counts = table.items()
    bos = kernels.BOS_KEY

    def key(k, ctx, target):
        return (k << 56) | (ctx << kernels.TOKEN_BITS) | target

    expected = {key(0, bos, 3): 1, key(0, 3, 1): 1, key(0, 1, 3): 1, key(0, bos, 1): 1,
                key(1, bos, 3): 1, key(1, bos, 1): 2, key(1, 3, 3): 1}
    assert dict(zip(keys.tolist(), counts.tolist())) == expected


# --- feature rows -------------------------------------------------------------------------
feature_values = st.sampled_from([0.0, 0.0, 0.25, 1.0, 3.0, 1e-3, 7.5])
feature_row = st.lists(st.tuples(st.integers(0, 6), feature_values), min_size=0, max_size=6)


def as_feature_rows(rows, labels):
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.array([i for r in rows for i, _ in r], dtype=np.int64)
    values = np.array([v for r in rows for _, v in r], dtype=np.float64)
    width = int(indices.max()) + 1 if indices.size else 0
    return FeatureRows(indptr, indices, values, np.asarray(labels, dtype=np.int64), width)


@SETTINGS
@given(data=st.data())
def test_add_feature_rows_matches_reference(data):
    rows = data.draw(st.lists(feature_row, min_size=0, max_size=10))
    labels = data.draw(st.lists(st.integers(0, 4), min_size=len(rows), max_size=len(rows)))
    fr = as_feature_rows(rows, labels)
    table = CountTable(np.float64, capacity_bits=2)
    table.add_rows(fr)
    keys, masses = table.items()
    want_keys, want_masses = ref.add_feature_rows(fr.indptr, fr.indices, fr.values, fr.labels)
    np.testing.assert_array_equal(keys, want_keys)
    np.testing.assert_allclose(masses, want_masses, rtol=1e-12, atol=0)
    # each row with positive mass adds exactly 1 in total
    n_positive = sum(1 for r in rows if sum(v for _, v in r) > 0)
    assert masses.sum() == pytest.approx(n_positive, rel=1e-12)


def test_add_feature_rows_all_zero_rows_add_nothing():
    rows = [[(0, 0.0), (3, 0.0)], [], [(2, 2.0), (5, 0.0), (2, 6.0)]]
    fr = as_feature_rows(rows, [1, 2, 0])
    table = CountTable(np.float64, capacity_bits=2)
    table.add_rows(fr)
    keys, masses = table.items()
    # only row 2 contributes: feature 2 twice (2/8 + 6/8) with label 0
    assert keys.tolist() == [(2 << kernels.LABEL_BITS) | 0]
    assert masses.tolist() == [1.0]


# --- scoring ------------------------------------------------------------------------------
def random_problem(seed: int, n_examples=40, n_features=15, n_classes=9, s_density=0.3):
    rng = np.random.default_rng(seed)
    s = sp.random(n_features, n_classes, density=s_density, format="csr", random_state=rng,
                  data_rvs=lambda k: rng.choice([0.0, 0.5, 1.0, 2.0, rng.gamma(1.0)], size=k))
    s.sort_indices()
    rows = []
    for _ in range(n_examples):
        k = rng.integers(0, 4)  # 0: an empty example, all classes at their bias
        idx = rng.choice(n_features, size=k, replace=True)  # repeated ids allowed
        vals = rng.choice([0.0, 0.25, 1.0, rng.random()], size=k)
        rows.append((idx, vals))
    indptr = np.zeros(n_examples + 1, dtype=np.int64)
    np.cumsum([r[0].size for r in rows], out=indptr[1:])
    x_idx = np.concatenate([r[0] for r in rows]).astype(np.int64)
    x_val = np.concatenate([r[1] for r in rows]).astype(np.float64)
    targets = rng.integers(0, n_classes, size=n_examples).astype(np.int64)
    return rng, s, Examples(indptr, x_idx, x_val, targets)


BIASES = ["none", "constant", "random", "few_values"]


def make_bias(kind, rng, n_classes):
    if kind == "none":
        return None
    if kind == "constant":  # every class ties outside the support
        return np.full(n_classes, -1.5)
    if kind == "random":
        return rng.normal(scale=2.0, size=n_classes)
    return rng.choice([-1.0, 0.0, 0.5], size=n_classes)  # ties among some classes


def reference_scores(z, targets, top_k):
    """nll, top-k classes and their log-probabilities from dense logits, by numpy."""
    has = targets >= 0
    nll, _, top = scoring_ref.score_dense(z, np.where(has, targets, 0), min(top_k, z.shape[1]))
    lse = logsumexp(z, axis=1)
    return np.where(has, nll, np.nan), top, np.take_along_axis(z, top, axis=1) - lse[:, None]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bias_kind", BIASES)
@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0, 40.0])
@pytest.mark.parametrize("data_dtype", [np.float32, np.float64])
def test_score_sparse_matches_dense_reference(seed, bias_kind, tau, data_dtype):
    rng, s, ex = random_problem(seed)
    n_features, n_classes = s.shape
    bias = make_bias(bias_kind, rng, n_classes)
    data = s.data.astype(data_dtype)
    top_k = int(rng.integers(1, n_classes + 1))
    model = Model(task="classify", n_classes=n_classes, n_features=n_features, tau=tau,
                  bias=bias, sparse=(s.indptr.astype(np.int64), s.indices.astype(np.int32), data))
    nll, top, top_logp = model.score(ex, top_k=top_k)

    dense_s = sp.csr_matrix((data, s.indices, s.indptr), shape=s.shape).toarray()
    z = scoring_ref.dense_logits(ex.indptr, ex.indices, ex.values, dense_s, tau, bias)
    want_nll, want_top, want_logp = reference_scores(z, ex.targets, top_k)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(top, want_top)  # exact, ties broken by class index
    np.testing.assert_allclose(top_logp, want_logp, rtol=1e-9, atol=1e-9)
    # rank 0 (the argmax, ties by index) is what accuracy counts
    _, want_rank, _ = scoring_ref.score_dense(z, ex.targets, 1)
    np.testing.assert_array_equal(top[:, 0] == ex.targets, want_rank == 0)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_score_without_targets_and_top_k_beyond_classes(layout):
    """Targets -1 give NaN and still a top-k; asking for more classes than exist pads with
    -1 (log-probability -inf), in both layouts alike."""
    rng, s, ex = random_problem(11, n_examples=12, n_classes=4)
    bias = np.array([0.0, 0.5, 0.5, -1.0])
    ex.targets[::3] = -1
    weights = dict(sparse=(s.indptr, s.indices, s.data)) if layout == "sparse" else \
        dict(dense=s.toarray())
    model = Model(task="classify", n_classes=4, n_features=s.shape[0], tau=2.0, bias=bias, **weights)
    nll, top, top_logp = model.score(ex, top_k=6)
    z = scoring_ref.dense_logits(ex.indptr, ex.indices, ex.values, s.toarray(), 2.0, bias)
    want_nll, want_top, want_logp = reference_scores(z, ex.targets, 6)
    assert np.isnan(nll[ex.targets < 0]).all()
    if layout == "sparse":
        np.testing.assert_allclose(nll, want_nll, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(top_logp[:, :4], want_logp, rtol=1e-9, atol=1e-12)
    else:  # the dense layout multiplies through scipy.sparse, in another order
        np.testing.assert_allclose(nll, want_nll, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(top_logp[:, :4], want_logp, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(top[:, :4], want_top)
    assert (top[:, 4:] == -1).all() and np.isneginf(top_logp[:, 4:]).all()


def test_score_sparse_extreme_logits():
    """Large tau * S (exp would overflow) and tiny ones (expm1 near 0) stay accurate."""
    s = sp.csr_matrix(np.array([[800.0, 0.0, 1e-12], [0.0, 5.0, 0.0]]))
    ex = Examples(np.array([0, 1, 2, 4]), np.array([0, 1, 0, 1]), np.array([1.0, 1.0, 0.5, 0.5]),
                  np.array([2, 0, 1]))
    for bias in (None, np.array([0.0, -3.0, 2.0])):
        model = Model(task="classify", n_classes=3, n_features=2, tau=1.0, bias=bias,
                      sparse=(s.indptr, s.indices, s.data))
        nll, top, top_logp = model.score(ex, top_k=3)
        z = scoring_ref.dense_logits(ex.indptr, ex.indices, ex.values, s.toarray(), 1.0, bias)
        want_nll, want_top, want_logp = reference_scores(z, ex.targets, 3)
        assert np.isfinite(nll).all()
        np.testing.assert_allclose(nll, want_nll, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(top, want_top)
        np.testing.assert_allclose(top_logp, want_logp, rtol=1e-9, atol=1e-9)


# --- spilling inside the table ------------------------------------------------------------
@SETTINGS
@given(data=st.data(), block=st.integers(1, 9))
def test_sorted_in_place_gives_what_is_counted(data, block):
    """CountTable.sorted_in_place (the pairs moved to the front `block` slots at a time,
    then sorted behind them) gives the numpy twins' counts: windows, n-grams (argsort
    path) and float feature masses (the raw bits of the values move)."""
    from streamfit.count import accumulate

    docs = data.draw(documents)
    window = data.draw(st.integers(1, 3))
    tokens, offsets = as_arrays(docs, np.int64)
    tables = [CountTable(np.int64, capacity_bits=2), CountTable(np.int64, capacity_bits=2, ngram=True),
              CountTable(np.float64, capacity_bits=2), CountTable(np.int64, capacity_bits=2)]
    tables[0].add_windows(tokens, offsets, window)
    tables[3].force_path = "sorted"  # runs outside the table, merged with it
    tables[3].add_windows(tokens, offsets, window)
    tables[1].add_ngrams(tokens % 1000, offsets, window, False)
    rows = data.draw(st.lists(feature_row, min_size=0, max_size=10))
    fr = as_feature_rows(rows, data.draw(st.lists(st.integers(0, 4), min_size=len(rows),
                                                  max_size=len(rows))))
    tables[2].add_rows(fr)
    want = [ref.count_windows(tokens, offsets, window),
            ref.count_ngrams(tokens % 1000, offsets, window, False),
            ref.add_feature_rows(fr.indptr, fr.indices, fr.values, fr.labels),
            ref.count_windows(tokens, offsets, window)]
    saved, accumulate.COMPACT_BLOCK = accumulate.COMPACT_BLOCK, block
    try:
        for table, (want_keys, want_vals) in zip(tables, want):
            keys, vals = table.sorted_in_place()
            np.testing.assert_array_equal(keys, want_keys)
            np.testing.assert_allclose(vals, want_vals, rtol=1e-12, atol=0)
            assert keys.size == 0 or table.runs or (np.shares_memory(keys, table.slots)
                                                    and np.shares_memory(vals, table.slots))
    finally:
        accumulate.COMPACT_BLOCK = saved


def test_a_spilling_table_never_holds_two_tables(monkeypatch, tmp_path):
    """With a spill, growing into the cap hands the table over before the capped one is
    allocated, and a spill sorts inside the table: counting allocates (tracemalloc: numpy's
    arrays) at most the capped table and its partition buffers — not 1.5x the table (the
    grown copy), nor a sorted copy. The runs still add up to the numpy twin's counts."""
    import tracemalloc

    from streamfit.count import accumulate

    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 2000, 60000).astype(np.int64)  # rows dense enough to be sorted
    #                                                         by counting (kernels.sorted_items)
    offsets = np.array([0, 20000, 40000, 60000], dtype=np.int64)
    want_keys, want_counts = ref.count_windows(tokens, offsets, 2)
    max_bits = 15  # grown 14 -> 15: the old table is half the new one
    cap = 16 << max_bits
    buffers = 2 * 8 * (1 << (max_bits - 3))  # partitioned: and the last ones, half as large
    row_counts = 2 * 8 * (2 * 2002 + 1)  # the counting sort's (positions x contexts)
    monkeypatch.setattr(accumulate, "COMPACT_BLOCK", 256)  # its copies: 4 KiB
    for path, traced in (("hashing", False), ("partitioned", False), ("hashing", True),
                         ("partitioned", True)):  # the kernels loaded before tracing
        table = CountTable(np.int64, capacity_bits=8, max_bits=max_bits)
        table.force_path = path
        files = [open(tmp_path / f"{path}{traced}.{part}", "wb") for part in ("keys", "vals")]
        table.spill = lambda k, v: (k.tofile(files[0]), v.tofile(files[1]))  # no copy
        if traced:
            tracemalloc.start()
        try:
            table.add_windows(tokens, offsets, 2)
            if traced:
                _, peak = tracemalloc.get_traced_memory()
                assert peak <= cap + 1.5 * buffers + row_counts + (16 << 10), (path, peak, cap)
        finally:
            tracemalloc.stop()
        table.spill(*table.items())
        for f in files:
            f.close()
        keys, vals = (np.fromfile(f.name, dtype=np.int64) for f in files)
        uniq, inverse = np.unique(keys, return_inverse=True)
        np.testing.assert_array_equal(uniq, want_keys)
        np.testing.assert_array_equal(np.bincount(inverse, weights=vals).astype(np.int64),
                                      want_counts)
        assert keys.size > uniq.size  # it spilled
