"""Compact n-gram model files: sorted runs instead of hash tables, narrow index types, and
log-probabilities stored as float64/float32/float16 or 8-bit codes (see `streamfit.lite` for
the layout and the score). Written by `finalize` with `--compact`, `--prune-count`,
`--prune-entropy` or `--quantize` (`solve.shrink`); scored here with compiled lookups, and by
`streamfit.lite` with numpy alone — the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.files import check_array_entries, read_document, save_npy, write_json, header_checksum
from ..io.files import load_listed_arrays
from ..io.jit import njit
from ..lite import NGRAM_FORMAT, NgramLite, decode
from ..errors import OptionError

SCHEMA_VERSION = 1
QUANTIZE = ("float64", "float32", "float16", "int8")
BLOCK = 64          # int8: one offset and step per BLOCK consecutive values of a level


def index_dtype(n: int) -> np.dtype:
    """The narrowest unsigned type holding 0..n."""
    for dt in (np.uint16, np.uint32):
        if n <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def side_dtype(kind: str) -> np.dtype:
    """Per-context values (log γ, log Z) and level 0: float64 when values are, else float32."""
    return np.dtype(np.float64 if kind == "float64" else np.float32)


def encode(x: np.ndarray, kind: str, down: np.ndarray | None = None) -> dict:
    """Log-probabilities as stored: {"value"} or 8-bit {"code", "lo", "step"} (per BLOCK
    values: value ≈ lo + code · step), each value rounded to the nearest, or toward −∞ where
    `down` is set (so that a context's stored probabilities cannot sum past 1)."""
    if kind not in QUANTIZE:
        raise OptionError(f"--quantize is one of {', '.join(QUANTIZE)}, not {kind!r}")
    x = np.asarray(x, np.float64)
    if kind != "int8":
        value = x.astype(kind)
        if down is not None:
            up = down & (value.astype(np.float64) > x)
            value[up] = np.nextafter(value[up], np.array(-np.inf, kind))
        return {"value": value}
    nb = -(-x.size // BLOCK)
    pad = np.empty(nb * BLOCK)
    pad[:x.size] = x
    pad[x.size:] = x[-1] if x.size else 0.0
    blocks = pad.reshape(nb, BLOCK)
    lo = blocks.min(1).astype(np.float32)
    hi = blocks.max(1)
    lo = np.where(lo.astype(np.float64) > blocks.min(1), np.nextafter(lo, np.float32(-np.inf)), lo)
    step = ((hi - lo.astype(np.float64)) / 255).astype(np.float32)
    safe = np.where(step > 0, step, 1).astype(np.float64)
    scaled = ((blocks - lo.astype(np.float64)[:, None]) / safe[:, None]).ravel()[:x.size]
    code = np.rint(scaled) if down is None else np.where(down, np.floor(scaled), np.rint(scaled))
    return {"code": np.clip(code, 0, 255).astype(np.uint8), "lo": lo, "step": step}


def decoded(enc: dict) -> np.ndarray:
    """Every value of an encoding, as float64 (the scorers' decoding)."""
    n = (enc["code"] if "code" in enc else enc["value"]).size
    return decode({**enc, "block": BLOCK}, np.arange(n))


def write_compact(stem: Path, sidecar_path: Path, arrays: dict, meta: dict) -> dict:
    """Write the arrays as STEM.<name>.npy and then the sidecar (each atomically, the sidecar
    last); returns the sidecar."""
    entries = {}
    for name, arr in arrays.items():
        file = Path(f"{stem}.{name}.npy")
        entries[name] = {"file": file.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                         **save_npy(file, arr)}
    sidecar = {"format": NGRAM_FORMAT, "schema_version": SCHEMA_VERSION, "task": "lm",
               "kind": "ngram", "block": BLOCK, **meta, "arrays": entries}
    sidecar["header_checksum"] = header_checksum(sidecar)
    write_json(sidecar_path, sidecar)
    return sidecar


def is_compact_sidecar(path: Path) -> bool:
    """The sidecar names a compact n-gram model (read whole: its keys are sorted, and the
    array list comes before the format)."""
    try:
        with open(path, "rb") as fh:
            return f'"format": "{NGRAM_FORMAT}"'.encode() in fh.read(1 << 20)
    except OSError:
        return False


@njit(cache=True, nogil=True)
def _search(starts, ends, keys, query):
    out = np.empty(query.size, np.int64)
    for i in range(query.size):
        lo = np.int64(starts[i])
        hi = np.int64(ends[i])
        end = hi
        q = query[i]
        while lo < hi:
            mid = (lo + hi) >> 1
            if np.int64(keys[mid]) < q:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo if lo < end and np.int64(keys[lo]) == q else -1
    return out


def compiled_search(starts, ends, keys, query) -> np.ndarray:
    """`lite.search` compiled: the same positions."""
    return _search(np.ascontiguousarray(starts), np.ascontiguousarray(ends), keys,
                   np.ascontiguousarray(query, np.int64))


class CompactNgramModel(NgramLite):
    """A compact n-gram model opened for scoring by the full package (compiled lookups;
    the sidecar's checksums checked as for every streamfit file)."""

    search = staticmethod(compiled_search)

    def __init__(self, sidecar: Path, *, check: bool = False):
        meta = read_document(sidecar, NGRAM_FORMAT, SCHEMA_VERSION, "compact n-gram sidecar")
        check_array_entries(meta, list(meta["arrays"]), sidecar, "compact n-gram sidecar")
        load_listed_arrays(sidecar, meta["arrays"], check=check)
        super().__init__(sidecar)

    def token_log_probs(self, arrays) -> np.ndarray:
        """log p of every token of the documents (TokenArrays), as `NgramModel`'s."""
        from .ngram import token_log_probs

        return token_log_probs(self, arrays)

    def score_documents(self, data, **columns):
        """Per document (row) of an Arrow batch: n_tokens, log_prob (nats) and perplexity."""
        from .documents import score_documents

        return score_documents(self, data, **columns)

    def top_k(self, contexts, k):  # the full scorer's signature: a list of contexts
        ids = np.full((len(contexts), k), -1, np.int64)
        probs = np.zeros((len(contexts), k))
        for i, c in enumerate(contexts):
            try:
                best, p = NgramLite.top_k(self, c, k)
            except ValueError as exc:
                raise OptionError(str(exc)) from None
            ids[i, :best.size], probs[i, :best.size] = best, p
        return ids, probs
