"""A hostile or careless user (issue 12): nothing of theirs lost, nothing outside a model's or
statistics' own directory followed, no crash, and one-line errors instead of tracebacks.

Each test is named after the numbered case of the issue it closes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamfit
from streamfit.cli import main
from streamfit.synthetic import markov_chain, sample_documents

from conftest import write_tokens

REPO = Path(__file__).resolve().parents[1]


def docs_of(n_docs: int, doc_len: int, seed: int, states: int = 30) -> list[list[int]]:
    chain = markov_chain(states, concentration=0.3, seed=seed)
    tokens, offsets = sample_documents(chain, n_docs, doc_len, seed=seed + 1)
    return [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(n_docs)]


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    """Two token files of a few row groups each."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    return [write_tokens(folder / f"part-{i}.parquet", docs_of(40, 30, seed=i), row_group_size=10)
            for i in range(2)]


def cli(capsys, *args) -> tuple[int, str, str]:
    """`streamfit ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *words: str) -> None:
    """Exit code 1 and a single line on stderr holding each of `words`."""
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def same_statistics(a: Path, b: Path) -> None:
    x, y = streamfit.load_stats(a), streamfit.load_stats(b)
    assert (x.n_classes, x.n_features, x.n_examples) == (y.n_classes, y.n_features, y.n_examples)
    assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
    assert np.array_equal(x.data, y.data)


# --- 1: --temp removes only what streamfit made there --------------------------------------
def test_1_temp_dir_keeps_the_users_files(tmp_path, corpus, capsys):
    scratch = tmp_path / "scr"
    scratch.mkdir()
    (scratch / "important.txt").write_text("keep")
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", tmp_path / "st", "--temp", scratch,
                     "--memory", "1M", "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]
    assert (scratch / "important.txt").read_text() == "keep"
    # on failure too: bad input found before anything was journalled
    bad = write_tokens(tmp_path / "bad.parquet", [[1, 2, -3]])
    rc, _, err = cli(capsys, "accumulate", bad, "--stats", tmp_path / "st2", "--temp", scratch,
                     "--quiet")
    assert rc == 1
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]


def test_1_interrupted_run_resumes_from_its_own_subdirectory(tmp_path, corpus):
    scratch = tmp_path / "scr"
    scratch.mkdir()
    (scratch / "important.txt").write_text("keep")
    args = ["accumulate", *map(str, corpus), "--stats", str(tmp_path / "st"), "--temp",
            str(scratch), "--checkpoint", "0", "--batch-rows", "5", "--quiet"]
    env = {**os.environ, "STREAMFIT_FAULT": "after_batch:6"}
    killed = subprocess.run([sys.executable, "-m", "streamfit", *args], env=env, cwd=tmp_path)
    assert killed.returncode == -9
    own = [p for p in scratch.iterdir() if p.name != "important.txt"]
    assert len(own) == 1 and own[0].is_dir()  # the journal and runs, in a subdirectory
    assert main(args) == 0
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "ref"), "--quiet"]) == 0
    same_statistics(tmp_path / "st", tmp_path / "ref")


def test_1_dask_shards_dir_keeps_the_users_files(tmp_path, corpus):
    pytest.importorskip("distributed")
    from streamfit import distributed as D

    shards = tmp_path / "shared"
    shards.mkdir()
    (shards / "important.txt").write_text("keep")
    with D.cluster(workers=1) as client:
        D.accumulate_distributed(client, tmp_path / "st", corpus, shards=shards)
        D.accumulate_distributed(client, tmp_path / "st", corpus, shards=shards, overwrite=True)
    assert sorted(p.name for p in shards.iterdir()) == ["important.txt"]
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "ref"), "--quiet"]) == 0
    same_statistics(tmp_path / "st", tmp_path / "ref")


# --- 2: a refused writer changes nothing ------------------------------------------------------
def tree(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("temp", [False, True])
def test_2_a_refused_second_writer_changes_nothing(tmp_path, corpus, capsys, temp):
    from streamfit.io.files import DirectoryLock
    from streamfit.count.out_of_core import work_directory

    stats = tmp_path / "st"
    stats.mkdir()
    extra = ["--temp", tmp_path / "scr"] if temp else []
    work = work_directory(stats, tmp_path / "scr" if temp else None)
    work.mkdir(parents=True)
    (work / "run-0123456789ab.keys.npy").write_bytes(b"a first writer's run, not yet journalled")
    before = tree(tmp_path)
    with DirectoryLock(stats):  # the first writer, still running
        rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", stats, "--quiet", *extra)
        one_line_error(rc, err, str(stats), "in use")
        rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", stats, "--quiet", "--overwrite",
                         *extra)
        one_line_error(rc, err, "in use")
    assert tree(tmp_path) == before
