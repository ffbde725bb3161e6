#!/usr/bin/env python
"""Growing hidden units (streamfit grow) against the single-layer optimum and a backprop MLP.

One command measures, on digits and MNIST-5k (tools/make_digits_corpus.py builds
``data/<name>`` when missing), and writes ``docs/growth.md`` with PNG plots beside it (every
figure in it comes from this run):

- the single-layer optimum: ``refine --method lbfgs`` from zeros on x̃ = x/sum(x), l2 chosen on
  valid from a small grid;
- growth: ``streamfit.train.grow.grow`` from no hidden units, amplitude chosen on valid, for a small
  grid of (ridge, l2) chosen by the valid cross-entropy at the end; test cross-entropy and
  accuracy after every step, with its training passes and seconds;
- the output layer on the grown hidden layer, four ways (what the output layer reads): as
  grown (L-BFGS on [h; 1]), the explicit solution (calibrated, smoothing auto on valid) on
  h/sum(h), that explicit solution refined by L-BFGS, and L-BFGS on [x̃; h; 1] (a skip);
- an MLP of the same widths (one relu hidden layer, softmax output) trained by
  backpropagation with Adam in numpy (a baseline written here, not a streamfit feature) on
  the same split, on x̃ centred and scaled by one global standard deviation, lr chosen
  on valid, early stopping on valid.

Protocol: train fits, valid makes every choice, test only reports. Each split is read once
and held in memory, so no time includes reading Parquet. Growth seconds are the package's
own clock (training passes, the closed form, the amplitude search on valid), without the
per-step valid evaluation and model write; a growth "pass" is one streaming pass over train
(statistics, or one L-BFGS evaluation of the output layer). MLP seconds are its epochs
without the per-epoch evaluation; an MLP pass is one epoch.

    python tools/bench_grow.py              # ~8 min on 2 cores
    python tools/bench_grow.py --quick      # ~2 min: smaller widths and grids
    python tools/bench_grow.py --render docs/growth.json   # the page again, running nothing

The run's figures are saved as ``growth.json`` beside the page; the page and its plots are
written from that file, by the same code as ``--render``, which needs no data.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import SPLITS, corpus_meta, corpus_shape, digits_corpus, read_examples  # noqa: E402
from harness import log, page_main, relative, write_page  # noqa: E402
from internals import FeatureRows, feature_examples  # noqa: E402
from streamfit import Accumulator, Model, finalize, grow, load_model, refine  # noqa: E402

DATASETS = ("digits", "mnist5k")
LABELS = {"digits": "digits (sklearn 8×8)", "mnist5k": "MNIST-5k"}
CLEARLY = 1.0          # accuracy points: "beats the single layer clearly" needs at least this
MNIST_TARGET = 0.95
CONFIG = {
    "default": {
        "digits": dict(max_width=128, units_per_step=16, ridges=(0.3, 1.0), l2s=(1e-3,),
                       hidden_moves=(0, 3), output_passes=10, lbfgs_passes=200,
                       l2_grid=(1e-6, 1e-5, 1e-4), mlp_widths=(16, 32, 64, 128),
                       mlp_lrs=(1e-3, 3e-3), mlp_epochs=100, mlp_batch=64),
        "mnist5k": dict(max_width=256, units_per_step=16, ridges=(0.3, 1.0), l2s=(1e-3,),
                        hidden_moves=(0, 3), output_passes=10, lbfgs_passes=200,
                        l2_grid=(1e-6, 1e-5, 1e-4), mlp_widths=(16, 64, 128, 256),
                        mlp_lrs=(1e-3, 3e-3), mlp_epochs=60, mlp_batch=64),
    },
    "quick": {
        "digits": dict(max_width=64, units_per_step=16, ridges=(1.0,), l2s=(1e-3,),
                       hidden_moves=(0, 3), output_passes=10, lbfgs_passes=50, l2_grid=(1e-5,),
                       mlp_widths=(64,), mlp_lrs=(3e-3,), mlp_epochs=40, mlp_batch=64),
        "mnist5k": dict(max_width=96, units_per_step=16, ridges=(1.0,), l2s=(1e-3,),
                        hidden_moves=(0, 3), output_passes=10, lbfgs_passes=50,
                        l2_grid=(1e-5,), mlp_widths=(96,), mlp_lrs=(3e-3,), mlp_epochs=20,
                        mlp_batch=64),
    },
}


# --------------------------------------------------------------------------- data
def dense(parts: list, d: int) -> tuple[np.ndarray, np.ndarray]:
    x = sp.vstack([sp.csr_matrix((e.values, e.indices, e.indptr), shape=(e.n, d))
                   for e in parts]).toarray()
    return x, np.concatenate([e.targets for e in parts])


def load(name: str, folder: Path) -> dict:
    shape = corpus_shape(corpus_meta(folder))
    d, c = shape["n_features"], shape["n_classes"]
    ex = {s: read_examples(folder, s, shape) for s in SPLITS}
    return {"name": name, "folder": folder, "d": d, "c": c, "examples": ex,
            "dense": {s: dense(ex[s], d) for s in SPLITS}}


def metrics(z: np.ndarray, y: np.ndarray) -> dict:
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return {"loss": float(np.mean(lse - z[np.arange(y.size), y])),
            "accuracy": float(np.mean(z.argmax(axis=1) == y))}


def model_metrics(model: Model, parts: list) -> dict:
    z = np.vstack([model.logits(e) for e in parts])
    return metrics(z, np.concatenate([e.targets for e in parts]))


# --------------------------------------------------------------------------- single layer
def single_layer(data: dict, cfg: dict, tmp: Path) -> dict:
    d, c = data["d"], data["c"]
    start = Model(task="classify", n_classes=c, n_features=d, tau=1.0, dense=np.zeros((d, c)),
                  meta={"form": "zeros"})
    runs = {}
    for l2 in cfg["l2_grid"]:
        m = refine(start, lambda: iter(data["examples"]["train"]), tmp / f"single-{l2}.npy",
                   method="lbfgs", passes=cfg["lbfgs_passes"], init="zeros", l2=l2, resume=False)
        runs[l2] = {"valid": model_metrics(m, data["examples"]["valid"]),
                    "test": model_metrics(m, data["examples"]["test"]),
                    "passes": len(m.meta["refinement"]["log"]),
                    "seconds": m.meta["refinement"]["log"][-1]["seconds"]}
    best = min(runs, key=lambda k: runs[k]["valid"]["loss"])
    return {"l2": best, **runs[best], "grid": {str(k): v["valid"]["loss"] for k, v in runs.items()}}


# --------------------------------------------------------------------------- growth
def growth_runs(data: dict, cfg: dict, tmp: Path) -> dict:
    ex = data["examples"]
    runs = {}
    for moves in cfg["hidden_moves"]:
        for ridge in cfg["ridges"]:
            for l2 in cfg["l2s"]:
                out = tmp / f"grown-{moves}-{ridge}-{l2}.npy"
                steps = []

                def on_step(entry, out=out, steps=steps):
                    m = load_model(out)
                    steps.append({**{k: entry[k] for k in ("step", "width", "passes", "seconds",
                                                            "heldout_loss", "heldout_accuracy",
                                                            "train_loss")},
                                  **{f"test_{k}": v
                                     for k, v in model_metrics(m, ex["test"]).items()},
                                  "unit_gain": entry.get("unit_gain"),
                                  "hidden_gain": entry.get("hidden_gain"),
                                  "hidden_steps": entry.get("hidden_steps", [])})

                t0 = time.perf_counter()
                model = grow(lambda: iter(ex["train"]), out, task="classify", window=0,
                             n_features=data["d"], n_classes=data["c"],
                             heldout=lambda: iter(ex["valid"]), max_width=cfg["max_width"],
                             units_per_step=cfg["units_per_step"], min_gain=0.0,
                             output_passes=cfg["output_passes"], l2=l2, ridge=ridge,
                             hidden_moves=moves, tune_passes=0, on_step=on_step)
                log(f"{data['name']}: grew hidden moves {moves} ridge {ridge} l2 {l2} to "
                    f"{steps[-1]['width']} units in {time.perf_counter() - t0:.0f} s: valid "
                    f"{steps[-1]['heldout_accuracy']:.4f}, test {steps[-1]['test_accuracy']:.4f}")
                runs[(moves, ridge, l2)] = {"hidden_moves": moves, "ridge": ridge, "l2": l2,
                                            "steps": steps, "path": out,
                                            "stopped": model.meta["growth"]["stopped"]}

    def best(keys):
        return runs[min(keys, key=lambda k: runs[k]["steps"][-1]["heldout_loss"])]

    frozen = [k for k in runs if k[0] == 0]
    return {"chosen": best(list(runs)), "frozen": best(frozen) if frozen else None,
            "grid": [{"hidden_moves": r["hidden_moves"], "ridge": r["ridge"], "l2": r["l2"],
                      "valid_loss": r["steps"][-1]["heldout_loss"],
                      "valid_accuracy": r["steps"][-1]["heldout_accuracy"],
                      "test_accuracy": r["steps"][-1]["test_accuracy"]}
                     for r in runs.values()]}


def hidden_rows(h: np.ndarray, y: np.ndarray) -> FeatureRows:
    n, k = h.shape
    return FeatureRows(np.arange(0, n * k + 1, k, dtype=np.int64),
                       np.tile(np.arange(k, dtype=np.int64), n), h.ravel().copy(), y, k)


def output_variants(data: dict, chosen: dict, tmp: Path) -> dict:
    """The output layer re-solved on the grown hidden layer, four ways."""
    model = load_model(chosen["path"])
    a, a0 = (np.asarray(v, np.float64) for v in model.hidden)
    hid = {s: np.maximum(data["dense"][s][0] @ a + a0, 0.0) for s in SPLITS}
    ys = {s: data["dense"][s][1] for s in SPLITS}
    out = {"grown": {"test": model_metrics(model, data["examples"]["test"])}}
    # explicit solution on h / sum(h), then refined by L-BFGS (same model, its optimum)
    acc = Accumulator("classify")
    acc.add_rows(hidden_rows(hid["train"], ys["train"]))
    norm = {s: [feature_examples(hidden_rows(hid[s], ys[s]))] for s in SPLITS}
    t0 = time.perf_counter()
    explicit = finalize(acc.stats(), form="calibrated", smoothing="auto",
                        heldout=norm["valid"], dtype="float64")
    out["explicit"] = {"test": model_metrics(explicit, norm["test"]),
                       "seconds": time.perf_counter() - t0}
    refined = refine(explicit, lambda: iter(norm["train"]), tmp / "explicit-refined.npy",
                     method="lbfgs", passes=100, l2=chosen["l2"] / 100, resume=False)
    out["explicit_refined"] = {"test": model_metrics(refined, norm["test"])}
    # a skip connection: L-BFGS on [x̃; h; 1], the same l2 on everything but the bias
    b = {s: np.hstack([data["dense"][s][0], hid[s], np.ones((ys[s].size, 1))]) for s in SPLITS}
    c, l2 = data["c"], chosen["l2"]
    mask = np.ones((b["train"].shape[1], c))
    mask[-1] = 0.0
    onehot = np.eye(c)[ys["train"]]

    def objective(flat):
        w = flat.reshape(mask.shape)
        z = b["train"] @ w
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -float(np.mean(np.log(p[np.arange(ys["train"].size), ys["train"]] + 1e-300)))
        return (loss + 0.5 * l2 * float(np.sum(mask * w * w)),
                (b["train"].T @ (p - onehot) / ys["train"].size + l2 * mask * w).ravel())

    w = scipy.optimize.minimize(objective, np.zeros(mask.size), jac=True, method="L-BFGS-B",
                                options={"maxiter": 500}).x.reshape(mask.shape)
    out["skip"] = {"test": metrics(b["test"] @ w, ys["test"])}
    return out


# --------------------------------------------------------------------------- the MLP baseline
def mlp(data: dict, width: int, lr: float, epochs: int, batch: int, seed: int = 0) -> dict:
    """One relu hidden layer, softmax output, Adam on mini-batches (backpropagation by hand)."""
    xtr, ytr = data["dense"]["train"]
    mu, sd = xtr.mean(axis=0), xtr.std()   # one scale for all features: rarely active
    # pixels would otherwise be divided by a near-zero deviation
    xs = {s: (data["dense"][s][0] - mu) / sd for s in SPLITS}
    d, c = xtr.shape[1], data["c"]
    rng = np.random.default_rng(seed)
    params = [rng.normal(0, math.sqrt(2 / d), (d, width)), np.zeros(width),
              rng.normal(0, math.sqrt(1 / width), (width, c)), np.zeros(c)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    history, seconds = [], 0.0

    def forward(x):
        h = np.maximum(x @ params[0] + params[1], 0.0)
        return h, h @ params[2] + params[3]

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(ytr.size)
        for lo in range(0, ytr.size, batch):
            idx = order[lo:lo + batch]
            x, y = xs["train"][idx], ytr[idx]
            h, z = forward(x)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(y.size), y] -= 1.0
            gz = p / y.size
            gh = (gz @ params[2].T) * (h > 0)
            grads = [x.T @ gh, gh.sum(axis=0), h.T @ gz, gz.sum(axis=0)]
            t += 1
            for i, g in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                params[i] -= lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
        seconds += time.perf_counter() - t0
        history.append({"epoch": epoch, "seconds": seconds,
                        **{f"{s}_{k}": val for s in ("valid", "test")
                           for k, val in metrics(forward(xs[s])[1], data["dense"][s][1]).items()}})
    best = min(history, key=lambda e: e["valid_loss"])
    return {"width": width, "lr": lr, "history": history, "best": best}


def mlp_runs(data: dict, cfg: dict) -> dict:
    out = {}
    for width in cfg["mlp_widths"]:
        runs = [mlp(data, width, lr, cfg["mlp_epochs"], cfg["mlp_batch"]) for lr in cfg["mlp_lrs"]]
        out[width] = min(runs, key=lambda r: r["best"]["valid_loss"])
        out[width]["lr_grid"] = {str(r["lr"]): r["best"]["valid_loss"] for r in runs}
        b = out[width]["best"]
        log(f"{data['name']}: MLP width {width}, lr {out[width]['lr']}: best valid at epoch "
            f"{b['epoch']}, test {b['test_accuracy']:.4f}")
    return out


# --------------------------------------------------------------------------- report
def mlp_by_width(res: dict) -> dict[int, dict]:
    """The MLP runs by width (JSON keeps the widths as strings)."""
    return {int(w): r for w, r in sorted(res["mlp"].items(), key=lambda kv: int(kv[0]))}


def other_run(a: dict | None, b: dict) -> bool:
    """Whether `a` is a growth run other than `b` (the grid's settings tell them apart)."""
    return a is not None and any(a[k] != b[k] for k in ("hidden_moves", "ridge", "l2"))


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = res["growth"]["chosen"]["steps"]
    single = res["single"]["test"]
    mlps = mlp_by_width(res)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, key in enumerate(("accuracy", "loss")):
        ax = axes[row][0]
        ax.plot([s["width"] for s in steps[1:]], [s[f"test_{key}"] for s in steps[1:]], "o-",
                label="grown (streamfit grow)")
        widths = sorted(mlps)
        ax.plot(widths, [mlps[w]["best"][f"test_{key}"] for w in widths], "s--",
                label="MLP, backprop + Adam (best valid epoch)")
        ax.axhline(single[key], color="gray", ls=":", label="single-layer optimum")
        ax.set_xlabel("hidden units")
        ax.set_ylabel(f"test {'cross-entropy' if key == 'loss' else key}")
        ax = axes[row][1]
        ax.plot([s["seconds"] for s in steps[1:]], [s[f"test_{key}"] for s in steps[1:]], "o-",
                label="grown")
        wide = mlps[max(mlps)]
        ax.plot([e["seconds"] for e in wide["history"]], [e[f"test_{key}"] for e in wide["history"]],
                "-", label=f"MLP width {wide['width']} (per epoch)")
        ax.axhline(single[key], color="gray", ls=":", label="single-layer optimum")
        ax.set_xscale("log")
        ax.set_xlabel("seconds (training)")
        if key == "loss":
            for a in axes[row]:
                a.set_yscale("log")
    for a in axes.ravel():
        a.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=8)
    fig.suptitle(f"{LABELS[res['name']]}: growth vs single layer vs MLP")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def dataset_text(res: dict) -> list[str]:
    name, single = LABELS[res["name"]], res["single"]
    ch = res["growth"]["chosen"]
    last = ch["steps"][-1]
    best = max(ch["steps"], key=lambda s: s["heldout_accuracy"])
    mlps = mlp_by_width(res)
    widest = mlps[max(mlps)]
    same = mlps.get(last["width"])
    gain = 100 * (last["test_accuracy"] - single["test"]["accuracy"])
    L = [f"## {name}", "",
         f"`{res['folder']}`: {res['n']['train']:,} / {res['n']['valid']:,} / {res['n']['test']:,} "
         f"examples (train / valid / test), {res['d']} features, 10 classes.", "",
         f"![growth]({res['plot']})", "",
         "| model | test cross-entropy | test accuracy | training passes | seconds |",
         "|---|---|---|---|---|",
         (f"| single-layer optimum (L-BFGS from zeros, l2 {single['l2']:g} on valid) | "
          f"{single['test']['loss']:.4f} | {single['test']['accuracy']:.4f} | {single['passes']} | "
          f"{single['seconds']:.2f} |"),
         (f"| grown, {last['width']} units (hidden moves {ch['hidden_moves']}, ridge "
          f"{ch['ridge']:g}, l2 {ch['l2']:g} on valid) | "
          f"{last['test_loss']:.4f} | {last['test_accuracy']:.4f} | {last['passes']} | "
          f"{last['seconds']:.2f} |"),
         (f"| grown, best width on valid ({best['width']} units) | {best['test_loss']:.4f} | "
          f"{best['test_accuracy']:.4f} | {best['passes']} | {best['seconds']:.2f} |")]
    frozen = res["growth"]["frozen"]
    if other_run(frozen, ch):
        fl = frozen["steps"][-1]
        L.append(f"| grown with frozen units (hidden moves 0: new units only), {fl['width']} "
                 f"units (ridge {frozen['ridge']:g}, l2 {frozen['l2']:g} on valid) | "
                 f"{fl['test_loss']:.4f} | {fl['test_accuracy']:.4f} | {fl['passes']} | "
                 f"{fl['seconds']:.2f} |")
    for w, r in mlps.items():
        L.append(f"| MLP width {w}, Adam lr {r['lr']:g} (valid), best valid epoch | "
                 f"{r['best']['test_loss']:.4f} | {r['best']['test_accuracy']:.4f} | "
                 f"{r['best']['epoch']} epochs | {r['best']['seconds']:.2f} |")
    L += ["", "Growth per step (test figures; passes and seconds cumulative):", "",
          "| step | width | units' gain Σλ² | hidden layer's gain | its moves s "
          "| train loss | valid loss | test loss | test accuracy | passes | seconds |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in ch["steps"]:
        g = "–" if s["unit_gain"] is None else f"{s['unit_gain']:.2e}"
        hg = "–" if s["hidden_gain"] is None else f"{s['hidden_gain']:.2e}"
        mv = ", ".join(f"{v:g}" for v in s["hidden_steps"]) or "–"
        L.append(f"| {s['step']} | {s['width']} | {g} | {hg} | {mv} | {s['train_loss']:.4f} | "
                 f"{s['heldout_loss']:.4f} | {s['test_loss']:.4f} | {s['test_accuracy']:.4f} | "
                 f"{s['passes']} | {s['seconds']:.2f} |")
    L += ["", "Growth grid (valid cross-entropy / accuracy at the last width; test accuracy "
          "for reference only): " + "; ".join(
              f"hidden moves {g['hidden_moves']} ridge {g['ridge']:g} l2 {g['l2']:g}: "
              f"{g['valid_loss']:.4f} / {g['valid_accuracy']:.4f} (test {g['test_accuracy']:.4f})"
              for g in res["growth"]["grid"]) + f". Stopped at: {ch['stopped']}.", ""]
    v = res["variants"]
    L += ["What the output layer reads, on the grown hidden layer (test cross-entropy / accuracy):", "",
          "| output layer | test cross-entropy | test accuracy |", "|---|---|---|",
          f"| [h; 1], L-BFGS (as grown) | {v['grown']['test']['loss']:.4f} | {v['grown']['test']['accuracy']:.4f} |",
          (f"| h / sum(h), explicit solution (calibrated, {v['explicit']['seconds']:.2f} s) | "
           f"{v['explicit']['test']['loss']:.4f} | {v['explicit']['test']['accuracy']:.4f} |"),
          (f"| h / sum(h), explicit solution + 100 L-BFGS passes | "
           f"{v['explicit_refined']['test']['loss']:.4f} | {v['explicit_refined']['test']['accuracy']:.4f} |"),
          (f"| [x̃; h; 1] (skip connection), L-BFGS | {v['skip']['test']['loss']:.4f} | "
           f"{v['skip']['test']['accuracy']:.4f} |"),
          ""]
    L += [f"- Against the single-layer optimum: grown {last['test_accuracy']:.4f} vs "
          f"{single['test']['accuracy']:.4f} ({gain:+.2f} points), cross-entropy "
          f"{last['test_loss']:.4f} vs {single['test']['loss']:.4f}. Beating it clearly (at least "
          f"{CLEARLY:g} point and a lower cross-entropy): "
          + _met(gain >= CLEARLY and last["test_loss"] < single["test"]["loss"]) + "."]
    if other_run(frozen, ch):
        fl = frozen["steps"][-1]
        L.append(f"- Moving the existing hidden units (hidden moves {ch['hidden_moves']}) against "
                 f"new units only: test {last['test_accuracy']:.4f} vs {fl['test_accuracy']:.4f} "
                 f"({100 * (last['test_accuracy'] - fl['test_accuracy']):+.2f} points), "
                 f"cross-entropy {last['test_loss']:.4f} vs {fl['test_loss']:.4f}, "
                 f"{last['passes']} vs {fl['passes']} passes, {last['seconds']:.2f} vs "
                 f"{fl['seconds']:.2f} s.")
    if same is not None:
        L.append(f"- Against the MLP of the same width ({last['width']}): MLP "
                 f"{same['best']['test_accuracy']:.4f} (cross-entropy {same['best']['test_loss']:.4f}) "
                 f"after {same['best']['epoch']} epochs, {same['best']['seconds']:.2f} s; growth "
                 f"{last['test_accuracy']:.4f} after {last['passes']} passes, {last['seconds']:.2f} s.")
    reach = next((e for e in widest["history"] if e["test_accuracy"] >= last["test_accuracy"]), None)
    L.append(f"- The MLP of width {widest['width']} "
             + (f"first reached the grown model's test accuracy at epoch {reach['epoch']} "
                f"({reach['seconds']:.2f} s)" if reach else
                f"never reached the grown model's test accuracy in {len(widest['history'])} epochs")
             + f"; growth took {last['passes']} passes and {last['seconds']:.2f} s.")
    return L + [""]


USAGE = [
    "## What `streamfit grow` does", "",
    ("It grows a 2-layer model softmax(W·[h; 1]), h = relu(x̃·A + a₀), from no hidden units, "
     "with streaming passes and no end-to-end backpropagation (seed 003, METHODS.md §5). Each "
     "step: one pass sums the statistics S, M, S₂, M₂, P (float64 sums that add across shards); "
     "in closed form, the best move of the output weights Δ = −S⁺M and, from the SVD of "
     "S₂^{−1/2}(−M₂ + P S⁺ M), new units where the output layer cannot follow the loss gradient, "
     "and the best move of the existing hidden layer Δ_A = −S₂⁻¹M₁ (M₁ = E[x̃ g₁ᵀ], g₁ the loss "
     "gradient at the hidden pre-activations, summed in the same pass); the amplitudes of the "
     "units and of Δ_A are chosen among 15 candidates each in one pass over the validation "
     "data; then the output layer (convex on the hidden features) is re-solved by L-BFGS "
     "passes. `--hidden-moves H` repeats the move of the hidden layer up to H "
     "times per step (one more pass, its amplitude on valid, the output layer re-solved). "
     "This page measures growth alone (`--tune-passes 0`), with the settings of each row; "
     "the command's defaults now grow with frozen units (`--hidden-moves 0`) and end with 10 "
     "tuning passes of both layers: measured against scikit-learn's MLP in "
     "[classify.md](classify.md)."), "",
    "```sh",
    "streamfit grow train.parquet --validation valid.parquet --out grown.npy --max-width 256",
    "streamfit evaluate --weights grown.npy test.parquet",
    "streamfit predict --weights grown.npy test.parquet --out predictions.parquet",
    "streamfit refine --weights grown.npy train.parquet --method lbfgs --passes 50 --out refined.npy",
    "streamfit grow train.parquet --weights grown.npy --max-width 512 --out wider.npy   # keep growing",
    "```", "",
    ("Files: `grown.npy` (W, units × classes), `grown.A.npy` (features × units), `grown.a0.npy`, "
     "`grown.bias.npy`, memory-mapped, and the sidecar `grown.model.json` with the settings and a log "
     "per step. The model is rewritten after every step, so a killed run leaves the last "
     "finished step, and `--weights` continues from it. `refine` of a 2-layer model refines "
     "its output layer on the frozen hidden features (lbfgs, sgd, adam; gis needs inputs "
     "summing to 1 and is refused)."), "",
    ("Choices. Each direction becomes a pair of units ±(α, ω): relu(t) − relu(−t) = t, so a pair "
     "adds exactly the linear change the first-order step asks for, and the re-solved output "
     "layer then weighs its halves apart. The output layer reads [h; 1]: no skip connection "
     "(with one, the new units' first-order gain is zero once the output layer is solved), "
     "and h is not divided by its sum (which would make a new unit's effect non-linear in its "
     "weights and break the closed form) — the table of output layers below measures both "
     "alternatives on the grown hidden layer. `--ridge` adds ρ = ridge × the mean eigenvalue to "
     "S₂ before whitening (reduced-rank ridge regression): without it, rarely active inputs "
     "(border pixels) dominate the new units and MNIST-5k overfits badly. Every unit's "
     "pre-activation is scaled to mean square 1, so `--l2` on the output weights means the "
     "same for every unit."), "",
    ("Limits. S₂ is (d+1) × (d+1) and is eigendecomposed: growth refuses inputs above 4,096 "
     "features with a message that says so (a token corpus has window × (vocabulary + 1) "
     "features: small vocabularies only). N has rank at most classes − 1, so a step adds at "
     "most 2 × (classes − 1) units. The first-order signal is the linear correlation between "
     "the inputs and what the output layer cannot fit; once the training loss is small it "
     "fades (the units' gain column below), and new units alone stop adding much; the hidden "
     "layer's own gain stays larger, which is why moving the existing units helps. Each move "
     "of the hidden layer is one natural-gradient step (preconditioned by S₂) with a line "
     "search: training of the first layer by full-batch passes, which converges more slowly "
     "per pass than mini-batch Adam."), "",
]


def page_lines(results: dict, meta: dict) -> list[str]:
    L = ["# Growing hidden units: against the single layer and backpropagation", "",
         "*Generated by `tools/bench_grow.py` — do not edit by hand; rerun instead:*", "",
         "```sh", meta["command"], "```", "",
         (f"Run {meta['date']} on {meta['machine']['cpu']}, {meta['machine']['cores']} cores; "
          f"Python {meta['machine']['python']}, numpy {meta['machine']['numpy']}; streamfit "
          f"{meta['machine']['streamfit']} at commit {meta['machine']['commit']}. Mode: "
          f"{meta['mode']}. Total {meta['wall_s'] / 60:.1f} min. Load average (1 min) at the start "
          f"{meta['load_start']:.2f}, at the end {meta['machine']['load_average_end'][0]:.2f}: other "
          f"work on the machine "
          f"slows every timing here, growth's and the MLP's alike."), "",
         ("Protocol: train fits, valid makes every choice (hidden moves, ridge, l2, every "
          "amplitude, the learning rate, the MLP's epoch), test only reports. Splits are held "
          "in memory. Growth seconds: training passes, closed form and the amplitude searches "
          "on valid, without the per-step valid evaluation "
          "and model write. A growth pass is one streaming pass over train (statistics, or one "
          "L-BFGS evaluation of the output layer); an MLP pass is one epoch of mini-batch "
          "backpropagation (batch 64) on x̃ centred and divided by one global standard deviation."), "",
         *USAGE, "## Targets", ""]
    for n, res in results.items():
        last = res["growth"]["chosen"]["steps"][-1]
        single = res["single"]["test"]
        gain = 100 * (last["test_accuracy"] - single["accuracy"])
        L.append(f"- {LABELS[n]}: beat the single-layer optimum clearly — "
                 + _met(gain >= CLEARLY and last["test_loss"] < single["loss"])
                 + f" ({last['test_accuracy']:.4f} vs {single['accuracy']:.4f}, {gain:+.2f} points).")
        if n == "mnist5k":
            L.append(f"- MNIST-5k: at least {MNIST_TARGET:.0%} test accuracy — "
                     + _met(last["test_accuracy"] >= MNIST_TARGET)
                     + f" ({last['test_accuracy']:.4f} at {last['width']} units).")
    L.append("")
    for res in results.values():
        L += dataset_text(res)
    return L


def render(saved: dict, out_dir: Path, *, plots: bool = True) -> Path:
    """growth.md (and, with `plots`, its PNG plots) in `out_dir`, from saved results."""
    figures = [(plot, res, res["plot"]) for res in saved["results"].values()] if plots else []
    return write_page(out_dir, "growth.md", page_lines(saved["results"], saved["meta"]), figures)


def run_dataset(n: str, args, tmp: Path) -> dict:
    cfg = CONFIG[args.mode][n]
    data = load(n, digits_corpus(Path(args.data), n))
    res = {"name": n, "folder": relative(data["folder"]), "d": data["d"],
           "n": {s: int(data["dense"][s][1].size) for s in SPLITS}}
    res["single"] = single_layer(data, cfg, tmp)
    log(f"{n}: single-layer optimum test {res['single']['test']['accuracy']:.4f}")
    res["growth"] = growth_runs(data, cfg, tmp)
    res["variants"] = output_variants(data, res["growth"]["chosen"], tmp)
    res["mlp"] = mlp_runs(data, cfg)
    res["plot"] = f"growth-{n}.png"
    for run in (res["growth"]["chosen"], res["growth"]["frozen"]):
        if run:
            run.pop("path", None)
    return res


def main(argv: list[str] | None = None) -> int:
    return page_main(argv, __doc__.split("\n\n")[0], "bench_grow.py", "growth", datasets=DATASETS,
                     quick="smaller widths and grids (~2 min)", render=render, run=run_dataset)


if __name__ == "__main__":
    sys.exit(main())
