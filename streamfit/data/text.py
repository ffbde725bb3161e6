"""Text to token ids and back: a word vocabulary built by a streaming count, or a subword
model of the Hugging Face `tokenizers` library (the optional extra ``streamfit[text]``).

Words (`WordTokenizer`): a document is split into runs of word characters (``\\w+``,
Unicode letters, digits and ``_``) and single other non-space characters, optionally
lowercased first; ``<nl>`` marks each line end that follows a line with tokens (blank lines
and other whitespace leave nothing). Id 0 is ``<unk>`` (every word outside the vocabulary),
then the vocabulary by descending count, ties by the word. ``<unk>`` and ``<nl>`` cannot
arise from the text itself (``<`` is always a token of its own). Decoding joins the tokens
with spaces and ``<nl>`` as a line break, so encode(decode(ids)) == ids.

Subwords (`SubwordTokenizer`): BPE or Unigram trained on the documents (``<unk>`` the
special token of id 0), or any ``tokenizer.json`` the library saved; nothing is downloaded.

Both save to one JSON file that `load_tokenizer` opens; the word vocabulary's format is
data_schemas/tokenizer.schema.json, a subword model's is the library's own.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import FormatError, OptionError
from ..io.files import header_checksum, read_document, write_json

FORMAT = "streamfit-tokenizer"
SCHEMA_VERSION = 1
UNK = "<unk>"
NL = "<nl>"
WORD_PATTERN = r"\w+|[^\w\s]"
WORD_RE = re.compile(WORD_PATTERN)
SUBWORD_KINDS = ("bpe", "unigram")
INSTALL_TEXT = "pip install 'streamfit[text]'"
DEFAULT_MAX_WORDS = 4_000_000


def split_words(text: str, lowercase: bool = False) -> list[str]:
    """The word tokens of a document (see the module docstring)."""
    if lowercase:
        text = text.lower()
    lines = text.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        found = WORD_RE.findall(line)
        if found:
            out += found
            if i < len(lines) - 1:
                out.append(NL)
    return out


class WordCounter:
    """Word counts of a stream of documents in bounded memory: past `max_words` distinct
    words, the rarest are dropped until half remain (their counts are then lower bounds,
    and `pruned_at` says the largest count dropped); below that the counts are exact."""

    def __init__(self, lowercase: bool = False, max_words: int = DEFAULT_MAX_WORDS):
        if max_words < 2:
            raise OptionError(f"max_words must be at least 2, not {max_words}")
        self.lowercase, self.max_words = lowercase, max_words
        self.counts: Counter[str] = Counter()
        self.documents = self.tokens = self.pruned_at = 0

    def add(self, text: str) -> None:
        words = split_words(text, self.lowercase)
        if not words:
            return
        self.counts.update(words)
        self.documents += 1
        self.tokens += len(words)
        if len(self.counts) > self.max_words:
            self._prune()

    def _prune(self) -> None:
        values = np.fromiter(self.counts.values(), np.int64, len(self.counts))
        keep = self.max_words // 2
        cut = int(np.partition(values, values.size - keep)[values.size - keep - 1])
        self.pruned_at = max(self.pruned_at, cut)
        self.counts = Counter({w: c for w, c in self.counts.items() if c > cut})

    def tokenizer(self, vocab_size: int, min_count: int = 1) -> "WordTokenizer":
        """The vocabulary: <unk>, then up to vocab_size − 1 words of at least min_count."""
        if vocab_size < 2:
            raise OptionError(f"vocab_size must be at least 2 (id 0 is {UNK}), not {vocab_size}")
        if min_count < 1:
            raise OptionError(f"min_count must be at least 1, not {min_count}")
        ranked = sorted(((c, w) for w, c in self.counts.items() if c >= min_count),
                        key=lambda cw: (-cw[0], cw[1]))[:vocab_size - 1]
        known = sum(c for c, _ in ranked)
        stats = {"documents": self.documents, "tokens": self.tokens,
                 "distinct_words": len(self.counts), "min_count": min_count,
                 "unknown_rate": (1 - known / self.tokens) if self.tokens else 0.0,
                 "pruned_at": self.pruned_at}
        return WordTokenizer([UNK] + [w for _, w in ranked], self.lowercase,
                             counts=[self.tokens - known] + [c for c, _ in ranked], stats=stats)


class WordTokenizer:
    """A word vocabulary: encode documents to ids (0 for unknown words) and back."""

    kind = "words"

    def __init__(self, vocab: list[str], lowercase: bool = False, *,
                 counts: list[int] | None = None, stats: dict | None = None):
        if not vocab or vocab[0] != UNK:
            raise FormatError(f"a word vocabulary starts with {UNK} (id 0)")
        self.vocab, self.lowercase = list(vocab), lowercase
        self.counts, self.stats = counts, stats or {}
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise FormatError("a word vocabulary lists each word once")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """The int32 ids of a document."""
        get = self.ids.get
        return np.array([get(w, 0) for w in split_words(text, self.lowercase)], np.int32)

    def encode_batch(self, texts: Iterable[str | None]) -> list[np.ndarray]:
        """The ids of each document (None: no tokens)."""
        return [self.encode(t) if t else np.zeros(0, np.int32) for t in texts]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The token of each id."""
        return [self.vocab[_in_range(i, self.vocab_size)] for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids: tokens joined by spaces, <nl> as a line break."""
        parts: list[str] = []
        for t in self.tokens(ids):
            if t == NL:
                parts.append("\n")
                continue
            if parts and parts[-1] != "\n":
                parts.append(" ")
            parts.append(t)
        return "".join(parts)

    def document(self) -> dict:
        doc = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "kind": self.kind,
               "pattern": WORD_PATTERN, "lowercase": self.lowercase, "unknown": UNK,
               "newline": NL, "vocab_size": self.vocab_size, "vocab": self.vocab,
               **({"counts": self.counts} if self.counts is not None else {}),
               **({"stats": self.stats} if self.stats else {})}
        doc["header_checksum"] = header_checksum(doc)
        return doc

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary file (atomically)."""
        write_json(path, self.document())


class SubwordTokenizer:
    """A Hugging Face `tokenizers` model (BPE, Unigram, or any saved tokenizer.json)."""

    kind = "subword"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.tokenizer.encode(text).ids, np.int32)

    def encode_batch(self, texts: Iterable[str | None]) -> list[np.ndarray]:
        texts = [t or "" for t in texts]
        return [np.array(e.ids, np.int32) for e in self.tokenizer.encode_batch(texts)]

    def tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.tokenizer.id_to_token(_in_range(i, self.vocab_size)) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([_in_range(i, self.vocab_size) for i in ids],
                                     skip_special_tokens=False)

    @property
    def vocab(self) -> list[str]:
        return self.tokens(range(self.vocab_size))

    def save(self, path: str | os.PathLike) -> None:
        from ..io.files import atomic_path

        with atomic_path(path) as tmp:
            self.tokenizer.save(str(tmp))


def _in_range(i, size: int) -> int:
    i = int(i)
    if not 0 <= i < size:
        raise OptionError(f"token id {i} out of range for vocabulary size {size}")
    return i


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise OptionError(f"subword tokenizers need the Hugging Face `tokenizers` library: "
                          f"{INSTALL_TEXT}") from None
    return tokenizers


def train_subword(kind: str, texts: Iterable[str], vocab_size: int, *, min_count: int = 1,
                  lowercase: bool = False) -> SubwordTokenizer:
    """A BPE or Unigram model trained on `texts` (an iterator: the library counts words in
    memory as it reads), <unk> the special token of id 0; spaces are kept as ▁ (Metaspace),
    so decoding restores them."""
    if kind not in SUBWORD_KINDS:
        raise OptionError(f"subword model must be one of {', '.join(SUBWORD_KINDS)}, not {kind!r}")
    if vocab_size < 2:
        raise OptionError(f"vocab_size must be at least 2 (id 0 is {UNK}), not {vocab_size}")
    tk = _tokenizers()
    if kind == "bpe":
        tok = tk.Tokenizer(tk.models.BPE(unk_token=UNK))
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_count,
                                         special_tokens=[UNK], show_progress=False)
    else:
        tok = tk.Tokenizer(tk.models.Unigram())
        trainer = tk.trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[UNK],
                                             unk_token=UNK, show_progress=False)
    if lowercase:
        tok.normalizer = tk.normalizers.Lowercase()
    tok.pre_tokenizer = tk.pre_tokenizers.Metaspace()
    tok.decoder = tk.decoders.Metaspace()
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    return SubwordTokenizer(tok)


def load_tokenizer(path: str | os.PathLike) -> WordTokenizer | SubwordTokenizer:
    """Open a tokenizer file: streamfit's word vocabulary, or a `tokenizers` tokenizer.json."""
    p = Path(path)
    try:
        head = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{p}: no such tokenizer file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(f"{p}: not a tokenizer file (streamfit's vocabulary or a Hugging Face "
                          f"tokenizer.json; sentencepiece .model files are not read)") from None
    if isinstance(head, dict) and head.get("format") == FORMAT:
        doc = read_document(p, FORMAT, SCHEMA_VERSION, "tokenizer file")
        if doc.get("kind") != "words" or doc.get("pattern") != WORD_PATTERN or \
                not isinstance(doc.get("vocab"), list):
            raise FormatError(f"{p}: a tokenizer file of another kind or pattern")
        return WordTokenizer(doc["vocab"], bool(doc.get("lowercase")), counts=doc.get("counts"),
                             stats=doc.get("stats"))
    if isinstance(head, dict) and "model" in head:
        tk = _tokenizers()
        try:
            return SubwordTokenizer(tk.Tokenizer.from_file(str(p)))
        except Exception as exc:  # the library raises plain Exception subclasses
            raise FormatError(f"{p}: not a readable tokenizer.json ({exc})") from None
    raise FormatError(f"{p}: not a tokenizer file (streamfit's vocabulary or a Hugging Face "
                      f"tokenizer.json)")
