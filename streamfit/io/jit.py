"""numba's cache of compiled kernels, kept wherever it can be written.

The kernels are compiled with cache=True: numba keeps their machine code beside the
package (its __pycache__ folders) or in the user's cache (~/.cache/numba, or
NUMBA_CACHE_DIR). Where none of these can be written — an installation on a read-only
filesystem and a home directory that is not writable — numba refuses to compile at all
("cannot cache function"). Before the first kernel is defined, this module checks those
places; if none is writable it points numba at a private directory of streamfit's own in
the system's temporary directory, and failing that compiles without a cache, with a
one-line warning. The kernel modules take `njit` from here.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import numba
from numba.core import config

PACKAGE = Path(__file__).resolve().parents[1]
KERNEL_DIRS = ("count", "model", "solve")  # where the modules with cached kernels are


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


CACHE = _choose_cache()


def njit(*args, **kwargs):
    """numba.njit, with cache=True dropped when there is nowhere to keep the cache."""
    if not CACHE:
        kwargs["cache"] = False
    return numba.njit(*args, **kwargs)
