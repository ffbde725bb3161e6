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
import json
import platform
import re
import sys
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamfit.io.files import atomic_directory
from tqdm import tqdm

UNK, NL = "<unk>", "<nl>"
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


def split_of(relpath: str) -> str:
    """Deterministic file-level split: ~10% test, ~10% valid, the rest train."""
    bucket = zlib.crc32(relpath.encode()) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def _write_split(path: Path, docs: list[tuple[str, np.ndarray]]) -> None:
    """Write (relpath, token ids) documents as ``tokens: list<int32>, path: string``."""
    lengths = np.array([len(ids) for _, ids in docs], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate([ids for _, ids in docs]) if docs else np.empty(0, np.int32)
    table = pa.table({
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
        "path": pa.array([rel for rel, _ in docs], pa.string()),
    })
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE)


def build_corpus(out: str | Path, vocab_size: int = 8192, max_files: int | None = None,
                 quiet: bool = False) -> dict:
    """Build the corpus into ``out`` (atomically) and return the corpus.json content."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be >= 1 (id 0 is <unk>)")
    root, rels = stdlib_sources(max_files)

    # Tokenize once, interning tokens to provisional ids so per-file storage is a
    # compact int32 array instead of millions of Python strings.
    table: dict[str, int] = {}
    docs: dict[str, list[tuple[str, np.ndarray]]] = {"train": [], "valid": [], "test": []}
    for rel in tqdm(rels, desc="tokenizing", unit="file", disable=quiet or not sys.stderr.isatty()):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        ids = np.array([table.setdefault(t, len(table)) for t in tokenize(text)], dtype=np.int32)
        if ids.size:
            docs[split_of(rel)].append((rel, ids))

    # Vocabulary: <unk> + most frequent train tokens, ties by token string.
    tokens = list(table)
    train_ids = [ids for _, ids in docs["train"]]
    counts = np.bincount(np.concatenate(train_ids), minlength=len(tokens)) if train_ids \
        else np.zeros(len(tokens), np.int64)
    seen = np.flatnonzero(counts)
    ranked = sorted(seen.tolist(), key=lambda i: (-counts[i], tokens[i]))[: vocab_size - 1]
    remap = np.zeros(len(tokens), dtype=np.int32)  # provisional id -> final id (0 = <unk>)
    remap[ranked] = np.arange(1, len(ranked) + 1, dtype=np.int32)
    vocab = [UNK] + [tokens[i] for i in ranked]

    n_tokens, unk_rate = {}, {}
    for split, split_docs in docs.items():
        split_docs[:] = [(rel, remap[ids]) for rel, ids in split_docs]
        n = sum(len(ids) for _, ids in split_docs)
        n_unk = sum(int(np.count_nonzero(ids == 0)) for _, ids in split_docs)
        n_tokens[split], unk_rate[split] = n, (n_unk / n if n else 0.0)

    meta = {
        "source": "python-stdlib",
        "python_version": platform.python_version(),
        "stdlib_path": str(root),
        "vocab_size": len(vocab),
        "files": {s: len(d) for s, d in docs.items()},
        "tokens": n_tokens,
        "unk_rate": unk_rate,
        "tokenizer": TOKENIZER_DESC,
    }

    # Atomic publish: build in a sibling temp dir, then swap it in.
    with atomic_directory(out) as tmp:
        for split, split_docs in docs.items():
            _write_split(tmp / f"{split}.parquet", split_docs)
        (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    ap = argparse.ArgumentParser(
        description="Build a token corpus (train/valid/test parquet + vocab) from the Python "
                    "stdlib's .py files. Tokens: identifiers, numbers, single other chars, "
                    "<nl> per non-blank line. Split by file: crc32(relpath) % 10 == 0 test, "
                    "== 1 valid, else train. "
                    "Vocab from train only, id 0 = <unk>. Output is written atomically.",
    )
    ap.add_argument("--out", default="data/stdlib",
                    help="output dir for train/valid/test.parquet, vocab.txt, corpus.json "
                         "(default: %(default)s; replaced atomically)")
    ap.add_argument("--vocab-size", type=int, default=8192,
                    help="ids including <unk>=0; the most frequent train tokens, ties by "
                         "token string (default: %(default)s)")
    ap.add_argument("--max-files", type=int, default=None, metavar="N",
                    help="use only the first N files in sorted relative-path order (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    meta = build_corpus(args.out, args.vocab_size, args.max_files, args.quiet)
    f, t, u = meta["files"], meta["tokens"], meta["unk_rate"]
    print(f"{args.out}: files train={f['train']} valid={f['valid']} test={f['test']}, tokens "
          f"train={t['train']} valid={t['valid']} test={t['test']}, vocab={meta['vocab_size']}, "
          f"unk rate train={u['train']:.4f} test={u['test']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
