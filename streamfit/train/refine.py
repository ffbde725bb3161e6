"""Refining: better weights by streaming passes over training data.

Every method works on one dense matrix W (features × classes) with logits = x̃ · W. A
model's tau and per-class bias fold into it, since each x̃ sums to 1:
x̃ · (tau·W + 1·biasᵀ) = tau·(x̃·W) + bias. Sparse explicit solutions fold the same way
(their missing per-row constant cancels in the softmax). The refined model is written with
the bias unfolded again, so that examples with no features keep the class term.

- gis: Generalised Iterative Scaling, W ← W + log((F + a) / (E + a)) with F = X̃ᵀY and
  E = X̃ᵀŶ(W) from one forward pass; no backpropagation, sums that shard and merge.
- lbfgs: full-batch L-BFGS (scipy) on the mean cross-entropy + l2/2·‖W‖², one streaming
  pass per function evaluation: the reference optimum of the same model.
- newton: damped Newton steps with the whole Hessian summed in each pass (newton.py): the
  optimum in a few passes where (features × classes)² fits in memory.
- sgd, adam: mini-batch steps over the stream (the backpropagation baseline), from the
  given weights or from a random or zero start.
- random-bases, dldr: training in tiny subspaces (streamfit/subspace.py): d random
  directions re-drawn every step, or a d-dimensional basis from the early trajectory
  trained by P-BFGS.

Memory: W and, per method, one or two more matrices of its size (E and F; or Adam's two
moments); the data streams batch by batch. A checkpoint after every pass makes a killed
run resumable.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from ..errors import StreamfitError
from ..data.featurize import Examples, distinct_inputs, slice_examples
from ..io.files import atomic_path, fault_point, write_json
from ..model.weights import Model, load_model, write_model
from .subspace import SUBSPACE_METHODS, SubspaceOptions, refine_subspace, work_files

METHODS = ("gis", "lbfgs", "newton", "sgd", "adam", *SUBSPACE_METHODS)
DENSE_LIMIT_BYTES = 8 << 30
BLOCK_BYTES = 16 << 20
GIS_SMOOTHING = 1e-6
# Inputs sum to 1, so gradients are small: steps must be large. Tuned on the digits
# valid split (tools/bench_quality.py sweeps them per dataset).
DEFAULT_LR = {"sgd": 300.0, "adam": 0.3, "random-bases": 100.0}


def dense_parameters(model: Model) -> np.ndarray:
    """tau·W + 1·biasᵀ as a float64 matrix, each row centred: the model's logits are x̃
    times it, up to a per-example constant that cancels in the softmax (so l2 does not pay
    for per-row constants, which are large in explicit solutions)."""
    size = model.n_features * model.n_classes * 8
    if size > DENSE_LIMIT_BYTES:
        raise StreamfitError(f"refining needs the dense {model.n_features:,} × "
                             f"{model.n_classes:,} weights in memory ({size / 2**30:.1f} GiB): "
                             f"too large; use a smaller vocabulary or window")
    if model.dense is not None:
        w = model.tau * np.asarray(model.dense, dtype=np.float64)
    else:
        indptr, indices, data = model.sparse
        w = model.tau * sp.csr_matrix((np.asarray(data, np.float64), indices, indptr),
                                      shape=(model.n_features, model.n_classes)).toarray()
    if model.bias is not None:
        w += np.asarray(model.bias, dtype=np.float64)[None, :]
    w -= w.mean(axis=1, keepdims=True)
    return w


def _csr(ex: Examples, n_features: int) -> sp.csr_matrix:
    return sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, n_features))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class PassMeans:
    """Means of a pass's sums `n`, `loss` and `correct` (shared by the passes' sum types)."""

    n: int
    loss: float
    correct: int

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.n, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n, 1)


@dataclass
class PassResult(PassMeans):
    """Sums over one streaming pass (divide by n for means)."""

    n: int = 0
    loss: float = 0.0
    correct: int = 0
    expected: np.ndarray | None = None   # E = X̃ᵀŶ
    observed: np.ndarray | None = None   # F = X̃ᵀY

    def __add__(self, other: "PassResult") -> "PassResult":
        """Sums of two shards of a pass (for passes split over processes or machines)."""
        def add(a, b):
            return None if a is None else a + b
        return PassResult(self.n + other.n, self.loss + other.loss, self.correct + other.correct,
                          add(self.expected, other.expected), add(self.observed, other.observed))


def full_pass(w: np.ndarray, batches: Iterable[Examples], *, expected: bool = True,
              observed: bool = False) -> PassResult:
    """Loss, accuracy and (optionally) E = X̃ᵀŶ and F = X̃ᵀY over every batch. Identical
    inputs (a bigram's contexts) are scored once and weighted by their count."""
    d, c = w.shape
    out = PassResult(expected=np.zeros((d, c)) if expected else None,
                     observed=np.zeros((d, c)) if observed else None)
    rows_per_block = max(1, BLOCK_BYTES // (8 * c))
    for ex in batches:
        keep = ex.targets >= 0
        if not keep.all():
            raise StreamfitError("refining needs a target for every example (labels missing)")
        inputs, inverse = distinct_inputs(ex)
        weight = np.bincount(inverse, minlength=inputs.n).astype(np.float64)
        for lo in range(0, inputs.n, rows_per_block):
            hi = min(inputs.n, lo + rows_per_block)
            sub = slice_examples(inputs, lo, hi)
            x = _csr(sub, d)
            logp = _log_softmax(np.asarray(x @ w))
            members = np.flatnonzero((inverse >= lo) & (inverse < hi))
            u, y = inverse[members] - lo, ex.targets[members]
            out.loss -= float(logp[u, y].sum())
            out.correct += int(np.sum(logp.argmax(axis=1)[u] == y))
            if expected:
                out.expected += np.asarray(x.T @ (np.exp(logp) * weight[lo:hi, None]))
        if observed:
            rows = np.repeat(np.arange(ex.n), np.diff(ex.indptr))
            np.add.at(out.observed, (ex.indices, ex.targets[rows]), ex.values)
        out.n += ex.n
    return out


PassFn = Callable[[np.ndarray, bool, bool], PassResult]
"""(w, expected, observed) -> the sums of one full pass over the training data."""


def heldout_loss(w: np.ndarray, batches: Iterable[Examples]) -> tuple[float, float]:
    r = full_pass(w, batches, expected=False)
    return r.mean_loss, r.accuracy


@dataclass
class Refinement:
    """A refinement run's settings and its log (one entry per pass or step)."""

    method: str
    passes: int
    lr: float | None = None
    l2: float = 0.0
    batch_size: int = 256
    seed: int = 0
    log: list[dict] = field(default_factory=list)


def _checkpoint_paths(out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("") if out.suffix in (".npy", ".json") else out
    return Path(f"{stem}.ckpt.npy"), Path(f"{stem}.ckpt.json")


def _save_checkpoint(out: Path, state: dict, arrays: dict[str, np.ndarray]) -> None:
    npy, meta = _checkpoint_paths(out)
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json(meta, state)
    fault_point("after_checkpoint")


def _load_checkpoint(out: Path, settings: dict) -> tuple[dict, dict] | None:
    npy, meta = _checkpoint_paths(out)
    if not (npy.exists() and meta.exists()):
        return None
    state = json.loads(meta.read_text())
    if state.get("settings") != settings:
        raise StreamfitError(f"{meta} is a checkpoint of another refinement "
                             f"({state.get('settings')}); delete it or use the same options")
    with np.load(npy) as z:
        return state, {k: z[k] for k in z.files}


def refine(model: Model, train: Callable[[], Iterator[Examples]], out: str | os.PathLike, *,
           method: str, passes: int = 5, heldout: Callable[[], Iterator[Examples]] | None = None,
           init: str = "weights", lr: float | None = None, l2: float = 0.0,
           batch_size: int = 256, seed: int = 0, resume: bool = True,
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
    `subspace` holds the settings of random-bases and dldr (default: SubspaceOptions())."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if init not in ("weights", "zeros", "random"):
        raise ValueError(f"init must be weights, zeros or random, not {init!r}")
    if passes < 1:
        raise ValueError(f"passes must be at least 1, not {passes}")
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number ≥ 0, not {l2}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a finite number > 0, not {lr}")
    if method == "newton":
        from .newton import check_size
        check_size(model.n_features if model.hidden is None else model.hidden[0].shape[1] + 1,
                   model.n_classes)  # before any weights are allocated
    if next((ex for ex in train() if ex.n), None) is None:  # reads up to one batch
        raise StreamfitError("no training examples: the files hold no rows (or no tokens)")
    if model.hidden is not None:  # 2-layer: the output layer, on the frozen hidden features
        from .grow import refine_output_layer
        return refine_output_layer(model, train, out, heldout=heldout, pass_fn=pass_fn,
                                   method=method, passes=passes, init=init, lr=lr, l2=l2,
                                   batch_size=batch_size, seed=seed, resume=resume,
                                   on_pass=on_pass, watch=watch, subspace=subspace)
    out = Path(out)
    if pass_fn is None:
        def pass_fn(w, expected, observed):
            return full_pass(w, train(), expected=expected, observed=observed)
    settings = {"method": method, "passes": passes, "init": init, "lr": lr, "l2": l2,
                "batch_size": batch_size, "seed": seed, "shape": [model.n_features, model.n_classes]}
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
    restored = _load_checkpoint(out, settings) if resume else None
    if restored is not None:
        state, arrays = restored
        w, log, start_pass = arrays.pop("w"), state["log"], state["pass"]
        state = {"arrays": arrays, **state}
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)

    def record(pass_index: int, current: np.ndarray, result: PassResult, extra=None) -> None:
        entry = {"pass": pass_index, "train_loss": result.mean_loss,
                 "train_accuracy": result.accuracy, "seconds": time.perf_counter() - t0,
                 **(extra or {})}
        if heldout is not None:
            entry["heldout_loss"], entry["heldout_accuracy"] = heldout_loss(current, heldout())
        log.append(entry)
        if on_pass:
            on_pass(entry)
        if watch:
            watch(entry, current)

    def checkpoint(pass_index: int, current: np.ndarray, arrays: dict, t: int = 0) -> None:
        _save_checkpoint(out, {"settings": settings, "pass": pass_index, "log": log, "t": t},
                         {"w": current, **arrays})

    if method == "lbfgs":
        # A resumed L-BFGS restarts from the checkpointed iterate with fresh curvature pairs.
        w = _lbfgs(w, pass_fn, passes - start_pass, l2, record, checkpoint, start_pass)
    elif method == "newton":
        from .newton import newton
        w = newton(w, train, passes, l2, record, checkpoint, start_pass, state.get("arrays"),
                   hessian_fn)
    elif method in SUBSPACE_METHODS:
        w = refine_subspace(method, w, train, out, subspace, passes=passes, start_pass=start_pass,
                            lr=lr, default_lr=DEFAULT_LR, l2=l2, batch_size=batch_size, seed=seed,
                            arrays=state.get("arrays"), t=state.get("t", 0), record=record,
                            checkpoint=checkpoint, pass_fn=pass_fn)
    else:
        step = {"gis": _gis_pass, "sgd": _sgd_pass, "adam": _sgd_pass}[method]
        opt = _Optimizer(method, lr if lr is not None else DEFAULT_LR.get(method), l2,
                         batch_size, state.get("arrays"), w.shape, state.get("t", 0))
        observed = None
        for p in range(start_pass, passes):
            w, result, observed = step(w, train, pass_fn, opt, observed)
            record(p + 1, w, result)
            checkpoint(p + 1, w, opt.arrays(), opt.t)
    header = {**{k: model.meta.get(k) for k in ("task", "window", "n_classes", "n_features",
                                                   "vocab_size", "statistics") if k in model.meta},
              "task": model.task, "window": model.window, "n_classes": model.n_classes,
              "n_features": model.n_features, "form": "refined", "smoothing": None,
              "tau": 1.0, "beta": 0.0, "dtype": "float32", "calibration": {},
              "refinement": {**settings, "log": log, "from": model.meta.get("form")}}
    header.setdefault("statistics", {"n_examples": 0, "nnz": 0})
    # W alone gives an example with no features (x̃ = 0) uniform probabilities; the starting
    # model gave it its class term. W − 1·bᵀ with bias b is the same model wherever x̃ sums
    # to 1, and keeps that class term where x̃ = 0.
    prior = np.asarray(model.bias, np.float64) if init == "weights" and model.bias is not None \
        else None
    if prior is not None:
        w = w - prior[None, :]
    rows = max(1, BLOCK_BYTES // (4 * max(model.n_classes, 1)))
    path = write_model(out, header, bias=prior, dense={"dtype": "float32", "blocks": (
        (lo, w[lo:lo + rows].astype(np.float32)) for lo in range(0, w.shape[0], rows))})
    for p in (*_checkpoint_paths(out), *work_files(out)):
        p.unlink(missing_ok=True)
    return load_model(path)


def _gis_pass(w, train, pass_fn, opt, observed):
    """One GIS step; F (constant) is gathered on the first pass."""
    r = pass_fn(w, True, observed is None)
    if observed is None:
        observed = r.observed
    a = GIS_SMOOTHING
    w = w + np.log((observed + a) / (r.expected + a))
    return w, r, observed


class _Optimizer:
    """SGD or Adam over mini-batches, updating only the rows a batch touches."""

    def __init__(self, method, lr, l2, batch_size, arrays, shape, t):
        self.method, self.lr, self.l2, self.batch_size, self.t = method, lr, l2, batch_size, t
        if method == "adam":
            arrays = arrays or {}
            self.m = arrays.get("m", np.zeros(shape))
            self.v = arrays.get("v", np.zeros(shape))

    def arrays(self) -> dict:
        return {"m": self.m, "v": self.v} if self.method == "adam" else {}

    def step(self, w: np.ndarray, ex: Examples) -> None:
        d, c = w.shape
        rows, local = np.unique(ex.indices, return_inverse=True)
        x = sp.csr_matrix((ex.values, local, ex.indptr), shape=(ex.n, rows.size))
        p = np.exp(_log_softmax(np.asarray(x @ w[rows])))
        p[np.arange(ex.n), ex.targets] -= 1.0
        g = np.asarray(x.T @ p) / ex.n + self.l2 * w[rows]
        self.t += 1
        if self.method == "sgd":
            w[rows] -= self.lr * g
            return
        b1, b2, eps = 0.9, 0.999, 1e-8
        self.m[rows] = b1 * self.m[rows] + (1 - b1) * g
        self.v[rows] = b2 * self.v[rows] + (1 - b2) * g * g
        mhat = self.m[rows] / (1 - b1 ** self.t)
        vhat = self.v[rows] / (1 - b2 ** self.t)
        w[rows] -= self.lr * mhat / (np.sqrt(vhat) + eps)


def _sgd_pass(w, train, pass_fn, opt, observed):
    """One epoch of mini-batch steps; the loss logged is the mean over the epoch's batches
    before each step (the usual running training loss)."""
    r = PassResult()
    w = w.copy()
    for ex in train():
        for lo in range(0, ex.n, opt.batch_size):
            sub = slice_examples(ex, lo, min(ex.n, lo + opt.batch_size))
            before = full_pass(w, [sub], expected=False)
            r.n += before.n
            r.loss += before.loss
            r.correct += before.correct
            opt.step(w, sub)
    return w, r, observed


class _PassesSpent(Exception):
    """Raised inside scipy's objective when the passes asked for are spent."""


def _lbfgs(w, pass_fn, passes, l2, record, checkpoint, start_pass):
    """scipy's L-BFGS-B; every function evaluation is one streaming pass, exactly `passes`
    of them at most. Returns the best point evaluated."""
    if passes <= 0:
        return w
    shape = w.shape
    count = [start_pass]
    observed: list[np.ndarray] = []
    best: list = [np.inf, w]

    def fun(flat):
        if count[0] - start_pass == passes:
            raise _PassesSpent  # scipy may evaluate once more than maxfun
        cur = flat.reshape(shape)
        r = pass_fn(cur, True, not observed)
        if not observed:
            observed.append(r.observed)
        grad = (r.expected - observed[0]) / r.n + l2 * cur
        objective = r.mean_loss + 0.5 * l2 * float((cur * cur).sum())
        count[0] += 1
        if objective < best[0]:
            best[:] = [objective, cur.copy()]
        record(count[0], cur, r, {"objective": objective})
        checkpoint(count[0], cur, {})
        return objective, grad.ravel()

    try:
        scipy.optimize.minimize(fun, w.ravel(), jac=True, method="L-BFGS-B",
                                options={"maxfun": passes, "maxiter": passes, "gtol": 1e-10,
                                         "ftol": 1e-14})
    except _PassesSpent:
        pass
    return best[1]
