"""Complement coding (issue 14, part 2): rows x in [0, 1] read as [x, 1 − x], decided at
accumulate, recorded in the statistics and the model, and applied identically by
finalize's calibration, evaluate, predict, refine and grow. Oracles: numpy on the encoded
rows built here."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from streamfit.cli import main
from streamfit.count.accumulate import Accumulator
from streamfit.data.featurize import FeatureRows, encode_rows
from streamfit.errors import InputError, OptionError
from streamfit.model.weights import load_model

from conftest import write_dense


def run(capsys, *args, code=0):
    assert main([*map(str, args), "--quiet"]) == code
    return capsys.readouterr()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    rng = np.random.default_rng(5)
    n, d, c = 240, 6, 3
    y = rng.integers(0, c, n)
    x = np.clip(rng.random((n, d)) * 0.7 + 0.3 * (y[:, None] == np.arange(d) % c), 0, 1)
    x[rng.random((n, d)) < 0.2] = 0.0
    return {"x": x, "y": y, "d": d, "c": c, "root": root,
            "train": write_dense(root / "train.parquet", y[:180], x[:180], row_group_size=50),
            "test": write_dense(root / "test.parquet", y[180:], x[180:])}


def encoded(x):
    return np.hstack([x, 1 - x]) / x.shape[1]


def test_encode_rows_is_complement_coding_and_refuses_values_above_one():
    rows = FeatureRows(np.array([0, 2, 2, 3]), np.array([0, 2, 1]), np.array([0.5, 1.0, 0.25]),
                       np.array([0, 1, 2]), 3)
    out = encode_rows(rows, "complement")
    dense = np.zeros((3, 6))
    np.add.at(dense, (np.repeat(np.arange(3), np.diff(out.indptr)), out.indices), out.values)
    x = np.array([[0.5, 0, 1.0], [0, 0, 0], [0, 0.25, 0]])
    np.testing.assert_array_equal(dense, np.hstack([x, 1 - x]))
    assert out.n_features == 6 and encode_rows(rows, "normalised") is rows
    bad = FeatureRows(np.array([0, 1, 2]), np.array([0, 1]), np.array([0.5, 1.5]),
                      np.array([0, 1]), 2)
    with pytest.raises(InputError, match=r"row 1.*outside \[0, 1\]"):
        encode_rows(bad, "complement")
    with pytest.raises(OptionError, match="dense feature"):
        Accumulator("classify", features=None, encoding="complement")
    with pytest.raises(OptionError, match="encoding must be"):
        Accumulator("classify", encoding="onehot")


def test_complement_statistics_model_and_commands(data, capsys, tmp_path):
    x, y, d, c = data["x"], data["y"], data["d"], data["c"]
    st = tmp_path / "st"
    run(capsys, "accumulate", data["train"], "--stats", st, "--encoding", "complement")
    manifest = json.loads((st / "manifest.json").read_text())
    assert manifest["encoding"] == "complement" and manifest["n_features"] == 2 * d
    run(capsys, "finalize", "--stats", st, "--out", tmp_path / "w.npy", "--form", "conditional")
    model = load_model(tmp_path / "w.npy")
    assert model.encoding == "complement" and model.n_features == 2 * d
    from pathlib import Path
    from jsonschema import Draft202012Validator
    schemas = Path(__file__).resolve().parents[1] / "data_schemas"
    for doc, schema in ((manifest, "statistics_manifest"), (model.meta, "weights")):
        validator = Draft202012Validator(json.loads((schemas / f"{schema}.schema.json").read_text()))
        assert [e.message for e in validator.iter_errors(doc)] == []
    # oracle: the conditional solution of the encoded rows
    xt = encoded(x[:180])
    f = np.zeros((2 * d, c))
    np.add.at(f.T, y[:180], xt)
    w = np.log(f + 0.01) - np.log(f.sum(axis=1, keepdims=True) + 0.01 * c)
    np.testing.assert_allclose(np.asarray(model.dense, np.float64), w, rtol=1e-5, atol=1e-5)
    got = json.loads(run(capsys, "evaluate", "--weights", tmp_path / "w.npy", data["test"],
                         "--json").out)
    xs, ys = encoded(x[180:]), y[180:]
    ref = -log_softmax(xs @ w, axis=1)[np.arange(len(ys)), ys].mean()
    assert got["cross_entropy"] == pytest.approx(ref, rel=1e-5)
    # refine and predict read the rows the same way
    run(capsys, "refine", "--weights", tmp_path / "w.npy", data["train"], "--passes", 3,
        "--out", tmp_path / "r.npy")
    refined = load_model(tmp_path / "r.npy")
    assert refined.encoding == "complement"
    wr = np.asarray(refined.dense, np.float64) + (0 if refined.bias is None else refined.bias)
    got = json.loads(run(capsys, "evaluate", "--weights", tmp_path / "r.npy", data["test"],
                         "--json").out)
    assert got["cross_entropy"] == pytest.approx(
        -log_softmax(xs @ wr, axis=1)[np.arange(len(ys)), ys].mean(), rel=1e-5)
    assert got["cross_entropy"] < ref
    run(capsys, "predict", "--weights", tmp_path / "r.npy", data["test"], "--out",
        tmp_path / "p.parquet")
    import pyarrow.parquet as pq
    top = np.array(pq.read_table(tmp_path / "p.parquet").column("top_classes").to_pylist())[:, 0]
    np.testing.assert_array_equal(top, (xs @ wr).argmax(axis=1))
    # grow from the same corpus records and applies the encoding
    run(capsys, "grow", data["train"], "--out", tmp_path / "g.npy", "--encoding", "complement",
        "--max-width", 4, "--units-per-step", 2, "--output-passes", 2)
    grown = load_model(tmp_path / "g.npy")
    assert grown.encoding == "complement" and grown.n_features == 2 * d
    run(capsys, "evaluate", "--weights", tmp_path / "g.npy", data["test"], "--json")


def test_mixing_encodings_is_refused_and_outside_values_name_the_row(data, capsys, tmp_path):
    run(capsys, "accumulate", data["train"], "--stats", tmp_path / "a", "--encoding", "complement")
    run(capsys, "accumulate", data["test"], "--stats", tmp_path / "b")
    err = run(capsys, "merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m", code=1).err
    assert "complement" in err
    # adding rows to complement statistics keeps their encoding
    run(capsys, "accumulate", data["test"], "--stats", tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["encoding"] == "complement" and manifest["n_examples"] == 240
    big = write_dense(tmp_path / "big.parquet", [0, 1], [[0.5, 2.0], [0.1, 0.2]])
    err = run(capsys, "accumulate", big, "--stats", tmp_path / "c", "--encoding", "complement",
              code=1).err
    assert "outside [0, 1]" in err and "big.parquet" in err and not (tmp_path / "c" / "manifest.json").exists()
