"""Exceptions that carry what a user needs to fix the problem."""
from __future__ import annotations


class StreamfitError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""


class InputError(StreamfitError, ValueError):
    """Bad input data. Names the file, row group, row and column where known."""

    def __init__(self, message: str, *, path: str | None = None, row_group: int | None = None,
                 row: int | None = None, column: str | None = None):
        self.message = message
        self.path = path
        self.row_group = row_group
        self.row = row
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.row_group is not None:
            where.append(f"row group {self.row_group}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def located(self, *, path: str, row_group: int, row_offset: int) -> "InputError":
        """The same error with the file, row group and absolute row filled in."""
        row = None if self.row is None else self.row + row_offset
        return InputError(self.message, path=path, row_group=row_group, row=row, column=self.column)


class OptionError(StreamfitError, ValueError):
    """An option or argument outside its range (a bad --window, --l2, method name, size)."""


class DiskFullError(StreamfitError, OSError):
    """No space left where a file was being written: names the file, the space it needed
    where known, and the space that was free there when the write failed (measured when
    the error is made, before the partial files are removed on the way out)."""

    def __init__(self, path, needed: int | None = None, free: int | None = None):
        import contextlib
        import shutil
        from pathlib import Path

        super().__init__(str(path))
        if free is None:
            for p in Path(path).parents:
                with contextlib.suppress(OSError):
                    free = shutil.disk_usage(p).free
                    break
        self.path, self.needed, self.free = str(path), needed, free

    def __reduce__(self):  # from a worker process to its parent, with the figures measured
        return type(self), (self.path, self.needed, self.free)

    def __str__(self) -> str:
        need = f"writing it needs {_human(self.needed)}, " if self.needed is not None else ""
        have = f"{_human(self.free)} free there" if self.free is not None else "free space unknown"
        return (f"{self.path}: no space left on device ({need}{have}); free some space or write "
                f"elsewhere, and run again")


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class FormatError(StreamfitError):
    """A statistics directory or weights file that is missing, corrupt or incompatible."""
