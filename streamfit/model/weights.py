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

A 2-layer (grown) model adds a hidden layer h = relu(x̃ · A + a₀), A (features × units) in
`STEM.A.npy` and a₀ in `STEM.a0.npy`; its logits are h · W + bias, W (units × classes) in
`STEM.npy` (see streamfit/grow.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from .. import __version__
from . import kernels
from ..errors import FormatError, OptionError, StreamfitError
from ..data.featurize import (Examples, TokenArrays, batch_examples, distinct_inputs,
                              slice_examples, take_examples, window_examples)
from ..io.files import sidecar_path, stem_of
from ..io.files import (NpyWriter, OutputLock, check_array_entries, check_csr, check_fields,
                        load_listed_arrays,
                        create_memmap, disk_full, fault_point, file_digest, fsync_dir, fsync_path,
                        header_checksum, no_space, read_document, stale_temps, temp_name,
                        write_json)

FORMAT = "streamfit-weights"
SCHEMA_VERSION = 1
SCORE_BLOCK_BYTES = 8 << 20
SIDECAR_FIELDS = {"layout": str, "task": str, "n_classes": int, "n_features": int,
                  "tau": (int, float), "window": int}
MODEL_FILES = (".npy", ".A.npy", ".a0.npy", ".S.indptr.npy", ".S.indices.npy", ".S.data.npy",
               ".bias.npy", ".row_step.npy", ".model.json", ".json")  # what write_model writes beside STEM


def locks_output(fn):
    """Decorate a function whose argument `out` names a model it writes: it runs holding
    that model's OutputLock (no lock when `out` is None)."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        out = signature.bind_partial(*args, **kwargs).arguments.get("out")
        if out is None:
            return fn(*args, **kwargs)
        with OutputLock(stem_of(out)):
            return fn(*args, **kwargs)
    return locked


def _legacy_sidecar(path: str | os.PathLike) -> Path | None:
    """STEM.json when it is a weights sidecar of an earlier version (read, never written)."""
    p = Path(f"{stem_of(path)}.json")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    return p if f'"format": "{FORMAT}"'.encode() in head or f'"format":"{FORMAT}"'.encode() in head else None


def existing_sidecar(path: str | os.PathLike) -> Path:
    """The model's sidecar on disk: STEM.model.json, else an earlier version's STEM.json."""
    p = sidecar_path(path)
    return p if p.exists() else (_legacy_sidecar(path) or p)


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
    hidden: tuple[np.ndarray, np.ndarray] | None = None  # (A, a₀) of a 2-layer model
    row_step: np.ndarray | None = None  # 8-bit dense codes: W = step ⊙ codes + a per-row constant

    def __post_init__(self):
        if (self.dense is None) == (self.sparse is None):
            raise ValueError("a model has either dense or sparse weights")
        if self.hidden is not None and self.dense is None:
            raise ValueError("a 2-layer model has a dense output layer")
        bias = np.zeros(self.n_classes) if self.bias is None else np.asarray(self.bias, np.float64)
        self._bias = bias
        self._log_z_bias = float(np.logaddexp.reduce(bias)) if bias.size else 0.0
        self._bias_desc_order = np.lexsort((np.arange(bias.size), -bias)).astype(np.int64)

    @property
    def encoding(self) -> str:
        """How its inputs are read (featurize.ENCODINGS), as the statistics were counted."""
        return self.meta.get("encoding", "normalised")

    @property
    def layout(self) -> str:
        return "dense" if self.dense is not None else "sparse"

    @property
    def vocab_size(self) -> int:
        return self.n_classes

    @property
    def layers(self) -> int:
        return 1 if self.hidden is None else 2

    def hidden_features(self, ex: Examples) -> np.ndarray:
        """A 2-layer model's hidden activations relu(x̃ · A + a₀), n × units (float64)."""
        a, a0 = self.hidden
        x = sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, self.n_features))
        return np.maximum(np.asarray(x @ np.asarray(a, np.float64)) + a0, 0.0)

    # --- inputs -------------------------------------------------------------------------
    def examples(self, data: pa.RecordBatch | pa.Table | Examples, **columns) -> Examples:
        """Featurize an Arrow batch the way this model reads it (labels may be absent)."""
        if isinstance(data, Examples):
            return data
        if isinstance(data, pa.Table):
            data = data.combine_chunks().to_batches()[0] if data.num_rows else \
                pa.RecordBatch.from_pylist([], schema=data.schema)
        return batch_examples(data, task=self.task, window=self.window, n_classes=self.n_classes,
                              n_features=self.n_features, encoding=self.encoding, **columns)

    def context_examples(self, contexts: list[list[int]]) -> Examples:
        """lm: one example per context (a list of preceding token ids, most recent last)."""
        if self.task != "lm":
            raise OptionError("contexts are for language models")
        v, m = self.n_classes, self.window
        indices = np.empty(len(contexts) * m, dtype=np.int64)
        for e, ctx in enumerate(contexts):
            for k in range(m):
                tok = ctx[-1 - k] if k < len(ctx) else v
                if not 0 <= tok <= v:
                    raise OptionError(f"token id {tok} out of range for vocabulary size {v}")
                indices[e * m + k] = k * (v + 1) + tok
        indptr = np.arange(0, len(contexts) * m + 1, m, dtype=np.int64)
        return Examples(indptr, indices, np.full(indices.size, 1.0 / m),
                        np.full(len(contexts), -1, dtype=np.int64))

    # --- scoring ------------------------------------------------------------------------
    def _chunks(self, ex: Examples) -> Iterator[tuple[int, int]]:
        units = 0 if self.hidden is None else self.hidden[0].shape[1]  # 2-layer: h per block too
        step = max(1, SCORE_BLOCK_BYTES // (8 * max(self.n_classes + units, 1)))
        for lo in range(0, ex.n, step):
            yield lo, min(ex.n, lo + step)

    def logits(self, ex: Examples) -> np.ndarray:
        """Dense logits (n × classes), up to a per-example constant in the sparse layout."""
        if self.hidden is not None:
            return self.tau * (self.hidden_features(ex) @ np.asarray(self.dense, np.float64)) + self._bias
        x = sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, self.n_features))
        if self.dense is not None:
            if self.row_step is not None:  # decoded on the fly: the step scales the input
                x = x @ sp.diags(np.asarray(self.row_step, np.float64))
            return self.tau * np.asarray(x @ self.dense, dtype=np.float64) + self._bias
        indptr, indices, data = self.sparse
        s = sp.csr_matrix((data, indices, indptr), shape=(self.n_features, self.n_classes))
        return self.tau * (x @ s).toarray().astype(np.float64) + self._bias

    def predict_proba(self, data, **columns) -> np.ndarray:
        """Class (next-token) probabilities, n × classes; for many classes prefer top_k."""
        z = self.logits(self.examples(data, **columns))
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def score(self, ex: Examples, top_k: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per example: the negative log-likelihood of the target (nats; NaN where the
        target is < 0), the top_k classes (ties broken by class index, like argmax) and
        their log-probabilities. Memory is bounded by a block of examples.

        Examples with identical inputs (a bigram's contexts) share their normaliser and
        top-k: each distinct input is scored once, then each target is looked up."""
        inputs, inverse = distinct_inputs(ex)
        lse = np.empty(inputs.n)
        top = np.full((inputs.n, top_k), -1, dtype=np.int64)
        top_logp = np.full((inputs.n, top_k), -np.inf)
        if self.sparse is not None:
            kernels.score_sparse(inputs.indptr, inputs.indices, inputs.values, *self.sparse,
                                 float(self.tau), self._bias, self._log_z_bias,
                                 self._bias_desc_order, top_k, lse, top, top_logp)
        else:
            for lo, hi in self._chunks(inputs):
                z = self.logits(slice_examples(inputs, lo, hi))
                m = z.max(axis=1, keepdims=True)
                lse[lo:hi] = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
                if top_k:
                    best = _top_k_dense(z, top_k)
                    k = best.shape[1]  # < top_k when there are fewer classes: the rest stay -1
                    top[lo:hi, :k] = best
                    top_logp[lo:hi, :k] = np.take_along_axis(z, best, axis=1) - lse[lo:hi, None]
        nll = np.full(ex.n, np.nan)
        has = ex.targets >= 0
        if has.any():
            nll[has] = lse[inverse[has]] - self._target_logits(take_examples(ex, np.flatnonzero(has)))
        return nll, top[inverse], top_logp[inverse]

    def _target_logits(self, ex: Examples) -> np.ndarray:
        """The logit of each example's target (same per-example constant as `logits`)."""
        if self.hidden is not None:
            h = self.hidden_features(ex)
            picked = np.asarray(self.dense, np.float64)[:, ex.targets].T
            return self.tau * np.einsum("nk,nk->n", h, picked) + self._bias[ex.targets]
        if self.sparse is not None:
            s = np.empty(ex.n)
            kernels.sparse_lookup(ex.indptr, ex.indices, ex.values, ex.targets, *self.sparse, s)
        else:
            rows = np.repeat(np.arange(ex.n), np.diff(ex.indptr))
            picked = np.asarray(self.dense[ex.indices, ex.targets[rows]], dtype=np.float64)
            if self.row_step is not None:
                picked *= self.row_step[ex.indices]
            s = np.bincount(rows, weights=ex.values * picked, minlength=ex.n)
        return self.tau * s + self._bias[ex.targets]

    def top_k(self, ex: Examples, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable classes per example and their probabilities."""
        _, top, top_logp = self.score(ex, top_k=k)
        return top, np.exp(top_logp)

    def token_log_probs(self, arrays: TokenArrays) -> np.ndarray:
        """lm: log p(token | its window) of every token of the documents."""
        nll, _, _ = self.score(window_examples(arrays, self.window, self.n_classes), top_k=0)
        return -nll

    def score_documents(self, data: pa.RecordBatch | pa.Table, **columns) -> pa.Table:
        """Per row of an Arrow batch: lm, the document's n_tokens, log_prob (nats) and
        perplexity; classify, the predicted class and its probability (model.documents)."""
        from .documents import score_documents

        return score_documents(self, data, **columns)


def _top_k_dense(z: np.ndarray, k: int) -> np.ndarray:
    """Top-k columns per row, ties broken by column index (argmax's rule)."""
    k = min(k, z.shape[1])
    if k < z.shape[1]:
        part = np.argpartition(-z, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(z.shape[1]), (z.shape[0], 1))
    vals = np.take_along_axis(z, part, axis=1)
    out = np.take_along_axis(part, np.lexsort((part, -vals), axis=1), axis=1)
    # argpartition may cut a run of ties at the k-th value anywhere; settle those rows
    # exactly with a full sort.
    kth = np.take_along_axis(z, out[:, -1:], axis=1)
    ties = (z == kth).sum(axis=1) > (np.take_along_axis(z, out, axis=1) == kth).sum(axis=1)
    for r in np.flatnonzero(ties):
        out[r] = np.lexsort((np.arange(z.shape[1]), -z[r]))[:k]
    return out


# --- files ---------------------------------------------------------------------------------
def _array_entry(path: Path, arr: np.ndarray, digest: dict) -> dict:
    return {"file": path.name, "dtype": str(arr.dtype), "shape": list(arr.shape), **digest}


def _write_dense(tmp: Path, n_rows: int, n_cols: int, dtype: str,
                 blocks: Iterator[tuple[int, np.ndarray]], final: Path | None = None) -> None:
    """A dense matrix written block by block through a memory map (its blocks reserved on
    disk first): memory stays bounded by one block. `blocks` yields (first row, rows ×
    n_cols array); `tmp` is a temporary name of `final`."""
    out = create_memmap(tmp, dtype, (n_rows, n_cols), name=final)
    for lo, block in blocks:
        out[lo:lo + block.shape[0]] = block
        fault_point("mid_finalize")
    out.flush()
    del out


def _write_blocks(tmp: Path, dtype: str, blocks: Iterable[np.ndarray]) -> None:
    writer = NpyWriter(tmp, dtype)
    for block in blocks:
        writer.append(block)
        fault_point("mid_finalize")
    writer.close()


@locks_output
def write_model(out: str | os.PathLike, header: dict, *, dense: dict | None = None,
                sparse: tuple[np.ndarray, np.ndarray, Iterable[np.ndarray]] | None = None,
                bias: np.ndarray | None = None,
                hidden: tuple[np.ndarray, np.ndarray] | None = None,
                row_step: np.ndarray | None = None) -> Path:
    """Write a model crash-safely. Every array goes to a temporary name first; then the
    old sidecar is removed, the arrays renamed into place and the new sidecar written. A
    run killed at any point leaves the previous model, or no sidecar (no model) — never a
    sidecar beside arrays it does not describe. `dense` = {"dtype", "blocks"}; `sparse` =
    (indptr, indices, blocks of data); `hidden` = (A, a₀) of a 2-layer model, whose dense W
    then has one row per hidden unit; `row_step` the per-row step of 8-bit dense codes."""
    stem = stem_of(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    # Temporary files of this model that a killed run left (no live writer's: the output's
    # lock is held); only this model's own names, not another model's sharing the prefix.
    for suffix in MODEL_FILES:
        for stale in stale_temps(stem.with_name(stem.name + suffix)):
            stale.unlink(missing_ok=True)
    staged: dict[str, tuple[Path, Path]] = {}
    try:
        if hidden is not None:
            a, a0 = hidden
            final = Path(f"{stem}.A.npy")
            staged["A"] = (temp_name(final), final)
            _write_dense(staged["A"][0], a.shape[0], a.shape[1], dense["dtype"], iter([(0, a)]),
                         final)
            final = Path(f"{stem}.a0.npy")
            staged["a0"] = (temp_name(final), final)
            _write_blocks(staged["a0"][0], np.float64, [a0])
        if dense is not None:
            final = Path(f"{stem}.npy")
            staged["W"] = (temp_name(final), final)
            rows = header["n_features"] if hidden is None else hidden[0].shape[1]
            _write_dense(staged["W"][0], rows, header["n_classes"], dense["dtype"], dense["blocks"],
                         final)
        else:
            indptr, indices, data_blocks = sparse
            for name, arr in (("indptr", indptr), ("indices", indices)):
                final = Path(f"{stem}.S.{name}.npy")
                staged[f"S.{name}"] = (temp_name(final), final)
                _write_blocks(staged[f"S.{name}"][0], arr.dtype,
                              (arr[i:i + (1 << 22)] for i in range(0, arr.size, 1 << 22)))
            final = Path(f"{stem}.S.data.npy")
            staged["S.data"] = (temp_name(final), final)
            _write_blocks(staged["S.data"][0], header["dtype"], data_blocks)
        if row_step is not None:
            final = Path(f"{stem}.row_step.npy")
            staged["row_step"] = (temp_name(final), final)
            _write_blocks(staged["row_step"][0], np.float32, [row_step])
        if bias is not None:
            final = Path(f"{stem}.bias.npy")
            staged["bias"] = (temp_name(final), final)
            _write_blocks(staged["bias"][0], np.float64, [bias])
        arrays = {}
        for name, (tmp, final) in staged.items():
            fsync_path(tmp)
            arr = np.load(tmp, mmap_mode="r")
            arrays[name] = {"file": final.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                            **file_digest(tmp)}
        for old in (sidecar_path(stem), _legacy_sidecar(stem)):
            if old is not None:
                old.unlink(missing_ok=True)
        fsync_dir(stem.parent)
        for name, (tmp, final) in staged.items():
            os.replace(tmp, final)
            fault_point("mid_finalize")
        fsync_dir(stem.parent)
    except OSError as exc:
        if not disk_full(exc) or isinstance(exc, StreamfitError):
            raise
        raise no_space(list(staged.values())[-1][1] if staged else stem) from None
    finally:
        for tmp, _ in staged.values():
            tmp.unlink(missing_ok=True)
    sidecar = {"format": FORMAT, "schema_version": SCHEMA_VERSION,
               "streamfit_version": __version__,
               "layout": "dense" if dense is not None else "sparse", **header, "arrays": arrays}
    sidecar["header_checksum"] = header_checksum(sidecar)
    write_json(sidecar_path(stem), sidecar)
    return sidecar_path(stem)


def read_sidecar(path: str | os.PathLike) -> dict:
    p = existing_sidecar(path)
    if not p.exists():
        raise FormatError(f"{p}: no weights sidecar here (run `streamfit finalize --out "
                          f"{stem_of(path)}.npy` first)")
    what = "weights sidecar"
    meta = read_document(p, FORMAT, SCHEMA_VERSION, what)
    check_fields(meta, SIDECAR_FIELDS, p, what)
    if meta["layout"] not in ("dense", "sparse") or meta["task"] not in ("lm", "classify"):
        raise FormatError(f"{p}: {what} has layout {meta['layout']!r} and task {meta['task']!r}: "
                          f"not dense or sparse, lm or classify")
    check_fields(meta, {"arrays": dict}, p, what)
    names = {"dense": ("W",), "sparse": ("S.indptr", "S.indices", "S.data")}[meta["layout"]]
    if "A" in meta["arrays"] or "a0" in meta["arrays"]:
        names += ("A", "a0")
    check_array_entries(meta, sorted(set(names) | set(meta["arrays"])), p, what)
    return meta


def load_model(path: str | os.PathLike, *, check: bool = False) -> Model:
    """Open a model memory-mapped. Sizes, shapes and dtypes are checked against the sidecar;
    `check=True` verifies every byte's checksum too. An n-gram model's sidecar opens as an
    `NgramModel`, a compact one's as a `CompactNgramModel`."""
    from .compact import CompactNgramModel, is_compact_sidecar
    from .ngram import is_ngram_sidecar, load_ngram_model
    if is_ngram_sidecar(existing_sidecar(path)):
        return load_ngram_model(existing_sidecar(path), check=check)
    if is_compact_sidecar(existing_sidecar(path)):
        return CompactNgramModel(existing_sidecar(path), check=check)
    meta = read_sidecar(path)
    folder = existing_sidecar(path).parent
    arrays = load_listed_arrays(existing_sidecar(path), meta["arrays"], check=check)
    common = dict(task=meta["task"], n_classes=meta["n_classes"], n_features=meta["n_features"],
                  tau=meta["tau"], window=meta.get("window", 0), bias=arrays.get("bias"), meta=meta)
    file_of = lambda name: folder / meta["arrays"][name]["file"]
    if "bias" in arrays and arrays["bias"].shape != (meta["n_classes"],):
        raise FormatError(f"{file_of('bias')}: {arrays['bias'].shape} entries, not one per class "
                          f"({meta['n_classes']})")
    if "A" in arrays:
        a, a0, w = arrays["A"], arrays["a0"], arrays["W"]
        units = a.shape[1]
        if a.shape != (meta["n_features"], units) or a0.shape != (units,) or \
                w.shape != (units, meta["n_classes"]):
            raise FormatError(f"{sidecar_path(path)}: 2-layer shapes do not fit: A {a.shape}, "
                              f"a0 {a0.shape}, W {w.shape} for {meta['n_features']} features "
                              f"× {meta['n_classes']} classes")
        return Model(dense=w, hidden=(a, np.asarray(a0, np.float64)), **common)
    if meta["layout"] == "dense":
        if arrays["W"].shape != (meta["n_features"], meta["n_classes"]):
            raise FormatError(f"{folder / meta['arrays']['W']['file']}: shape does not match "
                              f"n_features × n_classes")
        step = arrays.get("row_step")
        if step is not None and step.shape != (meta["n_features"],):
            raise FormatError(f"{file_of('row_step')}: {step.shape} entries, not one per row")
        return Model(dense=arrays["W"], row_step=step, **common)
    # The scoring kernels index by these without bounds checks: a damaged structure is
    # refused here, once, instead of read out of bounds (a crash, or silent garbage).
    if arrays["S.data"].shape != arrays["S.indices"].shape:
        raise FormatError(f"{file_of('S.data')}: {arrays['S.data'].size} entries, "
                          f"{file_of('S.indices').name} has {arrays['S.indices'].size}")
    check_csr(arrays["S.indptr"], arrays["S.indices"], meta["n_features"], meta["n_classes"],
              (file_of("S.indptr"), file_of("S.indices")))
    return Model(sparse=(arrays["S.indptr"], arrays["S.indices"], arrays["S.data"]), **common)
