"""Process memory: allocators that hand freed memory back, so that the peak RSS of a command
follows what it holds (its --memory budget), not what it once held.

Two allocators keep freed memory by default. glibc's malloc raises its mmap threshold to the
size of any large block freed (up to 32 MiB), so after a spill's sorted arrays are freed,
arrays of that size come from the heap, which grows and keeps its free holes (trimmed only
past twice the threshold). Arrow's default pool (mimalloc or jemalloc) keeps freed pages for
reuse. `bound_retained_memory` fixes glibc's thresholds (blocks of MMAP_THRESHOLD bytes and
more are mapped apart and returned when freed; a free top of the heap larger than
TRIM_THRESHOLD is returned) and makes Arrow allocate through the system allocator, under the
same rules. Elsewhere than glibc (macOS, musl, Windows) the glibc part does nothing.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2 << 20   # below: the heap, reused without new page faults (2 MiB: 6 MiB
#                            less peak than 4 at --memory 64M and 256M on the bench_scale
#                            corpus, for the same CPU time in paired runs)
TRIM_THRESHOLD = 16 << 20  # lower: a merge's arrays, freed at the top of the heap after
#                            every step, are returned and faulted in again (5x the faults
#                            at 4 MiB, for 1% less peak RSS, on the bench_scale corpus)

_state: dict = {}


def _glibc():
    """The process's C library if it is glibc (it has gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (musl and others lack it)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def bound_retained_memory() -> dict:
    """Set glibc's mmap and trim thresholds and Arrow's default memory pool (see the module)
    for this process and the processes it forks; idempotent. Returns what was set:
    {"glibc": whether the thresholds were set, "arrow_pool": the pool's backend name}."""
    if _state:
        return dict(_state)
    libc = _glibc()
    glibc = libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    _state.update(glibc=glibc, arrow_pool=pa.default_memory_pool().backend_name)
    return dict(_state)

