"""Finalize: the explicit solution of a statistics object, as a Model in memory or written
to weights files block by block (forms in `streamfit.solve.forms`).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np

from ..count.stats import Statistics
from ..data.featurize import Examples
from ..errors import OptionError, StreamfitError
from ..model.weights import Model, load_model, locks_output, write_model
from .calibrate import choose
from .forms import DEFAULT_SMOOTHING, FORMS, class_log_totals

BLOCK_BYTES = 64 << 20


def _dense_blocks(stats: Statistics, smoothing: float, dtype: str) -> Iterator[tuple[int, np.ndarray]]:
    c = stats.n_classes
    rows_per_block = max(1, BLOCK_BYTES // (8 * max(c, 1)))
    log_row = np.log(smoothing) - np.log(stats.feature_totals() + smoothing * c)
    for lo in range(0, stats.n_features, rows_per_block):
        hi = min(stats.n_features, lo + rows_per_block)
        block = np.repeat(log_row[lo:hi, None], c, axis=1)
        p0, p1 = stats.indptr[lo], stats.indptr[hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(stats.indptr[lo:hi + 1]))
        block[rows, stats.indices[p0:p1]] += np.log1p(np.asarray(stats.data[p0:p1], np.float64) / smoothing)
        yield lo, block.astype(dtype)


def sparse_data_blocks(stats: Statistics, smoothing: float, dtype: str = "float32",
                       block: int = 1 << 22) -> Iterator[np.ndarray]:
    """S = log1p(F / a) on F's support, a block of entries at a time (CSR data, in the
    order of the statistics' indptr / indices)."""
    for lo in range(0, stats.nnz, block):
        yield np.log1p(np.asarray(stats.data[lo:lo + block], np.float64) / smoothing).astype(dtype)


@locks_output
def finalize(stats: Statistics, out: str | os.PathLike | None = None, *,
             form: str = "conditional", smoothing: float | str = DEFAULT_SMOOTHING,
             heldout: Iterable[Examples] | None = None, layout: str = "dense",
             dtype: str = "float32", source: dict | None = None,
             calibrated_on: str = "heldout") -> Model:
    """The explicit solution of `stats` as a Model, written to `out` (STEM.npy + STEM.json)
    when given, else kept in memory. smoothing="auto" (or form="calibrated") needs
    `heldout`: an iterable of Examples, e.g. from `evaluate.iter_examples`;
    `calibrated_on` ("heldout" or "training rows") records what they were."""
    if form not in FORMS:
        raise OptionError(f"form must be one of {FORMS}, not {form!r}")
    if layout not in ("dense", "sparse"):
        raise OptionError(f"layout must be 'dense' or 'sparse', not {layout!r}")
    if dtype not in ("float32", "float16", "float64"):
        raise OptionError(f"dtype must be float32, float16 or float64, not {dtype!r}")
    if dtype == "float16" and layout == "sparse":  # the scoring kernels take float32/64
        raise OptionError("dtype float16 is for the dense layout; use float32 for sparse")
    if stats.n_examples - stats.empty_rows <= 0 or stats.nnz == 0:
        raise StreamfitError("the statistics are empty: nothing to solve")
    stats.totals()  # one pass over F: its totals, and each array's sha256 checked on the way
    solution = choose(stats, form, smoothing, heldout)
    if solution.calibration:
        solution.calibration["on"] = calibrated_on
    a = solution.smoothing
    bias = None if solution.beta == 0 else -solution.beta * class_log_totals(stats, a)
    header = {"task": stats.task, "window": stats.window, "n_classes": stats.n_classes,
              "n_features": stats.n_features, "form": solution.form, "smoothing": a,
              "tau": solution.tau, "beta": solution.beta, "dtype": dtype,
              "calibration": solution.calibration,
              "statistics": {"n_examples": stats.n_examples, "nnz": stats.nnz, **(source or {})}}
    if stats.task == "lm":
        header["vocab_size"] = stats.n_classes
    if stats.encoding != "normalised":
        header["encoding"] = stats.encoding
    if out is not None:
        if layout == "dense":
            path = write_model(out, header, dense={"dtype": dtype,
                                                   "blocks": _dense_blocks(stats, a, dtype)},
                               bias=bias)
        else:
            path = write_model(out, header, bias=bias, sparse=(
                np.asarray(stats.indptr), np.asarray(stats.indices),
                sparse_data_blocks(stats, a, dtype)))
        return load_model(path)
    common = dict(task=stats.task, n_classes=stats.n_classes, n_features=stats.n_features,
                  tau=solution.tau, bias=bias, window=stats.window, meta=header)
    if layout == "dense":
        w = np.empty((stats.n_features, stats.n_classes), dtype=dtype)
        for lo, block in _dense_blocks(stats, a, dtype):
            w[lo:lo + block.shape[0]] = block
        return Model(dense=w, **common)
    data = np.concatenate(list(sparse_data_blocks(stats, a, dtype))) if stats.nnz else \
        np.zeros(0, dtype)
    return Model(sparse=(np.asarray(stats.indptr), np.asarray(stats.indices), data), **common)
