"""The machinery every training method shares: dense parameters, streaming passes and
their sums, checkpoints, and the first-order steps (GIS, SGD, Adam) over mini-batches.

Every method works on one dense matrix W (features × classes) with logits = x̃ · W; each
method module imports this one, and none imports another method.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp
from scipy.special import log_softmax

from ..data.featurize import Examples, distinct_inputs, slice_examples
from ..errors import FormatError, StreamfitError
from ..io.files import atomic_path, fault_point, stale_temps, write_json
from ..model.weights import Model, stem_of

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
        if model.row_step is not None:  # 8-bit codes (`streamfit shrink`): decoded
            w *= np.asarray(model.row_step, np.float64)[:, None]
    else:
        indptr, indices, data = model.sparse
        w = model.tau * sp.csr_matrix((np.asarray(data, np.float64), indices, indptr),
                                      shape=(model.n_features, model.n_classes)).toarray()
    if model.bias is not None:
        w += np.asarray(model.bias, dtype=np.float64)[None, :]
    w -= w.mean(axis=1, keepdims=True)
    return w


def example_matrix(ex: Examples, n_features: int) -> sp.csr_matrix:
    """The examples' inputs as an n × n_features CSR matrix (no copy)."""
    return sp.csr_matrix((ex.values, ex.indices, ex.indptr), shape=(ex.n, n_features))


def minibatches(train: Callable[[], Iterator[Examples]], batch_size: int) -> Iterator[Examples]:
    """The mini-batches of one pass: each record batch cut into slices of batch_size."""
    for ex in train():
        for lo in range(0, ex.n, batch_size):
            yield slice_examples(ex, lo, min(ex.n, lo + batch_size))


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
              observed: bool = False, empty_logits: np.ndarray | None = None) -> PassResult:
    """Loss, accuracy and (optionally) E = X̃ᵀŶ and F = X̃ᵀY over every batch. Identical
    inputs (a bigram's contexts) are scored once and weighted by their count. Examples with
    no features get `empty_logits` when given (the written model's class term), else 0."""
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
            x = example_matrix(sub, d)
            logits = np.asarray(x @ w)
            if empty_logits is not None:
                logits[np.diff(sub.indptr) == 0] = empty_logits
            logp = log_softmax(logits, axis=1)
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


def heldout_loss(w: np.ndarray, batches: Iterable[Examples],
                 empty_logits: np.ndarray | None = None) -> tuple[float, float]:
    r = full_pass(w, batches, expected=False, empty_logits=empty_logits)
    return r.mean_loss, r.accuracy


def checkpoint_paths(out: Path) -> tuple[Path, Path]:
    stem = stem_of(out)
    return Path(f"{stem}.ckpt.npy"), Path(f"{stem}.ckpt.json")


def remove_checkpoints(out: Path) -> None:
    """The checkpoint files of `out` and what killed writes of them left (their temporary
    names: the output's lock is held, so no live writer's)."""
    for path in checkpoint_paths(out):
        for p in (path, *stale_temps(path)):
            p.unlink(missing_ok=True)


STATE_KEY = "__state__"  # the checkpoint state inside its arrays' file


def save_checkpoint(out: Path, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """The arrays and the state (pass, log, settings) in one atomic file, OUT.ckpt.npy (the
    state also in OUT.ckpt.json, for people and tools): two files renamed one after the
    other could be killed in between, and a resume then paired new weights with the previous
    pass's state (one pass run twice)."""
    npy, meta = checkpoint_paths(out)
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, **{STATE_KEY: np.frombuffer(
                json.dumps(state, sort_keys=True).encode(), dtype=np.uint8)})
    fault_point("mid_checkpoint")
    write_json(meta, state)
    fault_point("after_checkpoint")


def load_checkpoint(out: Path, settings: dict) -> tuple[dict, dict] | None:
    npy, meta = checkpoint_paths(out)
    if not npy.exists():
        return None
    try:
        with np.load(npy) as z:
            arrays = {k: z[k] for k in z.files if k != STATE_KEY}
            if STATE_KEY in z.files:
                state = json.loads(z[STATE_KEY].tobytes())
            elif meta.exists():  # a checkpoint of an earlier version: the state beside it
                state = json.loads(meta.read_text())
            else:
                return None
        if not isinstance(state, dict):
            raise ValueError("the state is not a JSON object")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{npy} is a damaged checkpoint ({exc}); run again with --restart "
                          f"to start the refinement over") from None
    if state.get("settings") != settings:
        raise StreamfitError(f"{meta} is a checkpoint of another refinement "
                             f"({state.get('settings')}); delete it or use the same options")
    return state, arrays


def gis_pass(w, train, pass_fn, opt, observed):
    """One GIS step; F (constant) is gathered on the first pass."""
    r = pass_fn(w, True, observed is None)
    if observed is None:
        observed = r.observed
    a = GIS_SMOOTHING
    w = w + np.log((observed + a) / (r.expected + a))
    return w, r, observed


class Optimizer:
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
        p = np.exp(log_softmax(np.asarray(x @ w[rows]), axis=1))
        p[np.arange(ex.n), ex.targets] -= 1.0
        l2 = self.l2[rows] if np.ndim(self.l2) else self.l2
        g = np.asarray(x.T @ p) / ex.n + l2 * w[rows]
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


def sgd_pass(w: np.ndarray, batches: Iterable[Examples], opt: Optimizer,
             on_step: Callable[[], None] | None = None) -> PassResult:
    """One epoch of mini-batch steps on w, in place; the loss summed is each batch's before
    its step (the usual running training loss). on_step() runs after every step."""
    r = PassResult()
    for ex in batches:
        before = full_pass(w, [ex], expected=False)
        r.n += before.n
        r.loss += before.loss
        r.correct += before.correct
        opt.step(w, ex)
        if on_step:
            on_step()
    return r


FULL_COVARIANCE_LIMIT = 4096  # features: up to this many, a moments pass also sums X̃ᵀX̃


@dataclass
class FeatureMoments:
    """Per-feature moments of x̃ from one pass (no softmax): n, the mean, E[x̃²] and, up to
    FULL_COVARIANCE_LIMIT features, the second-moment matrix E[x̃ x̃ᵀ]."""

    n: int
    mean: np.ndarray
    square: np.ndarray
    gram: np.ndarray | None = None

    @property
    def variance(self) -> np.ndarray:
        return np.clip(self.square - self.mean * self.mean, 0.0, None)

    def l2_weights(self, kappa: float) -> np.ndarray:
        """The per-feature L2 strength λ_i = κ·Var(x̃_i) as a (d, 1) column: the penalty
        ½ Σ_i λ_i ‖W_i‖² is κ/2 ‖V‖² in the coordinates of standardised features
        (V_i = sd_i·W_i), so κ transfers between data sets as scikit-learn's 1/(C·n) does."""
        return (kappa * self.variance)[:, None]


def feature_moments(batches: Iterable[Examples], n_features: int,
                    full: bool | None = None, double: bool = False) -> FeatureMoments:
    """FeatureMoments of the examples' x̃ (the full second moment when `full`, by default
    when there are at most FULL_COVARIANCE_LIMIT features). The second moment of dense
    batches is summed in float32 BLAS per batch (a preconditioner needs no more), in float64
    across batches; in float64 throughout with `double` (to tell the covariance's exact null
    directions, such as constant sums, from small variances). (A row sample is not enough:
    on Fashion-MNIST a quarter of the rows underestimated the small eigenvalues, and the
    first whitened step overshot.)"""
    d = n_features
    full = d <= FULL_COVARIANCE_LIMIT if full is None else full
    total, square = np.zeros(d), np.zeros(d)
    gram = np.zeros((d, d)) if full else None
    n = 0
    for ex in batches:
        if ex.n == 0:
            continue
        values = np.asarray(ex.values, np.float64)
        total += np.bincount(ex.indices, weights=values, minlength=d)
        square += np.bincount(ex.indices, weights=values * values, minlength=d)
        if full:
            x = example_matrix(Examples(ex.indptr, ex.indices, values, ex.targets), d)
            if x.nnz > 0.1 * x.shape[0] * d:
                dense = x.toarray() if double else x.toarray().astype(np.float32)
                gram += dense.T @ dense
            else:
                gram += np.asarray((x.T @ x).todense())
        n += ex.n
    if n == 0:
        raise StreamfitError("no training examples: the files hold no rows (or no tokens)")
    return FeatureMoments(n, total / n, square / n, None if gram is None else gram / n)


def l2_penalty(l2, w: np.ndarray) -> tuple[float, np.ndarray]:
    """½ Σ λ_i ‖W_i‖² and its gradient, for a scalar l2 or a (d, 1) column of them."""
    lw = l2 * w
    return 0.5 * float((lw * w).sum()), lw
