"""Smaller n-gram models, each exactly normalised: pruning by count and by relative entropy,
log-probabilities rounded to a compact storage type, and the compact file (`model.compact`).

All of it works on the Kneser-Ney levels (`solve.ngram.Levels`) before the block model's τ are
fitted, so the fit and the exact log Z of every context are those of the reduced model:

- pruning removes n-grams (h, y) of levels L ≥ 1 — by count, those of adjusted count below k
  (the counts Kneser-Ney discounts, KenLM's `--prune` rule), and by relative entropy
  (Stolcke 1998), those whose removal alone changes the model by less than θ:
  D = −P(h) [p(y|h) (log γ′ + log P_{L−1}(y|h′) − log p(y|h)) + (log γ′ − log γ) Σ_{y∉S(h)} p(y|h)],
  P(h) the context's relative frequency. An n-gram stays while a longer one above it stays
  (nested supports, which the scorers and the block model's normaliser rely on); a context
  left with no n-gram and no longer context goes too. The removed mass is folded into the
  back-off weight, γ′(h) = (1 − Σ_kept P_L(y|h)) / (1 − Σ_kept P_{L−1}(y|h′)), so every context
  still sums to one.
- rounding replaces each level's log-probabilities by what the file stores (float32, float16
  or 8-bit codes), then recomputes γ the same way; log Z of every context, computed exactly
  for the model as stored, takes up what rounding leaves (a level whose log Z are all within
  LOGZ_TOLERANCE of 0 — Kneser-Ney's — stores none, nor context buckets where its τ do not
  depend on them).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..errors import OptionError
from ..model.compact import QUANTIZE, decoded, encode, index_dtype, side_dtype
from .ngram import (CID_BITS, N_BUCKETS, NGRAM_FORMS, TOK_BITS, Blocks, Levels, check_memory,
                    fit_blocks, heldout_positions, kneser_ney, kneser_ney_theta)

TMASK = (1 << TOK_BITS) - 1
# A level's log Z is left out of the file (read as 0) when no context's exceeds this: Kneser-Ney
# is normalised by construction, up to the rounding of its stored γ.
LOGZ_TOLERANCE = 1e-7


def parent_rows(levels: Levels, L: int) -> np.ndarray:
    """Per n-gram of level L ≥ 1: the row of (h′, y) one level down (h′ its context's suffix)."""
    keys = levels.ng_key[L]
    y = keys & TMASK
    if L == 1:
        return y
    parent = levels.ctx_parent[L][keys >> TOK_BITS]
    rows = np.searchsorted(levels.ng_key[L - 1], (parent << TOK_BITS) | y)
    return rows


def relative_entropy(levels: Levels, L: int) -> np.ndarray:
    """Stolcke's D of removing each n-gram of level L alone (see the module doc)."""
    c = levels.ng_key[L] >> TOK_BITS
    nc = levels.ctx_key[L].size
    lp, lq = levels.lps[L][:, L], levels.lps[L][:, L - 1]
    p, q = np.exp(lp), np.exp(lq)
    unseen = 1 - np.bincount(c, p, nc)[c]
    log_new = np.log(np.maximum(unseen + p, 1e-300)) - np.log(
        np.maximum(1 - np.bincount(c, q, nc)[c] + q, 1e-300))
    prob_h = levels.ctx_raw[L][c] / max(float(levels.ctx_raw[0][0]), 1.0)
    return -prob_h * (p * (lq + log_new - lp) + (log_new - levels.log_gamma[L][c]) * unseen)


def renormalise(levels: Levels, L: int, changed: np.ndarray) -> None:
    """log γ of the changed contexts of level L from their kept n-grams (see the module doc)."""
    c = levels.ng_key[L] >> TOK_BITS
    nc = levels.ctx_key[L].size
    num = 1 - np.bincount(c, np.exp(levels.lps[L][:, L]), nc)
    den = 1 - np.bincount(c, np.exp(levels.lps[L][:, L - 1]), nc)
    ok = changed & (num > 0) & (den > 0)
    levels.log_gamma[L][ok] = np.log(num[ok]) - np.log(den[ok])


def prune(levels: Levels, *, count: int = 0, entropy: float = 0.0) -> tuple[Levels, dict]:
    """The levels with n-grams of adjusted count < `count` or relative entropy < `entropy`
    removed (and the contexts left empty), renormalised; and what was removed."""
    N = levels.order
    keep = [None] * N
    for L in range(N - 1, 0, -1):
        drop = np.zeros(levels.ng_key[L].size, bool)
        if count > 1:
            drop |= levels.adjusted[L] < count
        if entropy > 0:
            drop |= relative_entropy(levels, L) < entropy
        if L + 1 < N:
            drop[parent_rows(levels, L + 1)[keep[L + 1]]] = False
        keep[L] = ~drop
    ctx_keep = [np.ones(1, bool)] + [None] * (N - 1)
    for L in range(N - 1, 0, -1):
        k = np.zeros(levels.ctx_key[L].size, bool)
        k[levels.ng_key[L][keep[L]] >> TOK_BITS] = True
        if L + 1 < N:
            k[levels.ctx_parent[L + 1][ctx_keep[L + 1]]] = True
        ctx_keep[L] = k
    out = dataclasses.replace(levels, ctx_key=list(levels.ctx_key), ctx_parent=list(levels.ctx_parent),
                              ctx_raw=list(levels.ctx_raw), ctx_start=list(levels.ctx_start),
                              ctx_end=list(levels.ctx_end), ng_key=list(levels.ng_key),
                              lps=list(levels.lps), log_gamma=list(levels.log_gamma),
                              adjusted=list(levels.adjusted))
    new_id = [np.zeros(1, np.int64)]
    report = {"ngrams_before": [int(k.size) for k in levels.ng_key[1:]],
              "contexts_before": [int(k.size) for k in levels.ctx_key[1:]]}
    for L in range(1, N):
        ck = ctx_keep[L]
        new_id.append(np.cumsum(ck) - 1)
        parent = new_id[L - 1][levels.ctx_parent[L][ck]]
        out.ctx_key[L] = ((levels.ctx_key[L][ck] >> CID_BITS) << CID_BITS) | parent
        out.ctx_parent[L] = parent
        out.ctx_raw[L] = levels.ctx_raw[L][ck]
        out.log_gamma[L] = levels.log_gamma[L][ck].copy()
        k = keep[L]
        c = new_id[L][levels.ng_key[L][k] >> TOK_BITS]
        out.ng_key[L] = (c << TOK_BITS) | (levels.ng_key[L][k] & TMASK)
        out.lps[L] = levels.lps[L][k]
        out.adjusted[L] = levels.adjusted[L][k]
        nc = out.ctx_key[L].size
        out.ctx_start[L] = np.searchsorted(c, np.arange(nc))
        out.ctx_end[L] = np.searchsorted(c, np.arange(nc), side="right")
        lost = np.zeros(levels.ctx_key[L].size, bool)
        lost[levels.ng_key[L][~k] >> TOK_BITS] = True
        renormalise(out, L, lost[ck])
    report.update(ngrams=[int(k.size) for k in out.ng_key[1:]],
                  contexts=[int(k.size) for k in out.ctx_key[1:]])
    return out, report


def round_values(levels: Levels, kind: str) -> tuple[Levels, list]:
    """The levels with every log-probability replaced by what `kind` stores, γ recomputed
    (and stored as the file stores it); and each level's encoding. Values round to the
    nearest, except in a context whose stored probabilities would then keep less than half
    of the mass it leaves to back-off (or none): there they round down."""
    N = levels.order
    out = dataclasses.replace(levels, lps=list(levels.lps), log_gamma=list(levels.log_gamma))
    side = side_dtype(kind)
    out.lps[0] = levels.lps[0].astype(side).astype(np.float64)
    encodings = [None]
    for L in range(1, N):
        own = levels.lps[L][:, L]
        c = levels.ng_key[L] >> TOK_BITS
        nc = levels.ctx_key[L].size
        enc = encode(own, kind)
        if kind != "float64":
            left = 1 - np.bincount(c, np.exp(own), nc)
            kept = 1 - np.bincount(c, np.exp(decoded(enc)), nc)
            tight = kept < 0.5 * left
            if tight.any():
                enc = encode(own, kind, down=tight[c])
        encodings.append(enc)
        if kind == "float64":
            continue
        lps = np.empty_like(levels.lps[L])
        lps[:, :L] = out.lps[L - 1][parent_rows(levels, L)]
        lps[:, L] = decoded(enc)
        out.lps[L] = lps
        out.log_gamma[L] = levels.log_gamma[L].copy()
        renormalise(out, L, np.ones(nc, bool))
        out.log_gamma[L] = out.log_gamma[L].astype(side).astype(np.float64)
    return out, encodings


def compact_arrays(blocks: Blocks, theta: np.ndarray, kind: str, encodings: list) -> dict:
    """The arrays of the compact file (see `streamfit.lite`) for these τ and level encodings
    (`round_values`), with log Z of every context computed exactly for the values as stored."""
    levels, N = blocks.levels, blocks.order
    side = side_dtype(kind)
    deepest = np.concatenate([np.full(levels.ctx_key[L].size, L) for L in range(N)])
    ids = np.concatenate([np.arange(levels.ctx_key[L].size) for L in range(N)])
    logz, _ = blocks.log_z(theta, blocks.queries(deepest, ids))
    ctx_off = np.concatenate([[0], np.cumsum([k.size for k in levels.ctx_key])])
    r0 = np.zeros(N + 1)
    for m in range(N):
        r0[m] = sum(theta[1 + (j - 1) * N_BUCKETS] for j in range(m + 1, N))
    r0[N] = logz[0]
    arrays = {"theta": np.asarray(theta, np.float64), "r0": r0,
              "unigram": levels.lps[0][:, 0].astype(side)}
    n_tokens = levels.vocab_size + 2           # classes and BOS
    for L in range(1, N):
        key = levels.ctx_key[L]
        tok, parent = key >> CID_BITS, key & ((1 << CID_BITS) - 1)
        nc, nrows = key.size, levels.ng_key[L].size
        arrays[f"{L}.ctx_offsets"] = np.searchsorted(tok, np.arange(n_tokens + 1)).astype(index_dtype(nc))
        arrays[f"{L}.parent"] = parent.astype(index_dtype(levels.ctx_key[L - 1].size))
        arrays[f"{L}.gamma"] = levels.log_gamma[L].astype(side)
        if np.ptp(theta[1 + (L - 1) * N_BUCKETS:1 + L * N_BUCKETS]) > 0:   # τ by bucket
            arrays[f"{L}.bucket"] = blocks.bucket[L].astype(np.uint8)
        level_logz = logz[ctx_off[L]:ctx_off[L + 1]]
        if level_logz.size and np.abs(level_logz).max() > LOGZ_TOLERANCE:
            arrays[f"{L}.logz"] = level_logz.astype(side)
        arrays[f"{L}.ng_offsets"] = np.append(levels.ctx_start[L], nrows).astype(index_dtype(nrows))
        arrays[f"{L}.y"] = (levels.ng_key[L] & TMASK).astype(index_dtype(levels.n_classes))
        for name, arr in encodings[L].items():
            arrays[f"{L}.{name}"] = arr
    return arrays


def check_options(count: int, entropy: float, quantize: str | None) -> None:
    """Refuse bad values before any work."""
    if count < 0 or int(count) != count:
        raise OptionError(f"--prune-count is a whole number ≥ 0 (2 drops n-grams seen once), "
                          f"not {count}")
    if not (entropy >= 0 and math.isfinite(entropy)):
        raise OptionError(f"--prune-entropy is a threshold ≥ 0 (e.g. 1e-8), not {entropy}")
    if quantize is not None and quantize not in QUANTIZE:
        raise OptionError(f"--quantize is one of {', '.join(QUANTIZE)}, not {quantize!r}")


def finalize_small(stats, out, *, form: str = "blocks", heldout=None, source: dict | None = None,
                   max_iter: int = 60, prune_count: int = 0, prune_entropy: float = 0.0,
                   quantize: str | None = None):
    """`solve.ngram.finalize_ngram` writing the compact model: the Kneser-Ney levels pruned
    (`prune_count` k > 1, `prune_entropy` θ > 0) and rounded (`quantize`: float32, float16,
    int8; default float64) before the block model's τ are fitted on `heldout`."""
    from .. import __version__
    from ..model.compact import CompactNgramModel, write_compact
    from ..model.weights import sidecar_path, stem_of
    if form not in NGRAM_FORMS:
        raise OptionError(f"n-gram statistics finalize as --form kneser-ney or blocks, not {form!r}")
    if form == "blocks" and heldout is None:
        raise OptionError("--form blocks fits its τ on held-out data: pass --heldout PATHS "
                          "(or choose --form kneser-ney)")
    check_options(prune_count, prune_entropy, quantize)
    check_memory(stats)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    levels = kneser_ney(stats)
    meta = {"form": form, "streamfit_version": __version__, "buckets": N_BUCKETS,
            "kneser_ney": levels.sizes(), "source": source or {},
            "quantize": quantize or "float64"}
    if prune_count > 1 or prune_entropy > 0:
        levels, meta["pruned"] = prune(levels, count=prune_count, entropy=prune_entropy)
        meta["pruned"].update(count=prune_count, entropy=prune_entropy)
    levels, encodings = round_values(levels, meta["quantize"])
    blocks = Blocks(levels)
    theta = kneser_ney_theta(levels.order)
    if form == "blocks":
        deepest, chain, lp = heldout_positions(levels, heldout, stats.eos)
        theta, meta["fit"] = fit_blocks(blocks, deepest, chain, lp, max_iter=max_iter)
    meta["theta"] = [float(t) for t in theta]
    arrays = compact_arrays(blocks, theta, meta["quantize"], encodings)
    meta.update(order=levels.order, vocab_size=levels.vocab_size, n_classes=levels.n_classes,
                eos=bool(stats.eos), seconds=time.perf_counter() - t0)
    write_compact(stem_of(out), sidecar_path(out), arrays, meta)
    return CompactNgramModel(sidecar_path(out))


# --- weights files (window models and classifiers) ----------------------------------------
WEIGHT_QUANTIZE = ("float16", "int8")
ROW_BLOCK = 4096


def row_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-bit codes of rows of weights and each row's step: w ≈ lo + step · code, nearest code.
    The offset lo is dropped — a per-row constant cancels in the softmax, since the inputs x̃
    sum to 1."""
    w = np.asarray(w, np.float64)
    lo, hi = w.min(1), w.max(1)
    step = ((hi - lo) / 255).astype(np.float32)
    safe = np.where(step > 0, step, 1).astype(np.float64)
    code = np.clip(np.rint((w - lo[:, None]) / safe[:, None]), 0, 255).astype(np.uint8)
    return code, step


def shrink_weights(path, out, *, quantize: str):
    """A one-layer dense weights file with its values as float16 or 8-bit codes with a step
    per row (decoded on the fly by `model.weights` and `streamfit.lite`); returns the model."""
    from ..model.weights import load_model, stem_of, write_model
    from ..model.ngram import NgramModel
    from ..model.compact import CompactNgramModel
    if quantize not in WEIGHT_QUANTIZE:
        raise OptionError(f"--quantize of a weights file is float16 or int8, not {quantize!r}")
    model = load_model(path)
    if isinstance(model, (NgramModel, CompactNgramModel)):
        raise OptionError("n-gram models are made small at finalize: --prune-count, "
                          "--prune-entropy, --quantize")
    if model.dense is None or model.hidden is not None or model.row_step is not None:
        raise OptionError(f"{path}: shrink reads one-layer dense float weights (finalize "
                          f"--format dense), not {model.layout} {model.dense.dtype if model.dense is not None else ''}"
                          f"{', 2 layers' if model.hidden is not None else ''}")
    if stem_of(out) == stem_of(path):
        raise OptionError("--out names the input model: write the small model beside it")
    header = {k: v for k, v in model.meta.items()
              if k not in ("arrays", "header_checksum", "written", "format", "schema_version",
                           "streamfit_version", "layout")}
    header.update(dtype="uint8" if quantize == "int8" else quantize,
                  shrunk={"from": str(path), "quantize": quantize})
    W = model.dense

    def blocks():
        for lo in range(0, W.shape[0], ROW_BLOCK):
            rows = np.asarray(W[lo:lo + ROW_BLOCK], np.float64)
            if quantize == "int8":
                yield lo, row_codes(rows)[0]
            else:
                yield lo, rows.astype(np.float16)

    if quantize == "int8":  # the steps are needed before the sidecar: one pass for them
        steps_all = np.concatenate([row_codes(np.asarray(W[lo:lo + ROW_BLOCK]))[1]
                                    for lo in range(0, W.shape[0], ROW_BLOCK)])
    write_model(out, header, dense={"dtype": header["dtype"], "blocks": blocks()},
                bias=model.bias, row_step=steps_all if quantize == "int8" else None)
    return load_model(out)
