#!/usr/bin/env python
"""Which explicit solution should be the default? Every form, measured on real data.

For each dataset: accumulate the train split once, finalize each form (conditional and
paper at a fixed smoothing, then each with the smoothing chosen on the valid split, and
calibrated), evaluate on the test split. The valid split is only used for choices; test
only for the figures.

Datasets:
- stdlib: the embedded default token corpus (tools/make_stdlib_corpus.py), windows 1..3;
- digits: scikit-learn's 8×8 digits (1,797 real images; needs the `bench` extra), a fixed
  60/20/20 split by a seeded permutation.

    python tools/bench_forms.py [--datasets stdlib,digits] [--windows 1,2,3] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamfit.count import accumulate
from streamfit.model.evaluate import evaluate, iter_examples
from streamfit.solve.explicit import finalize
from streamfit.solve.forms import DEFAULT_SMOOTHING

HERE = Path(__file__).resolve().parent


def stdlib_splits(data: Path) -> dict[str, Path]:
    corpus = data / "stdlib"
    if not (corpus / "corpus.json").exists():
        subprocess.run([sys.executable, str(HERE / "make_stdlib_corpus.py"), "--out", str(corpus),
                        "--quiet"], check=True)
    return {s: corpus / f"{s}.parquet" for s in ("train", "valid", "test")}


def digits_splits(folder: Path) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    cut = [0, int(0.6 * len(y)), int(0.8 * len(y)), len(y)]
    out = {}
    for name, lo, hi in zip(("train", "valid", "test"), cut[:-1], cut[1:]):
        idx = order[lo:hi]
        feats = pa.array([row.astype(np.float32) for row in x[idx]], type=pa.list_(pa.float32()))
        out[name] = folder / f"digits-{name}.parquet"
        pq.write_table(pa.table({"label": pa.array(y[idx], pa.int64()), "features": feats}), out[name])
    return out


def run_forms(splits: dict[str, Path], folder: Path, **acc_options) -> list[dict]:
    t0 = time.perf_counter()
    stats = accumulate([splits["train"]], **acc_options)
    t_acc = time.perf_counter() - t0
    rows = []
    configs = [("conditional", DEFAULT_SMOOTHING), ("paper", DEFAULT_SMOOTHING),
               ("conditional", "auto"), ("paper", "auto"), ("calibrated", "auto")]
    for form, smoothing in configs:
        heldout = None
        if smoothing == "auto" or form == "calibrated":
            heldout = iter_examples([splits["valid"]], task=stats.task, window=stats.window,
                                    n_classes=stats.n_classes, n_features=stats.n_features)
        t0 = time.perf_counter()
        model = finalize(stats, folder / f"w-{form}-{smoothing}.npy", form=form, smoothing=smoothing,
                         heldout=heldout, layout="sparse")
        t_fin = time.perf_counter() - t0
        r = evaluate(model, [splits["test"]])
        rows.append({"form": form, "smoothing": model.meta["smoothing"],
                     "chosen_on_valid": smoothing == "auto", "tau": model.meta["tau"],
                     "beta": model.meta["beta"], "test_cross_entropy": r["cross_entropy"],
                     "test_perplexity": r["perplexity"], "test_accuracy": r["accuracy"],
                     "accumulate_s": t_acc, "finalize_s": t_fin, "n_test": r["n"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="stdlib,digits")
    ap.add_argument("--windows", default="1,2,3", help="stdlib context windows (default: 1,2,3)")
    ap.add_argument("--data", default="data", help="where the stdlib corpus lives (default: data)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.datasets.split(","):
            if name == "stdlib":
                splits = stdlib_splits(Path(args.data))
                for w in map(int, args.windows.split(",")):
                    results[f"stdlib window {w}"] = run_forms(splits, folder, window=w)
            elif name == "digits":
                try:
                    splits = digits_splits(folder)
                except ImportError:
                    print("digits: scikit-learn missing (pip install -e '.[bench]'); skipped",
                          file=sys.stderr)
                    continue
                results["digits"] = run_forms(splits, folder)
            else:
                raise SystemExit(f"unknown dataset {name!r}")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, rows in results.items():
        print(f"\n{name} (test: {rows[0]['n_test']:,} examples; accumulate {rows[0]['accumulate_s']:.2f} s)")
        print(f"  {'form':<12}{'smoothing':>14}{'tau':>8}{'beta':>8}{'perplexity':>12}"
              f"{'accuracy':>10}{'finalize s':>12}")
        for r in rows:
            a = f"{r['smoothing']:g}" + (" (valid)" if r["chosen_on_valid"] else "")
            print(f"  {r['form']:<12}{a:>14}{r['tau']:>8.3g}{r['beta']:>8.3g}"
                  f"{r['test_perplexity']:>12.3f}{r['test_accuracy']:>10.4f}{r['finalize_s']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
