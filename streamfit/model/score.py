"""`streamfit score`: per-document scores of Parquet files, streamed row group by row group
on N processes, written beside the input's other columns.

For each input file a Parquet file of the same relative name in the output folder holds, row
for row, the input's columns but the token (or feature) lists — or only `id_column` — and the
score columns of `model.documents`; `score.json` says what was scored and how fast. A text
column is tokenized batch by batch with the model's tokenizer. The folder is written whole or
not at all.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import OptionError
from ..io.files import atomic_directory, check_output_folder, header_checksum
from ..io.parquet import DEFAULT_BATCH_ROWS, TOKENS, iter_batches, open_parquet, resolve_paths
from .documents import score_columns
from .evaluate import _input_columns
from .weights import load_model

MANIFEST = "score.json"
FORMAT = "streamfit-scores"
_WORKER: dict = {}  # the model and settings of this process (set before forking, or loaded)


def is_score_output(folder: Path) -> bool:
    try:
        doc = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def output_names(files: list[Path], out: Path) -> list[Path]:
    """Each input's path relative to the inputs' common folder, under `out`."""
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    return [out / p.resolve().relative_to(root) for p in files]


def _plan(model, schema: pa.Schema, settings: dict) -> tuple[list[str], list[str]]:
    """(columns to read, columns to keep) of a file."""
    names = schema.names
    text = settings["text_column"]
    if model.task == "lm":
        inputs = [text] if text else [settings["columns"].get("column", TOKENS)]
    else:
        inputs = _input_columns(model.task, schema, settings["columns"], need_label=False)
    idc = settings["id_column"]
    if idc is not None:
        if idc not in names:
            raise OptionError(f"--id-column {idc!r} is not a column of the data ({names})")
        keep = [idc]
    else:
        lists = set(inputs) - {text, settings["columns"].get("label", "label")}
        keep = [n for n in names if n not in lists]
    clash = set(keep) & set(score_columns(model.task))
    if clash:
        raise OptionError(f"the data already has column(s) {sorted(clash)}, which score writes: "
                          f"pass --id-column to keep only an id")
    return list(dict.fromkeys(keep + inputs)), keep


def _score_unit(path: str, row_group: int) -> tuple[pa.Table, int]:
    """Scores of one row group: (the table to write, tokens or rows scored)."""
    model, settings = _WORKER["model"], _WORKER["settings"]
    read, keep = _plan(model, open_parquet(Path(path)).schema_arrow, settings)
    parts, scored = [], 0
    for b in iter_batches(Path(path), read, row_groups=[row_group],
                          batch_rows=settings["batch_rows"]):
        data = b.data
        try:
            scores = model.score_documents(data, text_column=settings["text_column"],
                                           tokenizer=_WORKER["tokenizer"], **settings["columns"])
        except Exception as exc:
            from ..errors import InputError

            if isinstance(exc, InputError):
                raise exc.located(path=path, row_group=row_group, row_offset=b.row_offset) from None
            raise
        scored += int(scores["n_tokens"].to_numpy().sum()) if model.task == "lm" else data.num_rows
        table = pa.Table.from_batches([b.data.select(keep)])
        for name in scores.column_names:
            table = table.append_column(name, scores[name])
        limit = settings["max_perplexity"]
        if limit is not None:
            table = table.filter(pc.less_equal(table["perplexity"], limit))
        parts.append(table)
    return (pa.concat_tables(parts) if parts else None), scored


def _init_worker(weights, tokenizer, settings) -> None:
    if "model" not in _WORKER:  # spawned, not forked: open the model here
        from ..data.text import load_tokenizer

        _WORKER["model"] = load_model(weights)
        _WORKER["tokenizer"] = load_tokenizer(tokenizer) if tokenizer else None
    _WORKER["settings"] = settings


def score(weights, paths: Iterable[str | os.PathLike], out: str | os.PathLike, *,
          jobs: int = 1, id_column: str | None = None, max_perplexity: float | None = None,
          tokenizer: str | os.PathLike | None = None, text_column: str | None = None,
          batch_rows: int = DEFAULT_BATCH_ROWS, overwrite: bool = False,
          progress: bool = False, **columns) -> dict:
    """Score every document (row) of Parquet files into the folder `out`; returns its
    manifest (documents, tokens, seconds, documents/s, tokens/s)."""
    from tqdm.auto import tqdm

    from ..data.tokenize import text_input

    out = Path(out)
    if jobs < 1:
        raise OptionError(f"--jobs must be at least 1, not {jobs}")
    if max_perplexity is not None and not max_perplexity > 0:
        raise OptionError(f"--max-perplexity must be positive, not {max_perplexity}")
    check_output_folder(out, overwrite, is_score_output, "score")
    model = load_model(weights)
    if max_perplexity is not None and model.task != "lm":
        raise OptionError("--max-perplexity is for language models")
    text = text_input({"text_column": text_column, "tokenizer": tokenizer},
                      model.vocab_size if model.task == "lm" else None)
    tok = text.tokenizer if text else None
    files = resolve_paths(paths)
    settings = dict(text_column=text_column, id_column=id_column, max_perplexity=max_perplexity,
                    batch_rows=batch_rows, columns=columns)
    for p in files:  # refuse a missing column before any work
        _plan(model, open_parquet(p).schema_arrow, settings)
    units = [(i, str(p), g) for i, p in enumerate(files) for g in range(open_parquet(p).num_row_groups)]
    rows = {i: [open_parquet(p).metadata.row_group(g).num_rows for g in range(open_parquet(p).num_row_groups)]
            for i, p in enumerate(files)}
    names = output_names(files, out)
    _WORKER.update(model=model, tokenizer=tok, settings=settings)
    documents = scored = kept = 0
    start = time.perf_counter()
    import pyarrow.parquet as pq

    with atomic_directory(out) as tmp, contextlib.ExitStack() as stack, \
            tqdm(total=sum(sum(r) for r in rows.values()), unit="docs", unit_scale=True,
                 desc="score", disable=None if progress else True) as bar:
        if jobs > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(
                jobs, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
                initargs=(str(weights), str(tokenizer) if tokenizer else None, settings)))
            results = _ordered(pool, units, 2 * jobs)
        else:
            results = (_score_unit(p, g) for _, p, g in units)
        writers: dict[int, pq.ParquetWriter] = {}
        for (i, p, g), (table, n) in zip(units, results):
            if table is not None and i not in writers:
                for w in writers.values():
                    w.close()
                target = tmp / names[i].relative_to(out)
                target.parent.mkdir(parents=True, exist_ok=True)
                writers = {i: pq.ParquetWriter(target, table.schema)}
            if table is not None:
                writers[i].write_table(table)
                kept += table.num_rows
            documents += rows[i][g]
            scored += n
            bar.update(rows[i][g])
        for w in writers.values():
            w.close()
        seconds = time.perf_counter() - start
        manifest = {"format": FORMAT, "schema_version": 1, "weights": str(weights),
                    "task": model.task, "sources": [str(p) for p in files],
                    "outputs": [str(n.relative_to(out)) for n in names],
                    "documents": documents, "kept": kept,
                    ("tokens" if model.task == "lm" else "rows"): scored,
                    "max_perplexity": max_perplexity, "tokenizer": str(tokenizer) if tokenizer else None,
                    "jobs": jobs, "seconds": seconds,
                    "documents_per_second": documents / seconds if seconds else None,
                    **({"tokens_per_second": scored / seconds if seconds else None}
                       if model.task == "lm" else {})}
        manifest["header_checksum"] = header_checksum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _WORKER.clear()
    return manifest


def _ordered(pool, units, ahead: int):
    """Results of units in order, at most `ahead` in flight (memory: that many row groups)."""
    from collections import deque

    pending: deque = deque()
    it = iter(units)
    for _, p, g in it:
        pending.append(pool.submit(_score_unit, p, g))
        if len(pending) >= ahead:
            break
    for _, p, g in it:
        yield pending.popleft().result()
        pending.append(pool.submit(_score_unit, p, g))
    while pending:
        yield pending.popleft().result()
