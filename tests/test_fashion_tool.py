"""tools/make_fashion_corpus.py on tiny hand-made idx files (the real Debian package is not
needed): the documented split, schema and scaling, gzip and plain sources alike, and an
up-to-date corpus left untouched."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_fashion_corpus",
                                                  TOOLS / "make_fashion_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(arr: np.ndarray) -> bytes:
    """An idx file of unsigned bytes: magic 0 0 0x08 ndim, big-endian sizes, the data."""
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                      for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_source(folder: Path, n_train: int, n_test: int, gz: bool):
    rng = np.random.default_rng(5)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 3, 2)),
              "train-labels-idx1-ubyte": rng.integers(0, 4, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 3, 2)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 4, n_test)}
    folder.mkdir()
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_split_schema_and_values(tool, tmp_path, monkeypatch, gz):
    monkeypatch.setattr(tool, "N_VALID", 3)
    arrays = write_source(tmp_path / "src", 20, 7, gz)
    meta, built = tool.build(tmp_path / "src", tmp_path / "out", row_group=4)
    assert built and meta["examples"] == {"train": 17, "valid": 3, "test": 7}
    order = np.random.default_rng(0).permutation(20)
    images = arrays["train-images-idx3-ubyte"].reshape(20, 6)
    labels = arrays["train-labels-idx1-ubyte"]
    expect = {"train": order[3:], "valid": order[:3]}
    for split in ("train", "valid", "test"):
        table = pq.read_table(tmp_path / "out" / f"{split}.parquet")
        assert table.schema.field("label").type == "int64"
        assert str(table.schema.field("features").type) == "list<element: float>"
        idx = np.asarray(table.column("index"))
        if split == "test":
            np.testing.assert_array_equal(idx, np.arange(7))
            src_x = arrays["t10k-images-idx3-ubyte"].reshape(7, 6)
            src_y = arrays["t10k-labels-idx1-ubyte"]
        else:
            np.testing.assert_array_equal(idx, expect[split])
            src_x, src_y = images[idx], labels[idx]
        x = np.stack(table.column("features").to_pylist())
        np.testing.assert_array_equal(x, (src_x.astype(np.float32) / np.float32(255)))
        np.testing.assert_array_equal(np.asarray(table.column("label")), src_y)
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{split}_x.npy"), x)
        assert pq.ParquetFile(tmp_path / "out" / f"{split}.parquet").metadata.num_row_groups \
            == -(-len(idx) // 4)
    assert json.loads((tmp_path / "out" / "corpus.json").read_text()) == meta


def test_idempotent_and_forced(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tool, "N_VALID", 3)
    write_source(tmp_path / "src", 12, 4, True)
    args = ["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    assert tool.main(args) == 0
    stamp = (tmp_path / "out" / "train.parquet").stat().st_mtime_ns
    assert tool.main(args) == 0
    assert "up to date" in capsys.readouterr().err
    assert (tmp_path / "out" / "train.parquet").stat().st_mtime_ns == stamp
    assert tool.main(args + ["--force"]) == 0
    assert "built" in capsys.readouterr().err


def test_missing_source_is_one_line(tool, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert tool.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "dataset-fashion-mnist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
