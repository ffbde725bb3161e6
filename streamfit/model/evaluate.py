"""Evaluating and predicting: streaming passes of a model over Parquet files.

Memory is bounded by one record batch and one block of logits, whatever the corpus size;
weights stay memory-mapped.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, OptionError
from ..data.featurize import Examples, batch_examples
from ..data.tokenize import text_input
from ..io.arrow import list_array, numeric_array
from ..io.files import atomic_path
from .compact import CompactNgramModel
from .ngram import NgramModel, evaluate_ngram
from .weights import Model
from ..io.progress import progress_bar
from ..io.parquet import (DEFAULT_BATCH_ROWS, FEATURES, INDICES, LABEL, TOKENS, VALUES,
                      iter_batches, open_parquet, resolve_paths)


def _input_columns(task: str, schema: pa.Schema, columns: dict, need_label: bool) -> list[str]:
    if task == "lm":
        return [columns.get("column", TOKENS)]
    label = columns.get("label", LABEL)
    features = columns.get("features", FEATURES)
    names = schema.names
    cols = [label] if (need_label or label in names) else []
    if features is not None and (features in names or columns.get("indices", INDICES) not in names):
        return cols + [features]
    return cols + [columns.get("indices", INDICES), columns.get("values", VALUES)]


def iter_examples(paths: Iterable[str | os.PathLike], *, task: str, window: int, n_classes: int,
                  n_features: int, need_label: bool = True, batch_rows: int = DEFAULT_BATCH_ROWS,
                  progress: bool = False, desc: str = "read", **columns) -> Iterator[Examples]:
    """Examples of every batch of the files, in the layout of a model or statistics."""
    files = resolve_paths(paths)
    total = sum(open_parquet(p).metadata.num_rows for p in files)
    with progress_bar(progress, total=total, unit="docs" if task == "lm" else "rows",
                      unit_scale=True, desc=desc) as bar:
        for p in files:
            for ex, rows in _file_examples(p, None, task, window, n_classes, n_features,
                                           need_label, batch_rows, columns):
                yield ex
                bar.update(rows)  # once the caller is done with the batch (scored it)


def unit_examples(path: str | os.PathLike, row_groups: Sequence[int], *, task: str,
                  window: int, n_classes: int, n_features: int, need_label: bool = True,
                  batch_rows: int = DEFAULT_BATCH_ROWS, **columns) -> Iterator[Examples]:
    """Examples of some row groups of one file (a distributed unit of work)."""
    for ex, _ in _file_examples(Path(path), row_groups, task, window, n_classes, n_features,
                                need_label, batch_rows, columns):
        yield ex


def _file_examples(p: Path, row_groups, task, window, n_classes, n_features, need_label,
                   batch_rows, columns) -> Iterator[tuple[Examples, int]]:
    columns = dict(columns)
    text = text_input(columns, n_classes if task == "lm" else None)
    if text is not None and task != "lm":
        raise OptionError("--text-column is read by language models")
    cols = [text.text_column] if text else \
        _input_columns(task, open_parquet(p).schema_arrow, columns, need_label)
    for b in iter_batches(p, cols, row_groups=row_groups, batch_rows=batch_rows):
        try:
            data = text.tokens(b.data) if text else b.data
            ex = batch_examples(data, task=task, window=window, n_classes=n_classes,
                                n_features=n_features, **columns)
        except InputError as exc:
            raise exc.located(path=str(p), row_group=b.row_group,
                              row_offset=b.row_offset) from None
        yield ex, b.data.num_rows


def model_examples(model: Model, paths, **kw) -> Iterator[Examples]:
    return iter_examples(paths, task=model.task, window=model.window, n_classes=model.n_classes,
                         n_features=model.n_features, encoding=model.encoding, **kw)


@dataclass
class Scores:
    """Sums of an evaluation pass; shards of a pass add up (`+`)."""

    n: int = 0
    nll: float = 0.0
    correct: int = 0
    in_top: int = 0

    def __add__(self, other: "Scores") -> "Scores":
        return Scores(self.n + other.n, self.nll + other.nll, self.correct + other.correct,
                      self.in_top + other.in_top)


def score_examples(model: Model, batches: Iterable[Examples], top_k: int) -> Scores:
    """The sums of an evaluation over some batches."""
    out = Scores()
    for ex in batches:
        nll, top, _ = model.score(ex, top_k=top_k)
        out.n += ex.n
        out.nll += float(nll.sum())
        out.correct += int(np.sum(top[:, 0] == ex.targets))
        out.in_top += int(np.sum(top == ex.targets[:, None]))
    return out


def metrics(scores: Scores, top_k: int) -> dict:
    """Cross-entropy (nats per example), perplexity, accuracy and top-k accuracy."""
    n = scores.n
    if n == 0:
        raise InputError("no examples to evaluate: the files hold no rows (or no tokens)")
    ce = scores.nll / n
    return {"cross_entropy": ce, "perplexity": math.exp(ce) if ce < 700 else math.inf,
            "bits_per_example": ce / math.log(2), "accuracy": scores.correct / n,
            f"top{top_k}_accuracy": scores.in_top / n, "top_k": top_k, "n": n}


def _check_top_k(top_k: int) -> None:
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
        raise OptionError(f"top_k must be an integer of at least 1, not {top_k!r}")


def evaluate(model: Model, paths: Iterable[str | os.PathLike], *, top_k: int = 5,
             progress: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS, **columns) -> dict:
    """Cross-entropy (nats per example), perplexity, accuracy and top-k accuracy (an n-gram
    model: cross-entropy and perplexity at lookup speed, see `model.ngram`)."""
    if isinstance(model, (NgramModel, CompactNgramModel)):
        return evaluate_ngram(model, paths, progress=progress, batch_rows=batch_rows, **columns)
    _check_top_k(top_k)
    batches = model_examples(model, paths, progress=progress, batch_rows=batch_rows,
                             desc="evaluate", **columns)
    return metrics(score_examples(model, batches, top_k), top_k)


def predict(model: Model, paths: Iterable[str | os.PathLike], out: str | os.PathLike, *,
            top_k: int = 5, progress: bool = False, batch_rows: int = DEFAULT_BATCH_ROWS,
            **columns) -> int:
    """Write the top-k classes and their probabilities for every example (every token of
    a token corpus) to a Parquet file, crash-safely. Returns the number of examples."""
    _check_top_k(top_k)
    schema = pa.schema([("top_classes", pa.list_(pa.int32())),
                        ("top_probabilities", pa.list_(pa.float32()))])
    n = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for ex in model_examples(model, paths, need_label=False, progress=progress,
                                     batch_rows=batch_rows, desc="predict", **columns):
                top, probs = model.top_k(ex, top_k)
                k = min(top_k, model.n_classes)
                top, probs = top[:, :k], probs[:, :k]
                offsets = np.arange(0, ex.n * k + 1, k)
                writer.write_table(pa.table({
                    "top_classes": list_array(offsets, numeric_array(top, pa.int32())),
                    "top_probabilities": list_array(offsets, numeric_array(probs, pa.float32())),
                }, schema=schema))
                n += ex.n
    return n
