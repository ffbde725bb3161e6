#!/usr/bin/env python
"""Build the Fashion-MNIST feature corpus from the Debian package ``dataset-fashion-mnist``.

Source (``--source DIR``, no network)
    The four idx files the package installs under ``/usr/share/datasets/fashion-mnist``
    (``apt-get install dataset-fashion-mnist``; or ``apt-get download`` it and
    ``dpkg-deb -x`` the .deb, then point ``--source`` at ``usr/share/datasets/fashion-mnist``):
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or plain.  60,000 + 10,000 images of
    28×28 = 784 pixels, values 0..255, 10 classes.

Split (fixed, seeded; the same on every machine with the same numpy)
    ``order = numpy.random.default_rng(0).permutation(60000)``; valid = the images
    ``order[:6000]`` of the training file, train = ``order[6000:]`` (54,000, in that
    permuted order); test = the 10,000 images of the t10k file, in file order.

Output (``--out DIR``, default ``data/fashion``)
    ``{train,valid,test}.parquet``: columns ``label: int64``, ``features: list<float32>``
    (dense, pixel / 255 as float32, so in [0, 1]) and ``index: int64`` (the image's row in
    its source file); row groups of ``--row-group`` rows (default 4096) — streamfit's
    ``classify`` format.
    ``{split}_x.npy`` (float32, n×784, pixel / 255) and ``{split}_y.npy`` (int64) with the
    same rows, for numpy references.
    ``corpus.json``: counts, classes, label counts, split rule, the source files' sha256 and
    package versions.
    Everything is written into a temporary directory beside DIR and renamed into place at
    the end.  Idempotent: if DIR's corpus.json already records the same source checksums
    and build settings, nothing is rewritten (``--force`` rebuilds).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamfit.io.files import atomic_directory, file_digest

SEED = 0
N_VALID = 6000
ROW_GROUP_SIZE = 4096
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FORMAT_VERSION = 1
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def find_file(source: Path, stem: str) -> Path:
    """``source/stem.gz`` or ``source/stem`` (gzip preferred), else FileNotFoundError."""
    for name in (stem + ".gz", stem):
        p = source / name
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{source}: neither {stem}.gz nor {stem} found (install the Debian package "
        f"dataset-fashion-mnist, or pass --source DIR holding the idx files)")


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip-compressed if its name ends in .gz) into an ndarray."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic)")
    dtype = _IDX_DTYPES.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown idx type code 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if offset + count * np.dtype(dtype).itemsize != len(data):
        raise ValueError(f"{path}: size does not match header shape {shape}")
    return arr.reshape(shape)


def load(source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The four arrays (images flattened to n×784 uint8) and each source file's sha256."""
    paths = {k: find_file(source, stem) for k, stem in FILES.items()}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{part}: unexpected shapes {x.shape}, {y.shape}")
        arrays[f"{part}_images"] = x.reshape(x.shape[0], -1)
    checks = {p.name: file_digest(p)["sha256"] for p in paths.values()}
    return arrays, checks


def split_indices(n_train_file: int, n_valid: int | None = None, seed: int = SEED):
    """Rows of the training file for (train, valid), see the module docstring."""
    n_valid = N_VALID if n_valid is None else n_valid
    order = np.random.default_rng(seed).permutation(n_train_file)
    return order[n_valid:], order[:n_valid]


def _write_parquet(path: Path, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
                   row_group: int) -> None:
    n, width = x.shape
    values = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, pa.int32())
    table = pa.table({
        "label": pa.array(y.astype(np.int64), pa.int64()),
        "features": pa.ListArray.from_arrays(offsets, values),
        "index": pa.array(idx.astype(np.int64), pa.int64()),
    })
    pq.write_table(table, path, row_group_size=row_group)


def _settings(row_group: int) -> dict:
    return {"format_version": FORMAT_VERSION, "seed": SEED, "n_valid": N_VALID,
            "row_group_size": row_group, "scale": "pixel / 255 as float32"}


def is_current(out: Path, checks: dict[str, str], row_group: int) -> bool:
    """True if ``out`` already holds this build (same sources and settings, all files)."""
    meta_path = out / "corpus.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta.get("source_sha256") != checks or meta.get("settings") != _settings(row_group):
        return False
    return all((out / f).is_file() for f in meta.get("files", []))


def build(source: Path, out: Path, row_group: int = ROW_GROUP_SIZE,
          force: bool = False) -> tuple[dict, bool]:
    """Build the corpus into ``out`` atomically; returns (corpus.json content, rebuilt?)."""
    arrays, checks = load(source)
    if not force and is_current(out, checks, row_group):
        return json.loads((out / "corpus.json").read_text(encoding="utf-8")), False

    tr_idx, va_idx = split_indices(arrays["train_images"].shape[0])
    te_idx = np.arange(arrays["test_images"].shape[0])
    splits = {
        "train": (arrays["train_images"][tr_idx], arrays["train_labels"][tr_idx], tr_idx),
        "valid": (arrays["train_images"][va_idx], arrays["train_labels"][va_idx], va_idx),
        "test": (arrays["test_images"], arrays["test_labels"], te_idx),
    }
    n_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    files = []
    with atomic_directory(out) as tmp:
        for name, (img, lab, idx) in splits.items():
            x = img.astype(np.float32) / np.float32(255.0)
            y = lab.astype(np.int64)
            np.save(tmp / f"{name}_x.npy", x)
            np.save(tmp / f"{name}_y.npy", y)
            _write_parquet(tmp / f"{name}.parquet", x, y, idx, row_group)
            files += [f"{name}.parquet", f"{name}_x.npy", f"{name}_y.npy"]
        meta = {
            "dataset": "fashion-mnist",
            "source": f"Debian package dataset-fashion-mnist, idx files in {source}",
            "source_sha256": checks,
            "settings": _settings(row_group),
            "packages": {"numpy": np.__version__, "pyarrow": pa.__version__},
            "examples": {k: int(v[0].shape[0]) for k, v in splits.items()},
            "n_features": int(arrays["train_images"].shape[1]),
            "classes": list(range(n_classes)),
            "class_names": CLASS_NAMES[:n_classes],
            "label_counts": {k: np.bincount(v[1], minlength=n_classes).tolist()
                             for k, v in splits.items()},
            "split": f"order = numpy.random.default_rng({SEED}).permutation(n) over the "
                     f"training file; valid = order[:{N_VALID}], train = the rest; "
                     "test = the t10k file in file order",
            "features": "pixel / 255 as float32, dense list<float32>, in [0, 1]",
            "files": files + ["corpus.json"],
        }
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta, True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Build the Fashion-MNIST corpus (train 54,000 / valid 6,000 / test "
                    "10,000; parquet label int64 + features list<float32> = pixel/255, and "
                    "npy arrays) from the idx files of the Debian package "
                    "dataset-fashion-mnist. No network; idempotent; written atomically.")
    ap.add_argument("--source", default=DEFAULT_SOURCE,
                    help="folder with the four idx files, .gz or plain (default: %(default)s)")
    ap.add_argument("--out", default="data/fashion",
                    help="output folder (default: %(default)s; replaced atomically)")
    ap.add_argument("--row-group", type=int, default=ROW_GROUP_SIZE,
                    help="parquet row-group size in rows (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        meta, rebuilt = build(Path(args.source), Path(args.out), args.row_group, args.force)
    except (FileNotFoundError, ValueError) as e:
        print(f"make_fashion_corpus: {e}", file=sys.stderr)
        return 1
    n = meta["examples"]
    print(f"{args.out}: fashion-mnist, train={n['train']} valid={n['valid']} test={n['test']}, "
          f"{meta['n_features']} features, {len(meta['classes'])} classes "
          f"({'built' if rebuilt else 'up to date'}, {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
