"""Featurizing: Arrow record batches to validated numpy arrays.

Validation happens here, once, at the edge, with errors naming the row and column, so the
numeric kernels can trust their arrays. Two outputs:

- `TokenArrays` / `FeatureRows`: what the accumulating kernels read;
- `Examples`: normalised inputs x̃ (CSR rows summing to 1) and targets, what scoring reads.

Token windows become features k*(V+1) + token[t-1-k] for k = 0..m-1, with the id V of
each block standing for "before the start of the document" (BOS).

Encodings of feature rows (chosen at accumulate, recorded in the statistics and the model):
`normalised` (the default) reads the row as it is; `complement` reads a row x of d features
in [0, 1] as the 2d features [x, 1 − x]. Its sum is d for every row, so x̃ = [x, 1 − x]/d
keeps every value (x/Σx loses the row's scale) and the softmax layer on it is logistic
regression with an intercept.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..defaults import ENCODINGS
from ..errors import InputError
from ..io.arrow import numeric_array
from .limits import MAX_FEATURE, MAX_LABEL, MAX_TOKEN_ID


@dataclass
class TokenArrays:
    tokens: np.ndarray       # int32 or int64, documents concatenated
    doc_offsets: np.ndarray  # int64, n_docs + 1

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)



@dataclass
class FeatureRows:
    indptr: np.ndarray   # int64, n_rows + 1
    indices: np.ndarray  # int64 feature ids
    values: np.ndarray   # float64, finite, >= 0
    labels: np.ndarray   # int64
    n_features: int      # 1 + largest feature id seen (dense: the row length)

    @property
    def n_rows(self) -> int:
        return int(self.labels.size)


@dataclass
class Examples:
    """Normalised inputs as CSR rows (values sum to 1 per non-empty row) and targets."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    targets: np.ndarray  # int64; -1 where there is no target

    @property
    def n(self) -> int:
        return int(self.targets.size)


def _first_row(offsets: np.ndarray, flat_positions: np.ndarray) -> int:
    """The row holding the first of the given flat positions of a list column."""
    return int(np.searchsorted(offsets, flat_positions[0], side="right") - 1)


def numpy_values(arr: pa.Array) -> np.ndarray:
    """The values of an Arrow array without nulls as numpy (a view where they are integers
    or floats of 32/64 bits): its data buffer read directly, since pyarrow's `to_numpy`
    imports pandas the first time (0.7 s of a command's start-up) even for such arrays."""
    t = arr.type
    kind = "i" if pa.types.is_signed_integer(t) else "u" if pa.types.is_unsigned_integer(t) \
        else "f" if pa.types.is_floating(t) and t.bit_width in (32, 64) else None
    buffers = arr.buffers()
    if kind is None or arr.null_count or len(buffers) != 2 or buffers[1] is None:
        return arr.to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"{kind}{t.bit_width // 8}")
    return np.frombuffer(buffers[1], dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def _list_parts(arr: pa.Array, column: str) -> tuple[np.ndarray, pa.Array]:
    """(offsets rebased to 0, flat values) of a list column, rejecting null rows."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError("null value (each row needs a list)", row=row, column=column)
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        offsets = np.arange(len(arr) + 1, dtype=np.int64) * size
        return offsets, arr.values.slice(arr.offset * size, len(arr) * size)
    offsets = numpy_values(arr.offsets).astype(np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    return offsets - offsets[0], values


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    idx = batch.schema.get_field_index(name)
    if idx < 0:
        raise InputError(f"missing column {name!r}; the data has {batch.schema.names}")
    return batch.column(idx)


def token_arrays(batch: pa.RecordBatch, column: str = "tokens",
                 vocab_size: int | None = None) -> TokenArrays:
    """Token ids of each document (row) of a list<integer> column, validated."""
    arr = _column(batch, column)
    if not (_is_list(arr.type) and pa.types.is_integer(arr.type.value_type)):
        raise InputError(f"expected list<integer> token ids, found {arr.type}", column=column)
    offsets, values = _list_parts(arr, column)
    if values.null_count:
        bad = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        raise InputError("null token id", row=_first_row(offsets, bad), column=column)
    tokens = numpy_values(values)
    limit = MAX_TOKEN_ID if vocab_size is None else vocab_size - 1
    if tokens.size and (tokens.min() < 0 or tokens.max() > limit):  # cheap test first
        bad = np.flatnonzero((tokens < 0) | (tokens > limit))
        value = int(tokens[bad[0]])
        what = ("negative token id" if value < 0 else
                f"token id {value} out of range for vocabulary size {vocab_size}"
                if vocab_size is not None else f"token id {value} above {MAX_TOKEN_ID}")
        raise InputError(f"{what} ({value})" if value < 0 else what,
                         row=_first_row(offsets, bad), column=column)
    if tokens.dtype not in (np.int32, np.int64):  # after the range check: uint64 would wrap
        tokens = tokens.astype(np.int64)
    return TokenArrays(np.ascontiguousarray(tokens), offsets)


def _labels(batch: pa.RecordBatch, column: str, n_classes: int | None) -> np.ndarray:
    arr = _column(batch, column)
    if not pa.types.is_integer(arr.type):
        raise InputError(f"expected integer class labels, found {arr.type}", column=column)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError("null label", row=row, column=column)
    labels = numpy_values(arr)
    limit = MAX_LABEL if n_classes is None else n_classes - 1
    bad = np.flatnonzero((labels < 0) | (labels > limit))  # in the labels' own type
    if bad.size:
        value = int(labels[bad[0]])
        raise InputError(f"label {value} out of range 0..{limit}", row=int(bad[0]), column=column)
    return labels.astype(np.int64)


def _check_values(values: np.ndarray, offsets: np.ndarray, column: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        v = values[bad[0]]
        what = "NaN" if np.isnan(v) else "infinite" if np.isinf(v) else "negative"
        raise InputError(f"{what} feature value ({v}); features must be finite and "
                         f"non-negative", row=_first_row(offsets, bad), column=column)


def _float_values(values: pa.Array, offsets: np.ndarray, column: str) -> np.ndarray:
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise InputError(f"expected numeric feature values, found {values.type}", column=column)
    if values.null_count:
        bad = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        raise InputError("null feature value", row=_first_row(offsets, bad), column=column)
    out = numpy_values(values).astype(np.float64, copy=False)
    _check_values(out, offsets, column)
    return out


def feature_rows(batch: pa.RecordBatch, *, label: str = "label", features: str | None = "features",
                 indices: str = "indices", values: str = "values", n_features: int | None = None,
                 n_classes: int | None = None) -> FeatureRows:
    """Feature rows from a dense `features` list column, or (features=None) from sparse
    `indices` + `values` list columns, with integer labels; validated."""
    labels = _labels(batch, label, n_classes)
    if features is not None:
        arr = _column(batch, features)
        if not _is_list(arr.type):
            raise InputError(f"expected a list<float> of features per row, found {arr.type}",
                             column=features)
        offsets, flat = _list_parts(arr, features)
        lengths = np.diff(offsets)
        width = n_features if n_features is not None else (int(lengths[0]) if lengths.size else 0)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            raise InputError(f"ragged dense features: row has {int(lengths[bad[0]])} values, "
                             f"expected {width}", row=int(bad[0]), column=features)
        vals = _float_values(flat, offsets, features)
        idx = np.tile(np.arange(width, dtype=np.int64), lengths.size)
        return FeatureRows(offsets, idx, vals, labels, width)
    iarr, varr = _column(batch, indices), _column(batch, values)
    for arr, name in ((iarr, indices), (varr, values)):
        if not _is_list(arr.type):
            raise InputError(f"expected a list column, found {arr.type}", column=name)
    if not pa.types.is_integer(iarr.type.value_type):
        raise InputError(f"expected list<integer> feature indices, found {iarr.type}", column=indices)
    ioff, iflat = _list_parts(iarr, indices)
    voff, vflat = _list_parts(varr, values)
    if not np.array_equal(ioff, voff):
        row = int(np.flatnonzero(np.diff(ioff) != np.diff(voff))[0])
        raise InputError(f"{indices!r} and {values!r} have different lengths", row=row,
                         column=values)
    if iflat.null_count:
        bad = np.flatnonzero(iflat.is_null().to_numpy(zero_copy_only=False))
        raise InputError("null feature index", row=_first_row(ioff, bad), column=indices)
    idx = numpy_values(iflat)
    limit = MAX_FEATURE if n_features is None else n_features - 1
    bad = np.flatnonzero((idx < 0) | (idx > limit))  # in the indices' own type
    if bad.size:
        raise InputError(f"feature index {int(idx[bad[0]])} out of range 0..{limit}",
                         row=_first_row(ioff, bad), column=indices)
    idx = idx.astype(np.int64)
    vals = _float_values(vflat, voff, values)
    width = int(idx.max()) + 1 if idx.size else 0
    if n_features is not None:
        width = n_features
    return FeatureRows(ioff, idx, vals, labels, width)


def _check_offsets(offsets: np.ndarray, n: int, what: str) -> np.ndarray:
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.size < 1 or \
            int(offsets[0]) != 0 or int(offsets[-1]) != n or np.any(offsets[1:] < offsets[:-1]):
        raise InputError(f"{what} must be integers running from 0 to {n} without decreasing")
    return offsets.astype(np.int64, copy=False)


def _check_ids(ids: np.ndarray, limit: int, offsets: np.ndarray, what: str, column: str) -> np.ndarray:
    """Integer ids in 0..limit (min / max first: cheap), as int64."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"{what}s must be a 1-d array of integers, not {ids.dtype} {ids.shape}",
                         column=column)
    if ids.size and (ids.min() < 0 or ids.max() > limit):
        bad = np.flatnonzero((ids < 0) | (ids > limit))
        value = int(ids[bad[0]])
        raise InputError(f"negative {what} ({value})" if value < 0 else
                         f"{what} {value} out of range 0..{limit}",
                         row=_first_row(offsets, bad), column=column)
    return ids.astype(np.int64, copy=False)


def check_token_arrays(arrays: TokenArrays, vocab_size: int | None = None) -> TokenArrays:
    """TokenArrays from a caller (not from token_arrays, which validates as it reads),
    checked as cheaply as possible: integer ids of one dimension within range (min / max),
    document offsets from 0 to the number of tokens, never decreasing."""
    tokens = np.asarray(arrays.tokens)
    offsets = _check_offsets(arrays.doc_offsets, tokens.size if tokens.ndim == 1 else -1,
                             "document offsets")
    limit = MAX_TOKEN_ID if vocab_size is None else vocab_size - 1
    checked = _check_ids(tokens, limit, offsets, "token id", "tokens")
    if tokens.dtype in (np.int32, np.int64):
        checked = tokens
    return TokenArrays(np.ascontiguousarray(checked), offsets)


def check_feature_rows(rows: FeatureRows, n_features: int | None = None,
                       n_classes: int | None = None) -> FeatureRows:
    """FeatureRows from a caller, checked as token arrays are: CSR indptr from 0 to the
    number of entries, integer feature indices and labels within range, values finite and
    non-negative."""
    indices = np.asarray(rows.indices)
    indptr = _check_offsets(rows.indptr, indices.size if indices.ndim == 1 else -1, "indptr")
    values = np.asarray(rows.values)
    labels = np.asarray(rows.labels)
    if values.shape != indices.shape or labels.shape != (indptr.size - 1,):
        raise InputError(f"{indices.size} indices, {values.size} values and {labels.size} labels "
                         f"for {indptr.size - 1} rows: one value per index, one label per row")
    idx = _check_ids(indices, MAX_FEATURE if n_features is None else n_features - 1, indptr,
                     "feature index", "indices")
    labels = _check_ids(labels, MAX_LABEL if n_classes is None else n_classes - 1,
                        np.arange(labels.size + 1), "label", "label")
    if values.dtype.kind not in "iuf":
        raise InputError(f"feature values must be numbers, not {values.dtype}", column="values")
    values = values.astype(np.float64, copy=False)
    _check_values(values, indptr, "values")
    width = max(int(rows.n_features), int(idx.max()) + 1 if idx.size else 0)
    return FeatureRows(indptr, idx, values, labels, width)


def window_examples(arrays: TokenArrays, window: int, vocab_size: int) -> Examples:
    """One example per token: its `window` previous tokens (BOS before the document start)
    as features k*(V+1) + token, each with weight 1/window, and the token as target."""
    tokens = arrays.tokens.astype(np.int64)
    n = tokens.size
    offsets = arrays.doc_offsets
    doc_start = np.repeat(offsets[:-1], np.diff(offsets))
    pos = np.arange(n, dtype=np.int64) - doc_start
    cols = np.empty((n, window), dtype=np.int64)
    for k in range(window):
        has = pos > k
        ctx = np.full(n, vocab_size, dtype=np.int64)
        ctx[has] = tokens[np.flatnonzero(has) - 1 - k]
        cols[:, k] = k * (vocab_size + 1) + ctx
    indptr = np.arange(0, n * window + 1, window, dtype=np.int64)
    values = np.full(n * window, 1.0 / window)
    return Examples(indptr, cols.ravel(), values, tokens)


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        from ..errors import OptionError
        raise OptionError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    return encoding


def raw_width(n_features: int | None, encoding: str) -> int | None:
    """The input row width behind a model or statistics width under `encoding`."""
    return n_features // 2 if encoding == "complement" and n_features is not None else n_features


def encode_rows(rows: FeatureRows, encoding: str, column: str = "features") -> FeatureRows:
    """Rows under `encoding` (see the module docstring): complement coding gives every row
    its 2d values [x, 1 − x] (absent sparse entries are 0); values outside [0, 1] are
    refused, naming the row."""
    if check_encoding(encoding) == "normalised":
        return rows
    bad = np.flatnonzero(rows.values > 1.0)
    if bad.size:
        row = int(np.searchsorted(rows.indptr, bad[0], side="right") - 1)
        raise InputError(f"value {float(rows.values[bad[0]]):g} is outside [0, 1]: complement "
                         f"coding reads features in [0, 1] (scale them, or accumulate with "
                         f"--encoding normalised)", row=row, column=column)
    n, d = rows.n_rows, rows.n_features
    x = np.zeros((n, d))
    np.add.at(x, (np.repeat(np.arange(n), np.diff(rows.indptr)), rows.indices), rows.values)
    both = np.hstack([x, 1.0 - x])
    return FeatureRows(np.arange(0, n * 2 * d + 1, 2 * d, dtype=np.int64),
                       np.tile(np.arange(2 * d, dtype=np.int64), n), both.ravel(), rows.labels,
                       2 * d)


def feature_examples(rows: FeatureRows) -> Examples:
    """Rows normalised to sum 1, zeros dropped; an all-zero row stays empty."""
    n = rows.n_rows
    row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(rows.indptr))
    keep = rows.values != 0
    row_of, idx, vals = row_of[keep], rows.indices[keep], rows.values[keep]
    counts = np.bincount(row_of, minlength=n)
    sums = np.bincount(row_of, weights=vals, minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Examples(indptr, idx, vals / sums[row_of], rows.labels)


def batch_examples(batch: pa.RecordBatch, *, task: str, window: int, n_classes: int,
                   n_features: int, column: str = "tokens", label: str = "label",
                   features: str | None = "features", indices: str = "indices",
                   values: str = "values", encoding: str = "normalised") -> Examples:
    """Examples of a batch in a given model layout (`n_features` is the model's width, after
    `encoding`). A feature batch without a label column gets targets -1 (prediction); one
    without `features` is read as sparse."""
    if task == "lm":
        return window_examples(token_arrays(batch, column, n_classes), window, n_classes)
    names = batch.schema.names
    if features is not None and features not in names and indices in names:
        features = None
    has_label = label in names
    if not has_label:
        batch = batch.append_column(label, numeric_array(np.zeros(batch.num_rows), pa.int64()))
    rows = feature_rows(batch, label=label, features=features, indices=indices, values=values,
                        n_features=raw_width(n_features, encoding), n_classes=n_classes)
    ex = feature_examples(encode_rows(rows, encoding, features or values))
    if not has_label:
        ex.targets = np.full(ex.n, -1, dtype=np.int64)
    return ex


def take_examples(ex: Examples, rows: np.ndarray) -> Examples:
    """The examples at the given positions."""
    counts = np.diff(ex.indptr)[rows]
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    pos = np.repeat(ex.indptr[rows] - indptr[:-1], counts) + np.arange(indptr[-1])
    return Examples(indptr, ex.indices[pos], ex.values[pos], ex.targets[rows])


def concat_examples(parts: list[Examples]) -> Examples:
    """The examples of several batches as one."""
    offsets = np.cumsum([0] + [p.indices.size for p in parts])
    indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return Examples(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]),
                    np.concatenate([p.values for p in parts]),
                    np.concatenate([p.targets for p in parts]))


def slice_examples(ex: Examples, lo: int, hi: int) -> Examples:
    """Examples lo..hi-1 (views, no copy)."""
    p0, p1 = ex.indptr[lo], ex.indptr[hi]
    return Examples(ex.indptr[lo:hi + 1] - p0, ex.indices[p0:p1], ex.values[p0:p1], ex.targets[lo:hi])


def distinct_inputs(ex: Examples) -> tuple[Examples, np.ndarray]:
    """Distinct inputs and, per example, the index of its input. Only examples of one
    fixed width with equal weights (token windows) are merged; others map to themselves."""
    widths = np.diff(ex.indptr)
    if ex.n == 0 or np.any(widths != widths[0]) or widths[0] == 0 or \
            np.any(ex.values != ex.values[0]):
        return ex, np.arange(ex.n)
    w = int(widths[0])
    table = ex.indices.reshape(ex.n, w)
    base = int(ex.indices.max()) + 1
    if ex.indices.min() >= 0 and w * math.log2(base) < 63:
        # Pack each row into one int64 (mixed radix): a 1-D unique is ~8× faster than axis=0.
        packed = np.zeros(ex.n, dtype=np.int64)
        for k in range(w):
            packed = packed * base + table[:, k]
        _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
        rows = table[first]
    else:
        rows, inverse = np.unique(table, axis=0, return_inverse=True)
    if rows.shape[0] > ex.n // 2:
        return ex, np.arange(ex.n)
    indptr = np.arange(0, rows.size + 1, w, dtype=np.int64)
    return (Examples(indptr, rows.ravel(), np.full(rows.size, ex.values[0]),
                     np.full(rows.shape[0], -1, dtype=np.int64)), inverse.ravel())
