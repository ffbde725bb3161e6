"""tools/make_stdlib_corpus.py, the default corpus: its tokenizer against the documented
rules (expected tokens written by hand), and a small build checked against its docstring:
file split by crc32, vocabulary of the most frequent train tokens with <unk> = 0, output
types, corpus.json counts, determinism."""
from __future__ import annotations

import importlib.util
import json
import platform
import sysconfig
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_stdlib_corpus.py"
SPLITS = ("train", "valid", "test")
VOCAB_SIZE, MAX_FILES = 500, 60


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("make_stdlib_corpus", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- tokenizer --------------------------------------------------------------------------------
def test_tokenize_follows_the_documented_rules(tool):
    text = ('def f(x1, _y):\n'
            '    return 3.14 + 1e5\n'
            '\n'
            '   \t \n'
            '\tname = "é<nl>"  # 1..2 3.14.15 9abc naïve\n'
            'last')  # no newline at the end
    assert tool.tokenize(text) == [
        "def", "f", "(", "x1", ",", "_y", ")", ":", "<nl>",
        "return", "3.14", "+", "1", "e5", "<nl>",
        # two blank lines (one of whitespace only): nothing
        "name", "=", '"', "é", "<", "nl", ">", '"', "#", "1", ".", ".", "2",
        "3.14", ".", "15", "9", "abc", "na", "ï", "ve", "<nl>",
        "last", "<nl>",
    ]
    assert tool.tokenize("") == [] and tool.tokenize("\n\n  \n") == []


# --- a small build ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tool, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    metas = [tool.build_corpus(root / name, vocab_size=VOCAB_SIZE, max_files=MAX_FILES, quiet=True)
             for name in ("a", "b")]
    return root, metas


def read_split(directory: Path, split: str) -> pa.Table:
    return pq.read_table(directory / f"{split}.parquet")


def stdlib_files() -> tuple[Path, list[str]]:
    """The docstring's source list, computed here: *.py under the stdlib, no site-packages
    or __pycache__ component, sorted by POSIX relative path, the first MAX_FILES."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                  if p.is_file() and not {"site-packages", "__pycache__"} & set(p.relative_to(root).parts))
    return root, rels[:MAX_FILES]


def test_build_writes_the_documented_files_and_types(builds):
    root, _ = builds
    out = root / "a"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.parquet" for s in SPLITS] + ["vocab.txt", "corpus.json"])
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[-1] == ""  # one token per line, each line ended
    vocab = vocab[:-1]
    assert vocab[0] == "<unk>" and len(vocab) == VOCAB_SIZE and len(set(vocab)) == len(vocab)
    assert "<nl>" in vocab and not any(t == "" or any(c.isspace() for c in t) for t in vocab)
    for split in SPLITS:
        schema = pq.read_schema(out / f"{split}.parquet")
        assert schema.names == ["tokens", "path"]
        t = schema.field("tokens").type
        assert pa.types.is_list(t) and t.value_type == pa.int32()
        assert schema.field("path").type == pa.string()
        ids = read_split(out, split).column("tokens").combine_chunks().values.to_numpy()
        assert ids.size and ids.min() >= 0 and ids.max() < len(vocab)


def test_corpus_json_counts_equal_the_parquet_contents(builds):
    root, (meta, _) = builds
    out = root / "a"
    assert meta == json.loads((out / "corpus.json").read_text())
    assert meta["source"] == "python-stdlib"
    assert meta["python_version"] == platform.python_version()
    assert meta["stdlib_path"] == sysconfig.get_paths()["stdlib"]
    assert meta["vocab_size"] == VOCAB_SIZE
    for split in SPLITS:
        table = read_split(out, split)
        ids = table.column("tokens").combine_chunks().values.to_numpy()
        assert meta["files"][split] == table.num_rows
        assert meta["tokens"][split] == ids.size
        assert meta["unk_rate"][split] == pytest.approx(np.count_nonzero(ids == 0) / ids.size, rel=1e-12)
    assert sum(meta["files"].values()) <= MAX_FILES


def test_split_by_file_and_vocabulary_from_train(tool, builds):
    root, _ = builds
    out = root / "a"
    stdlib, rels = stdlib_files()
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ids_of = {t: i for i, t in enumerate(vocab)}
    texts = {rel: (stdlib / rel).read_text(encoding="utf-8", errors="replace") for rel in rels}
    bucket = {0: "test", 1: "valid"}
    want_paths = {s: [] for s in SPLITS}
    for rel in rels:  # sorted; files with no token (nothing but whitespace) are dropped
        if texts[rel].strip():
            want_paths[bucket.get(zlib.crc32(rel.encode()) % 10, "train")].append(rel)
    train_counts = Counter()
    for split in SPLITS:
        table = read_split(out, split)
        assert table.column("path").to_pylist() == want_paths[split], split
        for rel, ids in zip(table.column("path").to_pylist(), table.column("tokens").to_pylist()):
            tokens = tool.tokenize(texts[rel])
            if split == "train":
                train_counts.update(tokens)
            assert ids == [ids_of.get(t, 0) for t in tokens], rel  # out of vocabulary -> 0
    ranked = sorted(train_counts, key=lambda t: (-train_counts[t], t))
    assert vocab[1:] == ranked[:VOCAB_SIZE - 1]


def test_two_builds_are_identical(builds):
    root, (meta_a, meta_b) = builds
    a, b = root / "a", root / "b"
    assert (a / "vocab.txt").read_bytes() == (b / "vocab.txt").read_bytes()
    assert meta_a == meta_b
    for split in SPLITS:
        ta, tb = read_split(a, split), read_split(b, split)
        assert ta.column("path").to_pylist() == tb.column("path").to_pylist()
        assert ta.column("tokens").equals(tb.column("tokens"))
