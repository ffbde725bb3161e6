"""data_schemas/ says what streamfit writes and reads; these tests hold the package to it.

- statistics_manifest.schema.json and weights.schema.json (JSON Schema 2020-12) validate
  what `streamfit.save_stats` and `solve.finalize` write, and reject a damaged document
  (so the schemas are not vacuous); the numbers their descriptions define (checksums, the
  bias, F's layout) are recomputed here from the files.
- corpus_schemas.json's column names and types: a corpus built exactly per its text is
  accepted by `streamfit.accumulate` (with the statistics its definition gives), and the
  predictions file has exactly the columns and types it lists.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

jsonschema = pytest.importorskip("jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402

import streamfit  # noqa: E402
from streamfit.model.evaluate import iter_examples, predict  # noqa: E402
from streamfit.solve.explicit import finalize  # noqa: E402
from streamfit.cli import build_parser  # noqa: E402
from streamfit.model.weights import load_model  # noqa: E402

from conftest import (classify_mass_oracle, dense_to_sparse, lm_count_oracle,  # noqa: E402
                      random_feature_rows, write_dense, write_sparse)

SCHEMAS = Path(__file__).resolve().parents[1] / "data_schemas"


def load_schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


@pytest.fixture(scope="module")
def manifest_validator():
    schema = load_schema("statistics_manifest.schema.json")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def weights_validator():
    schema = load_schema("weights.schema.json")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(validator, doc) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def damaged_copy(good: dict, change) -> dict:
    """A deep copy of `good` with `change` applied to it."""
    m = copy.deepcopy(good)
    change(m)
    return m


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- statistics manifests ---------------------------------------------------------------------
@pytest.fixture
def saved_stats(tmp_path, markov_corpus):
    """(name -> (statistics directory, Statistics)) for an lm, a dense and a sparse
    classify corpus, and a merge."""
    c = markov_corpus(6, n_docs=20, doc_len=15, row_group_size=6)
    rng = np.random.default_rng(3)
    labels, x = random_feature_rows(rng, 60, 5, 3, zero_rows=2)
    dense = write_dense(tmp_path / "dense.parquet", labels, x, row_group_size=25)
    sparse = write_sparse(tmp_path / "sparse.parquet", labels, *dense_to_sparse(x))
    out = {}
    for name, stats in {
        "lm-window3": streamfit.accumulate([c.train], window=3),
        "classify-dense": streamfit.accumulate([dense]),
        "classify-sparse": streamfit.accumulate([sparse]),
        "lm-merged": streamfit.merge(streamfit.accumulate([c.train]), streamfit.accumulate([c.heldout])),
        "lm-order3-eos": streamfit.accumulate([c.train], order=3, eos=True),
        "classify-complement": streamfit.accumulate(
            [write_dense(tmp_path / "unit.parquet", labels, x / x.max())], encoding="complement"),
    }.items():
        streamfit.save_stats(stats, tmp_path / name)
        out[name] = (tmp_path / name, stats)
    return out


def test_manifests_validate(saved_stats, manifest_validator):
    schema = manifest_validator.schema
    written_keys, always_written = set(), None
    for name, (directory, stats) in saved_stats.items():
        m = json.loads((directory / "manifest.json").read_text())
        assert errors(manifest_validator, m) == [], name
        written_keys |= m.keys()
        always_written = set(m) if always_written is None else always_written & set(m)
        # what the schema's descriptions define, recomputed from the files
        for entry in m["arrays"].values():
            path = directory / entry["file"]
            assert entry["size"] == path.stat().st_size and entry["sha256"] == sha256(path)
            arr = np.load(path)
            assert (str(arr.dtype), list(arr.shape)) == (entry["dtype"], entry["shape"])
        names = ("keys", "data") if "order" in m else ("indptr", "indices", "data")
        assert set(m["arrays"]) == set(names)
        want = hashlib.sha256("".join(m["arrays"][a]["sha256"] for a in names)
                              .encode()).hexdigest()
        assert m["checksum"] == want
        assert m["arrays"]["data"]["dtype"] == ("int64" if m["task"] == "lm" else "float64")
        assert m["value"] == ("count" if m["task"] == "lm" else "mass")
        if "order" in m:
            assert m["window"] == 0 and m["n_features"] == 0 and m["eos"] is True
            keys = np.load(directory / m["arrays"]["keys"]["file"])
            assert np.all(np.diff(keys) > 0)  # sorted, unique
            counts = np.load(directory / m["arrays"]["data"]["file"])
            assert counts.sum() == m["n_examples"] == m["l1_sum"]
        elif m["task"] == "lm":
            assert m["n_features"] == m["window"] * (m["vocab_size"] + 1)
            assert m["vocab_size"] == m["n_classes"]
            assert m["l1_sum"] == m["n_examples"] * m["window"]
        else:
            assert m["window"] == 0 and "vocab_size" not in m
        for src in m["sources"]:
            assert Path(src["path"]).is_absolute() and src["size"] == Path(src["path"]).stat().st_size
        assert sum(s["rows"] for s in m["sources"]) == sum(
            pq.ParquetFile(s["path"]).metadata.num_rows for s in m["sources"])
    assert written_keys == set(schema["properties"])  # no key undocumented, none stale
    assert always_written == set(schema["required"])  # what is always there is required


def test_manifest_schema_rejects_damage(saved_stats, manifest_validator):
    directory, _ = saved_stats["lm-window3"]
    good = json.loads((directory / "manifest.json").read_text())
    assert errors(manifest_validator, good) == []

    damaged = functools.partial(damaged_copy, good)
    bad = {
        "missing checksum": damaged(lambda m: m.pop("checksum")),
        "missing sources": damaged(lambda m: m.pop("sources")),
        "missing data array": damaged(lambda m: m["arrays"].pop("data")),
        "task not in enum": damaged(lambda m: m.update(task="regress")),
        "value not in enum": damaged(lambda m: m.update(value="counts")),
        "array dtype not in enum": damaged(lambda m: m["arrays"]["data"].update(dtype="float32")),
        "wrong format": damaged(lambda m: m.update(format="streamfit-weights")),
        "schema version 2": damaged(lambda m: m.update(schema_version=2)),
        "negative count": damaged(lambda m: m.update(n_examples=-1)),
        "window as a string": damaged(lambda m: m.update(window="3")),
        "short checksum": damaged(lambda m: m.update(checksum="abc")),
        "unknown key": damaged(lambda m: m.update(colour="blue")),
        "unknown source key": damaged(lambda m: m["sources"][0].update(mtime=0)),
        "repeated row group": damaged(lambda m: m["sources"][0]["row_groups"].append(
            m["sources"][0]["row_groups"][0])),
    }
    for name, doc in bad.items():
        assert errors(manifest_validator, doc), name


# --- weights sidecars -------------------------------------------------------------------------
@pytest.fixture
def sidecars(tmp_path, markov_corpus):
    """(name -> (sidecar path, statistics)) for the layouts and forms finalize writes."""
    c = markov_corpus(6, n_docs=20, doc_len=15, row_group_size=6)
    lm1 = streamfit.accumulate([c.train], window=1)
    lm2 = streamfit.accumulate([c.train], window=2)
    rng = np.random.default_rng(4)
    labels, x = random_feature_rows(rng, 80, 5, 3, zero_rows=1)
    dense = write_dense(tmp_path / "dense.parquet", labels, x)
    cls = streamfit.accumulate([dense])
    unit = streamfit.accumulate([write_dense(tmp_path / "unit.parquet", labels, x / x.max())],
                                encoding="complement")

    def heldout(stats):
        return iter_examples([c.heldout], task="lm", window=stats.window,
                                      n_classes=stats.n_classes, n_features=stats.n_features)

    out = {}
    for name, stats, kw in [
        ("dense-conditional", lm1, dict()),
        ("sparse-conditional", lm1, dict(layout="sparse")),
        ("dense-float16", lm1, dict(dtype="float16")),
        ("dense-paper-bias", lm2, dict(form="paper", smoothing=0.1)),
        ("sparse-paper-bias", lm2, dict(form="paper", layout="sparse")),
        ("classify-paper-bias", cls, dict(form="paper")),
        ("classify-complement-paper-bias", unit, dict(form="paper")),
        ("dense-calibrated", lm2, dict(form="calibrated", heldout=heldout(lm2))),
        ("sparse-calibrated-auto", lm1, dict(form="calibrated", smoothing="auto",
                                             layout="sparse", heldout=heldout(lm1))),
    ]:
        finalize(stats, tmp_path / "w" / f"{name}.npy", source={"path": "/x", "checksum": "0" * 64},
                       **kw)
        out[name] = (tmp_path / "w" / f"{name}.model.json", stats)
    return out


def test_sidecars_validate(sidecars, weights_validator):
    written_keys, always_written = set(), None
    for name, (path, stats) in sidecars.items():
        meta = json.loads(path.read_text())
        assert errors(weights_validator, meta) == [], name
        written_keys |= meta.keys()
        always_written = set(meta) if always_written is None else always_written & set(meta)
        assert meta["layout"] == ("sparse" if name.startswith("sparse") else "dense")
        want_arrays = {"W"} if meta["layout"] == "dense" else {"S.indptr", "S.indices", "S.data"}
        assert (meta["beta"] != 0) == ("bias" in name or "calibrated" in name), name
        if meta["beta"] != 0:  # "bias ... when beta != 0, else absent"
            want_arrays.add("bias")
        assert set(meta["arrays"]) == want_arrays, name
        for entry in meta["arrays"].values():
            p = path.parent / entry["file"]
            assert entry["size"] == p.stat().st_size and entry["sha256"] == sha256(p)
            arr = np.load(p)
            assert (str(arr.dtype), list(arr.shape)) == (entry["dtype"], entry["shape"])
        if "W" in meta["arrays"]:
            assert meta["arrays"]["W"]["shape"] == [meta["n_features"], meta["n_classes"]]
            assert meta["arrays"]["W"]["dtype"] == meta["dtype"]
        if "bias" in meta["arrays"]:  # bias = -beta * log(c_j + smoothing * n_features)
            f = stats.csr().toarray()
            want = -meta["beta"] * np.log(f.sum(axis=0) + meta["smoothing"] * meta["n_features"])
            np.testing.assert_allclose(np.load(path.parent / meta["arrays"]["bias"]["file"]), want,
                                       rtol=1e-12)
        if meta["form"] == "calibrated":
            assert meta["calibration"]["examples"] >= 1 and meta["calibration"]["grid"]
        else:
            assert meta["calibration"] == {}
    # `refinement` is written by `streamfit refine` only (tests/test_refine.py validates it);
    # `layers`, `hidden`, `growth` by `streamfit grow` only (tests/test_grow.py validates them),
    # `shrunk` by `streamfit shrink` only (tests/test_small.py validates it).
    assert written_keys == set(weights_validator.schema["properties"]) - {
        "refinement", "layers", "hidden", "growth", "shrunk"}
    assert always_written == set(weights_validator.schema["required"])


def test_weights_schema_rejects_damage(sidecars, weights_validator):
    good = json.loads(sidecars["dense-paper-bias"][0].read_text())
    assert errors(weights_validator, good) == []

    damaged = functools.partial(damaged_copy, good)
    bad = {
        "missing arrays": damaged(lambda m: m.pop("arrays")),
        "missing tau": damaged(lambda m: m.pop("tau")),
        "form not in enum": damaged(lambda m: m.update(form="bayes")),
        "layout not in enum": damaged(lambda m: m.update(layout="csr")),
        "dtype not in enum": damaged(lambda m: m.update(dtype="int8")),
        "zero smoothing": damaged(lambda m: m.update(smoothing=0)),
        "negative tau": damaged(lambda m: m.update(tau=-1.0)),
        "unknown array": damaged(lambda m: m["arrays"].update(X=m["arrays"]["W"])),
        "array without checksum": damaged(lambda m: m["arrays"]["W"].pop("sha256")),
        "wrong format": damaged(lambda m: m.update(format="streamfit-statistics")),
        "statistics without nnz": damaged(lambda m: m["statistics"].pop("nnz")),
    }
    for name, doc in bad.items():
        assert errors(weights_validator, doc), name


# --- corpus_schemas.json ----------------------------------------------------------------------
CORPUS = load_schema("corpus_schemas.json")
INTEGER = [pa.int8(), pa.int16(), pa.int32(), pa.int64(),
           pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
FLOAT = [pa.float16(), pa.float32(), pa.float64()]
NAMED = {"int32": [pa.int32()], "float32": [pa.float32()], "integer": INTEGER, "float": FLOAT}
WIDTH = 3  # every list in the corpora below has this length, so fixed_size_list can hold it
LIST_KINDS = {"list": pa.list_, "large_list": pa.large_list,
              "fixed_size_list": lambda t: pa.list_(t, WIDTH)}

def test_corpus_schema_says_what_list_and_integer_mean():
    text = CORPUS["description"]
    for word in ("signed", "unsigned", "list", "large_list", "fixed_size_list", "Extra columns are ignored"):
        assert word in text, word


def element_types(spec: str) -> list[pa.DataType]:
    """'integer', 'float or integer', 'int32' ... as Arrow types."""
    return [t for word in spec.split(" or ") for t in NAMED[word]]


def variants(type_spec: str) -> list[tuple[str, pa.DataType]]:
    """Arrow types a column of this description may have: every element type in a plain
    list, and every list kind with the first element type."""
    m = re.fullmatch(r"list<(.+)>", type_spec)
    if m is None:
        return [(str(t), t) for t in element_types(type_spec)]
    elements = element_types(m.group(1))
    out = [(f"list<{t}>", pa.list_(t)) for t in elements]
    out += [(f"{kind}<{elements[0]}>", make(elements[0])) for kind, make in LIST_KINDS.items()
            if kind != "list"]
    return out


DOCS = [[0, 1, 2], [2, 2, 1], [1, 0, 4]]
LABELS = [0, 2, 1, 1]
DENSE = [[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [4.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
INDICES = [[0, 2, 5], [1, 3, 4], [5, 0, 1], [2, 3, 4]]
VALUES = [[1.0, 2.0, 1.0], [3.0, 1.0, 0.0], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]
DATA = {"tokens": DOCS, "label": LABELS, "features": DENSE, "indices": INDICES, "values": VALUES}


def corpus_cases():
    for kind in ("token_corpus", "feature_corpus_dense", "feature_corpus_sparse"):
        columns = CORPUS[kind]["columns"]
        for name, spec in columns.items():
            for label, arrow_type in variants(spec["type"]):
                yield pytest.param(kind, name, arrow_type, id=f"{kind}-{name}-{label}")


@pytest.mark.parametrize("kind,varied,arrow_type", list(corpus_cases()))
def test_corpus_built_per_schema_is_accepted(tmp_path, kind, varied, arrow_type):
    spec = CORPUS[kind]
    columns = {}
    for name, col in spec["columns"].items():
        assert col["nullable"] is False
        t = arrow_type if name == varied else variants(col["type"])[0][1]
        columns[name] = pa.array(DATA[name], type=t)
    columns["comment"] = pa.array([f"row {i}" for i in range(len(next(iter(columns.values()))))])
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table(columns), path)
    stats = streamfit.accumulate([path])  # task detected from the column names
    assert stats.task == spec["task"]
    if kind == "token_corpus":
        np.testing.assert_array_equal(stats.csr().toarray(), lm_count_oracle(DOCS, 1, 5))
    else:
        idx = [list(range(WIDTH))] * len(LABELS) if kind == "feature_corpus_dense" else INDICES
        val = DENSE if kind == "feature_corpus_dense" else VALUES
        width = WIDTH if kind == "feature_corpus_dense" else 6
        assert (stats.n_features, stats.n_classes) == (width, 3)
        np.testing.assert_allclose(stats.csr().toarray(),
                                   classify_mass_oracle(LABELS, idx, val, width, 3), rtol=1e-12)
        assert stats.empty_rows == 1  # the all-zero last row


def test_corpus_column_options_exist():
    accumulate_parser = build_parser()._subparsers._group_actions[0].choices["accumulate"]
    flags = {s for a in accumulate_parser._actions for s in a.option_strings}
    for kind in ("token_corpus", "feature_corpus_dense", "feature_corpus_sparse"):
        options = CORPUS[kind].get("column_options") or [CORPUS[kind]["column_option"]]
        assert len(options) == len(CORPUS[kind]["columns"])
        for option in options:
            assert option in flags, option


RENAMED = [
    pytest.param("token_corpus", {"ids": pa.array(DOCS, pa.list_(pa.int32()))},
                 ["--task", "lm", "--column", "ids"], id="token_corpus"),
    pytest.param("feature_corpus_dense", {"y": pa.array(LABELS), "x": pa.array(DENSE)},
                 ["--task", "classify", "--label", "y", "--features", "x"], id="feature_corpus_dense"),
    pytest.param(
        "feature_corpus_sparse", {"y": pa.array(LABELS), "i": pa.array(INDICES), "v": pa.array(VALUES)},
        ["--task", "classify", "--label", "y", "--indices", "i", "--values", "v"],
        id="feature_corpus_sparse"),
]


@pytest.mark.parametrize("kind,columns,args", RENAMED)
def test_renamed_columns_through_the_column_options(tmp_path, kind, columns, args):
    from streamfit.cli import main
    path = tmp_path / "renamed.parquet"
    pq.write_table(pa.table(columns), path)
    assert main(["accumulate", str(path), "--stats", str(tmp_path / "stats"), "--quiet", *args]) == 0
    stats = streamfit.load_stats(tmp_path / "stats")
    if kind == "token_corpus":
        np.testing.assert_array_equal(stats.csr().toarray(), lm_count_oracle(DOCS, 1, 5))
    else:
        idx = [list(range(WIDTH))] * len(LABELS) if kind == "feature_corpus_dense" else INDICES
        val = DENSE if kind == "feature_corpus_dense" else VALUES
        np.testing.assert_allclose(stats.csr().toarray(),
                                   classify_mass_oracle(LABELS, idx, val, stats.n_features, 3))


def arrow_type_of(spec: str) -> pa.DataType:
    m = re.fullmatch(r"list<(.+)>", spec)
    (element,) = NAMED[m.group(1)]
    return pa.list_(element)


def predictions(tmp_path, markov_corpus, task: str, top_k: int):
    """Write predictions of a small model: (model, its predictions table, expected rows)."""
    if task == "lm":
        c = markov_corpus(5, n_docs=12, doc_len=9, row_group_size=5)
        model = finalize(streamfit.accumulate([c.train]), tmp_path / "w.npy")
        data, n_rows = c.heldout, 12 * 9  # one row per token
    else:
        rng = np.random.default_rng(5)
        labels, x = random_feature_rows(rng, 40, 4, 3)
        data = write_dense(tmp_path / "d.parquet", labels, x, row_group_size=16)
        model = finalize(streamfit.accumulate([data]), tmp_path / "w.npy", form="paper")
        n_rows = 40  # one row per row
    out = tmp_path / "preds.parquet"
    assert predict(load_model(tmp_path / "w.npy"), [data], out, top_k=top_k) == n_rows
    return model, out, n_rows


@pytest.mark.parametrize("task,top_k", [("lm", 4), ("classify", 3)])
def test_predictions_have_exactly_the_listed_columns(tmp_path, markov_corpus, task, top_k):
    listed = CORPUS["predictions"]["columns"]
    model, out, n_rows = predictions(tmp_path, markov_corpus, task, top_k)
    schema = pq.read_schema(out)
    assert schema.names == list(listed)
    for name, col in listed.items():
        assert schema.field(name).type == arrow_type_of(col["type"]), name
    table = pq.read_table(out)
    assert table.num_rows == n_rows
    # "most probable first, ties by id"
    for classes, probs in zip(table.column("top_classes").to_pylist(),
                              table.column("top_probabilities").to_pylist()):
        assert len(classes) == len(probs) == top_k
        assert all(0 <= c < model.n_classes for c in classes)
        for (c0, p0), (c1, p1) in zip(zip(classes, probs), zip(classes[1:], probs[1:])):
            assert p0 > p1 or (p0 == p1 and c0 < c1)


def test_predictions_with_top_k_beyond_the_classes_hold_only_class_ids(tmp_path, markov_corpus):
    model, out, _ = predictions(tmp_path, markov_corpus, "classify", 5)
    for classes in pq.read_table(out).column("top_classes").to_pylist():
        assert sorted(classes) == list(range(model.n_classes))
