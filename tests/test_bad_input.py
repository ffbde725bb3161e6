"""Bad input through `streamfit.accumulate`: an InputError that names the file, the row
group, the row (counted within its row group) and the column.

Corpora have 25 rows in row groups of 10 and are read 3 rows at a time, and the bad row is
absolute row 17 of the file: row 7 of row group 1, in the third batch of that group, so a
row number relative to the batch (1) or to the file (17) would be caught.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamfit
from streamfit import InputError, StreamfitError
from streamfit.solve import explicit as solve

N_ROWS, GROUP, BATCH, BAD = 25, 10, 3, 17
BAD_GROUP, BAD_ROW = BAD // GROUP, BAD % GROUP  # 1, 7


def write(path, columns: dict) -> str:
    pq.write_table(pa.table(columns), path, row_group_size=GROUP)
    return str(path)


GOOD = object()  # "leave row BAD as it is"


def tokens_column(bad_doc=GOOD, value_type=pa.int32()):
    docs = [[1, 2, 3, (i % 4)] for i in range(N_ROWS)]
    if bad_doc is not GOOD:
        docs[BAD] = bad_doc
    return pa.array(docs, type=pa.list_(value_type))


def labels_column(bad_label=None):
    labels = [i % 3 for i in range(N_ROWS)]
    if bad_label is not None:
        labels[BAD] = bad_label
    return pa.array(labels, type=pa.int64())


def dense_column(bad_row=None):
    rows = [[1.0, 0.0, 2.0, 0.5] for _ in range(N_ROWS)]
    if bad_row is not None:
        rows[BAD] = bad_row
    return pa.array(rows, type=pa.list_(pa.float64()))


def sparse_columns(bad_indices=None, bad_values=None):
    indices = [[0, 3] for _ in range(N_ROWS)]
    values = [[1.0, 2.0] for _ in range(N_ROWS)]
    if bad_indices is not None:
        indices[BAD] = bad_indices
    if bad_values is not None:
        values[BAD] = bad_values
    return {"indices": pa.array(indices, type=pa.list_(pa.int64())),
            "values": pa.array(values, type=pa.list_(pa.float64()))}


def assert_located(exc: InputError, path: str, column: str, *, row: int | None = BAD_ROW,
                   row_group: int = BAD_GROUP) -> None:
    assert exc.path == path
    assert exc.row_group == row_group
    assert exc.row == row
    assert exc.column == column
    text = str(exc)
    assert path in text and f"row group {row_group}" in text and repr(column) in text
    if row is not None:
        assert f"row {row}," in text


# --- bad values at a known row --------------------------------------------------------------
ROW_CASES = {
    "negative token id": (lambda: {"tokens": tokens_column([1, -3, 2])}, {}, "tokens", "negative"),
    "token id beyond the vocabulary": (lambda: {"tokens": tokens_column([1, 7])},
                                       {"vocab_size": 5}, "tokens", "out of range"),
    "null document": (lambda: {"tokens": tokens_column(None)}, {}, "tokens", "null"),
    "negative feature": (lambda: {"label": labels_column(), "features": dense_column(
        [1.0, -0.5, 0.0, 1.0])}, {}, "features", "negative"),
    "NaN feature": (lambda: {"label": labels_column(), "features": dense_column(
        [1.0, math.nan, 0.0, 1.0])}, {}, "features", "NaN"),
    "infinite feature": (lambda: {"label": labels_column(), "features": dense_column(
        [1.0, 0.0, math.inf, 1.0])}, {}, "features", "infinite"),
    "ragged dense row": (lambda: {"label": labels_column(), "features": dense_column(
        [1.0, 0.0, 2.0])}, {}, "features", "ragged"),
    "label out of range": (lambda: {"label": labels_column(5), "features": dense_column()},
                           {"n_classes": 3}, "label", "out of range"),
    "negative label": (lambda: {"label": labels_column(-1), "features": dense_column()},
                       {}, "label", "-1"),
    "negative sparse value": (lambda: {"label": labels_column(), **sparse_columns(
        bad_values=[1.0, -2.0])}, {}, "values", "negative"),
    "NaN sparse value": (lambda: {"label": labels_column(), **sparse_columns(
        bad_values=[math.nan, 2.0])}, {}, "values", "NaN"),
    "negative feature index": (lambda: {"label": labels_column(), **sparse_columns(
        bad_indices=[0, -4])}, {}, "indices", "out of range"),
    "indices and values of different lengths": (lambda: {"label": labels_column(), **sparse_columns(
        bad_indices=[0, 3, 5])}, {}, "values", "different lengths"),
}


@pytest.mark.parametrize("case", list(ROW_CASES), ids=list(ROW_CASES))
def test_bad_value_names_file_row_group_row_and_column(tmp_path, case):
    columns, options, column, words = ROW_CASES[case]
    path = write(tmp_path / "bad.parquet", columns())
    with pytest.raises(InputError, match=words) as info:
        streamfit.accumulate([path], batch_rows=BATCH, **options)
    assert_located(info.value, path, column)


def test_ragged_dense_rows_across_batches(tmp_path):
    """Every batch is internally consistent, but from row 6 of row group 1 on (a batch of
    its own) the rows are one value longer than before."""
    rows = [[1.0, 0.0, 2.0, 0.5]] * 16 + [[1.0, 0.0, 2.0, 0.5, 3.0]] * 9
    path = write(tmp_path / "ragged.parquet",
                 {"label": labels_column(), "features": pa.array(rows, pa.list_(pa.float64()))})
    with pytest.raises(InputError, match="ragged") as info:
        streamfit.accumulate([path], batch_rows=BATCH)
    assert_located(info.value, path, "features", row=6)


def test_bad_row_in_the_second_file_names_that_file(tmp_path):
    good = write(tmp_path / "a.parquet", {"tokens": tokens_column()})
    bad = write(tmp_path / "b.parquet", {"tokens": tokens_column([4, -1])})
    with pytest.raises(InputError) as info:
        streamfit.accumulate([good, bad], batch_rows=BATCH)
    assert_located(info.value, bad, "tokens")


# --- wrong types: the whole column is wrong, so there is no row ------------------------------
TYPE_CASES = {
    "tokens as strings": ({"tokens": pa.array([["a", "b"]] * N_ROWS)}, {}, "tokens",
                          "list<integer>"),
    "tokens not a list": ({"tokens": pa.array(list(range(N_ROWS)))}, {}, "tokens", "list<integer>"),
    "features as strings": ({"label": labels_column(), "features": pa.array([["1.0", "2"]] * N_ROWS)},
                            {}, "features", "numeric"),
    "float labels": ({"label": pa.array([0.0] * N_ROWS), "features": dense_column()}, {}, "label",
                     "integer"),
    "float indices": ({"label": labels_column(), "indices": pa.array([[0.0, 1.0]] * N_ROWS),
                       "values": pa.array([[1.0, 1.0]] * N_ROWS)}, {}, "indices", "integer"),
    "string values": ({"label": labels_column(), "indices": pa.array([[0, 1]] * N_ROWS),
                       "values": pa.array([["x", "y"]] * N_ROWS)}, {}, "values", "numeric"),
}


@pytest.mark.parametrize("case", list(TYPE_CASES), ids=list(TYPE_CASES))
def test_wrong_column_type_names_file_and_column(tmp_path, case):
    columns, options, column, words = TYPE_CASES[case]
    path = write(tmp_path / "typed.parquet", columns)
    with pytest.raises(InputError, match=words) as info:
        streamfit.accumulate([path], batch_rows=BATCH, **options)
    assert_located(info.value, path, column, row=None, row_group=0)


# --- missing columns ------------------------------------------------------------------------
def test_missing_token_column(tmp_path):
    path = write(tmp_path / "t.parquet", {"tokens": tokens_column()})
    with pytest.raises(InputError, match="missing column.*'text'") as info:
        streamfit.accumulate([path], task="lm", column="text")
    assert info.value.path == path and path in str(info.value)


def test_missing_values_column(tmp_path):
    path = write(tmp_path / "s.parquet", {"label": labels_column(),
                                          "indices": sparse_columns()["indices"]})
    with pytest.raises(InputError, match="missing column.*'values'") as info:
        streamfit.accumulate([path], task="classify", features=None)
    assert info.value.path == path
    # without a task, the columns do not say what the corpus is: still named
    with pytest.raises(InputError, match="cannot tell the task") as info:
        streamfit.accumulate([path])
    assert info.value.path == path and path in str(info.value)


def test_missing_column_in_a_later_file(tmp_path):
    good = write(tmp_path / "a.parquet", {"tokens": tokens_column()})
    other = write(tmp_path / "b.parquet", {"words": tokens_column()})
    with pytest.raises(InputError, match="missing column") as info:
        streamfit.accumulate([good, other])
    assert info.value.path == other


# --- files that are not corpora -------------------------------------------------------------
def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("tokens\n1 2 3\n")
    with pytest.raises(InputError, match="not a readable Parquet") as info:
        streamfit.accumulate([path])
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_zero_byte_and_truncated_parquet_files(tmp_path):
    empty = tmp_path / "zero.parquet"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as info:
        streamfit.accumulate([empty])
    assert str(empty) in str(info.value)
    whole = write(tmp_path / "whole.parquet", {"tokens": tokens_column()})
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(open(whole, "rb").read()[:200])
    with pytest.raises(InputError) as info:
        streamfit.accumulate([cut])
    assert str(cut) in str(info.value)


def test_directory_without_parquet_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "readme.txt").write_text("no data here")
    with pytest.raises(InputError, match="no .parquet files") as info:
        streamfit.accumulate([folder])
    assert str(folder) in str(info.value)


def test_glob_matching_nothing_and_missing_path(tmp_path):
    pattern = str(tmp_path / "shard-*.parquet")
    with pytest.raises(InputError, match="matches no files") as info:
        streamfit.accumulate([pattern])
    assert pattern in str(info.value)
    missing = str(tmp_path / "nope.parquet")
    with pytest.raises(InputError, match="no such file") as info:
        streamfit.accumulate([missing])
    assert missing in str(info.value)


def test_errors_are_streamfit_and_value_errors(tmp_path):
    path = write(tmp_path / "bad.parquet", {"tokens": tokens_column([-1])})
    with pytest.raises(StreamfitError):
        streamfit.accumulate([path])
    with pytest.raises(ValueError):
        streamfit.accumulate([path])


# --- empty corpora: nothing to learn, said at the solve step ---------------------------------
@pytest.mark.parametrize("columns", [
    {"tokens": pa.array([], type=pa.list_(pa.int32()))},
    {"tokens": pa.array([[], []], type=pa.list_(pa.int32()))},  # documents without tokens
    {"label": pa.array([], type=pa.int64()), "features": pa.array([], type=pa.list_(pa.float64()))},
    {"label": pa.array([0, 1], type=pa.int64()),                 # rows with all-zero features
     "features": pa.array([[0.0, 0.0], [0.0, 0.0]], type=pa.list_(pa.float64()))},
], ids=["zero-row token file", "empty documents", "zero-row feature file", "all-zero rows"])
def test_empty_corpus_gives_empty_statistics_that_cannot_be_solved(tmp_path, columns):
    path = write(tmp_path / "empty.parquet", columns)
    stats = streamfit.accumulate([path])
    assert stats.nnz == 0
    assert np.asarray(stats.data).sum() == 0
    assert stats.n_examples - stats.empty_rows == 0
    assert [s["path"] for s in stats.sources] == [str((tmp_path / "empty.parquet").resolve())]
    with pytest.raises(StreamfitError, match="empty"):
        solve.finalize(stats)
    with pytest.raises(StreamfitError, match="empty"):
        solve.finalize(stats, out=tmp_path / "w.npy")
    assert not list(tmp_path.glob("w*"))  # nothing half-written
