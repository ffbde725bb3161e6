"""numba kernels built on first use, and numba's cache of compiled kernels kept wherever it
can be written.

`njit` does not import numba: it returns a `Kernel`, which builds the numba dispatcher the
first time it is called. A command that imports a module of kernels but calls none of them
(finalize of window statistics, Kneser-Ney) then skips numba's import (0.3–0.5 s of CPU);
one that calls a kernel loads that kernel alone from the cache (numba loads compiled code per
function, on its first call). When a kernel is built, the kernels its module refers to (the
helpers it calls, also those imported from another module) are built too, so that numba
compiles against dispatchers.

The kernels are compiled with cache=True: numba keeps their machine code beside the
package (its __pycache__ folders) or in the user's cache (~/.cache/numba, or
NUMBA_CACHE_DIR). Where none of these can be written — an installation on a read-only
filesystem and a home directory that is not writable — numba refuses to compile at all
("cannot cache function"). Before the first kernel is built, this module checks those
places; if none is writable it points numba at a private directory of streamfit's own in
the system's temporary directory, and failing that compiles without a cache, with a
one-line warning. The kernel modules take `njit` from here.
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

PACKAGE = Path(__file__).resolve().parents[1]
KERNEL_DIRS = ("count", "model", "solve", "train")  # where the modules with cached kernels are


def _writable(directory: Path) -> bool:
    """Can files be created in `directory` (made if missing)? Tried, not guessed from
    permission bits (root, read-only mounts, ACLs)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _private(directory: Path) -> bool:
    """A directory of this user's that nobody else can write: compiled code loaded from a
    cache is run, so a cache in a shared place must not be one someone else planted."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        st = directory.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _user_cache() -> Path | None:
    try:
        from numba.misc.appdirs import AppDirs

        return Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    except Exception:  # noqa: BLE001 - numba's internals moved: no user cache to offer
        return None


def _choose_cache() -> bool:
    """Make sure numba has a writable cache location; False when there is none (compile
    without a cache)."""
    from numba.core import config

    if config.CACHE_DIR and _writable(Path(config.CACHE_DIR)):
        return True  # the user's choice, and usable
    if not config.CACHE_DIR:
        if all(_writable(PACKAGE / d / "__pycache__") for d in KERNEL_DIRS):
            return True
        user = _user_cache()
        if user is not None and _writable(user):
            return True
    own = Path(tempfile.gettempdir()) / f"streamfit-numba-cache-{os.getuid()}"
    if _private(own) and _writable(own):
        os.environ["NUMBA_CACHE_DIR"] = str(own)  # worker processes inherit it
        config.CACHE_DIR = str(own)
        return True
    print("streamfit: warning: no writable place for numba's cache (the package directory, "
          "~/.cache or NUMBA_CACHE_DIR); kernels are compiled anew in every process",
          file=sys.stderr)
    return False


def _scipy_blas_present() -> bool:
    """Is scipy's BLAS module installed? Looked up on disk: importing it imports all of
    scipy.linalg."""
    spec = importlib.util.find_spec("scipy")
    folders = spec.submodule_search_locations if spec is not None else None
    return bool(folders) and any(
        (Path(f) / "linalg" / f"cython_blas{suffix}").exists()
        for f in folders for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _blas_check_without_scipy() -> None:
    """The first kernel a process calls, even one loaded from the cache, makes numba load its
    implementations, among them numba.np.arraymath, which checks at import that BLAS is
    available by importing scipy.linalg: 0.3–0.5 s of CPU (scipy then imports every
    submodule of numpy) and 15 MiB, for kernels that call no BLAS. During that import only,
    the check looks for the module on disk instead; every later use (compiling np.dot) runs
    numba's own check."""
    if "numba.np.arraymath" in sys.modules:
        return  # already loaded in this process
    try:
        from numba.np import linalg
        original = linalg.ensure_blas
    except (ImportError, AttributeError):  # numba's internals moved: leave them alone
        return

    def ensure_blas() -> None:
        loading = sys.modules.get("numba.np.arraymath")
        if loading is not None and not hasattr(loading, "_HAVE_BLAS"):
            if not _scipy_blas_present():
                raise ImportError("scipy 0.16+ is required for linear algebra")
            return
        original()

    linalg.ensure_blas = ensure_blas


_LOCK = threading.RLock()
_NUMBA: dict[str, Any] = {}  # "njit": numba.njit once imported, "cache": whether it caches


def _numba_njit() -> tuple[Callable, bool]:
    """numba.njit and whether kernels can be cached, set up on the first call."""
    if not _NUMBA:
        import numba

        _blas_check_without_scipy()
        _NUMBA["cache"] = _choose_cache()
        _NUMBA["njit"] = numba.njit
    return _NUMBA["njit"], _NUMBA["cache"]


class Kernel:
    """A function for numba.njit, built (compiled, or loaded from the cache) on its first
    call; attributes other than the function's own are the numba dispatcher's."""

    def __init__(self, py_func: Callable, options: dict):
        functools.update_wrapper(self, py_func)
        self.py_func = py_func
        self.options = options
        self._dispatcher = None

    def __call__(self, *args, **kwargs):
        dispatcher = self._dispatcher
        if dispatcher is None:
            dispatcher = self.build()
        return dispatcher(*args, **kwargs)

    def build(self):
        """The numba dispatcher (made once), with every Kernel that the function's module
        refers to replaced there by its own dispatcher."""
        with _LOCK:
            if self._dispatcher is None:
                numba_njit, cache = _numba_njit()
                options = dict(self.options)
                if not cache:
                    options["cache"] = False
                self._dispatcher = numba_njit(**options)(self.py_func)
                namespace = self.py_func.__globals__
                for name, value in list(namespace.items()):
                    if isinstance(value, Kernel):
                        namespace[name] = value.build()
        return self._dispatcher

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("py_func", "options"):
            raise AttributeError(name)  # not set yet (copy, unpickling): not the dispatcher's
        return getattr(self.build(), name)

    def __reduce__(self):
        return _named_kernel, (self.__module__, self.__name__)

    def __repr__(self) -> str:
        return f"<kernel {self.__module__}.{self.__qualname__}>"


def _named_kernel(module: str, name: str):
    """The kernel `name` of `module` (by reference, as functions pickle)."""
    return getattr(importlib.import_module(module), name)


def njit(*args, **options):
    """numba.njit(**options) as a decorator, the dispatcher built on the first call
    (with cache=True dropped when there is nowhere to keep the cache)."""
    if args:
        raise TypeError("streamfit kernels take options only: @njit(cache=True, ...)")
    return lambda py_func: Kernel(py_func, options)
