"""`streamfit tokenize`: text files or a Parquet text column to a token corpus.

Two streaming passes over the sources: the first builds the vocabulary (word counts in
bounded memory, or a subword model trained from an iterator; skipped when a tokenizer file
is given), the second encodes every document and writes ``tokens.parquet`` (``tokens:
list<int32>``, ``path``, ``row``; row groups bounded in rows and tokens), with the tokenizer
file (``tokenizer.json``), ``vocab.txt`` (one token per line, line number = id) and
``tokenize.json`` (what was read and with which options). Memory holds one document (a
whole file without ``lines``), one batch and the vocabulary. Everything is written into a
temporary folder renamed into place at the end; an existing folder is replaced only when it
is a tokenize output and ``overwrite`` is given.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from ..errors import InputError, OptionError
from ..io.arrow import list_array, numeric_array, string_array
from ..io.files import atomic_directory, check_output_folder, header_checksum, read_document
from ..io.parquet import DEFAULT_BATCH_ROWS, iter_batches, open_parquet, resolve_paths
from .text import (DEFAULT_MAX_WORDS, SUBWORD_KINDS, WordCounter,
                   load_tokenizer, train_subword)

MANIFEST = "tokenize.json"
MANIFEST_FORMAT = "streamfit-tokenized"
TOKENIZER_FILE = "tokenizer.json"
TOKENS_FILE = "tokens.parquet"
DEFAULT_PATTERN = "*.txt"
DEFAULT_VOCAB_SIZE = 32768
ROW_GROUP_ROWS = 1024
ROW_GROUP_TOKENS = 1 << 20


@dataclass
class TextBatch:
    """Documents of one source and where they are: the file and each one's row (a line
    number with `lines`, a row of a Parquet file, 0 for a whole file)."""

    path: str
    rows: np.ndarray
    texts: list


def text_files(paths: Iterable[str | os.PathLike], pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Files, globs and directories (searched recursively for `pattern`) to a sorted,
    de-duplicated list of text files."""
    import glob

    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            inside = sorted(q for q in p.rglob(pattern) if q.is_file())
            if not inside:
                raise InputError(f"{raw}: directory contains no {pattern} files")
            found += inside
        elif p.exists():
            found.append(p)
        elif glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{raw}: pattern matches no files")
            found += matches
        else:
            raise InputError(f"{raw}: no such file or directory")
    seen, unique = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def text_column_batches(batch: pa.RecordBatch, column: str) -> list:
    """The strings of a text column (None for nulls), refusing a column of another type."""
    idx = batch.schema.get_field_index(column)
    if idx < 0:
        raise InputError(f"missing column {column!r}; the data has {batch.schema.names}")
    arr = batch.column(idx)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise InputError(f"expected a string column of text, found {arr.type}", column=column)
    return arr.to_pylist()


class Sources:
    """The documents of text files (one per file, or per line) or of a Parquet text column,
    read batch by batch as many times as asked (one pass per call of `batches`)."""

    def __init__(self, paths, *, text_column: str | None = None, lines: bool = False,
                 pattern: str = DEFAULT_PATTERN, batch_rows: int = DEFAULT_BATCH_ROWS):
        if text_column is not None and lines:
            raise OptionError("--lines is for text files; a Parquet --text-column holds one "
                              "document per row already")
        self.text_column, self.lines, self.batch_rows = text_column, lines, batch_rows
        self.files = resolve_paths(paths) if text_column else text_files(paths, pattern)
        self.total = (sum(open_parquet(p).metadata.num_rows for p in self.files) if text_column
                      else sum(p.stat().st_size for p in self.files))
        self.unit = "rows" if text_column else "B"

    def batches(self) -> Iterator[tuple[TextBatch, int]]:
        """(batch, progress units it covers)."""
        for p in self.files:
            if self.text_column:
                for b in iter_batches(p, [self.text_column], batch_rows=self.batch_rows):
                    try:
                        texts = text_column_batches(b.data, self.text_column)
                    except InputError as exc:
                        raise exc.located(path=str(p), row_group=b.row_group,
                                          row_offset=b.row_offset) from None
                    start = self._row_base(p, b.row_group) + b.row_offset
                    yield TextBatch(str(p), np.arange(start, start + len(texts)), texts), len(texts)
            elif self.lines:
                yield from self._line_batches(p)
            else:
                with open(p, encoding="utf-8", errors="replace", newline=None) as fh:
                    text = fh.read()
                yield TextBatch(str(p), np.zeros(1, np.int64), [text]), p.stat().st_size

    def _row_base(self, p: Path, row_group: int) -> int:
        meta = open_parquet(p).metadata
        return sum(meta.row_group(g).num_rows for g in range(row_group))

    def _line_batches(self, p: Path) -> Iterator[tuple[TextBatch, int]]:
        texts, rows, size = [], [], 0
        with open(p, encoding="utf-8", errors="replace", newline=None) as fh:
            for number, line in enumerate(fh):
                texts.append(line.rstrip("\n"))
                rows.append(number)
                size += len(line.encode("utf-8", errors="replace"))
                if len(texts) == self.batch_rows:
                    yield TextBatch(str(p), np.array(rows, np.int64), texts), size
                    texts, rows, size = [], [], 0
        if texts:
            yield TextBatch(str(p), np.array(rows, np.int64), texts), size

    def texts(self, progress: bool, desc: str) -> Iterator[str]:
        """Every document's text, with a progress bar."""
        for batch in self.progress(progress, desc):
            yield from (t for t in batch.texts if t)

    def progress(self, progress: bool, desc: str) -> Iterator[TextBatch]:
        from tqdm.auto import tqdm

        with tqdm(total=self.total, unit=self.unit, unit_scale=True, desc=desc,
                  disable=None if progress else True) as bar:
            for batch, units in self.batches():
                yield batch
                bar.update(units)


def token_list_array(ids: list[np.ndarray]) -> pa.Array:
    """A list<int32> Arrow array of documents' ids."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([a.size for a in ids], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise InputError("more than 2^31 tokens in one batch: lower the batch size")
    values = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    return list_array(offsets, numeric_array(values, pa.int32()))


def is_tokenize_output(folder: Path) -> bool:
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT


def tokenize(paths, out: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
             subword: str | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
             min_count: int = 1, lowercase: bool = False, lines: bool = False,
             text_column: str | None = None, pattern: str = DEFAULT_PATTERN,
             max_words: int = DEFAULT_MAX_WORDS, row_group_rows: int = ROW_GROUP_ROWS,
             row_group_tokens: int = ROW_GROUP_TOKENS, batch_rows: int = DEFAULT_BATCH_ROWS,
             overwrite: bool = False, progress: bool = False) -> dict:
    """Tokenize text files (a document each, or a document per line with `lines`) or the
    `text_column` of Parquet files into the folder `out`; returns its manifest."""
    out = Path(out)
    if tokenizer is not None and (subword is not None or lowercase):
        raise OptionError("a given --tokenizer decides how text is split: --subword and "
                          "--lowercase are for building a new one")
    if subword is not None and subword not in SUBWORD_KINDS:
        raise OptionError(f"--subword must be one of {', '.join(SUBWORD_KINDS)}, not {subword!r}")
    for name, value, low in (("--vocab-size", vocab_size, 2), ("--min-count", min_count, 1),
                             ("--row-group-rows", row_group_rows, 1),
                             ("--row-group-tokens", row_group_tokens, 1),
                             ("--batch-rows", batch_rows, 1), ("--max-words", max_words, 2)):
        if value < low:
            raise OptionError(f"{name} must be at least {low}, not {value}")
    check_output_folder(out, overwrite, is_tokenize_output, "tokenize")
    sources = Sources(paths, text_column=text_column, lines=lines, pattern=pattern,
                      batch_rows=batch_rows)

    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif subword is not None:
        tok = train_subword(subword, sources.texts(progress, f"train {subword}"), vocab_size,
                            min_count=min_count, lowercase=lowercase)
    else:
        counter = WordCounter(lowercase, max_words)
        for text in sources.texts(progress, "count words"):
            counter.add(text)
        tok = counter.tokenizer(vocab_size, min_count)

    import pyarrow.parquet as pq

    schema = pa.schema([("tokens", pa.list_(pa.int32())), ("path", pa.string()),
                        ("row", pa.int64())])
    documents = tokens = unknown = empty = 0
    with atomic_directory(out) as tmp:
        with pq.ParquetWriter(tmp / TOKENS_FILE, schema) as writer:
            pending: list = []
            pending_tokens = 0

            def flush() -> None:
                nonlocal pending, pending_tokens
                if pending:
                    ids, where, rows = zip(*pending)
                    writer.write_table(pa.table({
                        "tokens": token_list_array(list(ids)), "path": string_array(list(where)),
                        "row": numeric_array(np.array(rows), pa.int64())}, schema=schema),
                        row_group_size=len(pending))
                pending, pending_tokens = [], 0

            for batch in sources.progress(progress, "encode"):
                for ids, row in zip(tok.encode_batch(batch.texts), batch.rows):
                    if ids.size == 0:
                        empty += 1
                        continue
                    pending.append((ids, batch.path, int(row)))
                    pending_tokens += ids.size
                    documents += 1
                    tokens += ids.size
                    unknown += int(np.count_nonzero(ids == 0))
                    if len(pending) >= row_group_rows or pending_tokens >= row_group_tokens:
                        flush()
            flush()
        tok.save(tmp / TOKENIZER_FILE)
        (tmp / "vocab.txt").write_text("".join(t.replace("\n", "\\n") + "\n" for t in tok.vocab),
                                       encoding="utf-8")
        manifest = {"format": MANIFEST_FORMAT, "schema_version": 1, "kind": tok.kind,
                    "subword": subword, "vocab_size": tok.vocab_size,
                    "lowercase": lowercase, "min_count": min_count, "lines": lines,
                    "text_column": text_column, "tokenizer_from": str(tokenizer) if tokenizer else None,
                    "sources": [str(p) for p in sources.files], "documents": documents,
                    "empty_documents": empty, "tokens": tokens,
                    "unknown_rate": unknown / tokens if tokens else 0.0,
                    "files": {"tokens": TOKENS_FILE, "tokenizer": TOKENIZER_FILE,
                              "vocab": "vocab.txt"}}
        manifest["header_checksum"] = header_checksum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of a tokenize output folder."""
    return read_document(Path(folder) / MANIFEST, MANIFEST_FORMAT, 1, "tokenize manifest")



def with_tokens(batch: pa.RecordBatch, tok, text_column: str, column: str = "tokens") -> pa.RecordBatch:
    """The batch with its `text_column` tokenized into a list<int32> `column` (replacing a
    column of that name), for commands that read text directly."""
    ids = token_list_array(tok.encode_batch(text_column_batches(batch, text_column)))
    names = [n for n in batch.schema.names if n != column]
    return pa.RecordBatch.from_arrays([batch.column(batch.schema.get_field_index(n)) for n in names]
                                      + [ids], names=names + [column])


@functools.lru_cache(maxsize=4)
def _tokenizer_cached(path: str, mtime_ns: int):
    return load_tokenizer(path)


def tokenizer_at(path: str | os.PathLike):
    """The tokenizer of a file, opened once per process (while the file is unchanged)."""
    p = Path(path)
    try:
        mtime = p.stat().st_mtime_ns
    except FileNotFoundError:
        raise OptionError(f"{p}: no such tokenizer file") from None
    return _tokenizer_cached(str(p.resolve()), mtime)


@dataclass
class TextInput:
    """Commands reading text directly: the string column to read and the tokenizer that
    turns it, batch by batch, into the token column the model reads."""

    text_column: str
    tokenizer: object
    column: str = "tokens"

    def tokens(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return with_tokens(batch, self.tokenizer, self.text_column, self.column)


def text_input(columns: dict, vocab_size: int | None = None) -> TextInput | None:
    """Take `text_column` and `tokenizer` (a file, or a tokenizer from `load_tokenizer`) out
    of a command's column options (None when neither is there), checking that the
    tokenizer's ids fit a model of `vocab_size`."""
    text, tok = columns.pop("text_column", None), columns.pop("tokenizer", None)
    if text is None and tok is None:
        return None
    if text is None or tok is None:
        raise OptionError("--text-column and --tokenizer go together: the text is tokenized "
                          "with the tokenizer the model was trained with")
    out = TextInput(text, tokenizer_at(tok) if isinstance(tok, (str, os.PathLike)) else tok,
                    columns.get("column", "tokens"))
    if vocab_size is not None and out.tokenizer.vocab_size != vocab_size:
        raise OptionError(f"the tokenizer {tok} has {out.tokenizer.vocab_size:,} ids, the model a "
                          f"vocabulary of {vocab_size:,}: not the tokenizer it was trained with")
    return out
