"""Arrow arrays built from numpy arrays and Python strings without `pyarrow.array`.

`pa.array` first asks whether its argument is a pandas object, and so imports pandas
wherever it is installed (0.4–0.5 s of CPU in a fresh process) even for a numpy array. The
writers of commands (score, predict, tokenize) build their columns here instead, from the
buffers: the same arrays, and pandas is never imported.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..errors import InputError


def numeric_array(values: np.ndarray, type: pa.DataType,
                  valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow array of integers or floats of `type` holding `values` (converted to its
    width); null where `valid` is False."""
    if not (pa.types.is_integer(type) or pa.types.is_floating(type)):
        raise TypeError(f"numeric_array makes integer or float arrays, not {type}")
    data = np.ascontiguousarray(values, dtype=type.to_pandas_dtype()).reshape(-1)
    bitmap, nulls = None, 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool).reshape(-1)
        nulls = int(valid.size - np.count_nonzero(valid))
        if nulls:
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type, data.size, [bitmap, pa.py_buffer(data)],
                                 null_count=nulls)


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """A list array whose row i holds values[offsets[i]:offsets[i + 1]] (int32 offsets)."""
    return pa.ListArray.from_arrays(numeric_array(offsets, pa.int32()), values)


def string_array(strings: list[str]) -> pa.Array:
    """A string array of Python strings, none of them null."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise InputError("more than 2 GiB of text in one batch: lower the batch size")
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets.astype(np.int32)),
                                  pa.py_buffer(b"".join(encoded))])
