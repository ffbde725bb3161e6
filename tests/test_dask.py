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
from streamfit import synthetic
from streamfit.io import files as fileio
from streamfit.count import out_of_core as pipeline
from streamfit.solve import explicit as solve
from streamfit.cli import main
from streamfit.errors import InputError, StreamfitError
from streamfit.model.evaluate import evaluate, iter_examples
from streamfit.model.weights import load_model
from streamfit.count.out_of_core import DEFAULT_MEMORY, accumulate_into, count_units
from streamfit.train.refine import refine
from streamfit.count.stats import load

from conftest import (lm_count_oracle, markov_docs, random_feature_rows, dense_to_sparse,
                      write_dense, write_sparse, write_tokens)

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


# --- units ---------------------------------------------------------------------------------
def _groups(files: list[tuple[str, list[int]]]) -> list:
    return [D.RowGroup(f"/{name}", 1000, rg, 10, values)
            for name, sizes in files for rg, values in enumerate(sizes)]


def _plan(units) -> list:
    return [[(g.path, g.row_group) for g in u.parts] for u in units]


def test_units_gather_consecutive_row_groups_across_files():
    groups = _groups([("a", [30, 30, 50, 10]), ("b", [70]), ("c", [20, 5]), ("d", [40, 5])])
    units = D.plan_units(groups, unit_values=60)
    assert _plan(units) == [[("/a", 0), ("/a", 1)], [("/a", 2), ("/a", 3)], [("/b", 0)],
                            [("/c", 0), ("/c", 1), ("/d", 0)], [("/d", 1)]]
    assert units[3].files() == [("/c", [0, 1]), ("/d", [0])]
    assert [u.rows for u in units] == [20, 20, 10, 30, 10]
    assert D.plan_units(groups, unit_values=1) == [D.Unit((g,)) for g in groups]
    for bad in (0, -5):
        with pytest.raises(ValueError, match="at least 1"):
            D.plan_units(groups, unit_values=bad)


def test_default_units_are_capped_and_make_at_least_min_units(monkeypatch):
    groups = _groups([("a", [100] * 16)])
    monkeypatch.setattr(D, "MIN_UNITS", 8)
    assert len(D.plan_units(groups)) == 8  # 1600 // 8 = 200 values a unit
    monkeypatch.setattr(D, "UNIT_VALUES", 300)
    assert len(D.plan_units(groups)) == 8
    monkeypatch.setattr(D, "UNIT_VALUES", 100)
    assert len(D.plan_units(groups)) == 16


def test_a_unit_in_memory_or_spilled_has_the_counts_of_the_definition(tmp_path, monkeypatch):
    """pipeline.count_units, the task of a distributed accumulate: row groups 1, 2 and 4 of
    a file; in memory with the default budget, spilled and merged with a 64 KiB one."""
    chain = synthetic.markov_chain(40, concentration=1.0, seed=1)
    docs = markov_docs(chain, 60, 40, seed=2)
    path = write_tokens(tmp_path / "t.parquet", docs, row_group_size=10)
    key = str(path.resolve())
    spills = []
    write_run = pipeline.write_run
    monkeypatch.setattr(pipeline, "write_run", lambda *a: spills.append(1) or write_run(*a))
    for memory, spilled in ((DEFAULT_MEMORY, False), (1 << 16, True)):
        spills.clear()
        out = tmp_path / f"unit-{memory}"
        count_units(out, [(key, rg) for rg in (1, 2, 4)], task=None, window=2, memory=memory,
                    temp=tmp_path / "work", batch_rows=2, vocab_size=40)
        assert bool(spills) == spilled
        stats = load(out, check=True)
        np.testing.assert_array_equal(stats.csr().toarray(),
                                      lm_count_oracle(docs[10:30] + docs[40:50], 2, 40))
        assert stats.n_examples == 30 * 40
        assert stats.sources == [{"path": key, "size": path.stat().st_size,
                                  "row_groups": [1, 2, 4], "rows": 30}]
        assert not list((tmp_path / "work").iterdir())  # spilled runs removed


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


def test_dense_features_on_dask(client, tmp_path):
    """Dense rows: the same statistics as one process; rows of another width in another
    unit are refused with the message one process gives (and one machine's --jobs 2)."""
    y, x = random_feature_rows(np.random.default_rng(5), 80, 6, 3, zero_rows=2)
    dense = write_dense(tmp_path / "d.parquet", y, x, row_group_size=10)
    accumulate_into(tmp_path / "one", [dense])
    D.accumulate_distributed(client, tmp_path / "dask", [dense])
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=False)
    ragged = write_dense(tmp_path / "r.parquet", [0, 1] * 4,
                         [[1.0, 2.0, 0.0, 1.0]] * 4 + [[1.0, 0.0, 3.0, 1.0, 2.0]] * 4,
                         row_group_size=4)
    with pytest.raises(InputError) as one:
        accumulate_into(tmp_path / "one-r", [ragged])
    with pytest.raises(InputError) as dask:
        D.accumulate_distributed(client, tmp_path / "dask-r", [ragged], unit_values=1)
    assert "ragged dense features" in str(one.value) and "row group 1" in str(one.value)
    assert str(dask.value) == str(one.value)
    with pytest.raises(InputError) as jobs:
        accumulate_into(tmp_path / "jobs-r", [ragged], jobs=2)
    assert str(jobs.value) == str(one.value)


@pytest.mark.parametrize("point,unit_values", [("after_batch:5", None), ("after_unit:1", 1)])
def test_a_worker_killed_mid_run_changes_nothing(client, tokens, tmp_path, point, unit_values):
    """Killed in the second row group of a unit of several (batches of 4 rows, 3 per row
    group), or after a unit of one row group has written its shard."""
    files, _ = tokens
    if unit_values is None:
        assert min(len(u.parts) for u in D.source_units(files)[:-1]) >= 2
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    with KillOneWorker(client, point):
        D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW, batch_rows=4,
                                 unit_values=unit_values)
    assert_same_statistics(tmp_path / "dask", tmp_path / "one", exact=True)


def test_an_interrupted_run_reuses_its_shards_and_merges_in_a_tree(client, tokens, tmp_path,
                                                                   monkeypatch):
    """With a fan-in of 2 the 16 unit shards (one row group each) are merged on the workers
    in a tree (16 → 8 → 4 → 2) while a worker dies; the run is interrupted before its last
    merge. Run again with the same units, it reuses every shard (workers armed to die at
    their first batch survive) and ends with the statistics of one process."""
    files, _ = tokens
    accumulate_into(tmp_path / "one", files, window=WINDOW)
    monkeypatch.setattr(D, "MERGE_FAN_IN", 2)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(D, "merge_into", interrupted)  # here only: the workers merge as usual
    with KillOneWorker(client, "after_unit:1"), pytest.raises(KeyboardInterrupt):
        D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW, batch_rows=4,
                                 unit_values=1)
    shards = tmp_path / "dask" / D.SHARDS
    assert len(list(shards.glob("unit-*/manifest.json"))) == 16
    assert len(list(shards.glob("merge-*/manifest.json"))) == 8 + 4 + 2
    monkeypatch.undo()
    monkeypatch.setattr(D, "MERGE_FAN_IN", 2)
    survivors = set(client.scheduler_info()["workers"])
    client.run(_arm, "after_batch:1")
    try:
        summary = D.accumulate_distributed(client, tmp_path / "dask", files, window=WINDOW,
                                           unit_values=1)
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
    with KillOneWorker(client, "after_unit:1"):
        got = D.evaluate_distributed(client, features["weights"],
                                     [features["train"], features["heldout"]], top_k=2,
                                     unit_values=1)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    # the tree of sums is fixed by the units' order: a second run agrees to the bit
    assert D.evaluate_distributed(client, features["weights"],
                                  [features["train"], features["heldout"]], top_k=2,
                                  unit_values=1) == got
    # the default units, of several row groups: the same up to summation order
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
    pass_fn = D.pass_function(client, [features["train"]], unit_values=1 if kill else None, **layout)
    with KillOneWorker(client, "after_unit:1") if kill else contextlib.nullcontext():
        got = refine(model, train, tmp_path / "dask.npy", method=method, passes=3, heldout=held,
                     l2=1e-3, pass_fn=pass_fn)
    np.testing.assert_allclose(np.asarray(got.dense), np.asarray(want.dense), rtol=1e-6, atol=1e-7)
    for g, w in zip(got.meta["refinement"]["log"], want.meta["refinement"]["log"]):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-10)
        assert g["heldout_loss"] == pytest.approx(w["heldout_loss"], rel=1e-10)


def test_newton_passes_on_dask_match_one_process(client, features, tmp_path):
    model = load_model(features["weights"])
    s = features["stats"]
    layout = dict(task=s.task, window=s.window, n_classes=s.n_classes, n_features=s.n_features)
    train = lambda: iter_examples([features["train"]], **layout)
    want = refine(model, train, tmp_path / "one.npy", method="newton", passes=4, l2=1e-3)
    hessian_fn = D.hessian_function(client, [features["train"]], **layout)
    with KillOneWorker(client, "after_unit:2"):
        got = refine(model, train, tmp_path / "dask.npy", method="newton", passes=4, l2=1e-3,
                     hessian_fn=hessian_fn)
    np.testing.assert_allclose(np.asarray(got.dense), np.asarray(want.dense), rtol=1e-6, atol=1e-7)
    for g, w in zip(got.meta["refinement"]["log"], want.meta["refinement"]["log"]):
        assert (g["step"], g["objective"]) == (w["step"], pytest.approx(w["objective"], rel=1e-10))


@pytest.mark.parametrize("kill", [False, True])
def test_growth_passes_on_dask_match_one_process(client, features, tmp_path, kill):
    """grow with its training passes (statistics and output-layer L-BFGS) summed over the
    row groups on the workers: the same units, amplitudes and log as in one process."""
    from streamfit.train.grow import grow

    s = features["stats"]
    layout = dict(task=s.task, window=s.window, n_classes=s.n_classes, n_features=s.n_features)
    train = lambda: iter_examples([features["train"]], **layout)
    held = lambda: iter_examples([features["heldout"]], **layout)
    options = dict(heldout=held, units_per_step=4, max_width=8, min_gain=0.0, output_passes=5,
                   **layout)
    want = grow(train, tmp_path / "one.npy", **options)
    pass_fn = D.growth_pass_function(client, [features["train"]], **layout)
    with KillOneWorker(client, "after_unit:3") if kill else contextlib.nullcontext():
        got = grow(train, tmp_path / "dask.npy", pass_fn=pass_fn, **options)
    assert got.hidden[0].shape == want.hidden[0].shape == (s.n_features, 8)
    for a, b in zip((*got.hidden, got.dense), (*want.hidden, want.dense)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for g, w in zip(got.meta["growth"]["log"], want.meta["growth"]["log"]):
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-8)
        assert g["heldout_loss"] == pytest.approx(w["heldout_loss"], rel=1e-8)


def test_a_cancelled_pass_runs_again(client, features, monkeypatch):
    """A pass whose tasks the scheduler cancels ("lost dependencies") or whose broadcast meets
    a closed connection (both seen when a worker dies at the wrong moment) is run again and
    sums what one process sums; it gives up after PASS_ATTEMPTS runs cut short."""
    import concurrent.futures

    from distributed.comm.core import CommClosedError

    from streamfit.train.core import full_pass

    s = features["stats"]
    layout = dict(task=s.task, window=s.window, n_classes=s.n_classes, n_features=s.n_features)
    w = np.random.default_rng(5).normal(0, 0.1, (s.n_features, s.n_classes))
    want = full_pass(w, iter_examples([features["train"]], **layout), expected=False)
    real, runs = D.map_sum, []

    def cancelled_first(*args, **kwargs):
        runs.append(1)
        if len(runs) <= failures:   # the two ways a lost worker cut a pass short in CI
            raise (CommClosedError("stream is closed") if len(runs) % 2 == 0
                   else concurrent.futures.CancelledError("lost dependencies"))
        return real(*args, **kwargs)
    monkeypatch.setattr(D, "map_sum", cancelled_first)
    pass_fn = D.pass_function(client, [features["train"]], **layout)
    failures = D.PASS_ATTEMPTS - 1
    got = pass_fn(w, False, False)
    assert len(runs) == D.PASS_ATTEMPTS
    assert (got.n, got.correct) == (want.n, want.correct)
    assert got.loss == pytest.approx(want.loss, rel=1e-12)
    runs.clear()
    failures = D.PASS_ATTEMPTS
    with pytest.raises((concurrent.futures.CancelledError, CommClosedError)):
        pass_fn(w, False, False)
    assert len(runs) == D.PASS_ATTEMPTS


def test_map_sum_adds_in_a_fixed_order(client, tokens):
    """The executor itself: an integer-valued pure function over every unit."""
    first = tokens[0][0]
    units = D.source_units([first], unit_values=1)  # one row group each
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
                       WINDOW, "--dask-workers", 2, "--unit-values", 10 ** 6, "--quiet")
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
    monkeypatch.setattr("streamfit.distributed.cluster", fake_cluster)
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
    rc, _, err = run(capsys, "accumulate", train, "--stats", tmp_path / "s", "--unit-values", 8000)
    assert rc == 1 and "--unit-values" in err
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

