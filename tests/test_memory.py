"""Bounded memory: the allocator settings of streamfit.io.memory (in a subprocess each: they
are process-wide), the budget arithmetic of the out-of-core workers, and the merge in small
steps."""
from __future__ import annotations

import platform
import subprocess
import sys

import numpy as np
import pytest

import streamfit
from streamfit.count import accumulate, spill
from streamfit.count.out_of_core import accumulate_into, table_bits

from conftest import run_cli, write_tokens


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_settings_are_set_once_and_say_what():
    out = _python("from streamfit.io.memory import bound_retained_memory as b\n"
                  "import pyarrow as pa\n"
                  "first = b(); assert b() == first\n"
                  "print(first['glibc'], first['arrow_pool'], pa.default_memory_pool().backend_name)")
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out.split() == [str(glibc), "system", "system"]


def test_elsewhere_than_glibc_nothing_is_set_and_nothing_breaks():
    out = _python("import sys; sys.platform = 'darwin'\n"
                  "from streamfit.io.memory import bound_retained_memory\n"
                  "print(bound_retained_memory()['glibc'])")
    assert out == "False"


@pytest.mark.parametrize("budget", [1 << 20, 3 << 20, 64 << 20, 100 << 20, 1 << 30, 5 << 30,
                                    1 << 40])
def test_a_workers_table_and_buffers_fit_its_budget(budget):
    """The table (16 bytes a slot), the sorted copy of its pairs that a spill's writer
    holds (at most 0.4 of its slots full, 16 bytes each) and the partitioned path's two key
    buffers take at most 0.8 of a worker's budget: the rest is for the counting sort's row
    counts, a decoded batch and the allocator."""
    bits = table_bits(budget)
    chunk = min(accumulate.CHUNK_KEYS, 1 << max(bits - 3, 10))
    assert (16 << bits) * 1.4 + 2 * 8 * chunk <= 0.8 * budget
    assert (16 << (bits + 1)) > budget // 2  # and no smaller than it must be


def test_merge_in_small_steps_and_the_cli_settings_change_no_count(tmp_path, monkeypatch):
    """Runs merged a few entries per step (MERGE_CHUNK 7, here) and the command line (with
    the allocator settings on, in its own process) give the in-memory statistics."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 300, rng.integers(1, 200)).tolist() for _ in range(200)]
    write_tokens(tmp_path / "a.parquet", docs, row_group_size=20)
    expected = streamfit.accumulate([tmp_path / "a.parquet"], window=2)
    monkeypatch.setattr(spill, "MERGE_CHUNK", 7)
    accumulate_into(tmp_path / "steps", [tmp_path / "a.parquet"], window=2, memory=1 << 16,
                    batch_rows=8)
    done = run_cli(["accumulate", tmp_path / "a.parquet", "--window", "2", "--memory", "1M",
                    "--batch-rows", "4", "--stats", tmp_path / "cli", "--checkpoint", "0"])
    assert done.returncode == 0, done.stderr
    for name in ("steps", "cli"):
        got = streamfit.load_stats(tmp_path / name, check=True)
        for part in ("indptr", "indices", "data"):
            assert np.array_equal(getattr(got, part), getattr(expected, part)), (name, part)
        assert got.n_examples == expected.n_examples
