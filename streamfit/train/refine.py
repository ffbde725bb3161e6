"""Refining: better weights by streaming passes over training data.

Every method works on one dense matrix W (features × classes) with logits = x̃ · W. A
model's tau and per-class bias fold into it, since each x̃ sums to 1:
x̃ · (tau·W + 1·biasᵀ) = tau·(x̃·W) + bias. Sparse explicit solutions fold the same way
(their missing per-row constant cancels in the softmax). The refined model is written with
the bias unfolded again, so that examples with no features keep the class term.

- gis: Generalised Iterative Scaling, W ← W + log((F + a) / (E + a)) with F = X̃ᵀY and
  E = X̃ᵀŶ(W) from one forward pass; no backpropagation, sums that shard and merge.
- auto (the default) picks by problem size and says what it picked (the sidecar's
  `chosen`): plbfgs on classifiers whose per-class d × d curvature blocks fit
  (plbfgs.fits), else L-BFGS in whitened coordinates (train/lbfgs.py); both from the
  feature covariance of one moments pass. On Dask (a supplied pass_fn) it is whitened
  L-BFGS, whose passes are plain full passes.
- plbfgs: one whitened Adam pass, then L-BFGS preconditioned by per-class curvature blocks
  from an in-memory sample of rows (train/plbfgs.py): one full gradient per pass.
- lbfgs: full-batch L-BFGS (scipy, train/lbfgs.py) on the mean cross-entropy + l2/2·‖W‖², one streaming
  pass per function evaluation: the reference optimum of the same model.
- newton: damped Newton steps with the whole Hessian summed in each pass (train/newton.py):
  the optimum in a few passes where (features × classes)² fits in memory.
- sgd, adam: mini-batch steps over the stream (the backpropagation baseline), from the
  given weights or from a random or zero start.
- random-bases, dldr: training in tiny subspaces (train/subspace.py): d random
  directions re-drawn every step, or a d-dimensional basis from the early trajectory
  trained by P-BFGS.

This module is the one dispatcher: it checks the options, restores checkpoints, runs the
method's passes and writes the result; a 2-layer model has its output layer refined on the
frozen hidden features. The methods' shared machinery is in train/core.py.

L2. `l2` is absolute (½·l2·‖W‖²) from Python; `l2_relative=κ` (the CLI's --l2) sets a strength
per feature, λ_i = κ·Var(x̃_i) from a moments pass, which in standardised coordinates is
½κ‖V‖²: scikit-learn's 1/(C·n) on standardised inputs, so κ transfers between data sets.
The default ("auto", the CLI's) is κ = DEFAULT_L2_RELATIVE = 3e-3: the L2 that minimised the
valid cross-entropy of the optimum lay between 1e-3 and 1e-2 on digits, MNIST-5k and
Fashion-MNIST (issue 14), where 1/n (scikit-learn's C = 1) spanned 1.3 to 54 times those.
With held-out data, plbfgs (auto at classifier sizes) chooses κ there instead, among L2_GRID
(largest first, a pass or two each, warm-started, then on with the best: plbfgs.L2Path);
the sidecar says which (`l2_chosen`, and every pass's `l2`).
Subspace methods take the mean of the λ_i.

Held-out data. With `heldout`, the start and every pass are scored on it and the written
model is the pass (or the start) with the lowest held-out loss: refining never makes the
model worse on held-out data than it was.

Memory: W and, per method, one or two more matrices of its size (E and F; or Adam's two
moments); the data streams batch by batch (plbfgs keeps the rows in memory, as float32,
when they fit in a quarter of the memory available: plbfgs.Rows). A checkpoint after every pass makes a killed
run resumable.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data.featurize import Examples
from ..errors import OptionError, StreamfitError
from ..io.files import available_memory
from ..model.weights import Model, load_model, locks_output, sidecar_path, stem_of, write_model
from .core import (BLOCK_BYTES, DEFAULT_LR, FULL_COVARIANCE_LIMIT, Optimizer, PassFn,
                   PassResult, dense_parameters, feature_moments, full_pass,
                   gis_pass, heldout_loss, load_checkpoint, minibatches, remove_checkpoints,
                   save_checkpoint, sgd_pass)
from .grow import Layers, model_header, write_layers
from .lbfgs import Whitening, lbfgs
from .newton import check_size, newton
from .plbfgs import fits as plbfgs_fits
from .plbfgs import plbfgs
from .subspace import SUBSPACE_METHODS, SubspaceOptions, refine_subspace, work_files

DEFAULT_L2_RELATIVE = 3e-3   # κ of l2_relative="auto" (see the module docstring)
L2_GRID = (1e-2, 3e-3, 1e-3)  # κ chosen among on held-out data by plbfgs (l2_relative="auto")
METHODS = ("auto", "plbfgs", "gis", "lbfgs", "newton", "sgd", "adam", *SUBSPACE_METHODS)
# Dense features × classes float64 matrices a method holds at once: the weights, a pass's
# expected and observed sums, the best point; L-BFGS-B's workspace ((2m + 5) of them, m = 10)
# and its own copies of x and g (auto: the same, whitened); Adam's two moments; plbfgs: 20
# pairs of two, three candidate gradients, Adam's moments and the direction (its curvature
# blocks are bounded apart, by plbfgs.BLOCK_LIMIT_BYTES).
DENSE_MATRICES = {"auto": 31, "plbfgs": 52, "gis": 5, "lbfgs": 31, "newton": 5, "sgd": 4, "adam": 6}


def check_memory(method: str, n_features: int, n_classes: int) -> None:
    """Refuse up front, with the figure and an alternative, a refinement whose dense
    matrices would not fit in the memory available now (instead of failing minutes later)."""
    copies = DENSE_MATRICES.get(method, 6)
    need = copies * n_features * n_classes * 8
    free = available_memory()
    if free is None or need <= free:
        return
    cheaper = min((m for m in DENSE_MATRICES if DENSE_MATRICES[m] < copies and m != "newton"),
                  key=DENSE_MATRICES.get, default=None)
    per = n_features * n_classes * 8
    raise StreamfitError(
        f"refine --method {method} holds about {copies} dense {n_features:,} × {n_classes:,} "
        f"float64 matrices ({need / 2**30:.1f} GiB) and {free / 2**30:.1f} GiB is available: "
        + (f"use --method {cheaper} ({DENSE_MATRICES[cheaper] * per / 2**30:.1f} GiB) if that fits, "
           if cheaper and DENSE_MATRICES[cheaper] * per <= free else "")
        + "use a smaller vocabulary or window, or for a language model n-gram statistics "
          "(accumulate --order N, finalize --form blocks), which need no dense weights")


@locks_output
def refine(model: Model, train: Callable[[], Iterator[Examples]], out: str | os.PathLike, *,
           method: str, passes: int = 5, heldout: Callable[[], Iterator[Examples]] | None = None,
           init: str = "weights", lr: float | None = None, l2: float = 0.0,
           l2_relative: float | str | None = None, batch_size: int = 256, seed: int = 0, resume: bool = True,
           on_pass: Callable[[dict], None] | None = None,
           watch: Callable[[dict, np.ndarray], None] | None = None,
           pass_fn: PassFn | None = None, subspace: SubspaceOptions | None = None,
           hessian_fn: Callable | None = None) -> Model:
    """Refine `model` with streaming passes over `train()` (a fresh iterator of Examples
    per call), write the result to `out` and return it. `heldout()` is evaluated after each
    pass for the log; `on_pass(entry)` and `watch(entry, W)` see every log entry (and the
    weights, which they must not modify). Checkpoints beside `out` make a killed run resume
    (resume=True). `pass_fn` computes the full passes of gis (also dldr's gis phase) and
    lbfgs (default: full_pass over train() in this process; a distributed run supplies one
    that sums shards), `hessian_fn` those of newton (newton.HessianFn, the same way).
    `subspace` holds the settings of random-bases and dldr (default: SubspaceOptions()).
    `l2` is an absolute L2 strength; `l2_relative` (κ, or "auto" for DEFAULT_L2_RELATIVE) replaces it by
    κ·Var(x̃_i) per feature, from one moments pass (see the module docstring)."""
    if method not in METHODS:
        raise OptionError(f"method must be one of {METHODS}, not {method!r}")
    if init not in ("weights", "zeros", "random"):
        raise OptionError(f"init must be weights, zeros or random, not {init!r}")
    if passes < 1:
        raise OptionError(f"passes must be at least 1, not {passes}")
    if not (math.isfinite(l2) and l2 >= 0):
        raise OptionError(f"l2 must be a finite number ≥ 0, not {l2}")
    if l2_relative not in (None, "auto") and not (math.isfinite(l2_relative) and l2_relative >= 0):
        raise OptionError(f"l2 must be a finite number ≥ 0, not {l2_relative}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise OptionError(f"the learning rate must be a finite number > 0, not {lr}")
    if method == "newton":
        check_size(model.n_features if model.hidden is None else model.hidden[0].shape[1] + 1,
                   model.n_classes)  # before any weights are allocated
    check_memory(method, model.n_features if model.hidden is None else
                 model.hidden[0].shape[1] + 1, model.n_classes)
    if next((ex for ex in train() if ex.n), None) is None:  # reads up to one batch
        raise StreamfitError("no training examples: the files hold no rows (or no tokens)")
    if model.hidden is not None:  # 2-layer: the output layer, on the frozen hidden features
        return refine_output_layer(model, train, out, heldout=heldout, pass_fn=pass_fn,
                                   method=method, passes=passes, init=init, lr=lr, l2=l2,
                                   l2_relative=l2_relative,
                                   batch_size=batch_size, seed=seed, resume=resume,
                                   on_pass=on_pass, watch=watch, subspace=subspace)
    out = Path(out)
    supplied_passes = pass_fn is not None   # distributed: auto keeps to plain full passes
    if pass_fn is None:
        def pass_fn(w, expected, observed):
            return full_pass(w, train(), expected=expected, observed=observed)
    settings = {"method": method, "passes": passes, "init": init, "lr": lr, "l2": l2,
                "l2_relative": l2_relative, "batch_size": batch_size, "seed": seed,
                "shape": [model.n_features, model.n_classes]}
    if method in SUBSPACE_METHODS:
        subspace = (subspace or SubspaceOptions()).resolved(method, passes)
        settings["subspace"] = subspace.settings(method)
    if init == "weights":
        w = dense_parameters(model)
    elif init == "zeros":
        w = np.zeros((model.n_features, model.n_classes))
    else:
        w = np.random.default_rng(seed).normal(0.0, 0.01, (model.n_features, model.n_classes))
    log: list[dict] = []
    state: dict = {}
    start_pass = 0
    kept: list = [None, None]   # (held-out loss, W) of the best point scored on held-out data
    restored = load_checkpoint(out, settings) if resume else None
    if restored is not None:
        state, arrays = restored
        w, log, start_pass = arrays.pop("w"), state["log"], state["pass"]
        if "kept" in arrays:
            kept[:] = [state["kept_loss"], arrays.pop("kept")]
        state = {"arrays": arrays, **state}
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)
    moments = None
    if l2_relative == 0:
        l2_relative = None   # no penalty: no moments pass for it
    if method == "auto":
        small = model.task == "classify" and w.shape[0] <= FULL_COVARIANCE_LIMIT \
            and plbfgs_fits(*w.shape)
        method = "plbfgs" if small and not supplied_passes else "lbfgs-whitened"
    elif method == "plbfgs" and not (w.shape[0] <= FULL_COVARIANCE_LIMIT and plbfgs_fits(*w.shape)):
        raise StreamfitError(f"plbfgs holds {w.shape[1]:,} blocks of {w.shape[0]:,}² curvature "
                             f"(up to {FULL_COVARIANCE_LIMIT:,} features): use --method auto or lbfgs")
    if method in ("lbfgs-whitened", "plbfgs") or l2_relative is not None:
        moments = feature_moments(train(), w.shape[0],
                                  full=method == "plbfgs" or (method == "lbfgs-whitened"
                                                              and w.shape[0] <= FULL_COVARIANCE_LIMIT),
                                  double=method == "plbfgs")
        if l2_relative is not None:
            kappa = DEFAULT_L2_RELATIVE if l2_relative == "auto" else float(l2_relative)
            l2 = moments.l2_weights(kappa)
            if method in SUBSPACE_METHODS:
                l2 = float(l2.mean())
    l2_grid = [(k, moments.l2_weights(k)) for k in L2_GRID] \
        if method == "plbfgs" and heldout is not None and l2_relative == "auto" else None
    chosen = None
    if method == "lbfgs-whitened":
        whitening = Whitening.of(moments)
        chosen = f"lbfgs, whitened by the {whitening.kind} of the {w.shape[0]:,} features"
    elif settings["method"] == "auto":
        chosen = (f"plbfgs: a whitened Adam pass, then L-BFGS with {w.shape[1]:,} per-class "
                  f"curvature blocks of the {w.shape[0]:,} features")

    def keep(current: np.ndarray, entry: dict) -> None:
        if "heldout_loss" in entry and (kept[0] is None or entry["heldout_loss"] < kept[0]):
            kept[:] = [entry["heldout_loss"], current.copy()]

    # W alone gives an example with no features (x̃ = 0) uniform probabilities; the starting
    # model gave it its class term, which the written model keeps (see below) and held-out
    # scores use
    prior = np.asarray(model.bias, np.float64) if init == "weights" and model.bias is not None \
        else None
    if heldout is not None and kept[1] is None:   # the start: no pass may end worse
        start_loss, start_accuracy = heldout_loss(w, heldout(), prior)
        kept[:] = [start_loss, w.copy()]
        state["start"] = {"heldout_loss": start_loss, "heldout_accuracy": start_accuracy}

    def record(pass_index: int, current: np.ndarray, result: PassResult, extra=None) -> dict:
        entry = {"pass": pass_index, "train_loss": result.mean_loss,
                 "train_accuracy": result.accuracy, "seconds": time.perf_counter() - t0,
                 **(extra or {})}
        if heldout is not None:
            entry["heldout_loss"], entry["heldout_accuracy"] = heldout_loss(current, heldout(),
                                                                            prior)
            keep(current, entry)
        log.append(entry)
        if on_pass:
            on_pass(entry)
        if watch:
            watch(entry, current)
        return entry

    def checkpoint(pass_index: int, current: np.ndarray, arrays: dict, t: int = 0) -> None:
        extra = {"kept": kept[1]} if kept[1] is not None else {}
        save_checkpoint(out, {"settings": settings, "pass": pass_index, "log": log, "t": t,
                              "kept_loss": kept[0], "start": state.get("start")},
                        {"w": current, **extra, **arrays})

    if method in ("lbfgs", "lbfgs-whitened"):
        # A resumed L-BFGS restarts from the checkpointed iterate with fresh curvature pairs.
        w = lbfgs(w, pass_fn, passes - start_pass, l2, record, checkpoint, start_pass,
                  whitening if method == "lbfgs-whitened" else None)
    elif method == "plbfgs":
        w = plbfgs(w, train, passes, l2, moments, record, checkpoint, start_pass, seed,
                   l2_grid=l2_grid, arrays=state.get("arrays"))
    elif method == "newton":
        w = newton(w, train, passes, l2, record, checkpoint, start_pass, state.get("arrays"),
                   hessian_fn)
    elif method in SUBSPACE_METHODS:
        w = refine_subspace(method, w, train, out, subspace, passes=passes, start_pass=start_pass,
                            lr=lr, default_lr=DEFAULT_LR, l2=l2, batch_size=batch_size, seed=seed,
                            arrays=state.get("arrays"), t=state.get("t", 0), record=record,
                            checkpoint=checkpoint, pass_fn=pass_fn)
    else:
        opt = Optimizer(method, lr if lr is not None else DEFAULT_LR.get(method), l2,
                         batch_size, state.get("arrays"), w.shape, state.get("t", 0))
        observed = None
        for p in range(start_pass, passes):
            if method == "gis":
                w, result, observed = gis_pass(w, train, pass_fn, opt, observed)
            else:
                w = w.copy()
                result = sgd_pass(w, minibatches(train, batch_size), opt)
            record(p + 1, w, result)
            checkpoint(p + 1, w, opt.arrays(), opt.t)
    summary = {}
    if l2_grid and log and "l2" in log[-1]:
        summary["l2_chosen"] = log[-1]["l2"]
        if chosen:
            chosen += (f"; l2 {log[-1]['l2']:g} chosen on held-out among "
                       f"{', '.join(f'{k:g}' for k in L2_GRID)}")
    if chosen:
        summary["chosen"] = chosen
    if kept[1] is not None:   # the lowest held-out loss seen, the start included
        w = kept[1]
        scored = [e for e in log if "heldout_loss" in e]
        best = min(scored, key=lambda e: e["heldout_loss"]) if scored else None
        summary["start"] = state.get("start")
        summary["kept_pass"] = best["pass"] if best and best["heldout_loss"] <= kept[0] else 0
    header = {**{k: model.meta.get(k) for k in ("task", "window", "n_classes", "n_features",
                                                   "vocab_size", "statistics", "encoding")
                 if k in model.meta},
              "task": model.task, "window": model.window, "n_classes": model.n_classes,
              "n_features": model.n_features, "form": "refined", "smoothing": None,
              "tau": 1.0, "beta": 0.0, "dtype": "float32", "calibration": {},
              "refinement": {**settings, **summary, "log": log, "from": model.meta.get("form")}}
    header.setdefault("statistics", {"n_examples": 0, "nnz": 0})
    # W − 1·bᵀ with bias b is the same model wherever x̃ sums to 1, and keeps the class term
    # where x̃ = 0.
    if prior is not None:
        w = w - prior[None, :]
    rows = max(1, BLOCK_BYTES // (4 * max(model.n_classes, 1)))
    path = write_model(out, header, bias=prior, dense={"dtype": "float32", "blocks": (
        (lo, w[lo:lo + rows].astype(np.float32)) for lo in range(0, w.shape[0], rows))})
    remove_checkpoints(out)
    for p in work_files(out):
        p.unlink(missing_ok=True)
    return load_model(path)


def _hidden_examples(model: Model, batches: Iterable[Examples]) -> Iterator[Examples]:
    """[h; 1] of each example as dense CSR rows: the output layer's inputs."""
    for ex in batches:
        b = np.hstack([model.hidden_features(ex), np.ones((ex.n, 1))])
        width = b.shape[1]
        yield Examples(np.arange(0, ex.n * width + 1, width, dtype=np.int64),
                       np.tile(np.arange(width, dtype=np.int64), ex.n), b.ravel(), ex.targets)


def refine_output_layer(model: Model, train: Callable[[], Iterator[Examples]],
                        out: str | os.PathLike, *, heldout=None, pass_fn=None, **options) -> Model:
    """refine() of a 2-layer model: the output layer (a convex problem) refined on the frozen
    hidden features [h; 1], written as a 2-layer model with the same hidden layer. The
    single-layer intermediate (and refine's checkpoints) live at OUT.output.* until done."""
    subspace = options.get("subspace")
    if options.get("method") == "gis" or (options.get("method") == "dldr" and subspace is not None
                                          and subspace.phase == "gis"):
        raise StreamfitError("gis needs inputs that sum to 1, and the hidden features of a "
                             "2-layer model do not: refine it with lbfgs, newton, sgd, adam, "
                             "random-bases or dldr with --phase sgd or adam")
    if pass_fn is not None:
        raise StreamfitError("refining a 2-layer model passes over its hidden features, which "
                             "the distributed pass function does not compute: run it without "
                             "--scheduler / --dask-workers")
    layers = Layers.of(model)
    view = Model(task="classify", n_classes=model.n_classes, n_features=layers.width + 1,
                 tau=1.0, dense=layers.W, meta={"form": model.meta.get("form")})
    inner = Path(f"{stem_of(out)}.output.npy")
    single = refine(view, lambda: _hidden_examples(model, train()), inner,
                    heldout=(lambda: _hidden_examples(model, heldout())) if heldout else None,
                    **options)
    refined = Layers(layers.A, layers.a0, np.asarray(single.dense, np.float64))
    keep = {k: v for k, v in model.meta.items()
            if k in ("task", "window", "vocab_size", "growth")}
    write_layers(out, refined, model_header(model.task, model.window, model.n_features,
                                       model.n_classes, refined,
                                       {**keep, "form": "refined",
                                        "refinement": single.meta["refinement"]}))
    for p in (inner, sidecar_path(inner)):
        p.unlink(missing_ok=True)
    return load_model(sidecar_path(out))
