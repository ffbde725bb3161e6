"""Out of core: spilling, several processes, crash-safe resume, the one-writer lock.

The oracle is always the plain in-memory accumulation of the same files
(`streamfit.accumulate`), whose counts the kernel tests check against numpy: a spilled,
parallel or killed-and-resumed run must end with exactly the same statistics.
"""
from __future__ import annotations

import base64
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import streamfit
from streamfit.errors import StreamfitError
from streamfit.io.files import DirectoryLock
from streamfit.count import out_of_core
from streamfit.count.out_of_core import accumulate_into, parse_size
from streamfit.synthetic import markov_chain, sample_documents

from conftest import write_dense, write_tokens


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    """Three token files of several row groups each (a 40-state Markov chain)."""
    folder = tmp_path_factory.mktemp("tokens")
    chain = markov_chain(40, concentration=0.2, seed=3)
    files = []
    for i in range(3):
        tokens, offsets = sample_documents(chain, 60, 50, seed=10 + i)
        docs = [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(60)]
        path = folder / f"part-{i}.parquet"
        write_tokens(path, docs, row_group_size=20)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def wide_token_files(tmp_path_factory):
    """Two token files from a 400-state chain: more distinct pairs than a 64 KiB table holds,
    even at window 1."""
    folder = tmp_path_factory.mktemp("wide")
    chain = markov_chain(400, concentration=0.2, seed=5)
    files = []
    for i in range(2):
        tokens, offsets = sample_documents(chain, 80, 60, seed=20 + i)
        path = folder / f"wide-{i}.parquet"
        write_tokens(path, [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(80)],
                     row_group_size=20)
        files.append(path)
    return files


@pytest.fixture
def spills(monkeypatch) -> list[int]:
    """The sizes of the runs this process spills (so a test of spilling shows it spilled)."""
    sizes: list[int] = []
    write_run = out_of_core.write_run

    def counted(directory, keys, vals):
        sizes.append(int(keys.size))
        return write_run(directory, keys, vals)

    class Counted(out_of_core.PendingRun):  # the runs spilled inside a batch
        def __init__(self, directory, keys, vals):
            sizes.append(int(keys.size))
            super().__init__(directory, keys, vals)
    monkeypatch.setattr(out_of_core, "write_run", counted)
    monkeypatch.setattr(out_of_core, "PendingRun", Counted)
    return sizes


def same_counts(a, b) -> None:
    assert (a.task, a.window, a.n_classes, a.n_features) == (b.task, b.window, b.n_classes, b.n_features)
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)
    assert (a.n_examples, a.l1_sum, a.empty_rows) == (b.n_examples, b.l1_sum, b.empty_rows)
    key = lambda s: sorted((x["path"], tuple(sorted(x["row_groups"])), x["rows"]) for x in s.sources)
    assert key(a) == key(b)


@pytest.mark.parametrize("window", [1, 3])
def test_spilled_runs_merge_to_the_in_memory_statistics(tmp_path, wide_token_files, window,
                                                         spills):
    expected = streamfit.accumulate(wide_token_files, window=window)
    # A 64 KiB budget holds about a thousand pairs: the table spills many times.
    accumulate_into(tmp_path / "stats", wide_token_files, window=window, memory=1 << 16,
                    batch_rows=8)
    same_counts(streamfit.load_stats(tmp_path / "stats", check=True), expected)
    assert len(spills) >= 4 * window and min(spills) > 0
    assert not (tmp_path / "stats" / ".work").exists()


def test_spilled_feature_sums_match(tmp_path, spills):
    rng = np.random.default_rng(0)
    x = rng.random((300, 12)) * (rng.random((300, 12)) < 0.5)
    y = rng.integers(0, 4, 300)
    write_dense(tmp_path / "f.parquet", y, x, row_group_size=50)
    expected = streamfit.accumulate([tmp_path / "f.parquet"])
    accumulate_into(tmp_path / "stats", [tmp_path / "f.parquet"], memory=1 << 16,
                    batch_rows=10, checkpoint_seconds=0)
    got = streamfit.load_stats(tmp_path / "stats")
    assert len(spills) >= 2
    assert np.array_equal(got.indptr, expected.indptr)
    assert np.array_equal(got.indices, expected.indices)
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-12)
    assert got.n_examples == expected.n_examples and got.empty_rows == expected.empty_rows


def test_two_jobs_equal_one(tmp_path, token_files):
    accumulate_into(tmp_path / "one", token_files, window=2, jobs=1)
    accumulate_into(tmp_path / "two", token_files, window=2, jobs=2, memory=1 << 16, batch_rows=8)
    same_counts(streamfit.load_stats(tmp_path / "two"), streamfit.load_stats(tmp_path / "one"))


@pytest.mark.parametrize("seed", range(20))
def test_balanced_assignment_keeps_every_unit_once_in_order_and_loads_close(seed):
    """Largest first to the least loaded: no worker ends more than one unit's rows above
    another (the greedy bound), each unit goes to one worker, in the given order."""
    rng = np.random.default_rng(seed)
    n, jobs = int(rng.integers(1, 30)), int(rng.integers(1, 5))
    units = [("f", i, 0) for i in range(n)]
    rows = [int(r) for r in rng.integers(1, 1000, n)]
    got = out_of_core.balanced(units, rows, jobs)
    assert len(got) == min(jobs, n)
    assert sorted(u for w in got for u in w) == units
    assert all(w == sorted(w) for w in got)
    loads = [sum(rows[u[1]] for u in w) for w in got]
    assert max(loads) - min(loads) <= max(rows)


@pytest.mark.parametrize("jobs", [2, 3])
def test_parallel_merge_of_key_ranges_equals_one_process(tmp_path, wide_token_files, jobs):
    """--jobs N merges N disjoint key ranges in N processes and concatenates them: the same
    statistics, bit for bit, as one process holding everything in memory."""
    accumulate_into(tmp_path / "one", wide_token_files, window=3)
    accumulate_into(tmp_path / "n", wide_token_files, window=3, jobs=jobs, memory=1 << 16,
                    batch_rows=4)
    a, b = streamfit.load_stats(tmp_path / "one"), streamfit.load_stats(tmp_path / "n")
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_examples, a.n_features, a.n_classes) == (b.n_examples, b.n_features, b.n_classes)


def test_ngram_statistics_with_jobs_equal_one_process(tmp_path, wide_token_files):
    accumulate_into(tmp_path / "one", wide_token_files, order=3)
    accumulate_into(tmp_path / "two", wide_token_files, order=3, jobs=2, memory=1 << 16,
                    batch_rows=4)
    a, b = streamfit.load_stats(tmp_path / "one"), streamfit.load_stats(tmp_path / "two")
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.data, b.data) and a.nnz > 1000


@pytest.mark.parametrize("parts", [2, 5, 40])
@pytest.mark.parametrize("value_dtype", [np.float64, np.int64])
def test_merge_in_key_ranges_is_the_one_merge(tmp_path, parts, value_dtype):
    """split_runs + merge_part of each range, the first written in place and the others
    appended, against the merge of all runs at once and against numpy (every key's values
    summed in run order), on float sums (whose rounding depends on the order values meet)
    and integer sums, runs with keys shared between them, a run with no entries and a
    range restricted run; the recorded sha256 and sizes are those of the files."""
    from streamfit.count import spill
    from streamfit.count.kernels import LABEL_BITS
    from streamfit.io.files import file_digest

    rng = np.random.default_rng(parts)
    runs = []
    for size in (0, 50, 3000, 700, 1):  # (feature, label) keys
        keys = np.unique(rng.integers(0, 1 << 14, size)) << LABEL_BITS | rng.integers(0, 8)
        vals = rng.random(keys.size) * 1e3 if value_dtype == np.float64 else \
            rng.integers(1, 1 << 40, keys.size)
        runs.append(spill.write_run(tmp_path, keys.astype(np.int64), vals))
    runs[2] = {**runs[2], "lo": 5, "hi": runs[2]["n"] - 7}
    out = {}
    for n in (1, parts):
        d = tmp_path / f"out{n}"
        d.mkdir()
        entries = spill.merge_runs(tmp_path, runs, task="classify", vocab_size=8,
                                   n_features=1 << 14, value_dtype=value_dtype, out_dir=d,
                                   generation="g", memory=1 << 16, parts=n)
        out[n] = {k: np.load(d / e["file"]) for k, e in entries.items()}
        for name, e in entries.items():
            assert e["shape"] == [out[n][name].size]
            assert {k: e[k] for k in ("size", "sha256")} == file_digest(d / e["file"]), name
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(out[1][name], out[parts][name]), name
    keys = np.concatenate([np.load(tmp_path / f"{r['name']}.keys.npy")[r.get("lo", 0):r.get("hi")]
                           for r in runs])
    vals = np.concatenate([np.load(tmp_path / f"{r['name']}.vals.npy")[r.get("lo", 0):r.get("hi")]
                           for r in runs])
    order = np.argsort(keys, kind="stable")  # run order within a key
    unique, starts = np.unique(keys[order], return_index=True)
    sums = [sum(vals[order][a:b].tolist(), value_dtype(0))
            for a, b in zip(starts, [*starts[1:], keys.size])]
    rows, cols = unique >> LABEL_BITS, unique & ((1 << LABEL_BITS) - 1)
    assert np.array_equal(out[parts]["indptr"], np.searchsorted(rows, np.arange((1 << 14) + 1)))
    assert np.array_equal(out[parts]["indices"], cols)
    assert np.array_equal(out[parts]["data"], np.array(sums, dtype=value_dtype))
    assert not list(tmp_path.glob(".*.tmp-*"))  # the pieces are gone


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 1 << 30), bounds=st.tuples(
    st.floats(0, 1), st.floats(0, 1)))
def test_search_by_fences_is_numpy_searchsorted(tmp_path_factory, n, seed, bounds):
    """A cut found through a run's fences (one block read) is numpy's searchsorted over
    the range, as the binary search of single reads (a run without fences) is, for keys
    inside, between and outside the run's keys."""
    from streamfit.count import spill

    directory = tmp_path_factory.mktemp("fences")
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 1 << 40, n))
    entry = spill.write_run(directory, keys, np.ones(keys.size, np.int64))
    assert spill.fences_of(entry).size == min(keys.size, spill.FENCES)
    assert np.array_equal(spill.fences_of(entry), keys[np.arange(spill.fences_of(entry).size)
                                                       * keys.size // min(keys.size, spill.FENCES)])
    lo, hi = sorted(int(b * keys.size) for b in bounds)
    path = directory / f"{entry['name']}.keys.npy"
    fenced = spill._KeysOnDisk(path, entry)
    plain = spill._KeysOnDisk(path, {"n": entry["n"]})
    try:
        for key in [*keys[rng.integers(0, keys.size, 20)], *rng.integers(-1, 1 << 40, 20),
                    keys[0], keys[-1], keys[-1] + 1]:
            expected = lo + int(np.searchsorted(keys[lo:hi], key))
            assert fenced.searchsorted(lo, hi, key) == expected == plain.searchsorted(lo, hi, key)
    finally:
        fenced.close()
        plain.close()


def test_fences_unlike_the_run_are_a_damaged_run(tmp_path):
    """A run whose keys are not those its journal entry's fences say (a file replaced or
    damaged) stops the cut with a one-line error, rather than cutting it wrong."""
    from streamfit.count import spill
    from streamfit.errors import FormatError

    entry = spill.write_run(tmp_path, np.arange(0, 4000, 2), np.ones(2000, np.int64))
    shifted = base64.b64encode((spill.fences_of(entry) + 1).astype("<i8").tobytes()).decode()
    keys = spill._KeysOnDisk(tmp_path / f"{entry['name']}.keys.npy", {**entry, "fences": shifted})
    try:
        with pytest.raises(FormatError, match="journal entry"):
            keys.searchsorted(0, entry["n"], 1001)
    finally:
        keys.close()
    for unreadable in ([1, 2], "not base64!", base64.b64encode(b"seven b").decode()):
        assert spill.fences_of({**entry, "fences": unreadable}).size == 0  # keys read instead


def _random_run(directory, rng, n: int) -> dict:
    keys = np.unique(rng.integers(0, 1 << 40, n))
    from streamfit.count import spill

    return spill.write_run(directory, keys, rng.integers(1, 100, keys.size))


def test_split_runs_halves_the_entries(tmp_path):
    """Two key ranges of many runs hold half the entries each, within 0.5%: a run's
    fences stand for the blocks they open, and counting each whole block below the cut
    put the two ranges 3.5% apart here."""
    from streamfit.count import spill

    rng = np.random.default_rng(3)
    runs = [_random_run(tmp_path, rng, 20_000) for _ in range(64)]
    first, second = spill.split_runs(tmp_path, runs, 2)
    a, b = sum(spill.span(r) for r in first), sum(spill.span(r) for r in second)
    assert a + b == sum(r["n"] for r in runs)
    assert abs(a - b) / (a + b) < 0.005


def test_merge_without_page_cache_advice(tmp_path, monkeypatch):
    """Where os has no posix_fadvise (macOS, Windows), runs are written, cut in key
    ranges and merged as with the advice to drop or read ahead their pages."""
    from streamfit.count import spill

    rng = np.random.default_rng(0)
    runs = [_random_run(tmp_path, rng, 5000) for _ in range(3)]
    out = {}
    for advice in (True, False):
        if not advice:
            monkeypatch.delattr(os, "posix_fadvise", raising=False)
        d = tmp_path / f"out-{advice}"
        d.mkdir()
        entries = spill.merge_runs(tmp_path, runs, task="lm", vocab_size=1 << 20,
                                   n_features=0, value_dtype=np.int64, out_dir=d,
                                   generation="g", memory=1 << 16, ngram=True, parts=2)
        out[advice] = [np.load(d / e["file"]) for e in entries.values()]
    assert all(np.array_equal(x, y) for x, y in zip(out[True], out[False]))
    keys = np.unique(np.concatenate([np.load(tmp_path / f"{r['name']}.keys.npy") for r in runs]))
    assert np.array_equal(out[False][0], keys)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5), st.integers(1, 62), st.integers(0, 62), st.integers(-3, 40),
       st.sampled_from(["int64", "float64"]), st.integers(0, 2**32 - 1))
def test_a_merge_step_sums_each_keys_values_in_run_order(pieces, key_bits, base_bits,
                                                         value_bits, dtype, seed):
    """spill.summed (a merge step) against numpy: the distinct keys of sorted pieces
    concatenated, each with the sum of its values — integer values exactly, packed below
    their keys where the key range and the values leave room (small ranges and values
    here), by an argsort where they do not (wide ranges, large or negative values, floats).
    Float sums are checked against the exact sum (math.fsum) to a few roundings: numpy's
    reduceat adds a segment's first term to the pairwise sum of the others, neither
    np.add.reduce's order nor Python's; that a merge in key ranges adds alike is checked
    bit for bit by the --jobs tests."""
    from streamfit.count import spill

    rng = np.random.default_rng(seed)
    parts = [np.unique(rng.integers(0, 1 << key_bits, rng.integers(0, 60)))
             for _ in range(pieces)]
    base = int(rng.integers(0, 1 << base_bits)) if key_bits < 62 else 0
    keys = np.concatenate([np.zeros(0, np.int64), *parts]).astype(np.int64)
    keys = np.minimum(keys, (1 << 63) - 1 - base) + base
    if dtype == "float64":
        vals = rng.random(keys.size) * 10.0 ** rng.integers(-3, 12, keys.size)
    else:
        vals = rng.integers(-(1 << 3) if value_bits < 0 else 0, 1 << abs(value_bits), keys.size)
    order = np.argsort(keys, kind="stable")
    unique, starts = np.unique(keys[order], return_index=True)
    sums = [vals[order][a:b] for a, b in zip(starts, [*starts[1:], keys.size])]
    got_keys, got_vals = spill.summed(keys.copy(), vals)
    assert np.array_equal(got_keys, unique)
    assert got_vals.dtype == vals.dtype
    if dtype == "float64":  # positive terms, at most `pieces` of them: each rounding <= 2^-53
        np.testing.assert_allclose(got_vals, [math.fsum(t) for t in sums], rtol=8 * 2.0 ** -53)
    else:
        assert np.array_equal(got_vals, np.array([int(t.sum()) for t in sums], dtype=vals.dtype))


@pytest.mark.parametrize("in_kernel", [True, False])
def test_pieces_of_a_parallel_merge_are_appended_whole(tmp_path, monkeypatch, in_kernel):
    """spill._concatenated: the pieces' elements after the target's, under the header of
    the whole, with the recorded size and sha256 those of the file — by os.copy_file_range
    and, where it is missing, by reads and writes (copies of several blocks)."""
    from streamfit.count import spill
    from streamfit.io.files import NpyWriter, file_digest

    if not in_kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    rng = np.random.default_rng(5)
    parts = [rng.integers(-1 << 40, 1 << 40, n) for n in (1000, 0, 70_000, 3)]
    paths = []
    for i, part in enumerate(parts):
        w = NpyWriter(tmp_path / f"p{i}.npy", np.int64)
        w.append(part)
        w.close(sync=False)
        paths.append(tmp_path / f"p{i}.npy")
    digest = spill._concatenated(paths[0], paths[1:], np.int64, chunk=1 << 12)
    assert np.array_equal(np.load(paths[0]), np.concatenate(parts))
    assert digest == file_digest(paths[0])


def test_extending_existing_statistics_through_runs(tmp_path, token_files, spills):
    accumulate_into(tmp_path / "stats", token_files[:1], window=2)
    assert len(spills) == 1  # the whole table, once, at the end
    accumulate_into(tmp_path / "stats", token_files, window=2, memory=1 << 16, batch_rows=8)
    assert len(spills) >= 3
    same_counts(streamfit.load_stats(tmp_path / "stats"),
                streamfit.accumulate(token_files, window=2))


def test_a_second_writer_is_refused(tmp_path, token_files):
    stats = tmp_path / "stats"
    stats.mkdir()
    with DirectoryLock(stats):
        with pytest.raises(StreamfitError, match="in use"):
            accumulate_into(stats, token_files, window=1)
    accumulate_into(stats, token_files, window=1)  # free again once released


def _cli(args, fault=None, cwd=None):
    env = dict(os.environ)
    env.pop("STREAMFIT_FAULT", None)
    if fault:
        env["STREAMFIT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "streamfit", *map(str, args)], env=env,
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("fault", ["after_batch:7", "after_batch:12", "mid_spill:3",
                                   "mid_merge:1", "before_commit:1", "after_commit:1"])
@pytest.mark.parametrize("jobs", [1, 2])
def test_killed_runs_resume_to_identical_statistics(tmp_path, token_files, fault, jobs):
    """SIGKILL at a point (no cleanup at all, like power loss), then run the same command
    again: the result equals an uninterrupted run, and nothing is counted twice."""
    stats = tmp_path / "stats"
    args = ["accumulate", *token_files, "--stats", stats, "--window", 2, "--quiet",
            "--checkpoint", 0, "--batch-rows", 8, "--jobs", jobs]
    killed = _cli(args, fault=fault)
    assert killed.returncode != 0  # the fault fired (SIGKILL of the process or a worker)
    resumed = _cli(args)
    assert resumed.returncode == 0, resumed.stderr
    if fault.startswith("after_commit"):  # committed, only the clean-up was lost
        assert "nothing to add" in resumed.stdout
    else:
        assert "resumed an interrupted run" in resumed.stdout
    same_counts(streamfit.load_stats(stats, check=True),
                streamfit.accumulate(token_files, window=2))
    assert not (stats / ".work").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_damaged_run_of_an_interrupted_accumulate_is_a_one_line_error(tmp_path, token_files,
                                                                      jobs):
    """A journalled run cut short after the kill (a damaged disk, a user's hand): the rerun
    stops with one line naming the run and the way out (--jobs 2 searched the cut points of
    its key ranges in it and crashed with an IndexError), and --overwrite counts again."""
    import json

    stats = tmp_path / "stats"
    args = ["accumulate", *token_files, "--stats", stats, "--window", 2, "--quiet",
            "--checkpoint", 0, "--batch-rows", 8, "--jobs", jobs]
    assert _cli(args, fault="after_batch:12").returncode != 0
    runs = json.loads((stats / ".work" / "journal.json").read_text())["runs"]
    keys = stats / ".work" / f"{max(runs, key=lambda r: r['n'])['name']}.keys.npy"
    os.truncate(keys, keys.stat().st_size - 8)
    again = _cli(args)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and len(lines) == 1, again.stderr
    assert "is damaged" in lines[0] and keys.stem.split(".")[0] in lines[0]
    assert "--overwrite" in lines[0]
    assert _cli([*args, "--overwrite"]).returncode == 0
    same_counts(streamfit.load_stats(stats, check=True),
                streamfit.accumulate(token_files, window=2))


def test_killed_before_the_first_spill_leaves_no_statistics(tmp_path, token_files):
    stats = tmp_path / "stats"
    args = ["accumulate", *token_files, "--stats", stats, "--quiet", "--batch-rows", 8]
    assert _cli(args, fault="after_batch:2").returncode != 0
    assert not (stats / "manifest.json").exists()
    assert _cli(args).returncode == 0
    same_counts(streamfit.load_stats(stats), streamfit.accumulate(token_files, window=1))


def test_killed_run_keeps_the_previous_statistics_loadable(tmp_path, token_files):
    stats = tmp_path / "stats"
    assert _cli(["accumulate", token_files[0], "--stats", stats, "--quiet"]).returncode == 0
    before = streamfit.load_stats(stats, check=True)
    killed = _cli(["accumulate", *token_files, "--stats", stats, "--quiet"], fault="mid_merge:1")
    assert killed.returncode != 0
    same_counts(streamfit.load_stats(stats, check=True), before)


def test_resume_with_other_options_is_refused(tmp_path, token_files):
    stats = tmp_path / "stats"
    args = ["accumulate", *token_files, "--stats", stats, "--quiet", "--checkpoint", 0,
            "--batch-rows", 8]
    assert _cli([*args, "--window", 2], fault="after_batch:5").returncode != 0
    other = _cli([*args, "--window", 3])
    assert other.returncode == 1 and "interrupted accumulate with other options" in other.stderr
    assert _cli([*args, "--window", 3, "--overwrite"]).returncode == 0
    same_counts(streamfit.load_stats(stats), streamfit.accumulate(token_files, window=3))


@pytest.mark.parametrize("text,expected", [("512M", 512 << 20), ("2G", 2 << 30),
                                           ("1.5GiB", int(1.5 * (1 << 30))), ("3000000", 3000000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "10", "-5G"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("point", [1, 2, 3, 4])
def test_killed_finalize_leaves_the_previous_model_or_none(tmp_path, token_files, point):
    """Kill a finalize that replaces a model at each of its steps (blocks written, arrays
    renamed): afterwards the model either loads and is exactly the previous one, or there
    is no sidecar (no model) — never a sidecar beside arrays it does not describe."""
    from streamfit.errors import FormatError
    from streamfit.model.evaluate import evaluate

    stats, weights = tmp_path / "stats", tmp_path / "w.npy"
    assert _cli(["accumulate", *token_files, "--stats", stats, "--window", 2, "--quiet"]).returncode == 0
    assert _cli(["finalize", "--stats", stats, "--out", weights]).returncode == 0
    before = evaluate(streamfit.load_model(weights, check=True), token_files[:1])
    killed = _cli(["finalize", "--stats", stats, "--out", weights, "--form", "paper"],
                  fault=f"mid_finalize:{point}")
    assert killed.returncode != 0
    try:
        model = streamfit.load_model(weights, check=True)
    except FormatError:
        assert not weights.with_suffix(".model.json").exists()
    else:
        assert model.meta["form"] == "conditional"
        assert evaluate(model, token_files[:1]) == before
    # The next finalize succeeds and leaves no temporary files behind.
    assert _cli(["finalize", "--stats", stats, "--out", weights, "--form", "paper"]).returncode == 0
    assert streamfit.load_model(weights, check=True).meta["form"] == "paper"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_an_edited_sidecar_is_refused(tmp_path, token_files):
    import json

    from streamfit.errors import FormatError
    stats, weights = tmp_path / "stats", tmp_path / "w.npy"
    assert _cli(["accumulate", *token_files, "--stats", stats, "--quiet"]).returncode == 0
    assert _cli(["finalize", "--stats", stats, "--out", weights]).returncode == 0
    meta = json.loads(weights.with_suffix(".model.json").read_text())
    meta["tau"] = 2.0
    weights.with_suffix(".model.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="checksum"):
        streamfit.load_model(weights)


def test_a_pending_run_is_a_run_only_once_finished(tmp_path):
    """Written inside a batch, a run lies under temporary names (which a resume removes)
    until the thread's finish names it; abort leaves nothing."""
    from streamfit.count.spill import PendingRun

    keys = np.arange(0, 300, 3, dtype=np.int64)
    vals = np.arange(keys.size, dtype=np.int64) + 1
    run = PendingRun(tmp_path, keys, vals)
    assert not list(tmp_path.glob("run-*")) and len(list(tmp_path.glob(".run-*.tmp-*"))) == 2
    entry = run.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{entry['name']}.keys.npy",
                                                          f"{entry['name']}.vals.npy"]
    assert np.array_equal(np.load(tmp_path / f"{entry['name']}.keys.npy"), keys)
    assert np.array_equal(np.load(tmp_path / f"{entry['name']}.vals.npy"), vals)
    PendingRun(tmp_path, keys, vals).abort()
    assert len(list(tmp_path.iterdir())) == 2
