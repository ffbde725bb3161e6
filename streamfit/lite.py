"""Score with numpy alone: a finished model opened by memory map, for small machines.

This module imports nothing but numpy and the standard library (no numba, pyarrow, scipy or
tqdm), so it is also usable as a single file copied next to a model:

    python lite.py lm.model.json --vocab vocab.txt --context "the cat" --top-k 10
    python -m streamfit.lite lm.model.json --tokens 17 4 99        # log-prob of each token

Two model kinds:

- compact n-gram models (`finalize --compact`, `--prune-*`, `--quantize`; format
  `streamfit-ngram-compact`): per context level L ≥ 1, the contexts grouped by their oldest
  token (CSR over tokens, parent ids sorted inside a token) and their n-grams grouped by
  context (CSR over contexts, classes sorted inside a context). A lookup is a binary search
  inside one group, vectorised over the queries; values (log P_L(y | h)) are stored as
  float64/float32/float16 or 8-bit codes with a per-block offset and step, decoded on the fly.
  logit(y) = Σ_{j ≤ m} τ_j ℓ_j(y) + r0[m] ℓ_m(y) − log Z(h_m), where ℓ_j is level j's
  log-probability (backing off as ℓ_j = log γ_j + ℓ_{j−1} where y is not stored) and m the
  deepest stored context: exactly the full scorer's model (`model.ngram`). A level without
  `logz` has log Z = 0 (Kneser-Ney), one without `bucket` one τ for all its contexts.
- weights files of window models and classifiers (`streamfit-weights`, one layer, dense or
  sparse): logits = τ · (x̃ · W) + bias, x̃ the inputs normalised to sum 1; dense weights may be
  8-bit codes with a per-row step (`streamfit shrink`), whose per-row offset cancels.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

NGRAM_FORMAT = "streamfit-ngram-compact"
WEIGHTS_FORMAT = "streamfit-weights"
N_BUCKETS = 16      # τ per level and context-count bucket (as solve.ngram)
SIDECAR_SUFFIX = ".model.json"


def sidecar_of(path: str | Path) -> Path:
    """`m.model.json`, `m.npy` and `m` all name the model `m`: its sidecar."""
    p = Path(path)
    if p.name.endswith(SIDECAR_SUFFIX):
        return p
    stem = p.with_suffix("") if p.suffix in (".npy", ".json") else p
    return Path(f"{stem}{SIDECAR_SUFFIX}")


def _arrays(sidecar: Path, meta: dict) -> dict:
    """Every array the sidecar lists, memory-mapped; shape and dtype checked."""
    out = {}
    for name, entry in meta["arrays"].items():
        file = sidecar.parent / entry["file"]
        if Path(entry["file"]).name != entry["file"]:
            raise ValueError(f"{sidecar}: array file {entry['file']!r} is not beside the sidecar")
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
        if list(arr.shape) != list(entry["shape"]) or str(arr.dtype) != entry["dtype"]:
            raise ValueError(f"{file}: {arr.dtype}{list(arr.shape)}, the sidecar says "
                             f"{entry['dtype']}{entry['shape']}")
        out[name] = arr
    return out


def search(starts: np.ndarray, ends: np.ndarray, keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per query i: the position of query[i] in the sorted run keys[starts[i]:ends[i]], or −1
    (a binary search, vectorised over the queries)."""
    lo = np.array(starts, np.int64)
    end = np.array(ends, np.int64)
    hi = end.copy()
    query = np.asarray(query, np.int64)
    act = np.flatnonzero(lo < hi)
    while act.size:
        mid = (lo[act] + hi[act]) >> 1
        less = keys[mid] < query[act]
        lo[act[less]] = mid[less] + 1
        hi[act[~less]] = mid[~less]
        act = act[lo[act] < hi[act]]
    found = lo < end
    found[found] = keys[lo[found]] == query[found]
    return np.where(found, lo, -1)


def decode(level: dict, rows: np.ndarray) -> np.ndarray:
    """Stored log-probabilities of n-gram rows, as float64."""
    if "code" in level:
        block = rows // level["block"]
        return (level["lo"][block].astype(np.float64)
                + level["code"][rows].astype(np.float64) * level["step"][block].astype(np.float64))
    return level["value"][rows].astype(np.float64)


class NgramLite:
    """A compact n-gram model (see the module doc), memory-mapped."""

    kind = "ngram"
    task = "lm"

    def __init__(self, path: str | Path):
        sidecar = sidecar_of(path)
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != NGRAM_FORMAT:
            raise ValueError(f"{sidecar}: not a compact n-gram model (format {meta.get('format')!r})")
        self.meta = meta
        self.order = int(meta["order"])
        self.vocab_size = int(meta["vocab_size"])
        self.n_classes = int(meta["n_classes"])
        self.eos = bool(meta["eos"])
        a = _arrays(sidecar, meta)
        self.theta = np.asarray(a["theta"], np.float64)
        self.r0 = np.asarray(a["r0"], np.float64)
        self.unigram = a["unigram"]
        self.levels = [None]
        for L in range(1, self.order):
            lv = {k: a[f"{L}.{k}"] for k in ("ctx_offsets", "parent", "gamma", "ng_offsets", "y")}
            for k in ("bucket", "logz", "value", "code", "lo", "step"):  # optional
                if f"{L}.{k}" in a:
                    lv[k] = a[f"{L}.{k}"]
            lv["block"] = int(meta.get("block", 1))
            self.levels.append(lv)

    # The binary search; the full scorer (model.compact) swaps in its compiled twin.
    search = staticmethod(search)

    @property
    def nbytes(self) -> int:
        return int(sum(entry["size"] for entry in self.meta["arrays"].values()))

    def chains(self, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of order−1 context tokens (oldest first, BOS = V + 1): the context id of
        each level (−1 above the deepest stored one) and the deepest level m."""
        n, N = context.shape[0], self.order
        chain = np.full((n, N), -1, np.int64)
        chain[:, 0] = 0
        deepest = np.zeros(n, np.int64)
        alive = np.arange(n)
        for L in range(1, N):
            lv = self.levels[L]
            tok = context[alive, N - 1 - L]
            idx = self.search(lv["ctx_offsets"][tok], lv["ctx_offsets"][tok + 1], lv["parent"],
                              chain[alive, L - 1])
            alive = alive[idx >= 0]
            chain[alive, L] = idx[idx >= 0]
            deepest[alive] = L
            if not alive.size:
                break
        return chain, deepest

    def log_z(self, chain: np.ndarray, deepest: np.ndarray) -> np.ndarray:
        out = np.full(deepest.size, self.r0[self.order])
        for L in range(1, self.order):
            rows = np.flatnonzero(deepest == L)
            logz = self.levels[L].get("logz")
            out[rows] = 0.0 if logz is None else logz[chain[rows, L]]
        return out

    def tau(self, L: int, ids: np.ndarray) -> np.ndarray:
        """τ of level-L contexts (by their count bucket, when the file stores one)."""
        bucket = self.levels[L].get("bucket")
        first = 1 + (L - 1) * N_BUCKETS
        return self.theta[first + bucket[ids].astype(np.int64)] if bucket is not None else \
            np.full(np.size(ids), self.theta[first])

    def log_prob(self, context: np.ndarray, target: np.ndarray) -> np.ndarray:
        """log p(target | context) for rows of order−1 context tokens (oldest first, BOS =
        V + 1) and targets (the end token = V)."""
        target = np.asarray(target, np.int64).ravel()
        context = np.asarray(context, np.int64).reshape(target.size, self.order - 1)
        chain, deepest = self.chains(context)
        ell = self.unigram[target].astype(np.float64)
        logit = self.theta[0] * ell
        for j in range(1, self.order):
            rows = np.flatnonzero(deepest >= j)
            if not rows.size:
                break
            lv, c = self.levels[j], chain[rows, j]
            r = self.search(lv["ng_offsets"][c], lv["ng_offsets"][c + 1], lv["y"], target[rows])
            new = lv["gamma"][c].astype(np.float64) + ell[rows]
            hit = r >= 0
            new[hit] = decode(lv, r[hit])
            ell[rows] = new
            logit[rows] += self.tau(j, c) * new
        return logit + self.r0[deepest] * ell - self.log_z(chain, deepest)

    def context_row(self, context: list[int]) -> np.ndarray:
        """The order−1 tokens before a prediction (BOS-padded, oldest first)."""
        bad = [int(t) for t in context if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range for vocabulary size {self.vocab_size}")
        ctx = [self.vocab_size + 1] * (self.order - 1) + [int(t) for t in context]
        return np.array(ctx[len(ctx) - (self.order - 1):] if self.order > 1 else [], np.int64)

    def log_distribution(self, context: list[int]) -> np.ndarray:
        """log p(y | context) over every class (the last order−1 tokens count)."""
        chain, deepest = self.chains(self.context_row(context)[None, :])
        m = int(deepest[0])
        ell = np.asarray(self.unigram, np.float64).copy()
        logit = self.theta[0] * ell
        for j in range(1, m + 1):
            lv, c = self.levels[j], int(chain[0, j])
            lo, hi = int(lv["ng_offsets"][c]), int(lv["ng_offsets"][c + 1])
            ell = ell + float(lv["gamma"][c])
            ell[np.asarray(lv["y"][lo:hi], np.int64)] = decode(lv, np.arange(lo, hi))
            logit += self.tau(j, np.array([c]))[0] * ell
        return logit + self.r0[m] * ell - self.log_z(chain, deepest)[0]

    def distribution(self, context: list[int]) -> np.ndarray:
        return np.exp(self.log_distribution(context))

    def top_k(self, context: list[int], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable next classes after `context` and their probabilities."""
        lp = self.log_distribution(context)
        k = min(k, lp.size)
        best = np.argpartition(-lp, k - 1)[:k]
        best = best[np.lexsort((best, -lp[best]))]
        return best, np.exp(lp[best])

    def score(self, tokens: list[int]) -> np.ndarray:
        """log p of each token of one document (BOS before it; the end token after it, last,
        when the model predicts one)."""
        toks = [int(t) for t in tokens]
        bos, N = self.vocab_size + 1, self.order
        padded = [bos] * (N - 1) + toks + ([self.vocab_size] if self.eos else [])
        target = np.array(padded[N - 1:], np.int64)
        context = np.array([padded[i:i + N - 1] for i in range(target.size)], np.int64)
        return self.log_prob(context.reshape(target.size, N - 1), target)


class WeightsLite:
    """A one-layer weights file (window model or classifier), memory-mapped."""

    kind = "weights"

    def __init__(self, path: str | Path):
        sidecar = sidecar_of(path)
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{sidecar}: not a weights model (format {meta.get('format')!r})")
        if meta.get("layers", 1) != 1 or "A" in meta.get("arrays", {}):
            raise ValueError(f"{sidecar}: 2-layer models are not read by the lite scorer")
        self.meta = meta
        self.task = meta["task"]
        self.n_classes, self.n_features = int(meta["n_classes"]), int(meta["n_features"])
        self.tau, self.window = float(meta["tau"]), int(meta.get("window", 0))
        a = _arrays(sidecar, meta)
        self.bias = np.asarray(a["bias"], np.float64) if "bias" in a else np.zeros(self.n_classes)
        self.dense = a.get("W")
        self.row_step = a.get("row_step")
        self.sparse = (a["S.indptr"], a["S.indices"], a["S.data"]) if "S.data" in a else None
        self.vocab_size = self.n_classes

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            w = self.dense[rows].astype(np.float64)
            return w * self.row_step[rows, None] if self.row_step is not None else w
        indptr, indices, data = self.sparse
        out = np.zeros((rows.size, self.n_classes))
        for i, r in enumerate(rows):
            lo, hi = int(indptr[r]), int(indptr[r + 1])
            out[i, np.asarray(indices[lo:hi], np.int64)] = data[lo:hi]
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of rows of raw inputs (n × features, ≥ 0), up to a per-row constant."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        xt = x / np.maximum(x.sum(1, keepdims=True), np.finfo(float).tiny)
        cols = np.flatnonzero(xt.any(0))
        return self.tau * (xt[:, cols] @ self._rows(cols)) + self.bias

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z -= z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    def context_logits(self, context: list[int]) -> np.ndarray:
        """lm: the logits after `context` (token ids, most recent last; BOS before)."""
        v, m = self.n_classes, self.window
        rows = np.array([k * (v + 1) + (context[-1 - k] if k < len(context) else v)
                         for k in range(m)], np.int64)
        return self.tau * self._rows(rows).mean(0) + self.bias

    def top_k(self, context: list[int], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        z = self.context_logits(context)
        lp = z - z.max()
        lp -= math.log(np.exp(lp).sum())
        k = min(k, lp.size)
        best = np.argpartition(-lp, k - 1)[:k]
        best = best[np.lexsort((best, -lp[best]))]
        return best, np.exp(lp[best])


def load(path: str | Path):
    """The model a sidecar (or its stem) names: NgramLite or WeightsLite."""
    text = sidecar_of(path).read_text()
    return NgramLite(path) if f'"{NGRAM_FORMAT}"' in text else WeightsLite(path)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="lite", description="Next-token top-k or per-token "
                                 "log-probabilities from a model file, with numpy alone.")
    ap.add_argument("model", help="the model's sidecar (STEM.model.json) or stem")
    ap.add_argument("--vocab", help="vocabulary file, one token a line (line number = id)")
    ap.add_argument("--context", help="the words (with --vocab) or ids before the prediction")
    ap.add_argument("--tokens", nargs="+", help="a document (words or ids): log p of each token")
    ap.add_argument("--top-k", type=int, default=10, help="how many next tokens (default 10)")
    args = ap.parse_args(argv)
    model = load(args.model)
    words = Path(args.vocab).read_text().splitlines() if args.vocab else None
    index = {w: i for i, w in enumerate(words)} if words else {}

    def ids(text):
        items = text.split() if isinstance(text, str) else text
        unknown = [t for t in items if (t not in index if words else not t.isdigit())]
        if unknown:
            ap.error(f"{unknown[0]!r} is not " + ("in the vocabulary" if words else "a token id "
                                                  "(pass --vocab FILE to map words)"))
        return [index[t] if words else int(t) for t in items]

    if args.tokens:
        lp = model.score(ids(args.tokens))
        for tok, v in zip(args.tokens + ["</s>"], lp):
            print(f"{tok}\t{v:.4f}")
        print(f"perplexity\t{math.exp(-lp[:len(args.tokens)].mean()):.3f}")
    else:
        best, probs = model.top_k(ids(args.context or ""), args.top_k)
        for i, p in zip(best, probs):
            name = words[i] if words and i < len(words) else ("</s>" if i == model.vocab_size else str(i))
            print(f"{p:.4f}\t{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
