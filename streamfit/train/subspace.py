"""Training in tiny subspaces (METHODS.md §3–4): random bases descent, and DLDR + P-BFGS.

Both move W (features × classes, logits = x̃ · W, as in refine.py) along few directions.

- random-bases: every step draws d directions φ_i with i.i.d. N(0, 1/D_c) entries per
  compartment (a row block of W holding D_c parameters; d split over compartments by size),
  takes the mini-batch gradient's coordinates c_i = φ_iᵀg and steps
  W ← W − lr·(D_c/d_c)·Σ c_i φ_i. The factor D_c/d_c makes the expected step lr·g, SGD's,
  so --lr lives on SGD's scale. Directions are never stored: a stateless generator
  Philox(key=(seed, step), counter=(0, 0, worker, compartment)) regenerates them block by
  block (generate→dot for the coordinates, generate again→axpy for the update), so memory
  is O(D + d). With N shared-seed workers, batch i goes to worker i mod N; each worker
  sends only its d coordinates (plus its batch's loss, count and hits) per step, and every
  replica regenerates everyone's directions and applies all N updates in worker order, so
  the replicas stay bit-identical to one process simulating the same schedule.
- dldr: an initial phase (sgd, adam or gis passes) saves t snapshots of W (the start
  first, the end of the phase last) as .npy files beside the output; the t×t Gram matrix
  of the centred snapshots is summed over blocks of parameters read from those files
  (memory-mapped), its top d eigenvectors give d orthonormal directions P (a memory-mapped
  .npy), and P-BFGS trains the coordinates c of W = θ₀ + Pᵀc (θ₀ = the last snapshot) per
  mini-batch: projected gradient ĝ = P g, BFGS inverse-Hessian update (skipped when
  yᵀs ≤ 1e-20), direction −Hĝ, Armijo backtracking on the same batch. Each batch reads
  only the rows of θ₀ and P that it touches.

Work files (OUT.dldr.*) live beside the output like the checkpoints and go with them.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp
from scipy.special import log_softmax

from ..defaults import PHASE_METHODS, SUBSPACE_METHODS, SubspaceOptions  # noqa: F401 (their home before)
from ..errors import StreamfitError
from ..data.featurize import Examples, distinct_inputs
from ..io.files import atomic_path, create_memmap, fsync_path, temp_name
from ..model.weights import stem_of
from .core import Optimizer, PassResult, gis_pass, minibatches, sgd_pass

BLOCK_ELEMS = 1 << 20          # normals (or snapshot entries) handled at a time: 8 MiB
CURVATURE_GUARD = 1e-20        # BFGS update skipped when yᵀs is not above this
ARMIJO_SIGMA, ARMIJO_SHRINK, ARMIJO_TRIALS = 0.4, 0.4, 20


# --- shared pieces ----------------------------------------------------------------------------
class _Batch:
    """A mini-batch over the rows of W it touches, identical inputs (a bigram's contexts)
    scored once and weighted by their count."""

    def __init__(self, ex: Examples):
        if (ex.targets < 0).any():
            raise StreamfitError("refining needs a target for every example (labels missing)")
        inputs, self.inverse = distinct_inputs(ex)
        self.rows, local = np.unique(inputs.indices, return_inverse=True)
        self.x = sp.csr_matrix((inputs.values, local.ravel(), inputs.indptr),
                               shape=(inputs.n, self.rows.size))
        self.counts = np.bincount(self.inverse, minlength=inputs.n).astype(np.float64)
        self.targets, self.n = ex.targets, ex.n

    def loss(self, w_rows: np.ndarray) -> tuple[float, int, np.ndarray]:
        """Summed loss, correct count and the residual R (distinct inputs × classes) with
        gradient xᵀR/n, at W's rows w_rows."""
        logp = log_softmax(np.asarray(self.x @ w_rows), axis=1)
        loss = -float(logp[self.inverse, self.targets].sum())
        correct = int(np.sum(logp.argmax(axis=1)[self.inverse] == self.targets))
        resid = np.exp(logp) * self.counts[:, None]
        np.add.at(resid, (self.inverse, self.targets), -1.0)
        return loss, correct, resid

    def gradient(self, resid: np.ndarray) -> np.ndarray:
        return np.asarray(self.x.T @ resid) / self.n


# --- random bases -----------------------------------------------------------------------------
def compartments_of(n_rows: int, n_cols: int, dims: int, compartments: int) -> list[tuple[int, int, int]]:
    """(first row, end row, directions) per compartment: row blocks of W as equal as
    possible, d split in proportion to their sizes (largest remainder, at least 1 each)."""
    k = min(compartments, n_rows)
    edges = np.linspace(0, n_rows, k + 1).round().astype(int)
    sizes = np.diff(edges) * n_cols
    share = dims * sizes / sizes.sum()
    d = np.maximum(1, np.floor(share).astype(int))
    while d.sum() > dims:
        d[np.argmax(d - share)] -= 1
    while d.sum() < dims:
        d[np.argmax(share - d)] += 1
    return [(int(edges[i]), int(edges[i + 1]), int(d[i])) for i in range(k)]


def direction_stream(seed: int, step: int, worker: int, compartment: int) -> np.random.Generator:
    """The stateless generator of one step's directions for one worker and compartment.
    The directions of a compartment with D_c parameters are the first D_c·d_c normals,
    parameter-major (parameter j, direction i at j·d_c + i), divided by √D_c."""
    return np.random.Generator(np.random.Philox(key=[seed, step], counter=[0, 0, worker, compartment]))


def coordinates(g: np.ndarray, d: int, gen: np.random.Generator) -> np.ndarray:
    """c_i = φ_iᵀg for the d directions of `gen` over the flat vector g."""
    out = np.zeros(d)
    rows = max(1, BLOCK_ELEMS // d)
    for lo in range(0, g.size, rows):
        hi = min(g.size, lo + rows)
        out += g[lo:hi] @ gen.standard_normal((hi - lo, d))
    return out / np.sqrt(g.size)


def add_directions(w: np.ndarray, coef: np.ndarray, gen: np.random.Generator) -> None:
    """w += Σ_i coef_i φ_i in place, for the directions of `gen` over the flat vector w."""
    d = coef.size
    rows = max(1, BLOCK_ELEMS // d)
    coef = coef / np.sqrt(w.size)
    for lo in range(0, w.size, rows):
        hi = min(w.size, lo + rows)
        w[lo:hi] += gen.standard_normal((hi - lo, d)) @ coef


class RandomBases:
    """Random bases descent over mini-batches, by N shared-seed workers (see the module)."""

    def __init__(self, shape: tuple[int, int], opts: SubspaceOptions, lr: float, l2: float,
                 seed: int, t: int):
        if seed < 0:
            raise StreamfitError(f"random bases need a non-negative --seed, not {seed}")
        self.opts, self.lr, self.l2, self.seed, self.t = opts, lr, l2, seed, t
        self.parts = compartments_of(shape[0], shape[1], opts.dims, opts.compartments)
        self.n_cols = shape[1]

    @property
    def message_size(self) -> int:
        """Numbers a worker sends per step: its loss, count, hits and d coordinates."""
        return 3 + sum(d for _, _, d in self.parts)

    def _key_step(self) -> int:
        return self.t if self.opts.redraw else 0

    def message(self, w: np.ndarray, ex: Examples | None, worker: int) -> np.ndarray:
        """What a worker sends for its batch: [summed loss, n, correct, coordinates...]."""
        msg = np.zeros(self.message_size)
        if ex is None or ex.n == 0:
            return msg
        batch = _Batch(ex)
        loss, correct, resid = batch.loss(w[batch.rows])
        g = np.zeros_like(w)
        g[batch.rows] = batch.gradient(resid)
        if self.l2:
            g += self.l2 * w
        msg[:3] = loss, ex.n, correct
        at = 3
        for comp, (lo, hi, d) in enumerate(self.parts):
            gen = direction_stream(self.seed, self._key_step(), worker, comp)
            msg[at:at + d] = coordinates(g[lo:hi].reshape(-1), d, gen)
            at += d
        return msg

    def apply(self, w: np.ndarray, messages: list[np.ndarray]) -> None:
        """Every worker's update, in worker order, by regenerating its directions."""
        for worker, msg in enumerate(messages):
            if msg[1] == 0:
                continue
            at = 3
            for comp, (lo, hi, d) in enumerate(self.parts):
                gen = direction_stream(self.seed, self._key_step(), worker, comp)
                size = (hi - lo) * self.n_cols
                add_directions(w[lo:hi].reshape(-1), -self.lr * size / d * msg[at:at + d], gen)
                at += d
        self.t += 1

    def rounds(self, train, batch_size: int) -> Iterator[list[Examples]]:
        """The pass's steps: N consecutive mini-batches each (fewer in the last)."""
        it = minibatches(train, batch_size)
        while group := list(itertools.islice(it, self.opts.workers)):
            yield group

    def run_pass(self, w: np.ndarray, train, batch_size: int):
        """One pass over the data; returns ([summed loss, n, correct], steps)."""
        if self.opts.workers > 1 and self.opts.processes:
            return self._pass_processes(w, train, batch_size)
        total = np.zeros(3)
        steps = 0
        for group in self.rounds(train, batch_size):
            msgs = [self.message(w, ex, k) for k, ex in enumerate(group)]
            self.apply(w, msgs)
            total += np.sum([m[:3] for m in msgs], axis=0)
            steps += 1
        return total, steps

    def _pass_processes(self, w: np.ndarray, train, batch_size: int):
        """The same pass by N forked processes that exchange their messages through pipes:
        each sends its own and receives everyone's (this process, worker 0, relays)."""
        ctx = multiprocessing.get_context("fork")
        pairs = [ctx.Pipe() for _ in range(1, self.opts.workers)]
        procs = []
        for k, (_, there) in enumerate(pairs, start=1):
            # each worker closes the ends it inherited but does not use, so that a worker
            # that dies is seen as EOF by worker 0, and worker 0 stopping by every worker
            others = [c for pair in pairs for c in pair if c is not there]
            proc = ctx.Process(target=self._child, args=(w, train, batch_size, k, there, others),
                               daemon=True)
            proc.start()
            procs.append(proc)
        pipes = []
        for here, there in pairs:
            there.close()
            pipes.append(here)
        total = np.zeros(3)
        steps = 0
        try:
            for group in self.rounds(train, batch_size):
                msgs = [self.message(w, group[0], 0)]
                for k, conn in enumerate(pipes, start=1):
                    msgs.append(_receive(conn, k))
                everyone = np.concatenate(msgs).tobytes()
                for conn in pipes:
                    conn.send_bytes(everyone)
                self.apply(w, msgs)
                total += np.sum([m[:3] for m in msgs], axis=0)
                steps += 1
        finally:
            for conn in pipes:   # a worker still waiting for messages sees EOF and stops
                conn.close()
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
        return total, steps

    def _child(self, w, train, batch_size, worker, conn, others) -> None:
        for c in others:
            c.close()
        try:
            for group in self.rounds(train, batch_size):
                ex = group[worker] if worker < len(group) else None
                conn.send_bytes(self.message(w, ex, worker).tobytes())
                everyone = np.frombuffer(conn.recv_bytes(), dtype=np.float64)
                self.apply(w, list(everyone.reshape(self.opts.workers, -1)))
        except Exception as exc:  # reported by worker 0, which raises it
            try:
                conn.send_bytes(b"E" + str(exc).encode())
            except OSError:
                pass
        finally:
            conn.close()
            os._exit(0)


def _receive(conn, worker: int) -> np.ndarray:
    try:
        data = conn.recv_bytes()
    except EOFError:
        raise StreamfitError(f"random-bases worker {worker} died") from None
    if data[:1] == b"E":
        raise StreamfitError(data[1:].decode())
    return np.frombuffer(data, dtype=np.float64)


# --- DLDR: snapshots, basis, P-BFGS -----------------------------------------------------------
def snapshot_path(out: Path, i: int) -> Path:
    return Path(f"{stem_of(out)}.dldr.snap-{i:05d}.npy")


def basis_path(out: Path) -> Path:
    return Path(f"{stem_of(out)}.dldr.basis.npy")


def work_files(out: Path) -> list[Path]:
    """DLDR's snapshots and basis beside `out` (removed with the checkpoints)."""
    stem = stem_of(Path(out))
    return sorted(stem.parent.glob(f"{stem.name}.dldr.*.npy"))


def save_snapshot(out: Path, i: int, w: np.ndarray) -> None:
    with atomic_path(snapshot_path(out, i)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(w, dtype=np.float64))


def trajectory_basis(snapshots: list[Path], dims: int, out: Path) -> np.memmap:
    """The top `dims` principal directions of the centred snapshots, as rows of a
    memory-mapped (d × D) .npy at `out`: G = Wc Wcᵀ summed over blocks of parameters,
    G = V Λ Vᵀ, P = diag(1/√λ) V_dᵀ Wc. Directions with λ ≤ 1e-12·λ_max (beyond the rank of
    the trajectory) are left out, so P may have fewer than `dims` rows."""
    maps = [np.load(p, mmap_mode="r").reshape(-1) for p in snapshots]
    t, size = len(maps), maps[0].size
    if t < 2:
        raise StreamfitError("dldr needs at least 2 snapshots: take more (--snapshot-every) "
                             "or lengthen the phase (--phase-passes)")
    step = max(1, BLOCK_ELEMS // t)
    gram = np.zeros((t, t))
    for lo in range(0, size, step):
        block = np.stack([m[lo:lo + step] for m in maps])
        block -= block.mean(axis=0)
        gram += block @ block.T
    lam, vec = np.linalg.eigh(gram)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    keep = min(dims, int(np.sum(lam > 1e-12 * max(lam[0], 1e-300))))
    if keep == 0:
        raise StreamfitError("dldr: the snapshots are all equal (the phase did not move the "
                             "weights); raise the learning rate or the phase length")
    proj = vec[:, :keep] / np.sqrt(lam[:keep])
    tmp = temp_name(out)
    try:
        basis = create_memmap(tmp, np.float64, (keep, size), name=out)
        for lo in range(0, size, step):
            block = np.stack([m[lo:lo + step] for m in maps])
            block -= block.mean(axis=0)
            basis[:, lo:lo + step] = proj.T @ block
        basis.flush()
        del basis
        fsync_path(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(out, mmap_mode="r")


class PBFGS:
    """P-BFGS on the coordinates c of W = θ₀ + Pᵀc (P: d × D, orthonormal rows)."""

    def __init__(self, theta0: np.ndarray, basis: np.ndarray, l2: float, arrays: dict | None):
        self.theta0 = theta0                      # features × classes (memory-mapped)
        self.basis = basis.reshape(basis.shape[0], *theta0.shape)
        self.d = basis.shape[0]
        self.l2 = l2
        arrays = arrays or {}
        self.c = arrays.get("c", np.zeros(self.d))
        self.h = arrays.get("h", np.eye(self.d))
        self.c_prev = arrays.get("c_prev", np.zeros(self.d))
        self.g_prev = arrays.get("g_prev", np.zeros(self.d))
        self.has_prev = bool(arrays.get("has_prev", np.zeros(1))[0])
        if self.l2:  # ‖θ₀ + Pᵀc‖² = ‖θ₀‖² + 2cᵀPθ₀ + ‖c‖²
            self.p_theta0 = np.array([float(np.sum(b * theta0)) for b in self.basis])
            self.theta0_sq = float(np.sum(np.square(theta0)))

    def arrays(self) -> dict:
        return {"c": self.c, "h": self.h, "c_prev": self.c_prev, "g_prev": self.g_prev,
                "has_prev": np.array([float(self.has_prev)])}

    def weights(self) -> np.ndarray:
        """θ₀ + Pᵀc, row block by row block."""
        w = np.empty(self.theta0.shape)
        rows = max(1, BLOCK_ELEMS // max(self.d * w.shape[1], 1))
        for lo in range(0, w.shape[0], rows):
            hi = min(w.shape[0], lo + rows)
            w[lo:hi] = self.theta0[lo:hi] + np.tensordot(self.c, self.basis[:, lo:hi], axes=1)
        return w

    def step(self, ex: Examples) -> tuple[float, int]:
        """One P-BFGS step on a batch; returns the batch's summed loss and hits before it."""
        batch = _Batch(ex)
        n_cols = self.theta0.shape[1]
        p_rows = np.asarray(self.basis[:, batch.rows]).reshape(self.d, -1)   # d × (r·C)
        t_rows = np.asarray(self.theta0[batch.rows])

        def f(c: np.ndarray, grad: bool):
            loss, correct, resid = batch.loss(t_rows + (c @ p_rows).reshape(-1, n_cols))
            value = loss / batch.n
            g = p_rows @ batch.gradient(resid).ravel() if grad else None
            if self.l2:
                value += 0.5 * self.l2 * (self.theta0_sq + 2 * c @ self.p_theta0 + c @ c)
                if grad:
                    g = g + self.l2 * (self.p_theta0 + c)
            return value, g, loss, correct

        value, g, loss, correct = f(self.c, True)
        if self.has_prev:
            s, y = self.c - self.c_prev, g - self.g_prev
            sy = float(s @ y)
            if sy > CURVATURE_GUARD:
                rho = 1.0 / sy
                left = np.eye(self.d) - rho * np.outer(s, y)
                self.h = left @ self.h @ left.T + rho * np.outer(s, s)
        direction = -self.h @ g
        slope = float(g @ direction)
        alpha, new_c = 1.0, self.c
        for _ in range(ARMIJO_TRIALS):
            trial = self.c + alpha * direction
            if f(trial, False)[0] <= value + ARMIJO_SIGMA * alpha * slope:
                new_c = trial
                break
            alpha *= ARMIJO_SHRINK
        self.c_prev, self.g_prev, self.has_prev = self.c, g, True
        self.c = new_c
        return loss, correct


# --- the two methods as refine() runs them ----------------------------------------------------
def refine_subspace(method: str, w: np.ndarray, train, out: Path, opts: SubspaceOptions, *,
                    passes: int, start_pass: int, lr: float | None, default_lr: dict, l2: float,
                    batch_size: int, seed: int, arrays: dict | None, t: int, record, checkpoint,
                    pass_fn) -> np.ndarray:
    """Run the passes start_pass..passes of `method`, recording and checkpointing each."""
    if method == "random-bases":
        rb = RandomBases(w.shape, opts, lr if lr is not None else default_lr[method], l2, seed, t)
        w = w.copy()
        for p in range(start_pass, passes):
            total, steps = rb.run_pass(w, train, batch_size)
            result = PassResult(n=int(total[1]), loss=float(total[0]), correct=int(total[2]))
            record(p + 1, w, result, {"steps": steps, "bytes_per_step": 8 * rb.message_size,
                                      "full_gradient_bytes": 8 * w.size})
            checkpoint(p + 1, w, {}, rb.t)
        return w
    return _dldr(w, train, out, opts, passes=passes, start_pass=start_pass,
                 lr=lr if lr is not None else default_lr.get(opts.phase), l2=l2,
                 batch_size=batch_size, arrays=arrays or {}, t=t, record=record,
                 checkpoint=checkpoint, pass_fn=pass_fn)


def _dldr(w, train, out, opts, *, passes, start_pass, lr, l2, batch_size, arrays, t, record,
          checkpoint, pass_fn):
    n_snap = int(arrays.pop("n_snapshots", np.zeros(1))[0])
    phase_arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("phase_")}
    opt = Optimizer(opts.phase, lr, l2, batch_size, phase_arrays, w.shape, t)
    w = w.copy()
    start = w.copy() if n_snap == 0 else None   # snapshot 0, saved with the first pass's
    observed = None
    for p in range(start_pass, min(passes, opts.phase_passes)):
        if opts.phase == "gis":
            w, result, observed = gis_pass(w, train, pass_fn, opt, observed)
            fresh = [w.copy()] if (p + 1) % opts.snapshot_every == 0 else []
        else:
            fresh = []

            def snapshot():
                if opt.t % opts.snapshot_every == 0:
                    fresh.append(w.copy())
            result = sgd_pass(w, minibatches(train, batch_size), opt, snapshot)
        if p + 1 == opts.phase_passes and not (fresh and np.array_equal(fresh[-1], w)):
            fresh.append(w.copy())                 # the end of the phase is θ₀
        for snap in ([start] if start is not None else []) + fresh:
            save_snapshot(out, n_snap, snap)
            n_snap += 1
        start = None
        record(p + 1, w, result, {"stage": f"snapshots ({opts.phase})", "snapshots": n_snap})
        checkpoint(p + 1, w, {"n_snapshots": np.array([n_snap]),
                              **{f"phase_{k}": v for k, v in opt.arrays().items()}}, opt.t)
    if passes <= max(start_pass, opts.phase_passes):
        return w
    snaps = [snapshot_path(out, i) for i in range(n_snap)]
    missing = [p for p in snaps if not p.exists()]
    if missing:
        raise StreamfitError(f"{missing[0]}: a snapshot of this dldr run is missing; rerun "
                             f"with --restart")
    basis = (np.load(basis_path(out), mmap_mode="r")
             if start_pass > opts.phase_passes and basis_path(out).exists()
             else trajectory_basis(snaps, opts.dims, basis_path(out)))
    theta0 = np.load(snaps[-1], mmap_mode="r")
    solver = PBFGS(theta0, basis, l2, {k[5:]: v for k, v in arrays.items() if k.startswith("bfgs_")})
    for p in range(max(start_pass, opts.phase_passes), passes):
        result = PassResult()
        for ex in minibatches(train, opts.pbfgs_batch):
            loss, correct = solver.step(ex)
            result.n, result.loss, result.correct = result.n + ex.n, result.loss + loss, \
                result.correct + correct
        w = solver.weights()
        record(p + 1, w, result, {"stage": "p-bfgs", "dims": solver.d})
        checkpoint(p + 1, w, {"n_snapshots": np.array([n_snap]),
                              **{f"bfgs_{k}": v for k, v in solver.arrays().items()}}, opt.t)
    return w
