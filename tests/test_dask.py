"""Dask distributed (`streamfit.distributed`, the --scheduler / --dask-workers options) on a
LocalCluster of two worker processes.

Oracles: the counts of the definition (conftest's lm_count_oracle) and the single-process
runs of the same API (accumulate_into, evaluate, refine), which the other test modules check
against numpy. Statistics must be bit-identical for counts, floats equal up to summation
order. Crash tests make one worker SIGKILL itself at a fault point (mid-row-group while
counting, or after a unit's work before its result is returned); Dask's nanny starts a
fresh worker and the result must still be identical.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import streamfit
from streamfit import distributed as D
from streamfit import fileio, solve, synthetic
from streamfit.cli import main
from streamfit.errors import InputError, StreamfitError
from streamfit.evaluate import evaluate, iter_examples
from streamfit.model import load_model
from streamfit.pipeline import accumulate_into
from streamfit.refine import refine
from streamfit.stats import load

from conftest import (lm_count_oracle, markov_docs, random_feature_rows, dense_to_sparse,
                      write_sparse, write_tokens)

WINDOW = 2


# --- the cluster ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    """One LocalCluster (2 processes, 1 thread each) for the module."""
    pytest.importorskip("distributed", reason="the dask extra is not installed "
                                              "(pip install 'streamfit[dask]')")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    with D.cluster(workers=2) as c:
        c.wait_for_workers(2)
        yield c


def _arm(point: str) -> None:
    os.environ["STREAMFIT_FAULT"] = point
    fileio._FAULTS = None  # re-read on the next fault point


def two_workers(client) -> None:
    """Wait for the nanny's replacement of a killed worker; should a nanny fail to restart
    it (seen once in a full-suite run on the loaded 2-core machine), replace that nanny."""
    try:
        client.wait_for_workers(2, timeout=60)
    except Exception:
        client.cluster.scale(1)  # drops the worker that is not registered
        client.cluster.scale(2)
        client.wait_for_workers(2, timeout=120)


class KillOneWorker:
    """Arms one worker to SIGKILL itself at `point` (e.g. "after_unit:1"); on exit, checks
    that it died and waits for the nanny's replacement."""

    def __init__(self, client, point: str):
        self.client, self.point = client, point

    def __enter__(self):
        two_workers(self.client)
        self.victim = sorted(self.client.scheduler_info()["workers"])[0]
        self.client.run(_arm, self.point, workers=[self.victim])
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert self.victim not in self.client.scheduler_info()["workers"], \
                "the armed worker did not die: the crash was not exercised"
        two_workers(self.client)


# --- corpora -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Two token files of 8 row groups each, one of them with empty documents only."""
    root = tmp_path_factory.mktemp("dask-tokens")
    chain = synthetic.markov_chain(9, concentration=0.5, seed=3)
    a = markov_docs(chain, 80, 25, seed=4)
    b = markov_docs(chain, 80, 30, seed=5)
    b[10:20] = [[] for _ in range(10)]   # row group 1 of b: no tokens at all
    files = [write_tokens(root / "a.parquet", a, row_group_size=10),
             write_tokens(root / "b.parquet", b, row_group_size=10)]
    return files, a + b


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A sparse feature corpus in 6 row groups (a few all-zero rows)."""
    root = tmp_path_factory.mktemp("dask-features")
    rng = np.random.default_rng(11)
    y, x = random_feature_rows(rng, 240, 10, 4, density=0.5, zero_rows=3)
    train = write_sparse(root / "f.parquet", y[:180], *dense_to_sparse(x[:180]), row_group_size=30)
    held = write_sparse(root / "h.parquet", y[180:], *dense_to_sparse(x[180:]), row_group_size=20)
    stats = streamfit.accumulate([train])
    weights = root / "w.npy"
    solve.finalize(stats, weights, form="conditional", smoothing=0.1)
    return {"train": train, "heldout": held, "weights": weights, "stats": stats}


def assert_same_statistics(got_dir: Path, want_dir: Path, exact: bool) -> None:
    got, want = load(got_dir), load(want_dir)
    assert (got.task, got.window, got.n_classes, got.n_features) == \
        (want.task, want.window, want.n_classes, want.n_features)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.data.dtype == want.data.dtype
    if exact:
        np.testing.assert_array_equal(got.data, want.data)
        assert got.l1_sum == want.l1_sum
    else:
        np.testing.assert_allclose(got.data, want.data, rtol=1e-12)
        assert got.l1_sum == pytest.approx(want.l1_sum, rel=1e-12)
    assert (got.n_examples, got.empty_rows) == (want.n_examples, want.empty_rows)
    assert got.sources == want.sources
    # every (file, row group) exactly once
    keys = [(s["path"], rg) for s in got.sources for rg in s["row_groups"]]
    assert len(keys) == len(set(keys))


# --- accumulate ----------------------------------------------------------------------------
def test_accumulate_on_dask_is_bit_identical_to_one_process(client, tokens, tmp_path):
    files, docs = tokens
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    summary = D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW,
                                       batch_rows=4)
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)
    stats = load(tmp_path / "dask")
    np.testing.assert_array_equal(stats.csr().toarray(), lm_count_oracle(docs, WINDOW, 9))
    assert summary["n_examples"] == sum(map(len, docs)) and not summary["resumed"]
    assert not (tmp_path / "dask" / D.SHARDS).exists()  # shards removed once merged


def test_feature_statistics_on_dask_match_to_summation_order(client, features, tmp_path):
    accumulate_into(tmp_path / "one", [features["train"]])
    D.accumulate_distributed(client, tmp_path / "dask", [features["train"]])
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=False)


@pytest.mark.parametrize("point,unit_size", [("after_batch:5", None), ("after_unit:2", 1)])
def test_a_worker_killed_mid_run_changes_nothing(client, tokens, tmp_path, point, unit_size):
    """Killed in the second row group of a unit of several (batches of 4 rows, 3 per row
    group), or after a unit of one row group has written its shard."""
    files, _ = tokens
    if unit_size is None:
        assert min(len(u.parts) for u in D.source_units(files)[:-1]) >= 2
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    with KillOneWorker(client, point):
        D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW, batch_rows=4,
                                 unit_size=unit_size)
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)


def test_an_interrupted_run_reuses_its_shards_and_merges_in_a_tree(client, tokens, tmp_path,
                                                                   monkeypatch):
    """With a fan-in of 2 the 16 unit shards (one row group each) are merged on the workers in a tree (16 → 8 → 4
    → 2) while a worker dies; the run is interrupted before its last merge. Run again, it
    reuses every shard (workers armed to die at their first batch survive) and ends with
    the statistics of one process."""
    files, _ = tokens
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    monkeypatch.setattr(D, "MERGE_FAN_IN", 2)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(D, "merge_into", interrupted)  # here only: the workers merge as usual
    with KillOneWorker(client, "after_unit:2"), pytest.raises(KeyboardInterrupt):
        D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW, batch_rows=4,
                                 unit_size=1)
    shards = tmp_path / "dask" / D.SHARDS
    assert len(list(shards.glob("unit-*/manifest.json"))) == 16
    assert len(list(shards.glob("merge-*/manifest.json"))) == 8 + 4 + 2
    monkeypatch.undo()
    monkeypatch.setattr(D, "MERGE_FAN_IN", 2)
    survivors = set(client.scheduler_info()["workers"])
    client.run(_arm, "after_batch:1")
    try:
        summary = D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW,
                                           unit_size=1)
        assert set(client.scheduler_info()["workers"]) == survivors  # nothing was read again
    finally:
        client.run(_arm, "")
    assert summary["resumed"]
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)
    assert not shards.exists()


def test_adding_files_to_existing_statistics(client, tokens, tmp_path):
    files, _ = tokens
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    D.accumulate_distributed(client, tmp_path / "dask", files[:1], window=WINDOW)
    summary = D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW)
    assert not summary["unchanged"]
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)
    assert D.accumulate_distributed(client, tmp_path / "dask", files)["unchanged"]
    with pytest.raises(StreamfitError, match="window"):
        D.accumulate_distributed(client, tmp_path / "dask", files, window=3)


def test_merge_on_dask_equals_merge_here(client, tokens, tmp_path, monkeypatch):
    files, _ = tokens
    monkeypatch.setattr(D, "MERGE_FAN_IN", 2)
    parts = []
    for i, f in enumerate(files):
        for rgs in ({0, 1, 2}, {3, 4}, {5, 6, 7}):
            d = tmp_path / f"part{i}-{min(rgs)}"
            accumulate_into(d, [f], window=WINDOW, units={(str(f.resolve()), rg) for rg in rgs})
            parts.append(d)
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    D.merge_distributed(client, tmp_path / "merged", parts)
    assert_same_statistics(tmp_path / "merged", tmp_path / "one", exact=True)


def test_bad_input_on_a_worker_is_reported_with_its_place(client, tmp_path):
    bad = write_tokens(tmp_path / "bad.parquet", [[1, 2], [3, -4]], row_group_size=1)
    with pytest.raises(InputError, match=r"bad.parquet, row group 1"):
        D.accumulate_distributed(client, tmp_path / "stats", [bad])


def test_urls_are_refused(client, tokens, tmp_path):
    with pytest.raises(StreamfitError, match="URLs are not supported"):
        D.accumulate_distributed(client, tmp_path / "s", tokens[0], shards="s3://bucket/shards")


# --- streaming passes ----------------------------------------------------------------------
def test_evaluate_on_dask_matches_one_process(client, features):
    model = load_model(features["weights"])
    want = evaluate(model, [features["train"], features["heldout"]], top_k=2)
    with KillOneWorker(client, "after_unit:2"):
        got = D.evaluate_distributed(client, features["weights"],
                                     [features["train"], features["heldout"]], top_k=2,
                                     unit_size=1)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    # the tree of sums is fixed by the units' order: a second run agrees to the bit
    assert D.evaluate_distributed(client, features["weights"],
                                  [features["train"], features["heldout"]], top_k=2,
                                  unit_size=1) == got
    # units of several row groups (across the two files): the same up to summation order
    default = D.evaluate_distributed(client, features["weights"],
                                     [features["train"], features["heldout"]], top_k=2)
    for k in want:
        assert default[k] == pytest.approx(want[k], rel=1e-12), k


@pytest.mark.parametrize("method,kill", [("gis", True), ("lbfgs", False)])
def test_refine_passes_on_dask_match_one_process(client, features, tmp_path, method, kill):
    model = load_model(features["weights"])
    s = features["stats"]
    layout = dict(task=s.task, window=s.window, n_classes=s.n_classes, n_features=s.n_features)
    train = lambda: iter_examples([features["train"]], **layout)
    held = lambda: iter_examples([features["heldout"]], **layout)
    want = refine(model, train, tmp_path / "one.npy", method=method, passes=3, heldout=held,
                  l2=1e-3)
    pass_fn = D.pass_function(client, [features["train"]], unit_size=1 if kill else None, **layout)
    with KillOneWorker(client, "after_unit:2") if kill else contextlib.nullcontext():
        got = refine(model, train, tmp_path / "dask.npy", method=method, passes=3, heldout=held,
                     l2=1e-3, pass_fn=pass_fn)
    np.testing.assert_allclose(np.asarray(got.dense), np.asarray(want.dense), rtol=1e-6, atol=1e-7)
    for g, w in zip(got.meta["refinement"]["log"], want.meta["refinement"]["log"]):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-10)
        assert g["heldout_loss"] == pytest.approx(w["heldout_loss"], rel=1e-10)


def test_map_sum_adds_in_a_fixed_order(client, tokens):
    """The executor itself: an integer-valued pure function over every unit."""
    first = tokens[0][0]
    units = D.source_units([first], unit_size=1)  # one row group each
    assert [u.files() for u in units] == [[(str(first.resolve()), [rg])] for rg in range(8)]
    got = D.map_sum(client, _rows_and_groups, units, 1000)
    assert got == [80, sum(1000 + rg for rg in range(8))]


class _Pair(list):
    def __add__(self, other):
        return _Pair([a + b for a, b in zip(self, other)])


def _rows_and_groups(unit, offset):
    return _Pair([unit.rows, sum(offset + g.row_group for g in unit.parts)])


# --- the command ---------------------------------------------------------------------------
def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_accumulate_on_a_local_cluster(client, tokens, tmp_path, capsys):
    files, _ = tokens
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    rc, out, err = run(capsys, "accumulate", *files, "--stats", tmp_path / "dask", "--window",
                       WINDOW, "--dask-workers", 2, "--quiet")
    assert rc == 0, err
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)


def test_cli_evaluate_refine_merge_use_the_cluster(client, features, tmp_path, capsys,
                                                   monkeypatch):
    """The options reach the distributed functions (the module's cluster stands in for the
    one the options would start)."""
    used = []

    @contextlib.contextmanager
    def fake_cluster(scheduler=None, workers=None):
        used.append((scheduler, workers))
        yield client
    monkeypatch.setattr("streamfit.cli.cluster", fake_cluster)
    w, train = features["weights"], features["train"]
    rc, out, err = run(capsys, "evaluate", "--weights", w, train, "--json", "--scheduler",
                       "tcp://x:1", "--quiet")
    assert rc == 0, err
    assert abs(json.loads(out)["cross_entropy"]
               - evaluate(load_model(w), [train])["cross_entropy"]) < 1e-12
    rc, _, err = run(capsys, "refine", "--weights", w, train, "--method", "gis", "--passes", 2,
                     "--out", tmp_path / "r.npy", "--dask-workers", 3, "--quiet")
    assert rc == 0, err
    accumulate_into(tmp_path / "a", [train], units={(str(Path(train).resolve()), 0)})
    accumulate_into(tmp_path / "b", [train], units={(str(Path(train).resolve()), 1)})
    rc, _, err = run(capsys, "merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m",
                     "--dask-workers", 2)
    assert rc == 0, err
    assert used == [("tcp://x:1", None), (None, 3), (None, 2)]


def test_cli_refuses_what_dask_does_not_do(features, tmp_path, capsys):
    w, train = features["weights"], features["train"]
    rc, _, err = run(capsys, "refine", "--weights", w, train, "--method", "adam", "--out",
                     tmp_path / "r.npy", "--dask-workers", 2)
    assert rc == 1 and "sequential" in err
    rc, _, err = run(capsys, "accumulate", train, "--stats", tmp_path / "s", "--jobs", 2,
                     "--dask-workers", 2)
    assert rc == 1 and "--jobs" in err
    rc, _, err = run(capsys, "accumulate", train, "--stats", tmp_path / "s", "--shards",
                     tmp_path / "sh")
    assert rc == 1 and "--shards" in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--weights", str(w), str(train), "--scheduler", "tcp://x:1",
              "--dask-workers", "2"])


def test_without_dask_the_options_say_how_to_install_it(features, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    rc, _, err = run(capsys, "accumulate", features["train"], "--stats", tmp_path / "s",
                     "--dask-workers", 2)
    assert rc == 1 and "pip install 'streamfit[dask]'" in err
    assert not (tmp_path / "s").exists()
    rc, out, err = run(capsys, "evaluate", "--weights", features["weights"], features["train"],
                       "--quiet", "--json")
    assert rc == 0, err  # without the options, Dask is never needed

