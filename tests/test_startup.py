"""The fixed start-up cost of a command: what a fresh process imports and loads.

Kernels are built on their first call (numba is not imported until then), loading one from
numba's cache does not import scipy.linalg, and the writers of commands build Arrow arrays
without `pa.array`, which imports pandas. Each check runs in a fresh interpreter; the Arrow
builders are checked against `pa.array` as the oracle.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from conftest import write_tokens
from streamfit.io.arrow import list_array, numeric_array, string_array


def fresh(code: str) -> list[str]:
    """The last line a fresh interpreter prints after running `code`, split."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split()


def test_importing_kernel_modules_imports_no_numba():
    loaded = fresh("""
        import sys
        import streamfit.count.kernels, streamfit.model.kernels, streamfit.model.ngram
        import streamfit.solve.kernels, streamfit.solve.ngram, streamfit.train.ngram
        print('numba' in sys.modules)
    """)
    assert loaded == ["False"]


def test_a_kernel_call_builds_it_and_its_helpers_without_scipy_linalg():
    """count_windows calls the inlined helpers _add and _slot: built with it. numba's BLAS
    check at registry load gives the answer an import of scipy's BLAS would."""
    got = fresh("""
        import sys
        import numpy as np
        from streamfit.count import kernels
        from streamfit.count.accumulate import CountTable
        from streamfit.count import reference
        table = CountTable(np.int64, capacity_bits=4)
        tokens, offsets = np.array([3, 1, 3, 1, 2]), np.array([0, 2, 5])
        table.add_windows(tokens, offsets, 2)
        keys, counts = table.items()
        want_keys, want_counts = reference.count_windows(tokens, offsets, 2)
        same = bool(np.array_equal(keys, want_keys) and np.array_equal(counts, want_counts))
        from numba.core.dispatcher import Dispatcher
        helpers = all(isinstance(getattr(kernels, n), Dispatcher) for n in ('_add', '_slot'))
        linalg = 'scipy.linalg' in sys.modules
        from numba.np import arraymath
        import scipy.linalg.cython_blas
        print(same, helpers, linalg, arraymath._HAVE_BLAS)
    """)
    assert got == ["True", "True", "False", "True"]


def test_a_kernel_pickles_by_name():
    """Before its first call (a Kernel, not yet numba's) and after."""
    got = fresh("""
        import pickle
        import numpy as np
        from streamfit.count import kernels
        keys = np.array([1, 1, 4, 7, 7, 7], np.int64)
        found = []
        for _ in range(2):
            kind = type(kernels.run_lengths).__name__
            out_keys, out_counts = np.zeros(6, np.int64), np.zeros(6, np.int64)
            n = pickle.loads(pickle.dumps(kernels.run_lengths))(keys, keys.size, out_keys, out_counts)
            found.append(f"{kind}:{out_keys[:n].tolist()}{out_counts[:n].tolist()}".replace(" ", ""))
        print(*found)
    """)
    assert got == ["Kernel:[1,4,7][2,1,3]", "CPUDispatcher:[1,4,7][2,1,3]"]


def test_writers_import_no_pandas():
    pytest.importorskip("pandas")  # without it installed the check says nothing
    got = fresh("""
        import sys
        import numpy as np
        from streamfit.model.documents import lm_scores
        from streamfit.data.tokenize import token_list_array
        lm_scores(np.array([2, 0]), np.array([-1.0, 0.0]))
        token_list_array([np.arange(3), np.arange(2)])
        print('pandas' in sys.modules)
    """)
    assert got == ["False"]


def test_quiet_commands_import_no_tqdm_pandas_or_scipy_linalg(tmp_path):
    """accumulate, finalize (window and n-gram statistics) and evaluate, each in a fresh
    process; finalize of window statistics calls no kernel, so imports no numba either."""
    write_tokens(tmp_path / "t.parquet", [[1, 2, 3, 1, 2], [3, 3, 1]])
    heavy = ("tqdm", "pandas", "scipy.linalg", "numba")
    steps = [["accumulate", "t.parquet", "--window", "1", "--stats", "st"],
             ["finalize", "--stats", "st", "--out", "w.npy"],
             ["accumulate", "t.parquet", "--order", "2", "--stats", "ng"],
             ["finalize", "--stats", "ng", "--out", "ng.npy", "--heldout", "t.parquet"],
             ["evaluate", "--weights", "ng.npy", "t.parquet"]]
    loaded = []
    for argv in steps:
        code = (f"import sys; from streamfit.cli import main; main({argv + ['--quiet']!r}); "
                f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, check=True)
        loaded.append(out.stdout.strip().splitlines()[-1])
    assert loaded == ["['numba']", "[]", "['numba']", "['numba']", "['numba']"], loaded


NUMERIC = [pa.int32(), pa.int64(), pa.float32(), pa.float64()]


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(-1000, 1000), max_size=40), type_at=st.integers(0, 3),
       nulls=st.lists(st.booleans(), max_size=40))
def test_numeric_array_equals_pa_array(values, type_at, nulls):
    type = NUMERIC[type_at]
    data = np.array(values, dtype=type.to_pandas_dtype())
    valid = np.array((nulls + [True] * len(values))[:len(values)], dtype=bool)
    got = numeric_array(data, type, valid)
    got.validate(full=True)
    assert got.equals(pa.array(data, type, mask=~valid))
    assert numeric_array(data, type).equals(pa.array(data, type))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.integers(0, 99), max_size=6), max_size=10),
       strings=st.lists(st.text(max_size=8), max_size=10))
def test_list_and_string_arrays_equal_pa_array(rows, strings):
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    values = numeric_array(np.array([v for r in rows for v in r]), pa.int32())
    got = list_array(offsets, values)
    got.validate(full=True)
    assert got.equals(pa.array(rows, pa.list_(pa.int32())))
    got = string_array(strings)
    got.validate(full=True)
    assert got.equals(pa.array(strings, pa.string()))
