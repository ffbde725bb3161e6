"""Corpora for the tools: what the corpus builders share, and the corpora the benchmarks use.

Building (tools/make_*_corpus.py): the split by crc32 of a document's key, token documents
interned to ids and their vocabulary of the most frequent train tokens (``<unk>`` = 0),
token splits as Parquet tables, and the atomic publish of a corpus folder (the splits,
``vocab.txt``, ``corpus.json``).

Using (tools/bench_*.py): ``digits_corpus``, ``fashion_corpus``, ``gcide_corpus`` and ``stdlib_corpus`` return
a corpus folder under ``data/``, built by its tool when missing or built with other
settings; ``corpus_shape`` and ``read_examples`` read a split back as streamfit examples.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from harness import log

TOOLS = Path(__file__).resolve().parent
SPLITS = ("train", "valid", "test")
UNK = "<unk>"


# --------------------------------------------------------------------------- building


def split_of(key: str) -> str:
    """Deterministic split of a document by its key: crc32 % 10 is 0 for test (~10%), 1 for
    valid (~10%), else train."""
    bucket = zlib.crc32(key.encode("utf-8")) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


class TokenDocuments:
    """Named token documents by split, tokens interned to provisional ids as they come (a
    compact int32 array per document instead of millions of Python strings)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.docs: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}

    def add(self, split: str, name: str, tokens: list[str]) -> None:
        """Add a document; one without tokens is dropped."""
        if tokens:
            ids = np.array([self.ids.setdefault(t, len(self.ids)) for t in tokens], dtype=np.int32)
            self.docs[split].append((name, ids))

    def vocabulary(self, vocab_size: int) -> tuple[list[str], dict[str, int], dict[str, float]]:
        """From the train split only: ``<unk>`` then the ``vocab_size - 1`` most frequent
        train tokens ordered by ``(-count, token)``. Every document is renumbered to these
        ids (out of vocabulary: 0). Returns the vocabulary and, per split, the number of
        tokens and the rate of ``<unk>``."""
        tokens = list(self.ids)
        train_ids = [ids for _, ids in self.docs["train"]]
        counts = np.bincount(np.concatenate(train_ids), minlength=len(tokens)) if train_ids \
            else np.zeros(len(tokens), np.int64)
        ranked = sorted(np.flatnonzero(counts).tolist(), key=lambda i: (-counts[i], tokens[i]))
        ranked = ranked[: vocab_size - 1]
        remap = np.zeros(len(tokens), dtype=np.int32)  # provisional id -> final id (0 = <unk>)
        remap[ranked] = np.arange(1, len(ranked) + 1, dtype=np.int32)
        n_tokens, unk_rate = {}, {}
        for split, docs in self.docs.items():
            docs[:] = [(name, remap[ids]) for name, ids in docs]
            n = sum(len(ids) for _, ids in docs)
            n_unk = sum(int(np.count_nonzero(ids == 0)) for _, ids in docs)
            n_tokens[split], unk_rate[split] = n, (n_unk / n if n else 0.0)
        return [UNK] + [tokens[i] for i in ranked], n_tokens, unk_rate

    def table(self, split: str, name_column: str):
        """The split as ``tokens: list<int32>`` and the documents' names as `name_column`."""
        import pyarrow as pa

        docs = self.docs[split]
        lengths = np.array([len(ids) for _, ids in docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = np.concatenate([ids for _, ids in docs]) if docs else np.empty(0, np.int32)
        return pa.table({
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
            name_column: pa.array([name for name, _ in docs], pa.string()),
        })


def publish(out: str | Path, splits: dict, meta: dict, *, row_group_size: int,
            vocab: list[str] | None = None) -> dict:
    """Write a corpus folder atomically: ``SPLIT.parquet`` for each Arrow table of
    `splits`, ``vocab.txt`` (one token per line, line number = id) when given, and
    ``corpus.json``. Everything goes into a temporary directory beside `out`, renamed into
    place at the end, so a killed build never leaves a half-written corpus. Returns `meta`."""
    import pyarrow.parquet as pq

    from internals import atomic_directory

    with atomic_directory(out) as tmp:
        for split, table in splits.items():
            pq.write_table(table, tmp / f"{split}.parquet", row_group_size=row_group_size)
        if vocab is not None:
            (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def token_corpus_description(source: str, rules: str) -> str:
    """The --help description of a token corpus builder: its `source` and its `rules`."""
    return (f"Build a token corpus (train/valid/test parquet + vocab) from {source}. {rules} "
            "Vocab from train only, id 0 = <unk>. Output is written atomically.")


def per_split(what: str, counts: dict, fmt: str = "") -> str:
    """``what train=N valid=N test=N`` (the splits in `counts` among them, formatted by `fmt`)."""
    return what + "".join(f" {s}={counts[s]:{fmt}}" for s in SPLITS if s in counts)


def built(out: str | Path, *facts: str, seconds: float | None = None) -> None:
    """The one line on stderr that says what a builder wrote in `out`."""
    print(f"{out}: " + ", ".join(facts) + ("" if seconds is None else f" ({seconds:.1f} s)"),
          file=sys.stderr)


def token_facts(meta: dict) -> list[str]:
    """A token corpus's tokens per split, vocabulary size and unknown-token rates."""
    u = meta["unk_rate"]
    return [per_split("tokens", meta["tokens"]), f"vocab={meta['vocab_size']}",
            per_split("unk rate", {"train": u["train"], "test": u["test"]}, ".4f")]


def token_corpus_options(ap, out: str, vocab_size: int) -> None:
    """``--out`` and ``--vocab-size`` of a token corpus builder (defaults `out`, `vocab_size`)."""
    ap.add_argument("--out", default=out,
                    help="output dir for train/valid/test.parquet, vocab.txt, corpus.json "
                         "(default: %(default)s; replaced atomically)")
    ap.add_argument("--vocab-size", type=int, default=vocab_size,
                    help="ids including <unk>=0; the most frequent train tokens, ties by "
                         "token string (default: %(default)s)")


# --------------------------------------------------------------------------- using


def ensure_corpus(folder: Path, tool: str, *options: str, expect: dict | None = None) -> Path:
    """`folder`, built by ``tools/TOOL OPTIONS --out FOLDER`` when a split or corpus.json is
    missing, or when corpus.json disagrees with `expect` (built with other settings)."""
    files = [folder / f"{s}.parquet" for s in SPLITS] + [folder / "corpus.json"]
    if all(f.exists() for f in files):
        meta = corpus_meta(folder)
        if all(meta.get(k) == v for k, v in (expect or {}).items()):
            return folder
        log(f"{folder}: built with other settings; rebuilding")
    cmd = [sys.executable, str(TOOLS / tool), *options, "--out", str(folder)]
    log(f"building {folder}: {shlex.join(cmd[1:])}")
    subprocess.run(cmd, check=True)
    return folder


def digits_corpus(data: Path, name: str) -> Path:
    """``data/digits`` or ``data/mnist5k`` (tools/make_digits_corpus.py)."""
    return ensure_corpus(data / name, "make_digits_corpus.py", "--dataset", name)


def fashion_corpus(data: Path) -> Path:
    """``data/fashion``: Fashion-MNIST from the Debian package (tools/make_fashion_corpus.py)."""
    return ensure_corpus(data / "fashion", "make_fashion_corpus.py")


def gcide_corpus(data: Path, vocab_size: int, max_entries: int | None = None) -> Path:
    """``data/gcide-vV`` (``-firstN`` with `max_entries`): GCIDE with a vocabulary of
    `vocab_size` (tools/make_gcide_corpus.py)."""
    folder = data / (f"gcide-v{vocab_size}" + (f"-first{max_entries}" if max_entries else ""))
    cap = ["--max-entries", str(max_entries)] if max_entries else []
    return ensure_corpus(folder, "make_gcide_corpus.py", "--vocab-size", str(vocab_size),
                         "--quiet", *cap, expect={"vocab_size": vocab_size,
                                                  "max_entries": max_entries})


def stdlib_corpus(data: Path) -> Path:
    """``data/stdlib``, the embedded default corpus (tools/make_stdlib_corpus.py)."""
    return ensure_corpus(data / "stdlib", "make_stdlib_corpus.py", "--quiet")


def generated_files(meta_path: Path, params: dict) -> tuple[list[Path], bool]:
    """The files a generated corpus recorded in `meta_path` (see record_generated), and
    whether all of them are there and were generated with `params` (then reuse them)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    files = [meta_path.parent / f for f in meta.get("files", [])]
    return files, meta.get("params") == params and bool(files) and all(f.exists() for f in files)


def record_generated(meta_path: Path, params: dict, files: list[Path]) -> None:
    meta_path.write_text(json.dumps({"params": params, "files": [f.name for f in files]},
                                    indent=1))


def corpus_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / "corpus.json").read_text())


def corpus_shape(meta: dict, window: int = 1) -> dict:
    """task, window, n_classes, n_features of a corpus from its corpus.json: a token corpus
    (it has a vocabulary) is a language model over `window` previous tokens, a feature
    corpus a classifier."""
    if "vocab_size" in meta:
        v = int(meta["vocab_size"])
        return {"task": "lm", "window": window, "n_classes": v, "n_features": window * (v + 1)}
    return {"task": "classify", "window": 0, "n_classes": len(meta["classes"]),
            "n_features": int(meta["n_features"])}


def read_examples(folder: Path, split: str, shape: dict, *, whole: bool = False,
                  batch_rows: int | None = None) -> list:
    """A split of the corpus as a list of streamfit Examples (one per record batch, or one
    in all with `whole`)."""
    from internals import concat_examples, iter_examples

    kw = {} if batch_rows is None else {"batch_rows": batch_rows}
    parts = list(iter_examples([Path(folder) / f"{split}.parquet"], **shape, **kw))
    return [concat_examples(parts)] if whole else parts
