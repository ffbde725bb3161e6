"""finalize without --heldout (issue 14, part 5): feature corpora get τ and β fitted on
the training rows the statistics name, so that the default model's probabilities are not
near uniform; token corpora keep the exact conditional solution."""
from __future__ import annotations

import json

import numpy as np
from scipy.special import log_softmax

from streamfit.cli import main
from streamfit.model.weights import load_model

from conftest import write_dense


def digits_like(rng, n):
    """8×8 'images' with values 0..16: a noisy prototype per class (as sklearn's digits)."""
    protos = np.random.default_rng(0).random((10, 64)) ** 2 * 16
    y = rng.integers(0, 10, n)
    x = np.clip(protos[y] + rng.normal(0, 3.0, (n, 64)), 0, 16).round()
    return x, y


def run(capsys, *args):
    assert main([*map(str, args), "--quiet"]) == 0
    return capsys.readouterr()


def test_features_are_calibrated_on_the_training_rows_without_heldout(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x, y = digits_like(rng, 600)
    xt, yt = digits_like(rng, 300)
    train = write_dense(tmp_path / "train.parquet", y, x, row_group_size=128)
    test = write_dense(tmp_path / "test.parquet", yt, xt)
    run(capsys, "accumulate", train, "--stats", tmp_path / "st")
    out = run(capsys, "finalize", "--stats", tmp_path / "st", "--out", tmp_path / "d.npy").out
    assert "fitted on the training rows" in out
    run(capsys, "finalize", "--stats", tmp_path / "st", "--out", tmp_path / "c.npy",
        "--form", "conditional")
    meta = load_model(tmp_path / "d.npy").meta
    assert meta["form"] == "calibrated" and meta["calibration"]["on"] == "training rows"
    assert meta["smoothing"] == 0.01   # only τ and β are fitted on the training rows

    def test_ce(weights):
        return json.loads(run(capsys, "evaluate", "--weights", weights, test, "--json").out)

    default, conditional = test_ce(tmp_path / "d.npy"), test_ce(tmp_path / "c.npy")
    # oracle: the conditional form's probabilities by numpy from the statistics' definition
    xn = xt / xt.sum(axis=1, keepdims=True)
    f = np.zeros((64, 10))
    np.add.at(f, (slice(None), y), (x / x.sum(axis=1, keepdims=True)).T)
    w = np.log(f + 0.01) - np.log(f.sum(axis=1, keepdims=True) + 0.1)
    ref = -log_softmax(xn @ w, axis=1)[np.arange(len(yt)), yt].mean()
    assert abs(conditional["cross_entropy"] - ref) < 1e-4
    assert conditional["cross_entropy"] > 0.7 * np.log(10)          # near uniform
    assert default["cross_entropy"] < 0.5 * conditional["cross_entropy"]
    assert default["accuracy"] >= conditional["accuracy"] - 0.02


def test_tokens_keep_the_conditional_form_and_gone_files_fall_back(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 20, 50).tolist() for _ in range(20)]
    pq.write_table(pa.table({"tokens": docs}), tmp_path / "t.parquet")
    run(capsys, "accumulate", tmp_path / "t.parquet", "--stats", tmp_path / "ts", "--window", 1)
    run(capsys, "finalize", "--stats", tmp_path / "ts", "--out", tmp_path / "t.npy")
    assert load_model(tmp_path / "t.npy").meta["form"] == "conditional"

    x, y = digits_like(rng, 100)
    train = write_dense(tmp_path / "f.parquet", y, x)
    run(capsys, "accumulate", train, "--stats", tmp_path / "fs")
    train.unlink()
    err = run(capsys, "finalize", "--stats", tmp_path / "fs", "--out", tmp_path / "f.npy").err
    assert "gone or changed" in err
    assert load_model(tmp_path / "f.npy").meta["form"] == "conditional"
