#!/usr/bin/env python
"""Build an English token corpus from GCIDE, the GNU Collaborative International Dictionary
of English, as packaged by Debian (``dict-gcide``, the dictd database).

Source
    ``gcide.dict.dz`` (a dictzip file, i.e. gzip, read with :mod:`gzip`) and ``gcide.index``
    (one line per headword: ``headword<TAB>offset<TAB>length``, the numbers in dictd's
    base64 digits ``A-Za-z0-9+/``, most significant first).  They are taken from, in order:
    ``--dict-dir DIR``; ``--deb FILE``; ``/usr/share/dictd`` when the package is installed;
    else ``apt-get download dict-gcide`` is run in ``--cache`` (no root needed) and the .deb
    is unpacked there with ``dpkg-deb -x`` (or, without dpkg, with Python: ar + tar).
    Nothing is installed system-wide.  A .deb already in the cache is reused.  The package
    version comes from the .deb file name (``dict-gcide_VERSION_all.deb``) or, for the
    installed package, from ``dpkg-query``.

Documents
    One document per dictionary article: a distinct ``(offset, length)`` byte range of the
    dict file.  Several index lines often point at the same article (``Law``, ``Law Latin``,
    ``Canon law``, ... all point at the ``Law`` article); the article's headword is that of
    the first such index line in index-file order.  Index lines whose headword starts with
    ``00-`` are dictd metadata (database info, URL, licence) and are skipped.  Articles are
    ordered by offset, i.e. in the dictionary's own order; ``--max-entries N`` keeps the
    first N of them (for fast tests).  Article bytes are decoded as UTF-8, invalid bytes
    replaced (GCIDE 0.48.5 has three stray cp1252 bytes); articles with no token are dropped.

Markup stripping (:func:`strip_markup`, in this order)
    1. pronunciations ``\\Law\\``, ``\\Dil"u*ent\\`` (backslash-delimited, may wrap a line)
       are removed;
    2. character entities become plain letters: accent codes ``['e]``, ``[=a]``, ``["o]``,
       ``[.r]``, ``[-oo]``, ``[a^]``, ``[oo^]`` (a mark from ``'"`=^.~-*,`` before one or
       two letters, or the letters followed by ``^``) become their letters (``caf['e]`` ->
       ``cafe``), and the named entities in ``NAMED_ENTITIES`` (``[ae]`` -> ``ae``,
       ``[imac]`` -> ``i``, ``[thorn]`` -> ``th``, ...) their ASCII spelling;
    3. tags ``<...>`` (within a line) are removed;
    4. every remaining ``[...]`` group is removed, innermost first, so nested groups go
       too: etymologies (``[L. diluens ...]``), usage labels (``[Obs.]``), source notes
       (``[1913 Webster]``, ``[WordNet 1.5]``) and the remaining symbol entities;
    5. cross-references keep their text without the braces, and inside them the syllable
       and stress marks ``*``, ``"`` and the backquote are deleted (``{Dilute}`` -> ``Dilute``,
       ``{Ac*cept"a*bly}`` -> ``Acceptably``); stray braces are dropped.
    Removed groups are replaced by a space, so the words around them stay apart.

Tokenizer (:func:`tokenize`, pure regex, deliberately simple)
    The text is NFKD-normalised, combining marks dropped (``é`` -> ``e``) and lowercased;
    the tokens are then the matches of ``[a-z]+(?:'[a-z]+)?|[0-9]+|[.,;:!?()]``: words with
    at most one inner apostrophe (``avogadro's``, ``o'er``), digit runs (``5.9`` -> ``5``,
    ``.``, ``9``), and each of ``. , ; : ! ? ( )`` as a token of its own.  Every other
    character (whitespace, hyphens, quotes, ``*``, ``&``, leftover markup ...) is dropped,
    so no line or paragraph token exists and ``<unk>`` cannot arise from the text.

Split
    By article: ``zlib.crc32(f"{headword}\\t{offset}".encode("utf-8")) % 10`` is 0 for test
    (~10%), 1 for valid (~10%, held-out data for calibration and model choices, so that
    test stays untouched), else train.  It depends neither on ``--max-entries`` nor on order.

Vocabulary
    From the train split only: id 0 is ``<unk>``, then the ``vocab_size - 1`` most frequent
    train tokens ordered by ``(-count, token)``; out-of-vocabulary tokens map to 0.

Output (``--out DIR``, default ``data/gcide``)
    ``train.parquet``/``valid.parquet``/``test.parquet``: one row per article, in offset
    order, with columns ``tokens: list<int32>`` and ``headword: string``, row groups of
    4096 rows.  ``vocab.txt``: one token per line, 0-based line number = id.
    ``corpus.json``: source, package version, counts per split, unk rates.  Everything is
    written into a temporary directory beside DIR and renamed into place at the end.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import urllib.parse
import uuid
from pathlib import Path

from tqdm import tqdm

from streamfit.io.files import file_digest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import (SPLITS, TokenDocuments, built, per_split, publish,  # noqa: E402
                     split_of as split_by_key, token_corpus_description, token_corpus_options,
                     token_facts)

PACKAGE = "dict-gcide"
SYSTEM_DICT_DIR = Path("/usr/share/dictd")
DICT_NAME, INDEX_NAME = "gcide.dict.dz", "gcide.index"
ROW_GROUP_SIZE = 4096

B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(B64_DIGITS)}

PRONUNCIATION_RE = re.compile(r"\\[^\\]*\\")
_MARKS = r"""['"`=^.~\-*,]"""
ACCENT_RE = re.compile(rf"\[(?:{_MARKS}([A-Za-z]{{1,2}})|([A-Za-z]{{1,2}})\^)\]")
NAMED_ENTITIES = {
    "ae": "ae", "AE": "AE", "oe": "oe", "OE": "OE",
    "imac": "i", "aum": "a", "add": "a", "asl": "a", "als": "a", "udd": "u",
    "eth": "th", "thorn": "th", "th": "th", "ng": "ng", "yogh": "y",
    "dsdot": "d", "lsdot": "l", "zdot": "z", "mdot": "m", "ccaron": "c", "cacute": "c",
}
NAMED_RE = re.compile(r"\[(" + "|".join(sorted(NAMED_ENTITIES, key=lambda s: (-len(s), s))) + r")\]")
TAG_RE = re.compile(r"<[^<>\n]*>")
BRACKET_RE = re.compile(r"\[[^\[\]]*\]")
BRACE_RE = re.compile(r"\{([^{}]*)\}")
_SYLLABLE_MARKS = str.maketrans("", "", '*"`')
TOKEN_RE = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[.,;:!?()]")
TOKENIZER_DESC = (
    "NFKD, combining marks dropped, lowercased; regex [a-z]+(?:'[a-z]+)?|[0-9]+|[.,;:!?()]; "
    "every other character dropped"
)
MARKUP_DESC = (
    "removed: \\pronunciations\\, <tags>, [...] groups innermost first (etymologies, labels, "
    "source notes); accent/named character entities -> ASCII letters first; "
    "{cross-reference} braces dropped, text kept without the marks *\"`"
)


# --- text -------------------------------------------------------------------------------------
def strip_markup(text: str) -> str:
    """Remove GCIDE dict-format markup and keep the readable text (see module docstring)."""
    text = PRONUNCIATION_RE.sub(" ", text)
    text = ACCENT_RE.sub(lambda m: m.group(1) or m.group(2), text)
    text = NAMED_RE.sub(lambda m: NAMED_ENTITIES[m.group(1)], text)
    text = TAG_RE.sub(" ", text)
    while True:
        text, n = BRACKET_RE.subn(" ", text)
        if not n:
            break
    while True:
        text, n = BRACE_RE.subn(lambda m: m.group(1).translate(_SYLLABLE_MARKS), text)
        if not n:
            break
    return text.replace("{", "").replace("}", "")


def tokenize(text: str) -> list[str]:
    """Split (already stripped) text into tokens as described in the module docstring."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return TOKEN_RE.findall(text)


# --- the dictd files --------------------------------------------------------------------------
def b64_decode(digits: str) -> int:
    """dictd's base64 number: digits ``A-Za-z0-9+/``, most significant first."""
    n = 0
    for c in digits:
        n = n * 64 + _B64_VALUE[c]
    return n


def read_articles(index_path: Path) -> list[tuple[int, int, str]]:
    """``(offset, length, headword)`` per distinct article, by offset; metadata skipped.

    The headword is that of the first index line pointing at the article."""
    first: dict[tuple[int, int], str] = {}
    with open(index_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(f"{index_path}:{n}: expected headword<TAB>offset<TAB>length")
            head = parts[0]
            if head.startswith("00-"):
                continue
            first.setdefault((b64_decode(parts[1]), b64_decode(parts[2])), head)
    return sorted((off, ln, head) for (off, ln), head in first.items())


def split_of(headword: str, offset: int) -> str:
    """Deterministic article-level split: ~10% test, ~10% valid, the rest train."""
    return split_by_key(f"{headword}\t{offset}")


# --- obtaining the package --------------------------------------------------------------------
def deb_version(deb: Path) -> str:
    """The version in a Debian file name ``NAME_VERSION_ARCH.deb`` (``%3a`` = epoch colon)."""
    parts = deb.name.split("_")
    if len(parts) != 3 or not deb.name.endswith(".deb"):
        return "unknown"
    return urllib.parse.unquote(parts[1])


def _extract_deb(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data archive into ``dest``: dpkg-deb if present, else ar + tar."""
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
        return
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise RuntimeError(f"{deb}: not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise RuntimeError(f"{deb}: {name} is zstd-compressed; install dpkg to unpack it")
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in (DICT_NAME, INDEX_NAME):
                        target = dest / "usr/share/dictd" / base
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(m).read())
            return
        pos += 60 + size + (size & 1)
    raise RuntimeError(f"{deb}: no data.tar member")


def _dict_files_from_deb(deb: Path, cache: Path) -> Path:
    """Unpack ``deb`` (once) under ``cache`` and return the directory holding the dict files."""
    root = cache / f"{deb.stem}-unpacked"
    found = root / "usr/share/dictd"
    if not ((found / DICT_NAME).exists() and (found / INDEX_NAME).exists()):
        tmp = cache / f".{root.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            _extract_deb(deb, tmp)
            if root.exists():
                shutil.rmtree(root)
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not ((found / DICT_NAME).exists() and (found / INDEX_NAME).exists()):
        raise RuntimeError(f"{deb}: has no usr/share/dictd/{DICT_NAME} and {INDEX_NAME}")
    return found


def download_deb(cache: Path) -> Path:
    """The dict-gcide .deb in ``cache``, running ``apt-get download`` if none is there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if debs:
        return debs[-1]
    if not shutil.which("apt-get"):
        raise RuntimeError(f"apt-get not found: pass --deb {PACKAGE}_VERSION_all.deb or --dict-dir")
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        tmp.chmod(0o777)  # run as root, apt downloads as user _apt: let it write here
        proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True,
                              text=True)
        got = sorted(tmp.glob(f"{PACKAGE}_*.deb"))
        if proc.returncode or not got:
            raise RuntimeError(f"apt-get download {PACKAGE} failed (rc {proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        deb = cache / got[-1].name
        got[-1].replace(deb)
        return deb
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _installed_version() -> str:
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE],
                              capture_output=True, text=True)
    except OSError:
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "unknown"


def locate_source(dict_dir: str | Path | None = None, deb: str | Path | None = None,
                  cache: str | Path | None = None) -> dict:
    """Find (or fetch) the dict files; return ``{"dict_dir", "origin", "package_version", ...}``."""
    if dict_dir is not None:
        return {"dict_dir": Path(dict_dir), "origin": "directory", "package_version": "unknown"}
    if deb is None and (SYSTEM_DICT_DIR / DICT_NAME).exists() and (SYSTEM_DICT_DIR / INDEX_NAME).exists():
        return {"dict_dir": SYSTEM_DICT_DIR, "origin": "installed package",
                "package_version": _installed_version()}
    cache = Path(cache) if cache is not None else default_cache()
    deb = Path(deb) if deb is not None else download_deb(cache)
    cache.mkdir(parents=True, exist_ok=True)
    return {"dict_dir": _dict_files_from_deb(deb, cache), "origin": "deb",
            "package_version": deb_version(deb), "deb": deb.name, "deb_sha256": file_digest(deb)["sha256"]}


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "streamfit" / PACKAGE


# --- building ---------------------------------------------------------------------------------
def build_corpus(out: str | Path, dict_dir: str | Path, vocab_size: int = 16384,
                 max_entries: int | None = None, quiet: bool = False,
                 provenance: dict | None = None) -> dict:
    """Build the corpus from ``dict_dir`` into ``out`` (atomically); return corpus.json's content."""
    if vocab_size < 1:
        raise ValueError("vocab_size must be >= 1 (id 0 is <unk>)")
    dict_dir = Path(dict_dir)
    articles = read_articles(dict_dir / INDEX_NAME)
    n_articles = len(articles)
    if max_entries is not None:
        articles = articles[:max_entries]
    with gzip.open(dict_dir / DICT_NAME, "rb") as f:
        raw = f.read()

    docs = TokenDocuments()
    for off, ln, head in tqdm(articles, desc="tokenizing", unit="entry",
                              disable=quiet or not sys.stderr.isatty()):
        text = raw[off:off + ln].decode("utf-8", errors="replace")
        docs.add(split_of(head, off), head, tokenize(strip_markup(text)))
    vocab, n_tokens, unk_rate = docs.vocabulary(vocab_size)

    prov = dict(provenance or {})
    prov.pop("dict_dir", None)
    meta = {
        "source": "GCIDE, the GNU Collaborative International Dictionary of English "
                  f"(Debian package {PACKAGE}, dictd format)",
        "package": PACKAGE,
        "package_version": prov.pop("package_version", "unknown"),
        **prov,
        "dict_sha256": file_digest(dict_dir / DICT_NAME)["sha256"],
        "articles_in_dictionary": n_articles,
        "max_entries": max_entries,
        "vocab_size": len(vocab),
        "distinct_tokens": len(docs.ids),
        "entries": {s: len(d) for s, d in docs.docs.items()},
        "tokens": n_tokens,
        "unk_rate": unk_rate,
        "split": "crc32(headword + '\\t' + offset) % 10: 0 test, 1 valid, else train",
        "markup": MARKUP_DESC,
        "tokenizer": TOKENIZER_DESC,
    }

    return publish(out, {s: docs.table(s, "headword") for s in SPLITS}, meta,
            row_group_size=ROW_GROUP_SIZE, vocab=vocab)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``--help``."""
    ap = argparse.ArgumentParser(description=token_corpus_description(
        "GCIDE, the GNU Collaborative International Dictionary of English (Debian package "
        f"{PACKAGE}; fetched with 'apt-get download' into --cache when not installed, never "
        "installed system-wide)", "One document per dictionary article; markup stripped; tokens: "
        "lowercase words [a-z]+(?:'[a-z]+)?, digit runs, each of .,;:!?() alone. Split by "
        "article: crc32(headword TAB offset) % 10 == 0 test, == 1 valid, else train."))
    token_corpus_options(ap, "data/gcide", 16384)
    ap.add_argument("--max-entries", type=int, default=None, metavar="N",
                    help="use only the first N articles in dictionary (offset) order "
                         "(default: all)")
    ap.add_argument("--dict-dir", default=None, metavar="DIR",
                    help=f"directory holding {DICT_NAME} and {INDEX_NAME} (default: "
                         f"{SYSTEM_DICT_DIR} if installed, else the downloaded package)")
    ap.add_argument("--deb", default=None, metavar="FILE",
                    help=f"use this {PACKAGE}_VERSION_all.deb instead of downloading one")
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="where the .deb is downloaded and unpacked (default: "
                         "$XDG_CACHE_HOME or ~/.cache, then streamfit/dict-gcide)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.max_entries is not None and args.max_entries < 0:
        ap.error("--max-entries must be >= 0")
    if args.vocab_size < 1:
        ap.error("--vocab-size must be >= 1 (id 0 is <unk>)")
    t0 = time.perf_counter()
    try:
        source = locate_source(args.dict_dir, args.deb, args.cache)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"make_gcide_corpus: {e}", file=sys.stderr)
        return 1
    meta = build_corpus(args.out, source["dict_dir"], args.vocab_size, args.max_entries,
                        args.quiet, provenance=source)
    built(args.out, f"{PACKAGE} {meta['package_version']}", per_split("entries", meta["entries"]),
          *token_facts(meta), seconds=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
