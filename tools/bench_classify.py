#!/usr/bin/env python
"""Classifiers at real size: streamfit's refinement methods against scikit-learn.

One command measures, on Fashion-MNIST (tools/make_fashion_corpus.py, from the Debian
package dataset-fashion-mnist), MNIST-5k and digits (tools/make_digits_corpus.py), each
built under ``data/`` when missing, and writes ``docs/classify.md`` with PNG plots beside it
(every figure in it comes from this run):

- the explicit solution, calibrated on valid (``finalize --heldout valid``: τ, β and the
  smoothing chosen there), the start of every refinement;
- refinement by streaming passes from it, with the command line's defaults (l2 relative to
  each feature's variance, κ = 3e-3; no held-out data, so every pass is shown): ``auto``
  (the default: plbfgs at these sizes — a whitened Adam pass, then L-BFGS with per-class
  curvature blocks), plain ``lbfgs``, ``adam`` (its default step) and, on MNIST-5k and
  digits, ``newton`` (on Fashion-MNIST one of its passes took 145 s in issue 14); test
  accuracy and cross-entropy after every pass, against passes and against seconds;
- the same model's optimum: ``auto`` run for many more passes, its training objective the
  yardstick of the loss gap;
- complement coding: the same inputs as [x, 1 − x] (x scaled to [0, 1]), whose sum is
  constant, so that x/Σx loses nothing and the model is logistic regression with an
  intercept — its calibrated explicit solution and ``auto`` from it (the corpus is
  re-encoded here, as ``accumulate --encoding complement`` reads it: MNIST-5k and digits
  are stored unscaled, which that option refuses);
- references from scikit-learn in the same run, on the raw inputs (pixels / 255, digits
  / 16): LogisticRegression with its defaults (lbfgs, an intercept, C = 1, at most 100
  iterations) and
  MLPClassifier (one hidden layer of 256 relu units, Adam, early stopping, seed 0).

Protocol: train fits, valid only calibrates the start, test only reports. Seconds are the
package's own clock from the start of refine (the moments pass included), without the
per-pass test evaluation; scikit-learn's are its fit. The machine's load is recorded: only
figures of one run compare.

- with held-out data (``refine --heldout valid``): ``auto`` chooses κ among 1e-2, 3e-3 and
  1e-3 there and keeps the best pass; its loss gap is against a 20-pass ``auto`` at the κ
  it chose.

The parts (``--parts``): refine (the explicit start, the methods, the reference point and
scikit-learn's LogisticRegression: the rows the targets compare), heldout, mlp,
complement, grow (``streamfit grow train --validation valid --max-width 256`` with its
defaults, timed whole, against the MLPClassifier(256) of the same run: issue 14's part 3).
``--merge`` puts the parts run into the saved docs/classify.json, keeping the
other datasets and parts; every section says when each of its parts was measured.

    python tools/bench_classify.py                 # ~30 min on 2 loaded cores
    python tools/bench_classify.py --quick --parts refine,heldout   # 5 passes, no MLP
    python tools/bench_classify.py --parts refine,heldout --merge   # those rows again
    python tools/bench_classify.py --parts grow --merge            # growth and the MLP again
    python tools/bench_classify.py --render docs/classify.json   # the page again, running nothing
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import (SPLITS, corpus_meta, corpus_shape, digits_corpus,  # noqa: E402
                     fashion_corpus, read_examples)
from harness import (load_average, load_results, log, page_args, page_options,  # noqa: E402
                     relative, run_meta, save_page, utc_now, write_page)
from internals import dense_parameters, heldout_loss  # noqa: E402
from streamfit import accumulate, finalize, refine  # noqa: E402

DATASETS = ("fashion", "mnist5k", "digits")
SCALE = {"fashion": 1.0, "mnist5k": 255.0, "digits": 16.0}
# newton: only where its pass is cheap; on Fashion-MNIST one pass took 145 s in issue 14
NEWTON_DATASETS = ("mnist5k", "digits")
CONFIG = {"default": {"passes": 10, "optimum_passes": 20},
          "quick": {"passes": 5, "optimum_passes": 10}}
METHODS = ("auto", "lbfgs", "adam", "newton")
PARTS = ("refine", "heldout", "mlp", "complement", "grow")


def raw_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's raw dense rows and labels (streamfit's examples hold x̃ = x/Σx only)."""
    import pyarrow.parquet as pq
    t = pq.read_table(Path(folder) / f"{split}.parquet", columns=["label", "features"])
    col = t.column("features").combine_chunks()
    x = np.asarray(col.values.to_numpy(zero_copy_only=False), np.float64)
    return x.reshape(len(t), -1), np.asarray(t.column("label").to_numpy(), np.int64)


def method_run(model, method: str, passes: int, train, test, tmp: Path, *, heldout=None,
               l2="auto") -> dict:
    """Refine `model` by `method` (with `heldout` rows: chosen there): test accuracy and
    cross-entropy after every pass, and of the written model."""
    rows, evaluating = [], [0.0]

    def watch(entry: dict, w: np.ndarray) -> None:
        seconds = entry["seconds"] - evaluating[0]   # without the earlier passes' evaluations
        t = time.perf_counter()
        ce, acc = heldout_loss(w, iter(test))
        evaluating[0] += time.perf_counter() - t
        rows.append({"pass": entry["pass"], "seconds": seconds, "train_loss": entry["train_loss"],
                     "objective": entry.get("objective"), "test_accuracy": acc,
                     "test_loss": ce})
    t0 = time.perf_counter()
    out = refine(model, lambda: iter(train), tmp / f"{method}.npy", method=method,
                 passes=passes, l2_relative=l2, watch=watch, resume=False,
                 heldout=(lambda: iter(heldout)) if heldout is not None else None)
    wall = time.perf_counter() - t0 - evaluating[0]
    info = out.meta["refinement"]
    res = {"method": method, "chosen": info.get("chosen"), "wall_s": wall, "passes": rows}
    if heldout is not None:
        ce, acc = heldout_loss(dense_parameters(out), iter(test))
        res.update(kept_pass=info.get("kept_pass"), l2_chosen=info.get("l2_chosen"),
                   l2_path=[e.get("l2") for e in info["log"]],
                   heldout_loss=[e.get("heldout_loss") for e in info["log"]],
                   written={"test_accuracy": acc, "test_loss": ce})
    return res


def sklearn_runs(folder: Path, name: str, which: tuple[str, ...]) -> dict:
    """scikit-learn's `which` ("lr", "mlp") on the raw inputs: test figures and fit seconds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.neural_network import MLPClassifier

    (xt, yt), (xs, ys) = raw_split(folder, "train"), raw_split(folder, "test")
    xt, xs = xt / SCALE[name], xs / SCALE[name]
    out = {}
    # scikit-learn's defaults (lbfgs, C = 1, at most 100 iterations): what a user gets; with
    # max_iter 1000 the Fashion-MNIST fit ran past 14 minutes on the loaded 2 cores
    models = {}
    if "lr" in which:
        models["LogisticRegression"] = LogisticRegression()
    if "mlp" in which:
        models["MLPClassifier(256)"] = MLPClassifier((256,), early_stopping=True, random_state=0)
    for label, m in models.items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m.fit(xt, yt)
        wall = time.perf_counter() - t
        p = m.predict_proba(xs)
        out[label] = {"wall_s": wall, "test_accuracy": float((p.argmax(1) == ys).mean()),
                      "test_loss": float(log_loss(ys, p, labels=np.arange(p.shape[1]))),
                      "iterations": int(np.max(m.n_iter_))}
        log(f"{name}: {label} test {out[label]['test_accuracy']:.4f} ({wall:.1f} s)")
    return out


def complement_corpus(folder: Path, name: str, out: Path) -> Path:
    """The corpus's splits with features [x, 1 − x], x the raw inputs scaled to [0, 1]."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        x, y = raw_split(folder, split)
        x = np.clip(x / SCALE[name], 0.0, 1.0)
        both = np.hstack([x, 1.0 - x]).astype(np.float32)
        features = pa.FixedSizeListArray.from_arrays(pa.array(both.ravel()), both.shape[1])
        pq.write_table(pa.table({"label": pa.array(y), "features": features.cast(
            pa.list_(pa.float32()))}), out / f"{split}.parquet", row_group_size=4096)
    return out


def explicit_start(folder: Path, valid: list, test: list, tmp: Path) -> tuple:
    """The explicit solution calibrated on valid (τ, β, smoothing), with its test figures."""
    t = time.perf_counter()
    stats = accumulate([folder / "train.parquet"])
    model = finalize(stats, tmp / "explicit.npy", form="calibrated", smoothing="auto",
                     heldout=iter(valid))
    res = {"seconds": time.perf_counter() - t, "smoothing": model.meta["smoothing"],
           "tau": model.tau, "beta": model.meta.get("beta")}
    ce, acc = heldout_loss(dense_parameters(model), iter(test))
    res.update(test_accuracy=acc, test_loss=ce)
    return model, res


def optimum_of(run: dict) -> dict:
    best = min((r for r in run["passes"] if r.get("objective") is not None),
               key=lambda r: r["objective"])
    return {"passes": run["passes"][-1]["pass"], "objective": best["objective"],
            "train_loss": best["train_loss"], "test_accuracy": best["test_accuracy"],
            "test_loss": best["test_loss"], "best_pass": best["pass"]}


def run_dataset(name: str, args, tmp: Path) -> dict:
    """The parts of `args.parts` on dataset `name`; res["runs"][part] says when each ran."""
    data = Path(args.data)
    folder = fashion_corpus(data) if name == "fashion" else digits_corpus(data, name)
    shape = corpus_shape(corpus_meta(folder))
    ex = {s: read_examples(folder, s, shape) for s in SPLITS}
    res = {"name": name, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
           "folder": relative(folder), "d": shape["n_features"],
           "classes": shape["n_classes"], "n": {s: int(sum(e.n for e in ex[s])) for s in SPLITS},
           "plot": f"classify-{name}.png", "runs": {}}
    start = {}

    def explicit():
        if not start:
            start["model"], start["res"] = explicit_start(folder, ex["valid"], ex["test"], tmp)
            log(f"{name}: explicit calibrated test {start['res']['test_accuracy']:.4f}")
        return start["model"]
    for part in args.parts:
        facts = {"date": utc_now(), "load_start": load_average(),
                 "blas_threads": res["blas_threads"], "mode": args.mode}
        t = time.perf_counter()
        PART_RUNS[part](name, args, tmp, folder, shape, ex, explicit, res)
        if part in ("refine", "heldout"):
            res["explicit"] = start["res"]
        res["runs"][part] = {**facts, "wall_s": time.perf_counter() - t}
    return res


def refine_part(name, args, tmp, folder, shape, ex, explicit, res) -> None:
    """The refinement methods from the explicit start, the reference point (a longer auto
    run) and scikit-learn's LogisticRegression: the rows the targets compare."""
    cfg = CONFIG[args.mode]
    model = explicit()
    res["methods"] = {}
    for method in METHODS:
        if method == "newton" and name not in NEWTON_DATASETS:
            continue
        r = method_run(model, method, cfg["passes"], ex["train"], ex["test"], tmp)
        res["methods"][method] = r
        last = r["passes"][-1]
        log(f"{name}: {method} pass {last['pass']} test {last['test_accuracy']:.4f} "
            f"({r['wall_s']:.1f} s)")
    opt = method_run(model, "auto", cfg["optimum_passes"], ex["train"], ex["test"], tmp)
    res["optimum"] = optimum_of(opt)
    log(f"{name}: optimum (auto, {res['optimum']['passes']} passes) test "
        f"{res['optimum']['test_accuracy']:.4f}")
    res.setdefault("sklearn", {}).update(sklearn_runs(folder, name, ("lr",)))


def heldout_part(name, args, tmp, folder, shape, ex, explicit, res) -> None:
    """auto with the valid split as held-out data (κ chosen there, the best pass kept), and
    a longer auto run at the κ it chose: the yardstick of its loss gap."""
    cfg = CONFIG[args.mode]
    model = explicit()
    run = method_run(model, "auto", cfg["passes"], ex["train"], ex["test"], tmp,
                     heldout=ex["valid"])
    opt = method_run(model, "auto", cfg["optimum_passes"], ex["train"], ex["test"], tmp,
                     l2=run["l2_chosen"])
    res["heldout"] = {"auto": run, "optimum": optimum_of(opt)}
    log(f"{name}: auto --heldout: l2 {run['l2_chosen']:g}, kept pass {run['kept_pass']}, test "
        f"{run['written']['test_accuracy']:.4f} ({run['wall_s']:.1f} s)")


def mlp_part(name, args, tmp, folder, shape, ex, explicit, res) -> None:
    """scikit-learn's MLPClassifier(256) (a reference for growth)."""
    res.setdefault("sklearn", {}).update(sklearn_runs(folder, name, ("mlp",)))


def complement_part(name, args, tmp, folder, shape, ex, explicit, res) -> None:
    """Complement coding [x, 1 − x]: its calibrated explicit solution and auto from it."""
    cfg = CONFIG[args.mode]
    comp = complement_corpus(folder, name, tmp / "complement")
    cshape = {**shape, "n_features": 2 * shape["n_features"]}
    cex = {s: read_examples(comp, s, cshape) for s in SPLITS}
    cmodel, cstart = explicit_start(comp, cex["valid"], cex["test"], tmp / "complement")
    crun = method_run(cmodel, "auto", cfg["passes"], cex["train"], cex["test"],
                      tmp / "complement")
    res["complement"] = {"explicit": cstart, "auto": crun, "optimum": optimum_of(crun)}
    log(f"{name}: complement explicit {cstart['test_accuracy']:.4f}, auto "
        f"{crun['passes'][-1]['test_accuracy']:.4f}")


def grow_run(folder: Path, shape: dict, tmp: Path) -> dict:
    """`streamfit grow train --validation valid --max-width 256` with its defaults (Parquet
    read as the command reads it), timed whole (held-out evaluation and writes included),
    then scored on test; the log of every step."""
    from internals import Layers, growth_pass, iter_examples
    from streamfit import grow

    def reader(split):
        return lambda: iter_examples([folder / f"{split}.parquet"], **shape)
    load0, t, cpu = load_average(), time.perf_counter(), time.process_time()
    model = grow(reader("train"), tmp / "grown.npy", heldout=reader("valid"), max_width=256,
                 **shape)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    test = growth_pass(Layers.of(model), reader("test")(), full=False)
    growth = model.meta["growth"]
    settings = {k: v for k, v in growth.items() if k not in ("log", "stopped", "kept_step")}
    return {"wall_s": wall, "cpu_s": cpu, "load_start": load0, "load_end": load_average(),
            "test_accuracy": test.accuracy, "test_loss": test.mean_loss,
            "width": int(model.hidden[0].shape[1]), "settings": settings,
            "stopped": growth["stopped"], "kept_step": growth["kept_step"], "log": growth["log"]}


def grow_part(name, args, tmp, folder, shape, ex, explicit, res) -> None:
    """Growth (issue 14, part 3) against scikit-learn's MLPClassifier(256) of the same run:
    the mlp part's when it ran before in this run, else fitted here (and kept with the
    growth rows only: the mlp part's row says when it was measured)."""
    out = grow_run(folder, shape, tmp)
    log(f"{name}: grow width {out['width']} test {out['test_accuracy']:.4f} "
        f"({out['wall_s']:.1f} s)")
    mlp = res.get("sklearn", {}).get("MLPClassifier(256)")   # the mlp part's, this run
    out["mlp"] = mlp if mlp is not None else \
        sklearn_runs(folder, name, ("mlp",))["MLPClassifier(256)"]   # kept here only
    res["grow"] = out


PART_RUNS = {"refine": refine_part, "heldout": heldout_part, "mlp": mlp_part,
             "complement": complement_part, "grow": grow_part}


def merged(saved: dict, new: dict) -> dict:
    """The saved run with the datasets and parts of `new` put in: per dataset, a key of new
    replaces the saved one (the scikit-learn models and the parts' run facts are merged one
    level down). Parts saved before the run facts existed get the saved run's."""
    meta, results = saved["meta"], saved["results"]
    for res in results.values():
        if "runs" not in res:
            present = {"refine": "methods" in res, "heldout": "heldout" in res,
                       "complement": "complement" in res,
                       "mlp": "MLPClassifier(256)" in res.get("sklearn", {})}
            res["runs"] = {part: {"date": meta["date"], "load_start": meta["load_start"],
                                  "blas_threads": res.get("blas_threads", "default"),
                                  "mode": meta["mode"]} for part, ok in present.items() if ok}
    for name, res in new["results"].items():
        old = results.setdefault(name, {})
        for key, value in res.items():
            if key in ("sklearn", "runs") and isinstance(old.get(key), dict):
                old[key] = {**old[key], **value}
            else:
                old[key] = value
    return {"meta": {**new["meta"], "merged": True}, "results": results}


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    runs = dict(res.get("methods", {}))
    if "heldout" in res:
        runs["auto --heldout valid"] = res["heldout"]["auto"]
    if "complement" in res:
        runs["auto, [x, 1 − x]"] = res["complement"]["auto"]
    for method, r in runs.items():
        p = r["passes"]
        for row, key in enumerate(("test_accuracy", "test_loss")):
            axes[row][0].plot([e["pass"] for e in p], [e[key] for e in p], marker=".", label=method)
            axes[row][1].plot([e["seconds"] for e in p], [e[key] for e in p], marker=".",
                              label=method)
    for row, key in enumerate(("test_accuracy", "test_loss")):
        for col in (0, 1):
            ax = axes[row][col]
            if "optimum" in res:
                ax.axhline(res["optimum"][key], color="k", ls=":", lw=1,
                           label=f"auto, {res['optimum']['passes']} passes")
            for i, (label, s) in enumerate(res.get("sklearn", {}).items()):
                ax.axhline(s[key], color=f"C{6 + i}", ls="--", lw=1, label=f"scikit-learn {label}")
                if col == 1:
                    ax.axvline(s["wall_s"], color=f"C{6 + i}", ls=":", lw=0.8)
            if "explicit" in res:
                ax.axhline(res["explicit"][key], color="grey", ls="-.", lw=1,
                           label="explicit (start)")
            ax.set_xlabel("passes" if col == 0 else "seconds")
            ax.set_ylabel("test accuracy" if key == "test_accuracy" else "test cross-entropy")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{res['name']}: refinement from the calibrated explicit solution")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def runs_line(res: dict, meta: dict) -> list[str]:
    """When each part of this section was measured (parts of one run compare)."""
    runs = res.get("runs")
    if not runs:
        return []
    when: dict = {}
    for part, f in runs.items():
        when.setdefault((f["date"], f["load_start"], f.get("blas_threads")), []).append(part)
    return ["Measured: " + "; ".join(
        f"{', '.join(parts)} on {date} (load average {load:.1f} at the start, OpenBLAS "
        f"threads {threads})" for (date, load, threads), parts in when.items()) + ".", ""]


def dataset_lines(res: dict, meta: dict | None = None) -> list[str]:
    n = res["n"]
    L = [f"## {res['name']}", "",
         f"{n['train']:,} train / {n['valid']:,} valid / {n['test']:,} test rows, "
         f"{res['d']} features, {res['classes']} classes (`{res['folder']}`).", "",
         *runs_line(res, meta or {}),
         f"![{res['name']}]({res['plot']})", ""]
    if "methods" in res:
        L += refine_lines(res)
    L += heldout_lines(res) + complement_lines(res) + grow_lines(res)
    return L


def grow_lines(res: dict) -> list[str]:
    """Issue 14's part 3: grow against the same-width MLP fitted in the same run."""
    g = res.get("grow")
    if not g:
        return []
    mlp, st, log_ = g["mlp"], g["settings"], g["log"]
    grown = [e for e in log_ if "tune" not in e]
    tuned = [e for e in log_ if "tune" in e]
    kept = next((e for e in log_ if e["step"] == g["kept_step"]), log_[-1])
    L = [f"Growth (`streamfit grow train --validation valid --max-width 256`, its defaults: "
         f"{st['units_per_step']} units per step, {st['output_passes']} output-layer passes "
         f"per step, hidden moves {st['hidden_moves']}, then {st['tune_passes']} tuning passes "
         f"from step {st['tune_step']:g} decayed to 0; Parquet read as the command reads it) "
         f"against scikit-learn's MLPClassifier(256) fitted in the same run, both timed whole:",
         "", "| model | width | test accuracy | test CE | passes / epochs | seconds | CPU seconds |",
         "|---|---|---|---|---|---|---|"]
    if grown:
        e = grown[-1]
        L.append(f"| grown, before the tuning passes (valid accuracy {e['heldout_accuracy']:.4f}) "
                 f"| {e['width']} | — | — | {e['passes']} | {e['seconds']:.1f}\\* | — |")
    what = f"tuning pass {kept['tune']} kept" if "tune" in kept else "no tuning pass"
    L.append(f"| grown and tuned ({what}) | {g['width']} | {g['test_accuracy']:.4f} | "
             f"{g['test_loss']:.4f} | {log_[-1]['passes']} | {g['wall_s']:.1f} | "
             f"{g['cpu_s']:.1f} |")
    L.append(f"| scikit-learn MLPClassifier(256), Adam, early stopping (raw inputs) | 256 | "
             f"{mlp['test_accuracy']:.4f} | {mlp['test_loss']:.4f} | {mlp['iterations']} | "
             f"{mlp['wall_s']:.1f} | — |")
    ratio = g["wall_s"] / mlp["wall_s"]
    met = g["test_accuracy"] >= mlp["test_accuracy"] and ratio <= 2
    L += ["", "\\* the growth log's seconds at the last width before tuning (training passes "
          f"only). Load average {g['load_start']:.1f} when growth started, "
          f"{g['load_end']:.1f} when it ended. Valid accuracy per tuning pass: "
          + ", ".join(f"{e['heldout_accuracy']:.4f}" for e in tuned) + ".", "",
          f"Target (issue 14, part 3): grow's test accuracy ≥ the MLP's "
          f"({g['test_accuracy']:.4f} vs {mlp['test_accuracy']:.4f}) in ≤ 2× its wall time "
          f"({ratio:.2f}×): {'met' if met else 'not met'}.", ""]
    return L


def refine_lines(res: dict) -> list[str]:
    opt = res["optimum"]
    L = ["| model | passes | test accuracy | test CE | loss gap to the reference | seconds |",
         "|---|---|---|---|---|---|"]
    e = res["explicit"]
    L.append(f"| explicit, calibrated on valid | — | {e['test_accuracy']:.4f} | "
             f"{e['test_loss']:.4f} | — | {e['seconds']:.1f} |")
    for method, r in res["methods"].items():
        for p in r["passes"]:
            if p["pass"] in (5, 10) or p is r["passes"][-1]:
                gap = (p["objective"] / opt["objective"] - 1) if p.get("objective") else None
                L.append(f"| {method} | {p['pass']} | {p['test_accuracy']:.4f} | "
                         f"{p['test_loss']:.4f} | "
                         f"{'—' if gap is None else f'{100 * gap:.1f}%'} | {p['seconds']:.1f} |")
    L.append(f"| reference point: auto, best of {opt['passes']} passes | {opt.get('best_pass', opt['passes'])} | "
             f"{opt['test_accuracy']:.4f} | {opt['test_loss']:.4f} | 0 | — |")
    for label, s in res["sklearn"].items():
        L.append(f"| scikit-learn {label} (raw inputs) | {s['iterations']} it. | "
                 f"{s['test_accuracy']:.4f} | {s['test_loss']:.4f} | — | {s['wall_s']:.1f} |")
    picked = next((r["chosen"] for r in res["methods"].values() if r.get("chosen")), None)
    if picked:
        L += ["", f"`auto` picked: {picked}."]
    L += [""] + targets_lines(res) + [""]
    return L


def kappa_path(run: dict) -> str:
    """The κ of every pass, as runs: "0.01 (passes 1–4), 0.003 (5–6)"."""
    spans: list = []
    for i, k in enumerate(run["l2_path"], start=1):
        if spans and spans[-1][0] == k:
            spans[-1][2] = i
        else:
            spans.append([k, i, i])
    return ", ".join(f"{k:g} (pass{'es' if a != b else ''} {a}{f'–{b}' if a != b else ''})"
                     for k, a, b in spans)


def heldout_lines(res: dict) -> list[str]:
    held = res.get("heldout")
    if not held:
        return []
    run, opt = held["auto"], held["optimum"]
    last, w = run["passes"][-1], run["written"]
    gap = last["objective"] / opt["objective"] - 1 if last.get("objective") else None
    L = [f"With held-out data (`refine --heldout valid`: κ chosen there, the best pass kept): "
         f"`auto` chose κ = {run['l2_chosen']:g} — the path: {kappa_path(run)} — and kept pass "
         f"{run['kept_pass']}; the written model has test accuracy {w['test_accuracy']:.4f} and "
         f"cross-entropy {w['test_loss']:.4f} after {last['pass']} passes in "
         f"{last['seconds']:.1f} s (the held-out scoring included)."]
    if gap is not None:
        L[-1] += (f" Its training objective at the last pass is {100 * gap:.2f}% above the lowest "
                  f"of {opt['passes']} `auto` passes at κ = {run['l2_chosen']:g} without held-out "
                  f"data (test accuracy {opt['test_accuracy']:.4f}, cross-entropy "
                  f"{opt['test_loss']:.4f} there).")
    plain = res.get("methods", {}).get("auto")
    if plain:
        p = at_pass(plain, last["pass"]) or plain["passes"][-1]
        L[-1] += (f" Without held-out data (the default κ, the table above): "
                  f"{p['test_accuracy']:.4f} / {p['test_loss']:.4f} after {p['pass']} passes.")
    return L + [""]


def at_pass(run: dict, k: int) -> dict | None:
    return next((p for p in run["passes"] if p["pass"] == k), None)


def targets_lines(res: dict) -> list[str]:
    """Issue 14's part 1 targets for auto, from the rows above."""
    auto, opt = res["methods"].get("auto"), res["optimum"]
    lr = res["sklearn"].get("LogisticRegression")
    five, ten = (at_pass(auto, 5), at_pass(auto, 10)) if auto else (None, None)
    if not (five and lr):
        return []
    L = [f"Targets (`auto`): test accuracy after 5 passes {five['test_accuracy']:.4f} against the "
         f"reference point's {opt['test_accuracy']:.4f} "
         f"({100 * (opt['test_accuracy'] - five['test_accuracy']):+.2f} points short; target "
         f"≤ 1: {'met' if opt['test_accuracy'] - five['test_accuracy'] <= 0.01 else 'not met'})"]
    if ten and ten.get("objective"):
        gap = ten["objective"] / opt["objective"] - 1
        L[-1] += (f"; training loss gap after 10 passes {100 * gap:.2f}% (target ≤ 1%: "
                  f"{'met' if gap <= 0.01 else 'not met'})")
        last = ten
    else:
        last = five
    for p in dict.fromkeys((five["pass"], last["pass"])):
        row = at_pass(auto, p)
        L[-1] += (f"; {row['seconds']:.1f} s for {p} passes against scikit-learn "
                  f"LogisticRegression's {lr['wall_s']:.1f} s (target ≤: "
                  f"{'met' if row['seconds'] <= lr['wall_s'] else 'not met'})")
    L[-1] += "."
    return L


def complement_lines(res: dict) -> list[str]:
    comp = res.get("complement")
    if not comp:
        return []
    e0, e1 = res["explicit"], comp["explicit"]
    o0, o1 = res["methods"]["auto"]["passes"][-1], comp["auto"]["passes"][-1]
    return ["What x/Σx costs: the same rows as [x, 1 − x] (complement coding; the sum is "
            "constant, so normalising keeps every value and the model is logistic regression "
            "with an intercept), explicit solution calibrated on valid and `auto` from it, the "
            "same number of passes on each:",
            "",
            "| inputs | explicit: test accuracy / CE | smoothing, τ, β | `auto`: test "
            "accuracy / CE (passes) | training objective at the last pass |",
            "|---|---|---|---|---|",
            f"| x/Σx | {e0['test_accuracy']:.4f} / {e0['test_loss']:.4f} | "
            f"{e0['smoothing']:.3g}, {e0['tau']:.3g}, {e0['beta']:.3g} | "
            f"{o0['test_accuracy']:.4f} / {o0['test_loss']:.4f} ({o0['pass']}) | "
            f"{o0['objective']:.5f} |",
            f"| [x, 1 − x] | {e1['test_accuracy']:.4f} / {e1['test_loss']:.4f} | "
            f"{e1['smoothing']:.3g}, {e1['tau']:.3g}, {e1['beta']:.3g} | "
            f"{o1['test_accuracy']:.4f} / {o1['test_loss']:.4f} ({o1['pass']}) | "
            f"{o1['objective']:.5f} |", ""]


def page_lines(results: dict, meta: dict) -> list[str]:
    if meta.get("merged"):
        head = (f"Last written by `{meta['command']}` on {meta['date']} "
                f"({meta['wall_s'] / 60:.1f} min; {meta['machine'].get('cpu', '')}), which put "
                f"its parts into the saved results: each section says when each of its parts "
                f"was measured, and only figures of one run compare.")
    else:
        head = (f"Written by `{meta['command']}` on {meta['date']} ({meta['wall_s'] / 60:.1f} min, "
                f"mode {meta['mode']}, load average {meta['load_start']:.1f} at the start; "
                f"{meta['machine'].get('cpu', '')}; OpenBLAS threads: "
                f"{next(iter(results.values())).get('blas_threads', 'default')}). Only figures "
                f"of this one run compare.")
    L = ["# Classifiers: refinement against scikit-learn", "", head, "",
         "The loss gap is the training objective (mean cross-entropy + the default l2) over "
         "the lowest one `auto` reached in its longer reference run, minus 1 — a stand-in for "
         "the same model's optimum, which it may not have reached (on Fashion-MNIST L-BFGS "
         "needs over a thousand passes to converge fully). The gradient methods' objective is "
         "what their pass evaluated (for `auto`, the point its pass evaluated, one step behind the "
         "weights scored on test); adam's passes and `auto`'s first (Adam) pass are mini-batch "
         "epochs (no objective).", ""]
    for res in results.values():
        L += dataset_lines(res, meta)
    return L


def render(saved: dict, out_dir: Path, *, plots: bool = True) -> Path:
    figures = [(plot, res, res["plot"]) for res in saved["results"].values()] if plots else []
    return write_page(out_dir, "classify.md", page_lines(saved["results"], saved["meta"]),
                      figures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    page_options(ap, "classify", DATASETS, "5 passes, a 10-pass optimum")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    ap.add_argument("--merge", action="store_true",
                    help="put the parts run into the saved classify.json of --out, keeping the "
                         "other datasets and parts (default: replace it)")
    args = page_args(ap, argv, render, DATASETS)
    if args is None:
        return 0
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_classify-") as tmp:
        for name in args.names:
            results[name] = run_dataset(name, args, Path(tmp))
    payload = {"meta": run_meta("bench_classify.py", argv, args, "scikit-learn"),
               "results": results}
    if args.merge:
        payload = merged(load_results(Path(args.out) / "classify.json"), payload)
    save_page(args, "classify", payload, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
