"""Per-document scores of a batch: for a language model each document's token count, total
log-probability (nats) and perplexity; for a classifier each row's predicted class and its
probability. What `Model.score_documents` and `NgramModel.score_documents` return, and what
`streamfit score` writes beside the input's columns."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..data.featurize import TokenArrays, token_arrays
from ..io.arrow import numeric_array
from ..data.tokenize import text_input

LM_COLUMNS = ("n_tokens", "log_prob", "perplexity")
CLASSIFY_COLUMNS = ("predicted", "probability")


def score_columns(task: str) -> tuple[str, ...]:
    return LM_COLUMNS if task == "lm" else CLASSIFY_COLUMNS


def _batch(data) -> pa.RecordBatch:
    if isinstance(data, pa.Table):
        return data.combine_chunks().to_batches()[0] if data.num_rows else \
            pa.RecordBatch.from_pylist([], schema=data.schema)
    return data


def document_log_probs(arrays: TokenArrays, token_log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, summed log-probability) of each document from its tokens' log-probabilities."""
    lengths = np.diff(arrays.doc_offsets)
    doc_of = np.repeat(np.arange(lengths.size), lengths)
    return lengths.astype(np.int64), np.bincount(doc_of, weights=token_log_probs,
                                                 minlength=lengths.size)


def lm_scores(n_tokens: np.ndarray, log_prob: np.ndarray) -> pa.Table:
    """The score columns of documents: perplexity exp(−log_prob / n_tokens), null for a
    document without tokens."""
    has = n_tokens > 0
    ppl = np.exp(-np.divide(log_prob, n_tokens, out=np.zeros_like(log_prob), where=has))
    return pa.table({"n_tokens": numeric_array(n_tokens, pa.int64()),
                     "log_prob": numeric_array(log_prob, pa.float64()),
                     "perplexity": numeric_array(ppl, pa.float64(), valid=has)})


def score_documents(model, data, *, column: str = "tokens", text_column: str | None = None,
                    tokenizer=None, **columns) -> pa.Table:
    """Scores of every row of an Arrow batch or table (a document of the `column` token
    list — or of the string `text_column`, tokenized with `tokenizer`, a file or a loaded
    tokenizer — or a feature row), in row order: see the module docstring. The first token
    of a document is predicted from the start of the document (BOS), as in training."""
    batch = _batch(data)
    text = text_input({"text_column": text_column, "tokenizer": tokenizer, "column": column},
                      model.vocab_size if model.task == "lm" else None)
    if text is not None:
        batch = text.tokens(batch)
    if model.task == "lm":
        arrays = token_arrays(batch, column, model.vocab_size)
        return lm_scores(*document_log_probs(arrays, model.token_log_probs(arrays)))
    _, top, top_logp = model.score(model.examples(batch, column=column, **columns), top_k=1)
    return pa.table({"predicted": numeric_array(top[:, 0], pa.int64()),
                     "probability": numeric_array(np.exp(top_logp[:, 0]), pa.float64())})
