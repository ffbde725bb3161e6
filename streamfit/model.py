"""Model I/O and scoring: weights files, memory-mapped, and the softmax they define.

A model is logits = tau * (x̃ · W) + bias, x̃ the example's features normalised to sum 1.
Two layouts with identical predictions:

- dense: W (features × classes) in `STEM.npy`, a plain .npy any numpy can memory-map;
- sparse: S = log1p(F / a) as CSR in `STEM.S.indptr.npy`, `STEM.S.indices.npy`,
  `STEM.S.data.npy`. W = S + (a constant per row), which cancels in the softmax, so only
  classes in the support of an example's rows need work: the rest share logit bias_j, and
  their part of the normaliser is a precomputed logsumexp of the bias.

`STEM.bias.npy` holds the per-class bias when there is one; `STEM.json`, the sidecar, says
what the files are and where they came from (see data_schemas/weights.schema.json).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
from numpy.lib.format import open_memmap

from . import __version__, kernels
from .errors import FormatError
from .featurize import Examples, batch_examples
from .fileio import atomic_path, file_digest, fsync_path, load_npy, save_npy, verify, write_json

FORMAT = "streamfit-weights"
SCHEMA_VERSION = 1
SCORE_BLOCK_BYTES = 64 << 20


def stem_of(path: str | os.PathLike) -> Path:
    """`weights.npy`, `weights.json` and `weights` all name the model `weights`."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".npy", ".json") else p


def sidecar_path(path: str | os.PathLike) -> Path:
    return stem_of(path).with_suffix(".json")


@dataclass
class Model:
    """A softmax model over normalised features, dense or sparse, usually memory-mapped."""

    task: str
    n_classes: int
    n_features: int
    tau: float
    bias: np.ndarray | None = None
    dense: np.ndarray | None = None
    sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    window: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if (self.dense is None) == (self.sparse is None):
            raise ValueError("a model has either dense or sparse weights")
        bias = np.zeros(self.n_classes) if self.bias is None else np.asarray(self.bias, np.float64)
        self._bias = bias
        self._log_z_bias = float(np.logaddexp.reduce(bias)) if bias.size else 0.0
        order = np.lexsort((np.arange(bias.size), -bias))
        self._bias_desc_order = order.astype(np.int64)
        self._bias_desc_values = bias[order]

    @property
    def layout(self) -> str:
        return "dense" if self.dense is not None else "sparse"

    @property
    def vocab_size(self) -> int:
        return self.n_classes

    # --- inputs -------------------------------------------------------------------------
    def examples(self, data: pa.RecordBatch | pa.Table | Examples, **columns) -> Examples:
        """Featurize an Arrow batch the way this model reads it (labels may be absent)."""
        if isinstance(data, Examples):
            return data
        if isinstance(data, pa.Table):
            data = data.combine_chunks().to_batches()[0] if data.num_rows else \
                pa.RecordBatch.from_pylist([], schema=data.schema)
        return batch_examples(data, task=self.task, window=self.window, n_classes=self.n_classes,
                              n_features=self.n_features, **columns)

    def context_examples(self, contexts: list[list[int]]) -> Examples:
        """lm: one example per context (a list of preceding token ids, most recent last)."""
        if self.task != "lm":
            raise ValueError("contexts are for language models")
        v, m = self.n_classes, self.window
        indices = np.empty(len(contexts) * m, dtype=np.int64)
        for e, ctx in enumerate(contexts):
            for k in range(m):
                tok = ctx[-1 - k] if k < len(ctx) else v
                if not 0 <= tok <= v:
                    raise ValueError(f"token id {tok} out of range for vocabulary size {v}")
                indices[e * m + k] = k * (v + 1) + tok
        indptr = np.arange(0, len(contexts) * m + 1, m, dtype=np.int64)
        return Examples(indptr, indices, np.full(indices.size, 1.0 / m),
                        np.full(len(contexts), -1, dtype=np.int64))

    # --- scoring ------------------------------------------------------------------------
    def _chunks(self, ex: Examples) -> Iterator[tuple[int, int]]:
        step = max(1, SCORE_BLOCK_BYTES // (8 * max(self.n_classes, 1)))
        for lo in range(0, ex.n, step):
            yield lo, min(ex.n, lo + step)

    def logits(self, ex: Examples) -> np.ndarray:
        """Dense logits (n × classes) up to a per-example constant (sparse layout)."""
        from .kernels_reference import dense_logits

        if self.dense is not None:
            import scipy.sparse as sp
            x = sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, self.n_features))
            return self.tau * np.asarray(x @ self.dense, dtype=np.float64) + self._bias
        indptr, indices, data = self.sparse
        import scipy.sparse as sp
        s = sp.csr_matrix((data, indices, indptr), shape=(self.n_features, self.n_classes))
        x = sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, self.n_features))
        return self.tau * (x @ s).toarray().astype(np.float64) + self._bias

    def predict_proba(self, data, **columns) -> np.ndarray:
        """Class (next-token) probabilities, n × classes; for many classes prefer top_k."""
        z = self.logits(self.examples(data, **columns))
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def score(self, ex: Examples, top_k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per example: negative log-likelihood of the target (nats), its rank (0 = the
        argmax; ties broken by class index), and the top_k classes. Targets < 0 get NaN
        and -1. Memory is bounded by a block of examples, whatever the dataset size."""
        nll = np.full(ex.n, np.nan)
        rank = np.full(ex.n, -1, dtype=np.int64)
        top = np.full((ex.n, top_k), -1, dtype=np.int64)
        if self.sparse is not None:
            s_indptr, s_indices, s_data = self.sparse
            kernels.score_sparse(ex.indptr, ex.indices, ex.values, ex.targets,
                                 s_indptr, s_indices, s_data, float(self.tau), self._bias,
                                 self._log_z_bias, self._bias_desc_values,
                                 self._bias_desc_order, top_k, nll, rank, top)
            return nll, rank, top
        for lo, hi in self._chunks(ex):
            sub = Examples(ex.indptr[lo:hi + 1] - ex.indptr[lo],
                           ex.indices[ex.indptr[lo]:ex.indptr[hi]],
                           ex.values[ex.indptr[lo]:ex.indptr[hi]], ex.targets[lo:hi])
            z = self.logits(sub)
            has = sub.targets >= 0
            if has.any():
                zt = z[has]
                y = sub.targets[has]
                m = zt.max(axis=1, keepdims=True)
                lse = m[:, 0] + np.log(np.exp(zt - m).sum(axis=1))
                zy = zt[np.arange(y.size), y]
                cls = np.arange(self.n_classes)
                nll[lo:hi][has] = lse - zy
                rank[lo:hi][has] = ((zt > zy[:, None]).sum(axis=1)
                                    + ((zt == zy[:, None]) & (cls < y[:, None])).sum(axis=1))
            if top_k:
                top[lo:hi] = _top_k_dense(z, top_k)
        return nll, rank, top

    def top_k(self, ex: Examples, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable classes per example and their probabilities."""
        nll, _, top = self.score(Examples(ex.indptr, ex.indices, ex.values,
                                          np.full(ex.n, -1, dtype=np.int64)), top_k=k)
        probs = np.empty(top.shape)
        for j in range(k):
            t = Examples(ex.indptr, ex.indices, ex.values, top[:, j].copy())
            probs[:, j] = np.exp(-self.score(t)[0])
        return top, probs


def _top_k_dense(z: np.ndarray, k: int) -> np.ndarray:
    k = min(k, z.shape[1])
    part = np.argpartition(-z, k - 1, axis=1)[:, :k] if k < z.shape[1] else \
        np.tile(np.arange(z.shape[1]), (z.shape[0], 1))
    vals = np.take_along_axis(z, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    out = np.take_along_axis(part, order, axis=1)
    # argpartition may cut a tie at the boundary arbitrarily; fix ties by index exactly.
    kth = np.take_along_axis(z, out[:, -1:], axis=1)
    ties = (z == kth).sum(axis=1) > (np.take_along_axis(z, out, axis=1) == kth).sum(axis=1)
    for r in np.flatnonzero(ties):
        full = np.lexsort((np.arange(z.shape[1]), -z[r]))
        out[r] = full[:k]
    return out


# --- files ---------------------------------------------------------------------------------
def _array_entry(path: Path, arr: np.ndarray, digest: dict) -> dict:
    return {"file": path.name, "dtype": str(arr.dtype), "shape": list(arr.shape), **digest}


def write_dense(path: Path, n_rows: int, n_cols: int, dtype: str,
                blocks: Iterator[tuple[int, np.ndarray]]) -> dict:
    """Write a dense matrix block by block through open_memmap, crash-safely: `blocks`
    yields (first row, rows × n_cols array). Memory stays bounded by one block."""
    with atomic_path(path) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(n_rows, n_cols))
        for lo, block in blocks:
            out[lo:lo + block.shape[0]] = block
        out.flush()
        del out
        fsync_path(tmp)
    arr = np.load(path, mmap_mode="r")
    return _array_entry(path, arr, file_digest(path))


def write_model(out: str | os.PathLike, header: dict, *, dense: dict | None = None,
                sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                bias: np.ndarray | None = None) -> Path:
    """Write a model: arrays first (each crash-safe), the sidecar last, so a sidecar never
    names arrays that are not complete. `dense` = {"dtype", "blocks"} for write_dense."""
    stem = stem_of(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    if dense is not None:
        p = stem.with_suffix(".npy")
        arrays["W"] = write_dense(p, header["n_features"], header["n_classes"], dense["dtype"],
                                  dense["blocks"])
    else:
        for name, arr in zip(("indptr", "indices", "data"), sparse):
            p = Path(f"{stem}.S.{name}.npy")
            arrays[f"S.{name}"] = _array_entry(p, arr, save_npy(p, arr))
    if bias is not None:
        p = Path(f"{stem}.bias.npy")
        arrays["bias"] = _array_entry(p, bias, save_npy(p, bias))
    sidecar = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
               "streamfit_version": __version__,
               "layout": "dense" if dense is not None else "sparse", **header, "arrays": arrays}
    write_json(sidecar_path(stem), sidecar)
    return sidecar_path(stem)


def read_sidecar(path: str | os.PathLike) -> dict:
    p = sidecar_path(path)
    if not p.exists():
        raise FormatError(f"{p}: no weights sidecar here (run `streamfit finalize --out "
                          f"{stem_of(path)}.npy` first)")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{p}: corrupt weights sidecar ({exc})") from None
    if meta.get("format") != FORMAT:
        raise FormatError(f"{p}: not a streamfit weights sidecar")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FormatError(f"{p}: schema version {meta.get('schema_version')}, this streamfit "
                          f"reads {SCHEMA_VERSION}")
    return meta


def load_model(path: str | os.PathLike, *, check: bool = False) -> Model:
    """Open a model memory-mapped. Sizes, shapes and dtypes are checked against the sidecar;
    `check=True` verifies every byte's checksum too."""
    meta = read_sidecar(path)
    folder = sidecar_path(path).parent
    arrays = {}
    for name, entry in meta["arrays"].items():
        p = folder / entry["file"]
        if check:
            verify(p, entry)
        arr = load_npy(p, entry)
        if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
            raise FormatError(f"{p}: shape/dtype {arr.shape}/{arr.dtype} does not match the "
                              f"sidecar ({entry['shape']}/{entry['dtype']})")
        arrays[name] = arr
    common = dict(task=meta["task"], n_classes=meta["n_classes"], n_features=meta["n_features"],
                  tau=meta["tau"], window=meta.get("window", 0), bias=arrays.get("bias"), meta=meta)
    if meta["layout"] == "dense":
        if arrays["W"].shape != (meta["n_features"], meta["n_classes"]):
            raise FormatError(f"{folder / meta['arrays']['W']['file']}: shape does not match "
                              f"n_features × n_classes")
        return Model(dense=arrays["W"], **common)
    return Model(sparse=(arrays["S.indptr"], arrays["S.indices"], arrays["S.data"]), **common)
