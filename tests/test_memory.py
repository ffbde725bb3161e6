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
    holds (at most 0.4 of its slots full, 16 bytes each) and the key buffer of the path in
    use (the partitioned path's two, or the sorted path's: each path frees the other's)
    take at most 0.8 of a worker's budget: the rest is for the counting sort's row counts,
    a decoded batch and the allocator."""
    bits = table_bits(budget)
    chunk = min(accumulate.CHUNK_KEYS, 1 << max(bits - 3, 10))
    sort_keys = min(accumulate.SORT_CHUNK_KEYS, 1 << max(bits - 2, 10))
    keys = max(2 * 8 * chunk, 8 * sort_keys)
    assert (16 << bits) * (1 + accumulate.SPILL_LOAD) + keys <= 0.8 * budget
    assert (16 << (bits + 1)) > budget // 2  # and no smaller than it must be


def test_the_sorted_path_counts_in_the_tables_room(tmp_path):
    """On the sorted path the idle table is freed and the runs stop at the spill point:
    counting allocates (tracemalloc: numpy's arrays) its runs and their merge (twice the
    spill point's entries, 16 bytes each), its key buffer and numba's dispatch (constant,
    ~64 KiB) — less than the capped table it replaces. The table kept beside its runs
    failed this; runs overshooting the spill point by up to a buffer of keys fail it too.
    The spilled runs add up to the numpy twin's counts, and the table comes back at its
    size when hashing resumes."""
    import tracemalloc

    from streamfit.count import reference as ref
    from streamfit.count.accumulate import CountTable

    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 5000, 150000).astype(np.int64)  # most (context, token) keys new
    offsets = np.array([0, 50000, 100000, 150000], dtype=np.int64)
    want_keys, want_counts = ref.count_windows(tokens, offsets, 2)
    max_bits = 17
    cap = 16 << max_bits
    spill_point = int(np.ceil(accumulate.SPILL_LOAD * (1 << max_bits)))
    sort_keys = 1 << (max_bits - 2)
    warm = CountTable(np.int64, capacity_bits=8)  # the kernels loaded before tracing
    warm.force_path = "sorted"
    warm.add_windows(tokens[:100], np.array([0, 100]), 2)
    warm.items()
    files = [open(tmp_path / f"run.{part}", "wb") for part in ("keys", "vals")]
    sizes = []
    tracemalloc.start()
    try:
        table = CountTable(np.int64, capacity_bits=max_bits, max_bits=max_bits)  # at its cap
        table.force_path = "sorted"
        table.spill = lambda k, v: (sizes.append(k.size), k.tofile(files[0]), v.tofile(files[1]))
        table.add_windows(tokens[:100], np.array([0, 100]), 2)
        _, first = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        table.add_windows(tokens, offsets, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.slots.nbytes < 1024 and table.parked == max_bits  # the table was freed
    assert first <= cap + (128 << 10), (first, cap)  # freed before its buffer came
    assert peak <= 2 * 16 * spill_point + 8 * sort_keys + (128 << 10) < cap, (peak, cap)
    assert max(sizes) <= spill_point + 1 and len(sizes) > 2  # + the keys of a token, less one
    table.force_path = "hashing"  # back to the table, at its size
    table.add_windows(tokens[:10], np.array([0, 10]), 2)
    assert table.parked is None and table.bits == max_bits and table._sorting is None
    table.spill(*table.items())
    for f in files:
        f.close()
    keys, vals = (np.fromfile(f.name, dtype=np.int64) for f in files)
    uniq, inverse = np.unique(keys, return_inverse=True)
    more = ref.count_windows(tokens[:100], np.array([0, 100]), 2), \
        ref.count_windows(tokens[:10], np.array([0, 10]), 2)
    all_keys = np.concatenate([want_keys, *(k for k, _ in more)])
    all_counts = np.concatenate([want_counts, *(c for _, c in more)])
    want_uniq, want_inv = np.unique(all_keys, return_inverse=True)
    np.testing.assert_array_equal(uniq, want_uniq)
    np.testing.assert_array_equal(np.bincount(inverse, weights=vals).astype(np.int64),
                                  np.bincount(want_inv, weights=all_counts).astype(np.int64))


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
