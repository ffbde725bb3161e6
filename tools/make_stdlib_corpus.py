#!/usr/bin/env python
"""Build streamfit's default token corpus from the Python standard library's own source.

Every machine that runs Python already has the stdlib's ``.py`` files, so this
corpus needs no download and is reproducible for a given Python version.

Sources
    All ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, skipping any path
    with a ``site-packages`` or ``__pycache__`` component, sorted by POSIX relative
    path and read as UTF-8 (errors replaced, universal newlines).  ``--max-files N``
    keeps only the first N of that list (for fast tests).

Tokenizer (pure regex, deterministic)
    * identifiers/words  ``[A-Za-z_][A-Za-z0-9_]*``
    * numbers            ``[0-9]+(?:\\.[0-9]+)?``  (so ``1e5`` -> ``1``, ``e5``)
    * every other non-whitespace character is a token of its own; this includes
      non-ASCII letters (``é`` is one token) -- deliberately simple;
    * ``<nl>`` after each non-blank line (also a last line without a newline);
      blank lines emit nothing, and all other whitespace (indentation too) is dropped.
    Tokens therefore never contain whitespace, and ``<unk>``/``<nl>`` cannot arise
    from the text itself (``<`` is always a token of its own).

Split
    By file: ``zlib.crc32(relpath.encode()) % 10`` is 0 for test (~10%), 1 for valid
    (~10%, held-out data for calibration and smoothing choices, so that test stays
    untouched), the rest train; the split does not depend on ``--max-files`` or file order.

Vocabulary
    From the train split only: id 0 is ``<unk>``, then the ``vocab_size - 1`` most
    frequent train tokens ordered by ``(-count, token)``.  Fewer ids exist if train
    has fewer distinct tokens.  Out-of-vocabulary tokens map to 0.

Output (``--out DIR``, default ``data/stdlib``)
    ``train.parquet``/``valid.parquet``/``test.parquet``: one row per source file with columns
    ``tokens: list<int32>`` and ``path: string``, row groups of 256 rows, files with
    no tokens dropped.  ``vocab.txt``: one token per line, 0-based line number = id.
    ``corpus.json``: provenance, sizes and unk rates.  Everything is written into a
    temporary directory beside DIR and renamed into place at the end, so a killed
    run never leaves a half-written corpus.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import sysconfig
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import (TokenDocuments, built, per_split, publish, split_of,  # noqa: E402
                     token_corpus_description, token_corpus_options, token_facts)

NL = "<nl>"
ROW_GROUP_SIZE = 256
TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?|\S")
TOKENIZER_DESC = (
    "regex: identifiers [A-Za-z_][A-Za-z0-9_]*, numbers [0-9]+(?:\\.[0-9]+)?, "
    "any other non-whitespace char alone (non-ASCII included); <nl> after each "
    "non-blank line; other whitespace dropped"
)


def tokenize(text: str) -> list[str]:
    """Split source text into tokens as described in the module docstring."""
    out: list[str] = []
    for line in text.split("\n"):
        toks = TOKEN_RE.findall(line)
        if toks:
            out += toks
            out.append(NL)
    return out


def stdlib_sources(max_files: int | None = None) -> tuple[Path, list[str]]:
    """Return the stdlib root and its sorted POSIX relative ``.py`` paths."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.is_file() and not {"site-packages", "__pycache__"} & set(p.relative_to(root).parts)
    )
    return root, rels[:max_files] if max_files is not None else rels


def build_corpus(out: str | Path, vocab_size: int = 8192, max_files: int | None = None,
                 quiet: bool = False) -> dict:
    """Build the corpus into ``out`` (atomically) and return the corpus.json content."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be >= 1 (id 0 is <unk>)")
    root, rels = stdlib_sources(max_files)

    # Tokenize once, interning tokens to provisional ids; split by file:
    # crc32(relpath) % 10 is 0 for test, 1 for valid, else train.
    docs = TokenDocuments()
    for rel in tqdm(rels, desc="tokenizing", unit="file", disable=quiet or not sys.stderr.isatty()):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        docs.add(split_of(rel), rel, tokenize(text))
    vocab, n_tokens, unk_rate = docs.vocabulary(vocab_size)

    meta = {
        "source": "python-stdlib",
        "python_version": platform.python_version(),
        "stdlib_path": str(root),
        "vocab_size": len(vocab),
        "files": {s: len(d) for s, d in docs.docs.items()},
        "tokens": n_tokens,
        "unk_rate": unk_rate,
        "tokenizer": TOKENIZER_DESC,
    }

    return publish(out, {s: docs.table(s, "path") for s in docs.docs}, meta,
            row_group_size=ROW_GROUP_SIZE, vocab=vocab)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    ap = argparse.ArgumentParser(description=token_corpus_description(
        "the Python stdlib's .py files", "Tokens: identifiers, numbers, single other chars, <nl> "
        "per non-blank line. Split by file: crc32(relpath) % 10 == 0 test, == 1 valid, else train."))
    token_corpus_options(ap, "data/stdlib", 8192)
    ap.add_argument("--max-files", type=int, default=None, metavar="N",
                    help="use only the first N files in sorted relative-path order (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    meta = build_corpus(args.out, args.vocab_size, args.max_files, args.quiet)
    built(args.out, per_split("files", meta["files"]), *token_facts(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
