"""Reading: paths, globs and directories to Arrow record batches, row group by row group.

Data is read one record batch at a time and never whole files; each batch comes with the
file and row group it belongs to, so that statistics can record what was consumed and
errors can say where bad data is.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..defaults import DEFAULT_BATCH_ROWS  # noqa: F401 (used by importers)
from ..errors import InputError


TOKENS = "tokens"
LABEL = "label"
FEATURES = "features"
INDICES = "indices"
VALUES = "values"


def resolve_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, globs and directories (searched recursively for *.parquet) into a
    sorted, de-duplicated list of files. Raises InputError when nothing is found."""
    found: list[Path] = []
    for raw in paths:
        raw = os.fspath(raw)
        p = Path(raw)
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*.parquet") if q.is_file())
            if not inside:
                raise InputError(f"{raw}: directory contains no .parquet files")
            found.extend(inside)
        elif p.exists():
            found.append(p)
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{raw}: pattern matches no files")
            found.extend(matches)
        else:
            raise InputError(f"{raw}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file, turning pyarrow's errors into one that names the file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({exc})", path=str(path)) from None


@dataclass(frozen=True)
class Batch:
    """One record batch and where it came from."""

    path: str
    row_group: int
    row_offset: int  # index of the batch's first row within its row group
    data: pa.RecordBatch


def iter_batches(path: Path, columns: Sequence[str], *, row_groups: Iterable[int] | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Batch]:
    """Yield the given columns of `path` batch by batch, row group by row group. Decoded in
    this thread: Arrow's reader threads gave each process two more glibc arenas and pages
    of Arrow's own mimalloc pool, about 8 MiB kept past a row group of a million tokens,
    for no faster reading of one or two columns."""
    pf = open_parquet(path)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(map(repr, missing))}; "
                         f"the file has {', '.join(map(repr, pf.schema_arrow.names))}",
                         path=str(path))
    groups = range(pf.num_row_groups) if row_groups is None else row_groups
    for rg in groups:
        offset = 0
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=list(columns),
                                      use_threads=False):
                yield Batch(str(path), rg, offset, rb)
                offset += rb.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read ({exc})", path=str(path), row_group=rg) from None


def detect_task(schema: pa.Schema, *, column: str = TOKENS, label: str = LABEL,
                features: str | None = FEATURES, indices: str = INDICES,
                values: str = VALUES) -> str:
    """'lm' for a token corpus, 'classify' for a feature corpus, from the column names
    (those given, e.g. by --column, or the defaults)."""
    names = set(schema.names)
    if column in names:
        return "lm"
    if label in names and ((features is not None and features in names) or {indices, values} <= names):
        return "classify"
    raise InputError(f"cannot tell the task from the columns {sorted(names)}: a token corpus "
                     f"has a {column!r} column, a feature corpus {label!r} with {features!r} "
                     f"or {indices!r} + {values!r}; pass --task and the column names")
