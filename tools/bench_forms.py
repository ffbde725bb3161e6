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
    python tools/bench_forms.py --windows 1,3 --save docs/forms.json   # + the README's table
    python tools/bench_forms.py --render docs/forms.json               # the table again, from the JSON
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import stdlib_corpus  # noqa: E402
from harness import (block_options, command, load_average, load_results, log,  # noqa: E402
                     machine_facts, save_and_render, to_json, utc_now, write_block)

FORMS = ("conditional", "paper", "calibrated")


def stdlib_splits(data: Path) -> dict[str, Path]:
    corpus = stdlib_corpus(data)
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
    from internals import DEFAULT_SMOOTHING, iter_examples
    from streamfit import accumulate, evaluate, finalize

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


def _num(x: float) -> str:
    return f"{x:.3g}".replace("-", "−")


def readme_table(saved: dict) -> list[str]:
    """The README's table: per dataset, each form at the default smoothing and at the one
    chosen on valid (one row where they are the same; paper left out where it is the
    conditional form, K = 1), the best test figures in bold."""
    L = [f"From `{saved['meta']['command']}` (test-split figures; smoothing \"(valid)\" was "
         "chosen on the valid split, the others are the default; digits needs "
         "`pip install -e '.[bench]'`):", "",
         "| data | form | smoothing | τ | β | test perplexity | test accuracy |",
         "|---|---|---|---|---|---|---|"]
    for name, rows in saved["results"].items():
        shown = {}
        for r in rows:   # the default first: a choice on valid of the same value replaces it
            if not (r["form"] == "paper" and r["tau"] == 1 and r["beta"] == 0):
                shown[(r["form"], r["smoothing"])] = r
        shown = sorted(shown.values(), key=lambda r: (FORMS.index(r["form"]), r["chosen_on_valid"]))
        best_ppl = min(r["test_perplexity"] for r in shown)
        best_acc = max(r["test_accuracy"] for r in shown)
        label = "digits (sklearn 8×8)" if name == "digits" else name.replace("stdlib window", "stdlib, window")
        for i, r in enumerate(shown):
            ppl, acc = f"{r['test_perplexity']:.2f}", f"{r['test_accuracy']:.3f}"
            L.append((f"| {label} |" if i == 0 else "| |") + f" {r['form']} | {r['smoothing']:g}"
                     f"{' (valid)' if r['chosen_on_valid'] else ''} | {_num(r['tau'])} | "
                     f"{_num(r['beta'])} | "
                     + (f"**{ppl}**" if r["test_perplexity"] == best_ppl else ppl) + " | "
                     + (f"**{acc}**" if r["test_accuracy"] == best_acc else acc) + " |")
    return L


def render(saved: dict, readme: Path) -> None:
    log(f"{write_block(readme, 'forms', readme_table(saved))}: forms table written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="stdlib,digits")
    ap.add_argument("--windows", default="1,2,3", help="stdlib context windows (default: 1,2,3)")
    ap.add_argument("--data", default="data", help="where the stdlib corpus lives (default: data)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    block_options(ap, "forms")
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.readme))
        return 0
    t_start, load_start = time.perf_counter(), load_average()
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
                    log("digits: scikit-learn missing (pip install -e '.[bench]'); skipped")
                    continue
                results["digits"] = run_forms(splits, folder)
            else:
                raise SystemExit(f"unknown dataset {name!r}")
    if args.save:
        meta = {"command": command("bench_forms.py", argv), "date": utc_now(),
                "machine": machine_facts(), "wall_s": time.perf_counter() - t_start,
                "load_start": load_start}
        save_and_render(args.save, {"meta": meta, "results": results}, render, Path(args.readme))
    if args.json:
        print(to_json(results))
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
