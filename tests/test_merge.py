"""Shards of statistics merge exactly: merge(accumulate(A), accumulate(B)) equals
accumulate(A ∪ B), and both equal counts computed by definition. Saved statistics round-trip
exactly and damaged ones are refused."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import streamfit
from streamfit import FormatError
from streamfit.count.accumulate import Accumulator, consume
from streamfit.count.stats import Statistics, load, merge, save

from conftest import (classify_mass_oracle, dense_to_sparse, lm_count_oracle, write_dense,
                      write_sparse, write_tokens)

SETTINGS = settings(max_examples=30, deadline=None)

docs_strategy = st.lists(st.lists(st.integers(0, 9), max_size=10), max_size=8)


def assert_same_counts(got: Statistics, want: Statistics) -> None:
    """Bit-exact equality of integer statistics."""
    assert (got.task, got.window, got.n_classes, got.n_features) == \
        (want.task, want.window, want.n_classes, want.n_features)
    for name in ("indptr", "indices", "data"):
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.n_examples == want.n_examples
    assert got.l1_sum == want.l1_sum
    assert got.empty_rows == want.empty_rows


@SETTINGS
@given(docs_a=docs_strategy, docs_b=docs_strategy, window=st.integers(1, 3))
def test_lm_merge_equals_accumulating_the_union(docs_a, docs_b, window):
    with tempfile.TemporaryDirectory() as tmp:
        a = write_tokens(Path(tmp) / "a.parquet", docs_a, row_group_size=3)
        b = write_tokens(Path(tmp) / "b.parquet", docs_b, row_group_size=2)
        sa = streamfit.accumulate([a], window=window, batch_rows=2)
        sb = streamfit.accumulate([b], window=window)
        union = streamfit.accumulate([a, b], window=window)
        merged = merge(sa, sb)
        assert_same_counts(merged, union)
        assert merged.sources == union.sources
        vocab = max([t for d in docs_a + docs_b for t in d], default=-1) + 1
        assert merged.n_classes == vocab
        np.testing.assert_array_equal(merged.csr().toarray(),
                                      lm_count_oracle(docs_a + docs_b, window, vocab))
        assert_same_counts(merge(sb, sa), merged)  # order does not matter


@pytest.mark.parametrize("window", [1, 2, 3])
def test_lm_merge_of_shards_with_different_vocabularies(tmp_path, window):
    """A's largest id is 5 and B's is 9: A's rows (BOS included) move to B's layout."""
    rng = np.random.default_rng(window)
    docs_a = [rng.integers(0, 6, size=n).tolist() for n in (7, 0, 1, 12)]
    docs_a[0][3] = 5
    docs_b = [rng.integers(0, 10, size=n).tolist() for n in (9, 4)]
    docs_b[1][2] = 9
    a = write_tokens(tmp_path / "a.parquet", docs_a)
    b = write_tokens(tmp_path / "b.parquet", docs_b)
    sa = streamfit.accumulate([a], window=window)
    sb = streamfit.accumulate([b], window=window)
    assert (sa.n_classes, sb.n_classes) == (6, 10)
    merged = merge(sa, sb)
    assert_same_counts(merged, streamfit.accumulate([a, b], window=window))
    np.testing.assert_array_equal(merged.csr().toarray(), lm_count_oracle(docs_a + docs_b, window, 10))
    # the smaller shard alone, relaid out, is its own counts in the bigger layout
    np.testing.assert_array_equal(sa.relayout(10).csr().toarray(), lm_count_oracle(docs_a, window, 10))


feature_rows_strategy = st.lists(
    st.lists(st.tuples(st.integers(0, 9), st.sampled_from([0.0, 0.5, 1.0, 2.0, 0.125, 3.3])),
             max_size=5, unique_by=lambda t: t[0]),
    max_size=10)


@SETTINGS
@given(rows_a=feature_rows_strategy, rows_b=feature_rows_strategy, data=st.data())
def test_classify_sparse_merge_equals_accumulating_the_union(rows_a, rows_b, data):
    # at least one row overall, so both shards can be read as a feature corpus
    labels_a = data.draw(st.lists(st.integers(0, 3), min_size=len(rows_a), max_size=len(rows_a)))
    labels_b = data.draw(st.lists(st.integers(0, 6), min_size=len(rows_b), max_size=len(rows_b)))
    with tempfile.TemporaryDirectory() as tmp:
        a = write_sparse(Path(tmp) / "a.parquet", labels_a, [[i for i, _ in r] for r in rows_a],
                         [[v for _, v in r] for r in rows_a], row_group_size=3)
        b = write_sparse(Path(tmp) / "b.parquet", labels_b, [[i for i, _ in r] for r in rows_b],
                         [[v for _, v in r] for r in rows_b], row_group_size=4)
        sa = streamfit.accumulate([a], batch_rows=2)
        sb = streamfit.accumulate([b])
        union = streamfit.accumulate([a, b])
        merged = merge(sa, sb)
    assert (merged.n_classes, merged.n_features) == (union.n_classes, union.n_features)
    np.testing.assert_array_equal(merged.indptr, union.indptr)
    np.testing.assert_array_equal(merged.indices, union.indices)
    np.testing.assert_allclose(merged.data, union.data, rtol=1e-12)
    assert merged.n_examples == union.n_examples == len(rows_a) + len(rows_b)
    assert merged.empty_rows == union.empty_rows == \
        sum(1 for r in rows_a + rows_b if sum(v for _, v in r) == 0)
    assert merged.l1_sum == pytest.approx(union.l1_sum, rel=1e-12)
    rows = rows_a + rows_b
    oracle = classify_mass_oracle(labels_a + labels_b, [[i for i, _ in r] for r in rows],
                                  [[v for _, v in r] for r in rows],
                                  merged.n_features, merged.n_classes)
    np.testing.assert_allclose(merged.csr().toarray(), oracle, rtol=1e-12, atol=1e-15)


def test_classify_merge_with_different_feature_and_class_counts(tmp_path):
    """A uses features 0..5 and labels 0..1, B features 0..9 and labels 0..4."""
    rng = np.random.default_rng(3)
    xa = rng.gamma(1.0, size=(30, 6)) * (rng.random((30, 6)) < 0.5)
    xa[0, 5] = 1.0
    xb = rng.gamma(1.0, size=(20, 10)) * (rng.random((20, 10)) < 0.5)
    xb[0, 9] = 2.0
    ya, yb = rng.integers(0, 2, 30), rng.integers(0, 5, 20)
    ya[0], yb[0] = 1, 4
    a = write_sparse(tmp_path / "a.parquet", ya, *dense_to_sparse(xa), row_group_size=7)
    b = write_sparse(tmp_path / "b.parquet", yb, *dense_to_sparse(xb), row_group_size=7)
    sa, sb = streamfit.accumulate([a]), streamfit.accumulate([b])
    assert (sa.n_features, sa.n_classes, sb.n_features, sb.n_classes) == (6, 2, 10, 5)
    merged = merge(sa, sb)
    union = streamfit.accumulate([a, b])
    np.testing.assert_array_equal(merged.indptr, union.indptr)
    np.testing.assert_array_equal(merged.indices, union.indices)
    np.testing.assert_allclose(merged.data, union.data, rtol=1e-12)
    xa_wide = np.pad(xa, ((0, 0), (0, 4)))
    oracle = classify_mass_oracle(np.r_[ya, yb], *dense_to_sparse(np.r_[xa_wide, xb]), 10, 5)
    np.testing.assert_allclose(merged.csr().toarray(), oracle, rtol=1e-12, atol=1e-15)


def test_classify_dense_merge_of_three_shards(tmp_path):
    rng = np.random.default_rng(5)
    paths, labels, xs = [], [], []
    for s in range(3):
        x = rng.gamma(1.0, size=(25, 4)) * (rng.random((25, 4)) < 0.6)
        y = rng.integers(0, 3, 25)
        paths.append(write_dense(tmp_path / f"d{s}.parquet", y, x, row_group_size=10))
        labels.append(y)
        xs.append(x)
    merged = merge(*[streamfit.accumulate([p]) for p in paths])
    union = streamfit.accumulate(paths)
    np.testing.assert_array_equal(merged.indices, union.indices)
    np.testing.assert_allclose(merged.data, union.data, rtol=1e-12)
    oracle = classify_mass_oracle(np.concatenate(labels), *dense_to_sparse(np.concatenate(xs)), 4, 3)
    np.testing.assert_allclose(merged.csr().toarray(), oracle, rtol=1e-12, atol=1e-15)


# --- row-group bookkeeping ----------------------------------------------------------------
def shard(path: Path, keep: set[int], n_groups: int, window: int = 2) -> Statistics:
    """Statistics of only some row groups of a file."""
    acc = Accumulator("lm", window=window)
    key = str(path.resolve())
    consume(acc, [path], skip={(key, rg) for rg in range(n_groups) if rg not in keep},
            progress=False)
    return acc.stats()


@pytest.fixture
def four_groups(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 7, size=rng.integers(0, 15)).tolist() for _ in range(20)]
    return write_tokens(tmp_path / "c.parquet", docs, row_group_size=5), docs


def test_shards_of_disjoint_row_groups_merge_to_the_whole_file(four_groups):
    path, docs = four_groups
    merged = merge(shard(path, {0, 2}, 4), shard(path, {1, 3}, 4))
    whole = streamfit.accumulate([path], window=2)
    np.testing.assert_array_equal(merged.csr().toarray(), whole.csr().toarray())
    np.testing.assert_array_equal(merged.csr().toarray(), lm_count_oracle(docs, 2, whole.n_classes))
    assert merged.n_examples == whole.n_examples
    assert sorted(rg for s in merged.sources for rg in s["row_groups"]) == [0, 1, 2, 3]


def test_merging_shards_that_share_a_row_group_is_refused(four_groups):
    path, _ = four_groups
    with pytest.raises(FormatError, match="row group 1"):
        merge(shard(path, {0, 1}, 4), shard(path, {1, 2, 3}, 4))
    whole = streamfit.accumulate([path], window=2)
    with pytest.raises(FormatError, match="overlap"):
        merge(whole, streamfit.accumulate([path], window=2))


def test_merging_different_windows_or_tasks_is_refused(four_groups, tmp_path):
    path, _ = four_groups
    other = write_tokens(tmp_path / "other.parquet", [[1, 2, 3]])
    with pytest.raises(FormatError, match="window"):
        merge(streamfit.accumulate([path], window=2), streamfit.accumulate([other], window=3))
    feats = write_dense(tmp_path / "f.parquet", [0, 1], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(FormatError):
        merge(streamfit.accumulate([other], window=1), streamfit.accumulate([feats]))


# --- on disk ------------------------------------------------------------------------------
def assert_identical(got: Statistics, want: Statistics) -> None:
    assert_same_counts(got, want)
    assert got.sources == want.sources


@pytest.fixture(params=["lm", "classify"])
def saved(request, tmp_path, four_groups):
    if request.param == "lm":
        stats = streamfit.accumulate([four_groups[0]], window=3)
    else:
        rng = np.random.default_rng(1)
        x = rng.gamma(1.0, size=(40, 5)) * (rng.random((40, 5)) < 0.5)
        stats = streamfit.accumulate([write_dense(tmp_path / "d.parquet", rng.integers(0, 3, 40), x)])
    directory = tmp_path / "stats"
    manifest = save(stats, directory)
    return stats, directory, manifest


def test_save_load_round_trip_is_exact(saved):
    stats, directory, manifest = saved
    for kwargs in ({}, {"mmap": False}, {"check": True}):
        assert_identical(load(directory, **kwargs), stats)
    # a second save replaces the arrays (new generation) and leaves no stale files
    save(load(directory, mmap=False), directory)
    assert_identical(load(directory, check=True), stats)
    files = sorted(p.name for p in directory.iterdir())
    assert len(files) == 4 and "manifest.json" in files


def array_path(directory: Path, name: str) -> Path:
    manifest = json.loads((directory / "manifest.json").read_text())
    return directory / manifest["arrays"][name]["file"]


@pytest.mark.parametrize("name", ["indptr", "indices", "data"])
def test_truncated_array_is_detected_on_load(saved, name):
    _, directory, _ = saved
    path = array_path(directory, name)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(FormatError, match="truncated"):
        load(directory)


def test_missing_array_is_detected_on_load(saved):
    _, directory, _ = saved
    array_path(directory, "indices").unlink()
    with pytest.raises(FormatError, match="missing"):
        load(directory)


def edit_nnz(m):
    m["nnz"] += 1


def edit_n_features(m):
    m["n_features"] += 1


def edit_shape(m):
    m["arrays"]["data"]["shape"] = [m["arrays"]["data"]["shape"][0] + 1]


def edit_dtype(m):
    m["arrays"]["data"]["dtype"] = "float32"


def edit_file(m):
    m["arrays"]["data"]["file"] = "F-000000000000.data.npy"


def edit_version(m):
    m["schema_version"] = 99


def edit_format(m):
    m["format"] = "something-else"


@pytest.mark.parametrize("edit", [edit_nnz, edit_n_features, edit_shape, edit_dtype, edit_file,
                                  edit_version, edit_format])
def test_edited_manifest_is_detected_on_load(saved, edit):
    _, directory, _ = saved
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError):
        load(directory)


def test_unreadable_manifest_is_detected_on_load(saved):
    _, directory, _ = saved
    path = directory / "manifest.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(FormatError, match="corrupt"):
        load(directory)
    with pytest.raises(FormatError):
        load(directory.parent / "nowhere")


def test_flipped_byte_is_detected_with_check(saved):
    stats, directory, _ = saved
    path = array_path(directory, "data")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40  # the last value's most significant byte: same size, different number
    path.write_bytes(bytes(raw))
    unchecked = load(directory)  # sizes and shapes still agree: only a checksum can tell
    assert not np.array_equal(unchecked.data, stats.data)
    with pytest.raises(FormatError, match="checksum"):
        load(directory, check=True)

