"""Progress bars that cost nothing when they are not shown.

tqdm.auto takes about 0.1 s of CPU to import (it imports asyncio and importlib.metadata);
a command run with --quiet, or from the Python API with progress=False, does not import it.
"""
from __future__ import annotations


class _Silent:
    """Stands in for a tqdm bar that is not shown."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, *args, **kwargs) -> None:
        return None


def progress_bar(progress: bool, **kwargs):
    """A tqdm.auto bar (shown on a terminal or in a notebook) when `progress`, else a
    stand-in with the same update / set_postfix; use it in a `with` block."""
    if not progress:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(disable=None, **kwargs)
