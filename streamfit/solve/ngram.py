"""n-gram language models from n-gram statistics: interpolated modified Kneser-Ney, and the
log-linear block model of METHODS.md §6 fitted on held-out data.

Everything here derives from the raw top-order counts of `count.stats` (BOS-padded, so every
lower order is a marginal of them):

- levels L = 0..N-1 (context length L). A level-L context gets an id; its key packs its oldest
  token and the id of its suffix context (one level down), so contexts form a tree.
  KenLM's convention for document starts: a context with two or more leading BOS does not
  exist (it is the context with one BOS), so BOS is discounted once, not at every level.
- adjusted counts: raw counts at the top order, continuation counts (distinct left
  neighbours) below, raw counts for n-grams that start with BOS; count-of-counts n1..n4 of
  each level give its discounts D1, D2, D3+ (`discounts`).
- P_L(y | h) = (a(h, y) − D[a])⁺ / a(h •) + γ(h) P_{L−1}(y | h′), P_0 interpolated with the
  uniform distribution over the C classes (the vocabulary, plus the end token with eos).

The block model: logit(y) = Σ_L τ_L[bucket(c(h_L))] log P_L(y | h_L), buckets 0 for an unseen
context and 1 + ⌊log2 c⌋ (capped) by the context's raw training count; the τ minimise the
cross-entropy of the whole held-out split (Newton, exact normaliser, gradient and Hessian). τ = (0,
…, 0, 1) is Kneser-Ney itself, which is where the fit starts. `log Z` of every training
context is computed once here, so scoring (`model.ngram`) is a few lookups per token.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ..io.jit import njit

from ..data.limits import ngram_bits
from ..defaults import NGRAM_FORMS  # noqa: F401 (used by importers)
from ..errors import OptionError, StreamfitError
from ..io.files import available_memory
from ..model.ngram import (NgramModel, context_chain, context_rows, find_slot, save_ngram_model,
                           slot_table)

CID_BITS = 36          # context ids of one level
TOK_BITS = 20          # class / token ids inside lookup keys (vocabulary + end + BOS)
LEVEL_SHIFT = 56
N_BUCKETS = 16         # per block: 0 unseen, 1 + floor(log2 count) capped at 15
FALLBACK_DISCOUNTS = np.array([0.0, 0.5, 1.0, 1.5])
MAX_STEP = 4.0         # the block fit's Newton steps move no τ further than this
BYTES_PER_NGRAM_PER_ORDER = 160  # finalize's peak, measured: ~480 B an n-gram at order 3
MIN_COST_PER_THREAD = 20_000  # rows (support entries, predictions) a sweep's thread gets at least


def sweep_threads() -> int:
    """Threads for the block model's sweeps: the CPUs this process may run on. Every group
    (or prediction) is summed by one thread in one order, so results do not depend on it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def split_by_cost(cost: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """At most `parts` contiguous ranges [lo, hi) covering the items, about equal in total
    cost (cost ≥ 0 per item)."""
    n = cost.size
    if parts <= 1 or n <= 1:
        return [(0, n)]
    cum = np.cumsum(cost, dtype=np.float64)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.minimum(cuts, n), [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def in_threads_each(task, items) -> list:
    """[task(item) for item in items], on up to `sweep_threads()` threads (for numpy work
    that releases the GIL), in order."""
    items = list(items)
    workers = min(sweep_threads(), len(items))
    if workers <= 1:
        return [task(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(task, items))


def in_threads(sweep, cost: np.ndarray) -> None:
    """sweep(lo, hi) over ranges of items that cover them all, on as many threads as the
    cost is worth (MIN_COST_PER_THREAD each, at most `sweep_threads()`): the kernels release
    the GIL and write disjoint rows of their outputs."""
    parts = min(sweep_threads(), int(cost.sum() // MIN_COST_PER_THREAD))
    ranges = split_by_cost(cost, parts)
    if len(ranges) == 1:
        sweep(*ranges[0])
        return
    with ThreadPoolExecutor(len(ranges)) as pool:
        for done in [pool.submit(sweep, lo, hi) for lo, hi in ranges]:
            done.result()


def discounts(adjusted: np.ndarray) -> tuple[np.ndarray, list[int], bool]:
    """Modified Kneser-Ney discounts D[0..3] (D[0] = 0) from the count-of-counts n1..n4 of
    adjusted counts (Chen & Goodman); KenLM's fallback 0.5 / 1 / 1.5 when one of them is 0
    or a discount falls outside (0, k] (tiny corpora)."""
    n = [int(np.count_nonzero(adjusted == k)) for k in (1, 2, 3, 4)]
    if min(n) == 0:
        return FALLBACK_DISCOUNTS.copy(), n, True
    y = n[0] / (n[0] + 2 * n[1])
    D = np.array([0.0, 1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]])
    if not all(0 < D[k] <= k for k in (1, 2, 3)):
        return FALLBACK_DISCOUNTS.copy(), n, True
    return D, n, False


def decode_ngrams(keys: np.ndarray, order: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Context tokens (n × order−1, oldest first; BOS = V + 1) and targets (end token = V) of
    packed n-gram keys."""
    bits = ngram_bits(order)
    mask = (1 << bits) - 1
    keys = np.asarray(keys, np.int64)
    context = np.empty((keys.size, order - 1), np.int64)
    for i in range(order - 1):
        v = (keys >> (bits * (order - 1 - i))) & mask
        context[:, i] = np.where(v == 0, vocab_size + 1, v - 1)
    v = keys & mask
    target = np.where(v == mask, vocab_size, v - 1)
    return context, target


def unique_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(key, return_index=True, return_inverse=True) without the keys −1 (inverse
    −1 there), with one index of each key rather than necessarily its first; keys below 4 ×
    their number (tokens) by counting, without a sort; keys that fit 63 bits together with
    their index by sorting key << bits | index (numpy's vectorised sort: several times
    faster than an argsort), the rest by an unstable argsort."""
    top = int(key.max()) if key.size else -1
    if top < 4 * key.size:
        ok = key >= 0
        present = np.zeros(top + 1, bool)
        present[key[ok]] = True
        uniq = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        inverse = np.where(ok, rank[np.maximum(key, 0)], -1)
        first = np.empty(uniq.size, np.int64)
        first[inverse[ok]] = np.flatnonzero(ok)
        return uniq.astype(np.int64), first, inverse
    index_bits = max(1, (key.size - 1).bit_length())
    if top.bit_length() + index_bits <= 62:   # in place where it can: fewer fresh pages
        order = np.asarray(key, np.int64) << index_bits
        order |= np.arange(key.size)
        order.sort()
        sorted_keys = order >> index_bits             # −1 keys first (arithmetic shift)
        order &= (np.int64(1) << index_bits) - 1
    else:
        order = np.argsort(key)
        sorted_keys = key[order]
    new = np.empty(key.size, bool)
    new[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    rank = np.cumsum(new, dtype=np.int64)
    rank -= 1
    inverse = np.empty(key.size, np.int64)
    inverse[order] = rank
    uniq, first = sorted_keys[new], order[new]
    if uniq.size and uniq[0] == -1:
        uniq, first, inverse = uniq[1:], first[1:], inverse - 1
    return uniq, first, inverse


def unique_pairs(high: np.ndarray, low: np.ndarray, span: int, shift: int, ok: np.ndarray):
    """`unique_keys` of the keys high << shift | low (−1 where not ok), each pair compacted
    first to high · span + low (low < span: the same order), so that the packed sort
    applies; the unique keys are returned in the shifted form."""
    uniq, first, inverse = unique_keys(np.where(ok, high * span + low, -1))
    return ((uniq // span) << shift) | (uniq % span), first, inverse


@dataclass
class Levels:
    """Interpolated modified Kneser-Ney, one level per context length (see the module doc).

    ctx_key[L]: sorted unique (oldest token << CID_BITS | suffix context id), level 0 one
    empty context; ng_key[L]: sorted (context id << TOK_BITS | y); lps[L]: rows × (L+1),
    log P_j(y | suffix j of the row's context) for j = 0..L."""

    order: int
    vocab_size: int
    n_classes: int
    ctx_key: list
    ctx_parent: list
    ctx_raw: list
    ctx_start: list
    ctx_end: list
    ng_key: list
    lps: list
    log_gamma: list
    discounts: list
    count_of_counts: list
    fallback: list
    adjusted: list | None = None   # per level and n-gram: its adjusted count (pruning by count)

    @property
    def bos(self) -> int:
        return self.vocab_size + 1

    def sizes(self) -> dict:
        return {"contexts_per_level": [int(k.size) for k in self.ctx_key],
                "ngrams_per_level": [int(k.size) for k in self.ng_key],
                "discounts": [[float(d) for d in D[1:]] for D in self.discounts],
                "count_of_counts_n1_n4": self.count_of_counts,
                "discount_fallback": self.fallback}


def kneser_ney(stats) -> Levels:
    """Interpolated modified Kneser-Ney from n-gram statistics (any number of merged shards:
    only their raw counts are used)."""
    if not stats.order:
        raise StreamfitError("Kneser-Ney and the block model need n-gram statistics: "
                             "accumulate with --order N")
    order, V = stats.order, stats.n_classes
    if V + 2 >= 1 << TOK_BITS:
        raise OptionError(f"vocabulary {V:,} too large for the n-gram model (at most "
                          f"{(1 << TOK_BITS) - 3:,})")
    C = V + 1 if stats.eos else V
    bos = V + 1
    context, y = decode_ngrams(stats.keys, order, V)
    count = np.asarray(stats.data, np.int64)
    M = y.size
    valid = [np.ones(M, bool)]
    cid = [np.zeros(M, np.int64)]
    ctx_key, ctx_parent, ctx_tok = [np.zeros(1, np.int64)], [np.full(1, -1)], [np.full(1, -1)]
    for L in range(1, order):
        tok = context[:, order - 1 - L]
        ok = valid[L - 1].copy()
        if L >= 2:  # two leading BOS: not a context of its own (KenLM's convention)
            ok &= ~((tok == bos) & (context[:, order - L] == bos))
        if L == 1:  # the suffix is the empty context: the token alone, counted
            uniq, _, inverse = unique_keys(np.where(ok, tok, -1))
            uniq = uniq << CID_BITS
        else:
            uniq, _, inverse = unique_pairs(tok, cid[L - 1], ctx_key[L - 1].size, CID_BITS, ok)
        valid.append(ok)
        cid.append(np.where(ok, inverse, -1))
        ctx_key.append(uniq)
        ctx_parent.append(uniq & ((1 << CID_BITS) - 1))
        ctx_tok.append(uniq >> CID_BITS)
    ng_key, raw, rep, ng_inverse = [], [], [], []
    # each level's n-grams apart (numpy's sorts release the GIL: the levels on threads)
    for L, (uniq, first, inverse) in enumerate(in_threads_each(
            lambda L: unique_pairs(cid[L], y, C, TOK_BITS, valid[L]), range(order))):
        ng_inverse.append(inverse)
        ng_key.append(uniq)
        rep.append(first)  # one top-order row holding this n-gram
        keep = inverse >= 0
        raw.append(np.bincount(inverse[keep], count[keep], minlength=uniq.size).astype(np.int64))
    adjusted = []
    for L in range(order):
        if L == order - 1:
            a = raw[L].copy()
        else:  # continuation counts: distinct level-(L+1) n-grams above each level-L one
            a = np.bincount(ng_inverse[L][rep[L + 1]], minlength=ng_key[L].size).astype(np.int64)
            if L >= 1:
                starts_bos = ctx_tok[L][ng_key[L] >> TOK_BITS] == bos
                a[starts_bos] = raw[L][starts_bos]
        adjusted.append(a)
    D, coc, fallback = zip(*(discounts(a) for a in adjusted))
    log_gamma, ctx_raw, ctx_start, ctx_end, totals = [], [], [], [], []
    for L in range(order):
        c = ng_key[L] >> TOK_BITS
        nc = ctx_key[L].size
        a = adjusted[L]
        total = np.bincount(c, a, minlength=nc)
        gamma = np.bincount(c, D[L][np.minimum(a, 3)], minlength=nc) / np.maximum(total, 1)
        log_gamma.append(np.log(np.where(total > 0, gamma, 1.0)))
        ctx_raw.append(np.bincount(c, raw[L], minlength=nc).astype(np.int64))
        end = np.cumsum(np.bincount(c, minlength=nc))  # c is sorted: each context's rows
        ctx_end.append(end)
        ctx_start.append(end - np.bincount(c, minlength=nc))
        totals.append(total)
    # level 0 made dense over the C classes
    n0 = np.zeros(C, np.int64)
    n0[ng_key[0] & ((1 << TOK_BITS) - 1)] = adjusted[0]
    p0 = np.maximum(n0 - D[0][np.minimum(n0, 3)], 0) / max(n0.sum(), 1) \
        + math.exp(log_gamma[0][0]) / C
    ng_key[0] = np.arange(C, dtype=np.int64)
    ctx_start[0], ctx_end[0] = np.array([0]), np.array([C])
    # every level's log P end to end in one buffer (Blocks sweeps it as it is)
    rows = [k.size for k in ng_key]
    lp_flat = np.empty(sum(n * (L + 1) for L, n in enumerate(rows)))
    ends = np.cumsum([n * (L + 1) for L, n in enumerate(rows)])
    lps = [lp_flat[e - n * (L + 1):e].reshape(n, L + 1) for L, (n, e) in enumerate(zip(rows, ends))]
    np.log(p0, out=lps[0][:, 0])
    for L in range(1, order):
        keys = ng_key[L]
        c = keys >> TOK_BITS
        yy = keys & ((1 << TOK_BITS) - 1)
        if L == 1:
            parent_row = yy
        else:  # the suffix n-gram: the level-(L−1) n-gram of a top-order row holding it
            parent_row = ng_inverse[L - 1][rep[L]]
        a = adjusted[L]
        lp = lps[L]
        np.take(lps[L - 1], parent_row, axis=0, out=lp[:, :L], mode="clip")  # unbuffered: rows valid
        p = (a - D[L][np.minimum(a, 3)]) / totals[L][c] + np.exp(log_gamma[L][c] + lp[:, L - 1])
        np.log(p, out=lp[:, L])
    return Levels(order=order, vocab_size=V, n_classes=C, ctx_key=ctx_key,
                  ctx_parent=ctx_parent, ctx_raw=ctx_raw, ctx_start=ctx_start, ctx_end=ctx_end,
                  ng_key=ng_key, lps=lps, log_gamma=log_gamma, discounts=list(D),
                  count_of_counts=list(coc), fallback=list(fallback), adjusted=adjusted)


# --- positions: the deepest seen context of each prediction ----------------------------------
def key_tables(levels: Levels, widths: tuple[int, int] = (2, 2)):
    """Hash tables of (level, token, suffix id) → context id and (level, context id, y) →
    its row within the level (word 1 of a slot), `widths` words a slot, and the slot of
    each key (levels 1.. in order). At the model file's widths (5, 3) they are its tables
    with the keys in place: `scoring_model` fills the rest, the row ids included."""
    N = levels.order

    def table(level_keys, width):
        keys = np.concatenate([np.zeros(0, np.int64)] +
                              [(np.int64(L) << LEVEL_SHIFT) | level_keys[L] for L in range(1, N)])
        table, bits, slot = slot_table(keys, width)
        table[slot, 1] = np.concatenate([np.zeros(0, np.int64)] +
                                        [np.arange(level_keys[L].size) for L in range(1, N)])
        return table, bits, slot

    (ctable, cbits, cslot), (ntable, nbits, nslot) = in_threads_each(
        lambda args: table(*args), [(levels.ctx_key, widths[0]), (levels.ng_key, widths[1])])
    return ctable, cbits, cslot, ntable, nbits, nslot


def lookup_tables(levels: Levels):
    """Hash tables of (level, token, suffix id) → context id and (level, context id, y) → row."""
    ctable, cbits, _, ntable, nbits, _ = key_tables(levels)
    return ctable, cbits, ntable, nbits


def position_arrays(levels: Levels, blocks: "Blocks | None" = None) -> tuple:
    """The flat log P of every level and log γ of every context with their offsets, which
    `positions` reads: built once when it is called for many batches (log P taken from
    `blocks`, which holds the same, when given)."""
    ctx_off = np.zeros(levels.order + 1, np.int64)
    for L in range(levels.order):
        ctx_off[L + 1] = ctx_off[L] + levels.ctx_key[L].size
    lp_off, lp_flat = (blocks.lp_off, blocks.lp_flat) if blocks is not None else flat_lps(levels)
    return ctx_off, lp_off, lp_flat, np.concatenate(levels.log_gamma)


def flat_lps(levels: Levels) -> tuple[np.ndarray, np.ndarray]:
    """Every level's log P end to end (lp_flat) and where each level starts (lp_off): the
    buffer `kneser_ney` built them in when they are still its views, a copy otherwise
    (levels whose log P were replaced, as `solve.shrink` does)."""
    lp_off = np.zeros(levels.order + 1, np.int64)
    lp_off[1:] = np.cumsum([x.size for x in levels.lps])
    base = levels.lps[0].base
    if (base is not None and base.ndim == 1 and base.dtype == np.float64
            and base.size == lp_off[-1]
            and all(x.base is base and x.flags.c_contiguous
                    and x.ctypes.data == base.ctypes.data + 8 * int(at)
                    for x, at in zip(levels.lps, lp_off))):
        return lp_off, base
    return lp_off, np.concatenate([x.ravel() for x in levels.lps])


def positions(levels: Levels, context: np.ndarray, target: np.ndarray, tables=None,
              arrays=None):
    """Deepest seen context level m, the chain of context ids (−1 above m) and
    lp[:, j] = log P_j(y | h_j) for j = 0..N−1 (levels above m repeat level m). `tables`
    (`lookup_tables`) and `arrays` (`position_arrays`): pass them when calling for many
    batches."""
    tables = tables or lookup_tables(levels)
    arrays = arrays or position_arrays(levels)
    context = np.ascontiguousarray(context, np.int64)
    target = np.ascontiguousarray(target, np.int64)
    n = target.size
    deepest, lp = np.empty(n, np.int64), np.empty((n, levels.order))
    chain = np.full((n, levels.order), -1, np.int64)
    in_threads(lambda lo, hi: _positions(lo, hi, deepest, chain, lp, context, target,
                                         levels.order, *tables, *arrays), np.ones(n))
    return deepest, chain, lp


@njit(cache=True, nogil=True)
def _positions(lo, hi, deepest, chain, lp, context, target, order, ctable, cbits, ntable, nbits,
               ctx_off, lp_off, lp_flat, log_gamma):
    """Rows lo..hi of `positions` (chain −1 on entry)."""
    cslot = np.zeros(order, np.int64)
    for i in range(lo, hi):
        chain[i, 0] = 0
        m = context_chain(ctable, cbits, context, i, order, cslot)
        for L in range(1, m + 1):
            chain[i, L] = ctable[cslot[L], 1]
        deepest[i] = m
        lp[i, 0] = lp_flat[target[i]]
        for L in range(1, m + 1):
            s = find_slot(ntable, nbits, (np.int64(L) << 56) | (chain[i, L] << 20) | target[i])
            if s >= 0:
                lp[i, L] = lp_flat[lp_off[L] + ntable[s, 1] * (L + 1) + L]
            else:
                lp[i, L] = log_gamma[ctx_off[L] + chain[i, L]] + lp[i, L - 1]
        for L in range(m + 1, order):
            lp[i, L] = lp[i, m]


# --- the block model ------------------------------------------------------------------------
def bucket_of(raw_counts: np.ndarray) -> np.ndarray:
    """0 for an unseen context, 1 + ⌊log2 count⌋ capped at N_BUCKETS − 1."""
    b = np.zeros(raw_counts.size, np.int64)
    seen = raw_counts > 0
    b[seen] = np.minimum(1 + np.floor(np.log2(raw_counts[seen])).astype(np.int64), N_BUCKETS - 1)
    return b


def n_params(order: int) -> int:
    """τ_0, then N_BUCKETS per context level."""
    return 1 + (order - 1) * N_BUCKETS


def kneser_ney_theta(order: int) -> np.ndarray:
    """The τ that make the block model Kneser-Ney itself: 1 on the top level, 0 elsewhere."""
    theta = np.zeros(n_params(order))
    if order == 1:
        theta[0] = 1.0
    else:
        theta[1 + (order - 2) * N_BUCKETS:] = 1.0
    return theta


class Blocks:
    """The block model over Kneser-Ney levels, with its exact normaliser.

    log Z of a query — a deepest seen context (level m, id c); levels above m unseen — by
    shells of the nested supports S_0 = all ⊃ S_1(h_1) ⊃ … ⊃ S_m(h_m): outside S_{t+1} every
    level above t backs off to level t, so the classes of shell S_t \\ S_{t+1} share a
    closed form. Sums over a context's support are shared by every query with the same
    (context, buckets of the levels above it): one sweep of each group's support gives the
    sums of its own shell and of the shell of its parent."""

    def __init__(self, levels: Levels):
        self.levels = levels
        self.order = levels.order
        self.bucket = [np.zeros(1, np.int64)] + [bucket_of(levels.ctx_raw[L])
                                                 for L in range(1, self.order)]
        self.lp_off, self.lp_flat = flat_lps(levels)
        # level 0's classes by their log P_0: a few hundred values (one per adjusted count)
        values, counts = np.unique(levels.lps[0][:, 0], return_counts=True)
        self.lp0_values, self.lp0_counts = values, counts.astype(np.float64)

    def param_index(self, chain: np.ndarray) -> np.ndarray:
        """Per query (rows of context ids per level, −1 unseen): the τ index of each level."""
        P = np.zeros(chain.shape, np.int64)
        for j in range(1, self.order):
            seen = chain[:, j] >= 0
            b = np.zeros(chain.shape[0], np.int64)
            b[seen] = self.bucket[j][chain[seen, j]]
            P[:, j] = 1 + (j - 1) * N_BUCKETS + b
        return P

    def chains(self, deepest: np.ndarray, context_id: np.ndarray) -> np.ndarray:
        """The chain of context ids (−1 above the deepest) of queries (level, id)."""
        chain = np.full((deepest.size, self.order), -1, np.int64)
        chain[:, 0] = 0
        for L in range(self.order - 1, 0, -1):
            rows = np.flatnonzero(deepest == L)
            c = context_id[rows]
            for j in range(L, 0, -1):
                chain[rows, j] = c
                c = self.levels.ctx_parent[j][c]
        return chain

    def queries(self, deepest: np.ndarray, context_id: np.ndarray) -> dict:
        """The group structure of queries, built once and reused by every evaluation."""
        levels, N = self.levels, self.order
        chain = self.chains(deepest, context_id)
        P = self.param_index(chain)
        log_gamma = np.zeros(chain.shape)
        for j in range(1, N):
            seen = chain[:, j] >= 0
            log_gamma[seen, j] = levels.log_gamma[j][chain[seen, j]]
        buckets = np.zeros(chain.shape, np.int64)
        for j in range(1, N):
            buckets[:, j] = P[:, j] - 1 - (j - 1) * N_BUCKETS
        group = np.full(chain.shape, -1, np.int64)
        g_level, g_start, g_end, g_param = [], [], [], []
        n_groups = 0
        for t in range(N):
            sel = np.flatnonzero(deepest >= t)
            code = np.zeros(sel.size, np.int64)
            for j in range(N - 1, t, -1):
                code = code * N_BUCKETS + buckets[sel, j]
            key = chain[sel, t] * (N_BUCKETS ** (N - 1 - t)) + code
            uniq, first, inverse = unique_keys(key)   # keys ≥ 0; any representative will do
            group[sel, t] = n_groups + inverse
            rep = sel[first]
            g_level.append(np.full(uniq.size, t))
            g_start.append(levels.ctx_start[t][chain[rep, t]])
            g_end.append(levels.ctx_end[t][chain[rep, t]])
            g_param.append(P[rep])
            n_groups += uniq.size
        return dict(deepest=deepest.astype(np.int64), group=group, log_gamma=log_gamma, param=P,
                    g_level=np.concatenate(g_level), g_start=np.concatenate(g_start),
                    g_end=np.concatenate(g_end), g_param=np.concatenate(g_param))

    def log_z(self, theta: np.ndarray, q: dict, grad: bool = False):
        """log Z of each query, and with grad E_p[log P_j] per query and level. Level 0's
        groups (every class) are summed over the distinct values of log P_0."""
        none = np.zeros(0, dtype=np.int64)
        top = q["g_level"] == 0
        W, WL = group_sums(theta, np.zeros(0), none, none, q["g_level"], q["g_start"],
                           np.where(top, q["g_start"], q["g_end"]), q["g_param"], self.lp_off,
                           self.lp_flat, self.order, grad)
        T = theta[q["g_param"][top]].sum(1)
        e = self.lp0_counts * np.exp(T[:, None] * self.lp0_values)
        W[top, 0] = e.sum(1)
        if grad:
            WL[top, 0, 0] = e @ self.lp0_values
        logz, E, _, _ = assemble_log_z(theta, np.zeros(0), q["deepest"], q["group"],
                                       q["log_gamma"], q["param"], W, WL,
                                       int(q["g_level"].size), self.order, grad, False)
        return logz, E


@njit(cache=True, nogil=True)
def group_tau(theta, g_param, g, t, tau):
    """Fill `tau` with group g's scalars, one per level (theta[g_param[g]]), and return
    Σ_{j ≥ t} τ_j — the weight of the group's own level t and those above it."""
    for j in range(tau.size):
        tau[j] = theta[g_param[g, j]]
    total = 0.0
    for j in range(t, tau.size):
        total += tau[j]
    return total


def group_sums(theta, D, parent, row_off, g_level, g_start, g_end, g_param, lp_off, lp_flat, order,
               grad):
    """Per group: the sums over its support of its own shell's weights and of its parent
    shell's (W), and with grad the same weighted by each log P_j (WL). D: each entry's
    summed refinement offset (train.ngram), indexed through row_off and parent; empty for
    the finalized model (no offsets). Groups are shared out among threads."""
    G = g_level.size
    W = np.zeros((G, 2))
    WL = np.zeros((G, 2, order)) if grad else np.zeros((1, 2, order))
    in_threads(lambda lo, hi: _group_sums(lo, hi, W, WL, theta, D, parent, row_off, g_level,
                                          g_start, g_end, g_param, lp_off, lp_flat, order, grad),
               g_end - g_start + 1)
    return W, WL


@njit(cache=True, nogil=True)
def _group_sums(lo, hi, W, WL, theta, D, parent, row_off, g_level, g_start, g_end, g_param, lp_off,
                lp_flat, order, grad):
    """Groups lo..hi of `group_sums`, into W and WL (zero on entry)."""
    tau = np.zeros(order)
    offsets = D.size > 0
    for g in range(lo, hi):
        t = g_level[g]
        Tt = group_tau(theta, g_param, g, t, tau)
        Ttm1 = Tt + (tau[t - 1] if t >= 1 else 0.0)
        base = lp_off[t]
        stride = t + 1
        w0 = 0.0
        w1 = 0.0
        for r in range(g_start[g], g_end[g]):
            p = base + r * stride
            d_own = 0.0
            d_parent = 0.0
            if offsets:
                k = row_off[t] + r
                d_own = D[k]
                if t >= 1:
                    d_parent = D[row_off[t - 1] + parent[k]]
            low = 0.0
            for j in range(t - 1):
                low += tau[j] * lp_flat[p + j]
            if t >= 1:
                ws = math.exp(low + tau[t - 1] * lp_flat[p + t - 1] + Tt * lp_flat[p + t] + d_own)
                wc = math.exp(low + Ttm1 * lp_flat[p + t - 1] + d_parent)
                w1 += wc
            else:
                ws = math.exp(Tt * lp_flat[p] + d_own)
                wc = 0.0
            w0 += ws
            if grad:
                for j in range(t + 1):
                    WL[g, 0, j] += ws * lp_flat[p + j]
                for j in range(t):
                    WL[g, 1, j] += wc * lp_flat[p + j]
        W[g, 0] = w0
        W[g, 1] = w1


@njit(cache=True, nogil=True)
def assemble_log_z(theta, weight, deepest, group, log_gamma, param, W, WL, n_groups, order, grad,
              grad_delta):
    """log Z of each query from the group sums W (and WL) of its shells; with grad,
    E_p[log P_j] per query and level (WL swept with grad); with grad_delta (refinement of
    the entries, train.ngram), per group the coefficients α (own shell) and β (parent shell)
    of the δ gradient's second sweep, each query weighted by `weight`."""
    nq = deepest.size
    logz = np.zeros(nq)
    E = np.zeros((nq, order)) if grad else np.zeros((1, order))
    alpha = np.zeros(n_groups if grad_delta else 1)
    beta = np.zeros(n_groups if grad_delta else 1)
    eKs = np.zeros(order)
    tau = np.zeros(order)
    M = np.zeros(order)
    Gam = np.zeros(order)
    for q in range(nq):
        m = deepest[q]
        for j in range(order):
            tau[j] = theta[param[q, j]]
            M[j] = 0.0
        Z = 0.0
        for mp in range(m + 1):
            K = 0.0
            acc = 0.0
            for j in range(mp + 1, order):
                acc += log_gamma[q, j]
                Gam[j] = acc
                K += tau[j] * acc
            g = group[q, mp]
            dW = W[g, 0]
            gc = -1
            if mp < m:
                gc = group[q, mp + 1]
                dW -= W[gc, 1]
            eK = math.exp(K)
            eKs[mp] = eK
            Z += eK * dW
            if grad:
                for j in range(mp + 1):
                    M[j] += eK * (WL[g, 0, j] - (WL[gc, 1, j] if gc >= 0 else 0.0))
                dlast = WL[g, 0, mp] - (WL[gc, 1, mp] if gc >= 0 else 0.0)
                for j in range(mp + 1, order):
                    M[j] += eK * (dlast + Gam[j] * dW)
        logz[q] = math.log(Z)
        if grad:
            for j in range(order):
                E[q, j] = M[j] / Z
        if grad_delta:
            for mp in range(m + 1):
                a = weight[q] * eKs[mp] / Z
                alpha[group[q, mp]] += a
                if mp < m:
                    beta[group[q, mp + 1]] += a
    return logz, E, alpha, beta


def heldout_positions(levels: Levels, batches, eos: bool, tables=None, arrays=None):
    """(deepest, chain, lp) of every prediction of held-out token batches (TokenArrays);
    `tables` and `arrays` as `positions` takes them, when already built."""
    tables, flat = tables or lookup_tables(levels), arrays or position_arrays(levels)
    parts = []
    for arrays in batches:
        context, target = context_rows(arrays.tokens.astype(np.int64), arrays.doc_offsets,
                                         levels.order, levels.vocab_size, eos)
        parts.append(positions(levels, context, target, tables, flat))
    if not parts:
        raise StreamfitError("the held-out data holds no tokens")
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def heldout_objective(blocks: Blocks, deepest: np.ndarray, chain: np.ndarray, lp: np.ndarray):
    """θ → (mean held-out cross-entropy, its gradient E_p[log P_b] − log P_b(y) per τ), with
    the exact normaliser; predictions sharing a deepest context are one weighted query.
    `objective.newton(θ)` adds the Hessian (covariances of the log P_b under p)."""
    N, n = blocks.order, deepest.size
    P = blocks.param_index(chain)
    phi = np.zeros(n_params(N))
    for j in range(N):
        phi += np.bincount(P[:, j], weights=lp[:, j], minlength=phi.size)
    key = deepest * (np.int64(1) << 40) + chain[np.arange(n), deepest]
    _, first, inverse = unique_keys(key)   # any prediction of a context stands for it
    weight = np.bincount(inverse).astype(np.float64)
    q = blocks.queries(deepest[first], chain[first, deepest[first]])
    value_of_row, g_combo = level_one_combos(blocks, q)

    def objective(theta):
        logz, E = blocks.log_z(theta, q, grad=True)
        value = (weight @ logz - phi @ theta) / n
        g = -phi.copy()
        for j in range(N):
            g += np.bincount(q["param"][:, j], weights=weight * E[:, j], minlength=g.size)
        return value, g / n

    def newton(theta):
        W, WL, WLL = group_moments(theta, q["g_level"], q["g_start"], q["g_end"], q["g_param"],
                                   blocks.lp_off, blocks.lp_flat, N, blocks.lp0_values,
                                   blocks.lp0_counts, value_of_row, g_combo)
        total, g, H = assemble_newton(theta, weight, q["deepest"], q["group"], q["log_gamma"],
                                      q["param"], W, WL, WLL, N, phi.size)
        return (total - phi @ theta) / n, (g - phi) / n, H / n
    objective.newton = newton
    objective.distinct_contexts = int(first.size)
    return objective


def group_moments(theta, g_level, g_start, g_end, g_param, lp_off, lp_flat, order, lp0_values,
                  lp0_counts, value_of_row, g_combo):
    """`group_sums` of the finalized model (no offsets) with second moments too: per group
    and shell (own 0, parent 1) W = Σ w, WL[j] = Σ w log P_j, WLL[i, j] = Σ w log P_i log P_j
    (i ≥ j filled) over its support. Level 0's support, every class, is summed over the
    distinct values of log P_0 (lp0_values, each lp0_counts times); level 1's parent shell
    too where `g_combo` (`level_one_combos`) says it pays. Groups are shared out among
    threads."""
    G = g_level.size
    W = np.zeros((G, 2))
    WL = np.zeros((G, 2, order))
    WLL = np.zeros((G, 2, order, order))
    cost = np.where(g_level == 0, lp0_values.size, g_end - g_start) + 1
    n_combos = int(g_combo.max()) + 1 if G else 0
    in_threads(lambda lo, hi: _group_moments(lo, hi, W, WL, WLL, theta, g_level, g_start, g_end,
                                             g_param, lp_off, lp_flat, order, lp0_values,
                                             lp0_counts, value_of_row, g_combo, n_combos), cost)
    return W, WL, WLL


def level_one_combos(blocks: "Blocks", q: dict) -> tuple[np.ndarray, np.ndarray]:
    """For `group_moments`: each level-1 row's index among the distinct values of log P_0,
    and per group the index of its τ combination (its g_param row) among level-1 groups,
    −1 where a table of exp over those values would not pay (a combination whose groups'
    supports hold fewer rows than there are values) and for groups of other levels."""
    combo = np.full(q["g_level"].size, -1, np.int64)
    if blocks.order < 2:
        return np.zeros(0, np.int64), combo
    value_of_row = np.searchsorted(blocks.lp0_values, blocks.levels.lps[1][:, 0])
    one = np.flatnonzero(q["g_level"] == 1)
    if one.size:
        code = np.zeros(one.size, np.int64)   # the g_param row as one number (τ indices < P)
        for j in range(blocks.order):
            code = code * n_params(blocks.order) + q["g_param"][one, j]
        _, _, inverse = unique_keys(code)
        rows = np.bincount(inverse, weights=q["g_end"][one] - q["g_start"][one])
        worth = rows > blocks.lp0_values.size
        renumber = np.where(worth, np.cumsum(worth) - 1, -1)
        combo[one] = renumber[inverse]
    return value_of_row, combo


@njit(cache=True, nogil=True)
def _group_moments(lo, hi, W, WL, WLL, theta, g_level, g_start, g_end, g_param, lp_off, lp_flat,
                   order, lp0_values, lp0_counts, value_of_row, g_combo, n_combos):
    """Groups lo..hi of `group_moments`, into W, WL and WLL (zero on entry). A level-1 group
    with g_combo ≥ 0 takes its parent-shell weights exp(Ttm1 log P_0) from a table over the
    distinct values of log P_0 (value_of_row: a level-1 row's), one row per τ combination
    (groups with the same g_param have the same Ttm1), filled when first needed: the same
    numbers, one exp per row instead of two."""
    tau = np.zeros(order)
    parent_weight = np.empty((n_combos, lp0_values.size))
    filled = np.zeros(n_combos, np.bool_)
    for g in range(lo, hi):
        t = g_level[g]
        Tt = group_tau(theta, g_param, g, t, tau)
        combo = g_combo[g]
        if combo >= 0 and not filled[combo]:
            Ttm1 = Tt + tau[0]
            for k in range(lp0_values.size):
                parent_weight[combo, k] = math.exp(0.0 + Ttm1 * lp0_values[k])
            filled[combo] = True
        if t == 0:
            for r in range(lp0_values.size):
                v = lp0_values[r]
                ws = lp0_counts[r] * math.exp(Tt * v)
                W[g, 0] += ws
                WL[g, 0, 0] += ws * v
                WLL[g, 0, 0, 0] += ws * v * v
            continue
        Ttm1 = Tt + (tau[t - 1] if t >= 1 else 0.0)
        base = lp_off[t]
        stride = t + 1
        for r in range(g_start[g], g_end[g]):
            p = base + r * stride
            low = 0.0
            for j in range(t - 1):
                low += tau[j] * lp_flat[p + j]
            if t >= 1:
                ws = math.exp(low + tau[t - 1] * lp_flat[p + t - 1] + Tt * lp_flat[p + t])
                if combo >= 0:
                    wc = parent_weight[combo, value_of_row[r]]
                else:
                    wc = math.exp(low + Ttm1 * lp_flat[p + t - 1])
            else:
                ws = math.exp(Tt * lp_flat[p])
                wc = 0.0
            W[g, 0] += ws
            W[g, 1] += wc
            for i in range(t + 1):
                li = lp_flat[p + i]
                a = ws * li
                WL[g, 0, i] += a
                for j in range(i + 1):
                    WLL[g, 0, i, j] += a * lp_flat[p + j]
            for i in range(t):
                li = lp_flat[p + i]
                a = wc * li
                WL[g, 1, i] += a
                for j in range(i + 1):
                    WLL[g, 1, i, j] += a * lp_flat[p + j]


@njit(cache=True, nogil=True)
def assemble_newton(theta, weight, deepest, group, log_gamma, param, W, WL, WLL, order, n_theta):
    """From the group moments: Σ_q weight·log Z_q, its gradient Σ_q weight·E_q[log P_j] and
    Hessian Σ_q weight·Cov_q[log P_i, log P_j], both summed into τ indices (an infinite
    total where a normaliser under- or overflows). In the shell of level mp the levels j
    above mp back off: log P_j = log P_mp + Σ_{mp<i≤j} log γ_i."""
    total = 0.0
    grad = np.zeros(n_theta)
    H = np.zeros((n_theta, n_theta))
    tau = np.zeros(order)
    Gam = np.zeros(order)
    M = np.zeros(order)
    S = np.zeros((order, order))
    Ld = np.zeros(order)
    LLd = np.zeros((order, order))
    for q in range(deepest.size):
        m = deepest[q]
        for j in range(order):
            tau[j] = theta[param[q, j]]
            M[j] = 0.0
            for i in range(order):
                S[i, j] = 0.0
        Z = 0.0
        for mp in range(m + 1):
            K = 0.0
            acc = 0.0
            for j in range(order):
                Gam[j] = 0.0
            for j in range(mp + 1, order):
                acc += log_gamma[q, j]
                Gam[j] = acc
                K += tau[j] * acc
            g = group[q, mp]
            gc = group[q, mp + 1] if mp < m else -1
            Wd = W[g, 0] - (W[gc, 1] if gc >= 0 else 0.0)
            for i in range(mp + 1):
                Ld[i] = WL[g, 0, i] - (WL[gc, 1, i] if gc >= 0 else 0.0)
                for j in range(i + 1):
                    LLd[i, j] = WLL[g, 0, i, j] - (WLL[gc, 1, i, j] if gc >= 0 else 0.0)
                    LLd[j, i] = LLd[i, j]
            eK = math.exp(K)
            Z += eK * Wd
            for i in range(order):  # log P_i = log P_{min(i, mp)} + Gam[i]
                ai = min(i, mp)
                M[i] += eK * (Ld[ai] + Gam[i] * Wd)
                for j in range(i + 1):
                    aj = min(j, mp)
                    S[i, j] += eK * (LLd[ai, aj] + Gam[j] * Ld[ai] + Gam[i] * Ld[aj]
                                     + Gam[i] * Gam[j] * Wd)
        if not 0.0 < Z < math.inf:  # a step far off: under- or overflow, rejected
            return math.inf, grad, H
        w = weight[q]
        total += w * math.log(Z)
        for i in range(order):
            Ei = M[i] / Z
            grad[param[q, i]] += w * Ei
            for j in range(i + 1):
                c = w * (S[i, j] / Z - Ei * M[j] / Z)
                H[param[q, i], param[q, j]] += c
                if i != j:
                    H[param[q, j], param[q, i]] += c
    return total, grad, H


def newton_step(g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The Newton direction −H⁻¹g on the τ that the held-out data reaches (the others have
    zero rows in H and stay where they are)."""
    active = np.flatnonzero(np.diag(H) > 0)
    d = np.zeros_like(g)
    if active.size:
        Ha = H[np.ix_(active, active)]
        Ha = Ha + np.eye(active.size) * (1e-12 * np.abs(np.diag(Ha)).max())
        try:
            d[active] = -np.linalg.solve(Ha, g[active])
        except np.linalg.LinAlgError:
            d[active] = -np.linalg.lstsq(Ha, g[active], rcond=None)[0]
    return d


def fit_blocks(blocks: Blocks, deepest: np.ndarray, chain: np.ndarray, lp: np.ndarray,
               *, max_iter: int = 60, tol: float = 1e-12) -> tuple[np.ndarray, dict]:
    """τ minimising the mean cross-entropy of held-out predictions, by Newton's method from
    Kneser-Ney's τ (the objective is convex in τ; exact normaliser, gradient and Hessian,
    steps of at most MAX_STEP in any τ, halved while one does not decrease it) until the
    predicted decrease is below `tol` nats a prediction. A handful of sweeps where L-BFGS
    needed 15-40."""
    objective = heldout_objective(blocks, deepest, chain, lp)
    t0 = time.perf_counter()
    theta = kneser_ney_theta(blocks.order)
    value, g, H = objective.newton(theta)
    start, evaluations, converged = value, 1, False
    message = "iteration limit"
    for _ in range(max_iter):
        d = newton_step(g, H)
        decrease = -(g @ d)
        if not decrease > tol:
            converged, message = True, "predicted decrease below tolerance"
            break
        step = min(1.0, MAX_STEP / np.abs(d).max())  # damped: no τ moves by more than MAX_STEP
        while True:
            trial = objective.newton(theta + step * d)
            evaluations += 1
            if trial[0] <= value - 1e-4 * step * decrease or step < 1e-6:
                break
            step /= 2
        if not trial[0] < value:
            converged, message = True, "no decrease along the Newton direction"
            break
        theta = theta + step * d
        value, g, H = trial
    return theta, {"evaluations": evaluations, "method": "newton",
                   "cross_entropy_kneser_ney": float(start),
                   "cross_entropy": float(value), "positions": int(deepest.size),
                   "distinct_contexts": objective.distinct_contexts,
                   "seconds": time.perf_counter() - t0, "converged": converged,
                   "message": message}


def scoring_model(blocks: Blocks, theta: np.ndarray, meta: dict, eos: bool, *, extra=None,
                  logz=None, tables=None) -> NgramModel:
    """The lookup tables of `model.ngram` for these τ: log Z of every training context
    (all levels, as the deepest seen one), partial logits per n-gram row. A refined model
    (`train.ngram`) passes `extra`, per level its rows' added logits, and its own `logz`;
    `tables`: `key_tables(levels, (5, 3))`, filled here (no longer lookup tables after)."""
    levels, N = blocks.levels, blocks.order
    if logz is None and np.array_equal(theta, kneser_ney_theta(N)):
        # Kneser-Ney is normalised by construction (every discount D[a] ≤ a): log Z = 0
        logz = np.zeros(sum(k.size for k in levels.ctx_key))
    elif logz is None:
        deepest = np.concatenate([np.full(levels.ctx_key[L].size, L) for L in range(N)])
        ids = np.concatenate([np.arange(levels.ctx_key[L].size) for L in range(N)])
        logz, _ = blocks.log_z(theta, blocks.queries(deepest, ids))
    ctx_off = np.concatenate([[0], np.cumsum([k.size for k in levels.ctx_key])])
    partial = []
    for L in range(N):
        lps = levels.lps[L]
        tau = np.empty(lps.shape)
        tau[:, 0] = theta[0]
        if L:
            c = levels.ng_key[L] >> TOK_BITS
            for j in range(L, 0, -1):
                tau[:, j] = theta[1 + (j - 1) * N_BUCKETS + blocks.bucket[j][c]]
                c = levels.ctx_parent[j][c]
        partial.append((tau * lps).sum(1) + (extra[L] if extra is not None else 0.0))
    # contexts: key, id, log γ, τ, log Z
    contexts, _, cslot, ngrams, _, nslot = tables or key_tables(levels, (5, 3))
    cv = contexts.view(np.float64)
    for L in range(1, N):
        s = cslot[ctx_off[L] - 1:ctx_off[L + 1] - 1]
        cv[s, 2] = levels.log_gamma[L]
        cv[s, 3] = theta[1 + (L - 1) * N_BUCKETS + blocks.bucket[L]]
        cv[s, 4] = logz[ctx_off[L]:ctx_off[L + 1]]
    nv = ngrams.view(np.float64)
    lo = 0
    for L in range(1, N):
        s = nslot[lo:lo + levels.ng_key[L].size]
        nv[s, 1] = partial[L]
        nv[s, 2] = levels.lps[L][:, L]
        lo += levels.ng_key[L].size
    unigram = np.stack([partial[0], levels.lps[0][:, 0]], axis=1)
    r0 = np.zeros(N + 1)
    for m in range(N):
        r0[m] = sum(theta[1 + (j - 1) * N_BUCKETS] for j in range(m + 1, N))
    r0[N] = logz[0]
    return NgramModel(order=N, vocab_size=levels.vocab_size, n_classes=levels.n_classes,
                      eos=eos, contexts=contexts, ngrams=ngrams, unigram=unigram, r0=r0, meta=meta)


def memory_need(stats) -> int:
    """About the peak bytes of finalizing these n-gram statistics."""
    return int(stats.nnz) * BYTES_PER_NGRAM_PER_ORDER * stats.order


def check_memory(stats) -> None:
    """Refuse up front, with the figure, what would not fit in the memory available now."""
    need, free = memory_need(stats), available_memory()
    if free is not None and need > free:
        raise StreamfitError(f"finalizing {stats.nnz:,} distinct {stats.order}-grams needs about "
                             f"{need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is available: "
                             f"accumulate a lower --order, or finalize on a machine with more "
                             f"memory")


def finalize_ngram(stats, out, *, form: str = "blocks", heldout=None, source: dict | None = None,
                   max_iter: int = 60, cache: bool = False) -> NgramModel:
    """Write an n-gram model: `kneser-ney` (no held-out data needed) or `blocks` (τ fitted on
    the held-out token batches `heldout`, every prediction of them); `cache` adds the
    document cache (`model.cache`), its weights fitted on `heldout` too."""
    from .. import __version__
    from ..io.files import sidecar_path, stem_of
    if form not in NGRAM_FORMS:
        raise OptionError(f"n-gram statistics finalize as --form kneser-ney or blocks, not {form!r}")
    if form == "blocks" and heldout is None:
        raise OptionError("--form blocks fits its τ on held-out data: pass --heldout PATHS "
                          "(or choose --form kneser-ney)")
    if cache and heldout is None:
        raise OptionError("--cache fits its weights on held-out data: pass --heldout PATHS")
    check_memory(stats)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    levels = kneser_ney(stats)
    blocks = Blocks(levels)
    theta = kneser_ney_theta(levels.order)
    meta = {"form": form, "streamfit_version": __version__, "buckets": N_BUCKETS,
            "kneser_ney": levels.sizes(), "source": source or {}}
    if cache:
        heldout = list(heldout)        # read twice: the τ fit, then the cache's weights
    tables = key_tables(levels, (5, 3))   # the model's tables, lookup tables until filled
    if form == "blocks":
        c, cbits, _, n, nbits, _ = tables
        deepest, chain, lp = heldout_positions(levels, heldout, stats.eos, (c, cbits, n, nbits),
                                               position_arrays(levels, blocks))
        theta, meta["fit"] = fit_blocks(blocks, deepest, chain, lp, max_iter=max_iter)
    meta["theta"] = [float(t) for t in theta]
    model = scoring_model(blocks, theta, meta, stats.eos, tables=tables)
    if cache:
        from .cache import fit_cache
        meta["cache"] = fit_cache(model, heldout)
    meta["seconds"] = time.perf_counter() - t0
    save_ngram_model(stem_of(out), sidecar_path(out), model, meta)
    return model


def token_batches(paths, *, vocab_size: int, column: str = "tokens",
                  batch_rows: int | None = None, progress: bool = False, desc: str = "calibrate",
                  text_column: str | None = None, tokenizer=None):
    """TokenArrays of every record batch of Parquet token files (or of their `text_column`
    tokenized with `tokenizer`), validated (ids beyond the vocabulary are errors that name
    the file, row group, row and column)."""
    from ..data.featurize import token_arrays
    from ..data.tokenize import text_input
    from ..errors import InputError
    from ..io.parquet import DEFAULT_BATCH_ROWS, iter_batches, open_parquet, resolve_paths
    from ..io.progress import progress_bar
    text = text_input({"text_column": text_column, "tokenizer": tokenizer, "column": column},
                      vocab_size)
    files = resolve_paths(paths)
    with progress_bar(progress, total=sum(open_parquet(p).metadata.num_rows for p in files),
                      unit="docs", unit_scale=True, desc=desc) as bar:
        for p in files:
            for b in iter_batches(p, [text.text_column if text else column],
                                  batch_rows=batch_rows or DEFAULT_BATCH_ROWS):
                try:
                    yield token_arrays(text.tokens(b.data) if text else b.data, column, vocab_size)
                except InputError as exc:
                    raise exc.located(path=str(p), row_group=b.row_group,
                                      row_offset=b.row_offset) from None
                bar.update(b.data.num_rows)
