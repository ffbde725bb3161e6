"""distinct_inputs: identical token windows are found and mapped back exactly."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfit.data.featurize import Examples, distinct_inputs


def windows(table: np.ndarray) -> Examples:
    n, w = table.shape
    return Examples(np.arange(0, n * w + 1, w, dtype=np.int64), table.ravel().astype(np.int64),
                    np.full(n * w, 1.0 / w), np.zeros(n, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 80), w=st.integers(1, 4), high=st.sampled_from([3, 50, 2**20, 2**40]),
       seed=st.integers(0, 2**31))
def test_rows_are_the_sorted_distinct_windows_and_map_back(n, w, high, seed):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, high, size=(max(1, n // 3), w))   # repeats, so merging happens
    table = pool[rng.integers(0, pool.shape[0], size=n)]
    inputs, inverse = distinct_inputs(windows(table))
    got = inputs.indices.reshape(inputs.n, w)
    want = np.unique(table, axis=0)                         # the oracle: lexicographic rows
    if want.shape[0] > n // 2:                              # too few repeats: left as is
        assert inputs.n == n and np.array_equal(inverse, np.arange(n))
        return
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[inverse], table)
    assert np.all(inputs.values == 1.0 / w) and np.all(inputs.targets == -1)
