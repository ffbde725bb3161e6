"""n-gram language model files and their lookup scorer.

A model written by `finalize --form kneser-ney|blocks` (see `solve.ngram`) is two
open-addressing hash tables and a few dense vectors, memory-mapped from `.npy` files next to
a `STEM.model.json` sidecar:

    contexts (level L ≥ 1): key (L, token, suffix id) → [id, log γ, τ, log Z]
    n-grams  (level L ≥ 1): key (L, context id, y)    → [partial logit, log P_L(y | h)]
    level 0: partial logit and log P_0 of every class; log Z of the empty context; r0

Scoring a token is at most N−1 context lookups, one to a few n-gram lookups from the deepest
seen context downward, and one log Z: logit(y) = A(row) + Σ_{j = L+1..m} τ_j (log P_L(y) +
Σ_{i = L+1..j} log γ_i) + r0[m] (log P_L(y) + Σ log γ), minus the log Z of the deepest
context m (precomputed exactly at finalize for every training context). No vocabulary-sized
work per token, so evaluate runs at lookup speed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ..errors import OptionError
from ..io.jit import njit

from .cache import cache_weights, distribution_with_cache, prediction_offsets, with_cache
from ..io.files import (check_array_entries, header_checksum, load_listed_arrays, read_document,
                        save_npy, write_json)

HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
FORMAT = "streamfit-ngram-model"
SCHEMA_VERSION = 1
ARRAYS = ("contexts", "ngrams", "unigram", "r0")


@njit(cache=True, nogil=True, inline="always")
def _home(key, bits):
    return np.int64((np.uint64(key) * HASH_MULT) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True, inline="always")
def find_slot(table, bits, key):
    """The slot of `key` in an open-addressing table (word 0 of a slot is its key, −1
    empty), or −1 when absent."""
    mask = (np.int64(1) << bits) - 1
    s = _home(key, bits)
    while True:
        k = table[s, 0]
        if k == key:
            return s
        if k == -1:
            return -1
        s = (s + 1) & mask


def home_slots(keys: np.ndarray, bits: int) -> np.ndarray:
    """`_home` of every key, in numpy."""
    return ((keys.astype(np.uint64) * HASH_MULT) >> np.uint64(64 - bits)).astype(np.int64)


def probe_slots(home: np.ndarray, size: int) -> np.ndarray:
    """A slot for each key of an open-addressing table of `size` slots with linear probing,
    given their home slots (fewer keys than slots): keys in order of home slot, each at the
    first slot from its home on after the previous key's — a running maximum, in numpy (no
    compiled kernel: finalizing Kneser-Ney then loads none, about 1 s of start-up). The
    circle is cut after a slot that stays empty."""
    n = home.size
    slot = np.empty(n, np.int64)
    if n == 0:
        return slot
    bits = max(1, (n - 1).bit_length())
    rank = np.arange(n, dtype=np.int64)
    start = 0
    for _ in range(2):  # a second pass only when keys run past the end at the first cut
        packed = np.sort((((home - start) % size) << bits) | rank)
        at = packed & ((1 << bits) - 1)
        pos = np.maximum.accumulate((packed >> bits) - rank) + rank
        if pos[-1] < size:
            slot[at] = (pos + start) % size
            return slot
        # k keys run past the end; wrapped round they fill the first k empty slots from
        # the cut on, so the last empty slot (size − (n − k) > k of them) stays empty
        empty = np.ones(size, bool)
        empty[pos[pos < size]] = False
        start = (start + int(np.flatnonzero(empty)[-1]) + 1) % size
    raise AssertionError("unreachable: the second cut is after a slot that stays empty")


def slot_table(keys: np.ndarray, width: int, load: float = 0.7):
    """An open-addressing table of `width` int64 words a slot holding `keys` (distinct);
    returns (table, bits, the slot of each key)."""
    bits = max(4, int(math.ceil(math.log2(max(2.0, keys.size / load)))))
    table = np.zeros((1 << bits, width), np.int64)
    table[:, 0] = -1
    keys = np.asarray(keys, np.int64)
    slot = probe_slots(home_slots(keys, bits), 1 << bits)
    table[slot, 0] = keys
    return table, bits, slot


@dataclass
class NgramModel:
    """An n-gram model opened for scoring (arrays memory-mapped)."""

    order: int
    vocab_size: int
    n_classes: int          # vocab_size, + 1 for the end token with eos
    eos: bool
    contexts: np.ndarray    # (slots, 5) int64: key, id, then float64 log γ, τ, log Z
    ngrams: np.ndarray      # (slots, 3) int64: key, then float64 partial logit, log P
    unigram: np.ndarray     # (C, 2) float64: partial logit, log P_0
    r0: np.ndarray          # (order + 1,) float64: [order] = log Z of the empty context
    meta: dict

    task = "lm"

    @property
    def context_bits(self) -> int:
        return int(self.contexts.shape[0]).bit_length() - 1

    @property
    def ngram_bits(self) -> int:
        return int(self.ngrams.shape[0]).bit_length() - 1

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.contexts, self.ngrams, self.unigram, self.r0)))

    def log_prob(self, context: np.ndarray, target: np.ndarray) -> np.ndarray:
        """log p(target | context) for rows of order−1 context tokens (oldest first, BOS =
        V + 1) and targets (the end token = V): the n-gram model alone, without the document
        cache (`model.cache`), which needs the document so far."""
        context = np.ascontiguousarray(context, np.int64).reshape(target.size, self.order - 1)
        return _score(context, np.ascontiguousarray(target, np.int64), self.order,
                      self.contexts, self.contexts.view(np.float64), self.context_bits,
                      self.ngrams, self.ngrams.view(np.float64), self.ngram_bits,
                      self.unigram, self.r0)

    def distribution(self, context: list[int]) -> np.ndarray:
        """p(y | context) over every class (the last order−1 tokens count; BOS before; a
        model with the document cache takes the context as the document so far)."""
        bad = [int(t) for t in context if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise OptionError(f"token id {bad[0]} out of range for vocabulary size {self.vocab_size}")
        ctx = [self.vocab_size + 1] * (self.order - 1) + [int(t) for t in context]
        row = np.array(ctx[len(ctx) - (self.order - 1):] if self.order > 1 else [], np.int64)
        targets = np.arange(self.n_classes, dtype=np.int64)
        p = np.exp(self.log_prob(np.tile(row, (targets.size, 1)), targets))
        weights = cache_weights(self.meta)
        return p if weights is None else distribution_with_cache(p, [int(t) for t in context],
                                                                 weights)

    def token_log_probs(self, arrays) -> np.ndarray:
        """log p(token | its order−1 previous tokens, BOS before the start) of every token of
        the documents (TokenArrays); the end token, with eos, is not scored."""
        return token_log_probs(self, arrays)

    def score_documents(self, data, **columns):
        """Per document (row) of an Arrow batch: n_tokens, log_prob (nats) and perplexity."""
        from .documents import score_documents

        return score_documents(self, data, **columns)

    def top_k(self, contexts: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable classes of each context and their probabilities."""
        ids = np.full((len(contexts), k), -1, np.int64)
        probs = np.zeros((len(contexts), k))
        for i, c in enumerate(contexts):
            p = self.distribution(c)
            best = np.argsort(-p, kind="stable")[:k]
            ids[i, :best.size], probs[i, :best.size] = best, p[best]
        return ids, probs


@njit(cache=True, nogil=True, inline="always")
def context_chain(ctable, cbits, context, i, order, cslot):
    """Walk the context tree for row i of `context` (order−1 tokens, oldest first): cslot[L]
    = the table slot of its level-L suffix context for L = 1..m; returns m, the deepest
    level seen in training (word 1 of a slot is the context's id, its suffix's key part)."""
    c = np.int64(0)
    m = 0
    for L in range(1, order):
        s = find_slot(ctable, cbits, (np.int64(L) << 56) | (context[i, order - 1 - L] << 36) | c)
        if s < 0:
            break
        c = ctable[s, 1]
        cslot[L] = s
        m = L
    return m


@njit(cache=True, nogil=True)
def context_chains(ctable, cbits, context, order):
    """context_chain of every row: (deepest level m, slots (rows × order), −1 above m)."""
    n = context.shape[0]
    deepest = np.zeros(n, np.int64)
    slots = np.full((n, order), -1, np.int64)
    cslot = np.zeros(order, np.int64)
    for i in range(n):
        m = context_chain(ctable, cbits, context, i, order, cslot)
        deepest[i] = m
        for L in range(1, m + 1):
            slots[i, L] = cslot[L]
    return deepest, slots


def context_chains_reference(ids: dict, context: np.ndarray, order: int):
    """numpy twin of `context_chains` over a dict (level, token, suffix id) → context id
    instead of the hash table: (deepest level, context ids (rows × order), −1 above)."""
    n = context.shape[0]
    deepest = np.zeros(n, np.int64)
    chain = np.full((n, order), -1, np.int64)
    for i in range(n):
        c = 0
        for L in range(1, order):
            c = ids.get((L, int(context[i, order - 1 - L]), c))
            if c is None:
                break
            chain[i, L] = c
            deepest[i] = L
    return deepest, chain


@njit(cache=True, nogil=True)
def _score(context, target, order, ctable, cvalues, cbits, ntable, nvalues, nbits, unigram, r0):
    n = target.size
    out = np.empty(n)
    cslot = np.zeros(order, np.int64)
    for i in range(n):
        m = context_chain(ctable, cbits, context, i, order, cslot)
        y = target[i]
        L = m
        r = -1
        while L > 0:
            r = find_slot(ntable, nbits, (np.int64(L) << 56) | (ctable[cslot[L], 1] << 20) | y)
            if r >= 0:
                break
            L -= 1
        if L > 0:
            logit = nvalues[r, 1]
            lp = nvalues[r, 2]
        else:
            logit = unigram[y, 0]
            lp = unigram[y, 1]
        gamma = 0.0
        for j in range(L + 1, m + 1):
            gamma += cvalues[cslot[j], 2]
            logit += cvalues[cslot[j], 3] * (lp + gamma)
        logit += r0[m] * (lp + gamma)
        out[i] = logit - (cvalues[cslot[m], 4] if m > 0 else r0[order])
    return out


def save_ngram_model(stem: Path, sidecar_path: Path, model: NgramModel, meta: dict) -> dict:
    """Write the arrays as STEM.<name>.npy and then the sidecar (each atomically, the
    sidecar last); returns the sidecar. The two tables are written and hashed side by side
    (writes, fsync and hashing release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def save(name: str) -> dict:
        arr = getattr(model, name)
        file = Path(f"{stem}.{name}.npy")
        return {"file": file.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                **save_npy(file, arr)}

    with ThreadPoolExecutor(2) as pool:
        entries = dict(zip(ARRAYS, pool.map(save, ARRAYS)))
    sidecar = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "task": "lm",
               "kind": "ngram", "order": model.order, "vocab_size": model.vocab_size,
               "n_classes": model.n_classes, "eos": model.eos, **meta, "arrays": entries}
    sidecar["header_checksum"] = header_checksum(sidecar)
    write_json(sidecar_path, sidecar)
    return sidecar


def is_ngram_sidecar(path: Path) -> bool:
    """The sidecar names an n-gram model (its first MiB read: keys are sorted, so the array
    list comes before the format, and a model with many arrays pushes it past a few KiB)."""
    try:
        with open(path, "rb") as fh:
            return f'"format": "{FORMAT}"'.encode() in fh.read(1 << 20)
    except OSError:
        return False


def load_ngram_model(sidecar: Path, *, check: bool = False) -> NgramModel:
    """Open the model a sidecar describes (arrays memory-mapped)."""
    meta = read_document(sidecar, FORMAT, SCHEMA_VERSION, "n-gram model sidecar")
    check_array_entries(meta, ARRAYS, sidecar, "n-gram model sidecar")
    arrays = load_listed_arrays(sidecar, {name: meta["arrays"][name] for name in ARRAYS},
                                check=check)
    return NgramModel(order=meta["order"], vocab_size=meta["vocab_size"],
                      n_classes=meta["n_classes"], eos=meta["eos"], meta=meta, **arrays)


def context_rows(tokens: np.ndarray, doc_offsets: np.ndarray, order: int, vocab_size: int,
                 eos: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction of token documents: its order−1 context tokens (oldest first, BOS =
    V + 1 before the document start) and its target (the end token V after each document
    when eos)."""
    bos = vocab_size + 1
    lengths = np.diff(doc_offsets)
    preds = lengths + (1 if eos else 0)
    padded_len = preds + order - 1
    starts = np.concatenate([[0], np.cumsum(padded_len)[:-1]]).astype(np.int64)
    padded = np.full(int(padded_len.sum()), bos, np.int64)
    doc_of = np.repeat(np.arange(lengths.size), lengths)
    within = np.arange(tokens.size) - doc_offsets[:-1][doc_of]
    padded[starts[doc_of] + order - 1 + within] = tokens
    if eos:
        padded[starts + padded_len - 1] = vocab_size
    doc_of_pred = np.repeat(np.arange(lengths.size), preds)
    pred_starts = np.concatenate([[0], np.cumsum(preds)[:-1]]).astype(np.int64)
    at = starts[doc_of_pred] + order - 1 + (np.arange(int(preds.sum())) - pred_starts[doc_of_pred])
    context = np.empty((at.size, order - 1), np.int64)
    for i in range(order - 1):
        context[:, i] = padded[at - (order - 1) + i]
    return context, padded[at]


def token_log_probs(model, arrays) -> np.ndarray:
    """log p(token | its order−1 previous tokens, BOS before the start) of every token of
    the documents (TokenArrays), from any n-gram model's `log_prob` (full or compact); the
    end token, with eos, is not scored. A model with the document cache mixes it in."""
    context, target = context_rows(np.asarray(arrays.tokens, np.int64), arrays.doc_offsets,
                                   model.order, model.vocab_size, False)
    return document_log_probs(model, context, target, arrays.doc_offsets, False)


def document_log_probs(model, context: np.ndarray, target: np.ndarray, doc_offsets: np.ndarray,
                       eos: bool) -> np.ndarray:
    """log p of the predictions of whole documents (`context_rows` of them, with the end
    token's when `eos`): the n-gram model's, with its document cache when it has one."""
    lp = model.log_prob(context, target)
    weights = cache_weights(getattr(model, "meta", {}))
    if weights is None:
        return lp
    return with_cache(lp, target, prediction_offsets(doc_offsets, eos), model.n_classes, weights)


def evaluate_ngram(model: NgramModel, paths, *, progress: bool = False,
                   batch_rows: int | None = None, column: str = "tokens",
                   text_column: str | None = None, tokenizer: str | None = None,
                   **_ignored) -> dict:
    """Cross-entropy and perplexity of an n-gram model over every token of Parquet token
    files (the end token's predictions, with eos, reported apart: `perplexity` is over the
    same tokens a window model predicts)."""
    from ..data.featurize import token_arrays
    from ..errors import InputError
    from ..io.parquet import DEFAULT_BATCH_ROWS, iter_batches, open_parquet, resolve_paths
    from ..io.progress import progress_bar
    from ..data.tokenize import text_input
    text = text_input({"text_column": text_column, "tokenizer": tokenizer, "column": column},
                      model.vocab_size)
    files = resolve_paths(paths)
    n = n_end = 0
    nll = nll_end = 0.0
    with progress_bar(progress, total=sum(open_parquet(p).metadata.num_rows for p in files),
                      unit="docs", unit_scale=True, desc="evaluate") as bar:
        for p in files:
            for b in iter_batches(p, [text.text_column if text else column],
                                  batch_rows=batch_rows or DEFAULT_BATCH_ROWS):
                try:
                    arrays = token_arrays(text.tokens(b.data) if text else b.data, column,
                                          model.vocab_size)
                except InputError as exc:
                    raise exc.located(path=str(p), row_group=b.row_group,
                                      row_offset=b.row_offset) from None
                context, target = context_rows(arrays.tokens.astype(np.int64), arrays.doc_offsets,
                                               model.order, model.vocab_size, model.eos)
                lp = document_log_probs(model, context, target, arrays.doc_offsets, model.eos)
                end = target == model.vocab_size
                n_end += int(end.sum())
                nll_end -= float(lp[end].sum())
                n += int((~end).sum())
                nll -= float(lp[~end].sum())
                bar.update(b.data.num_rows)
    if n == 0:
        raise InputError("no tokens to evaluate: the files hold no rows (or no tokens)")
    ce = nll / n
    out = {"cross_entropy": ce, "perplexity": math.exp(ce), "bits_per_example": ce / math.log(2),
           "n": n, "order": model.order, "form": model.meta.get("form")}
    if model.eos:
        ce_all = (nll + nll_end) / (n + n_end)
        out.update(perplexity_with_eos=math.exp(ce_all), n_with_eos=n + n_end)
    return out
