"""`streamfit tokenize` and the tokenizers: exact splits of small texts, the vocabulary
against counts made here, the round trip text → ids → text, row groups, the output folder's
rules, Parquet text columns and the optional subword models."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

import streamfit
from streamfit.cli import main
from streamfit.data.text import NL, UNK, WordCounter, load_tokenizer, split_words
from streamfit.errors import InputError, OptionError, StreamfitError

SCHEMAS = Path(__file__).resolve().parents[1] / "data_schemas"


def write_texts(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_split_words_exact():
    assert split_words("Hello, world!\n") == ["Hello", ",", "world", "!", NL]
    assert split_words("x = f(a_1, 2.5)\n\n  y\n") == ["x", "=", "f", "(", "a_1", ",", "2", ".",
                                                       "5", ")", NL, "y", NL]
    assert split_words("no newline at end") == ["no", "newline", "at", "end"]
    assert split_words("Été <unk>", lowercase=True) == ["été", "<", "unk", ">"]
    assert split_words("\n\n \t\n") == []


def test_vocabulary_is_the_most_frequent_words(tmp_path):
    texts = {"a.txt": "b a c a\nb a\n", "b.txt": "d c a\n", "c.txt": "e\n"}
    src = write_texts(tmp_path / "src", texts)
    m = streamfit.tokenize([src], tmp_path / "out", vocab_size=4)
    # counts made by hand: a 4, <nl> 4, b 2, c 2, d 1, e 1 → <unk>, then (-count, word)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert tok.vocab == [UNK, "<nl>", "a", "b"]
    assert tok.counts == [4, 4, 4, 2]
    assert (tmp_path / "out" / "vocab.txt").read_text().splitlines() == tok.vocab
    table = pq.read_table(tmp_path / "out" / "tokens.parquet")
    assert table.schema.field("tokens").type == pa.list_(pa.int32())
    rows = {Path(r["path"]).name: r["tokens"] for r in table.to_pylist()}
    assert rows == {"a.txt": [3, 2, 0, 2, 1, 3, 2, 1], "b.txt": [0, 0, 2, 1], "c.txt": [0, 1]}
    assert m["documents"] == 3 and m["tokens"] == 14 and m["unknown_rate"] == pytest.approx(4 / 14)
    m2 = streamfit.tokenize([src], tmp_path / "out2", vocab_size=100, min_count=2)
    assert load_tokenizer(tmp_path / "out2" / "tokenizer.json").vocab == [UNK, "<nl>", "a", "b", "c"]
    assert m2["vocab_size"] == 5


words = st.sampled_from(["the", "cat", "Sat", "on", "mat", "ünï", "x_1", "42", ".", ",", "(", ")"])
documents = st.lists(st.lists(words, min_size=0, max_size=8), min_size=1, max_size=5).map(
    lambda lines: "\n".join(" ".join(line) for line in lines))


@settings(max_examples=30, deadline=None)
@given(docs=st.lists(documents, min_size=1, max_size=6), lowercase=st.booleans())
def test_round_trip_text_ids_text(tmp_path_factory, docs, lowercase):
    """Every word is in the vocabulary: ids decode to the text's tokens, which encode back to
    the same ids, and the ids are those of a Counter-ranked vocabulary made here."""
    tmp = tmp_path_factory.mktemp("rt")
    src = write_texts(tmp / "src", {f"{i:02d}.txt": d for i, d in enumerate(docs)})
    streamfit.tokenize([src], tmp / "out", lowercase=lowercase)
    tok = load_tokenizer(tmp / "out" / "tokenizer.json")
    expected = [split_words(d.lower() if lowercase else d) for d in docs]
    counts = Counter(w for e in expected for w in e)
    vocab = [UNK] + sorted(counts, key=lambda w: (-counts[w], w))
    assert tok.vocab == vocab
    got = {Path(r["path"]).name: r["tokens"] for r in
           pq.read_table(tmp / "out" / "tokens.parquet").to_pylist()}
    for i, e in enumerate(expected):
        if not e:
            assert f"{i:02d}.txt" not in got
            continue
        ids = got[f"{i:02d}.txt"]
        assert ids == [vocab.index(w) for w in e]
        text = tok.decode(ids)
        assert tok.tokens(ids) == e
        assert tok.encode(text).tolist() == ids


def test_lines_rows_and_row_groups(tmp_path):
    src = write_texts(tmp_path / "src", {"a.txt": "one two\n\nthree\nfour five six\n"
                                                   + "x\n" * 10})
    m = streamfit.tokenize([src / "a.txt"], tmp_path / "out", lines=True, row_group_rows=3)
    pf = pq.ParquetFile(tmp_path / "out" / "tokens.parquet")
    assert max(pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)) == 3
    rows = pf.read().to_pylist()
    assert [r["row"] for r in rows] == [0, 2, 3] + list(range(4, 14))   # line 1 is blank
    assert m["documents"] == 13 and m["empty_documents"] == 1
    assert all(NL not in load_tokenizer(tmp_path / "out" / "tokenizer.json").tokens(r["tokens"])
               for r in rows)


def test_parquet_text_column(tmp_path):
    texts = ["a b", None, "b c", "", "a"]
    pq.write_table(pa.table({"text": texts, "id": [10, 11, 12, 13, 14]}), tmp_path / "t.parquet",
                   row_group_size=2)
    streamfit.tokenize([tmp_path / "t.parquet"], tmp_path / "out", text_column="text",
                       batch_rows=1)
    rows = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pylist()
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert [(r["row"], tok.decode(r["tokens"])) for r in rows] == [(0, "a b"), (2, "b c"), (4, "a")]
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="expected a string column"):
        streamfit.tokenize([tmp_path / "bad.parquet"], tmp_path / "out2", text_column="text")
    with pytest.raises(OptionError, match="--lines"):
        streamfit.tokenize([tmp_path / "t.parquet"], tmp_path / "out3", text_column="text",
                           lines=True)


def test_given_tokenizer_encodes_the_same_way(tmp_path):
    src = write_texts(tmp_path / "src", {"a.txt": "a b a c\n"})
    streamfit.tokenize([src], tmp_path / "one")
    other = write_texts(tmp_path / "other", {"b.txt": "c a z\n"})
    streamfit.tokenize([other], tmp_path / "two", tokenizer=tmp_path / "one" / "tokenizer.json")
    tok = load_tokenizer(tmp_path / "one" / "tokenizer.json")
    assert pq.read_table(tmp_path / "two" / "tokens.parquet")["tokens"].to_pylist() == \
        [tok.encode("c a z\n").tolist()]
    assert tok.encode("c a z\n")[2] == 0          # z is unknown
    assert load_tokenizer(tmp_path / "two" / "tokenizer.json").vocab == tok.vocab


def test_output_folder_rules(tmp_path, capsys):
    src = write_texts(tmp_path / "src", {"a.txt": "a b\n"})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["tokenize", str(src), "--out", str(mine), "--quiet"]) == 1
    assert "did not write" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
    out = tmp_path / "out"
    assert main(["tokenize", str(src), "--out", str(out), "--quiet"]) == 0
    assert main(["tokenize", str(src), "--out", str(out), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tokenize", str(src), "--out", str(out), "--quiet", "--overwrite",
                 "--lowercase"]) == 0
    assert json.loads((out / "tokenize.json").read_text())["lowercase"] is True
    # bad input in the second file: nothing is left behind, the earlier output is kept
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"text": [3]}), tmp_path / "p2.parquet")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["tokenize", str(tmp_path / "p1.parquet"), str(tmp_path / "p2.parquet"),
                 "--text-column", "text", "--out", str(tmp_path / "new"), "--quiet"]) == 1
    assert "p2.parquet" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(OptionError, match="--vocab-size"):
        streamfit.tokenize([src], tmp_path / "x", vocab_size=1)
    with pytest.raises(StreamfitError, match=r"no \*.md files"):
        streamfit.tokenize([src], tmp_path / "x", pattern="*.md")


def test_word_counter_prunes_the_rarest():
    c = WordCounter(max_words=10)
    text = " ".join(["common"] * 50 + ["often"] * 20 + [f"rare{i}" for i in range(40)])
    c.add(text)
    assert len(c.counts) <= 10 and c.counts["common"] == 50 and c.counts["often"] == 20
    assert c.pruned_at == 1
    assert WordCounter(max_words=1000).tokenizer(3).stats["pruned_at"] == 0


def test_tokenizer_file_matches_its_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "tokenizer.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    src = write_texts(tmp_path / "src", {"a.txt": "a b a\nc\n"})
    streamfit.tokenize([src], tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    jsonschema.validate(doc, schema)
    bad = dict(doc, vocab=["a"] + doc["vocab"][1:])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    doc["vocab"][1], doc["vocab"][2] = doc["vocab"][2], doc["vocab"][1]   # edited: refused
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(StreamfitError, match="checksum"):
        load_tokenizer(tmp_path / "edited.json")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_round_trip(tmp_path, kind):
    pytest.importorskip("tokenizers")
    text = "the cat sat on the mat.\nthe dog sat on the log.\n" * 20
    src = write_texts(tmp_path / "src", {"a.txt": text, "b.txt": "a cat, a dog and a mat\n"})
    m = streamfit.tokenize([src], tmp_path / "out", subword=kind, vocab_size=40)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert tok.kind == "subword" and m["vocab_size"] == tok.vocab_size <= 40
    assert tok.tokens([0]) == [UNK]
    table = pq.read_table(tmp_path / "out" / "tokens.parquet").to_pylist()
    by_name = {Path(r["path"]).name: r["tokens"] for r in table}
    assert tok.decode(by_name["a.txt"]) == text
    assert by_name["b.txt"] == tok.encode("a cat, a dog and a mat\n").tolist()
    assert tok.decode(tok.encode("sat on the cat")) == "sat on the cat"
    # the saved tokenizer.json, given back, encodes the same way
    streamfit.tokenize([src], tmp_path / "again", tokenizer=tmp_path / "out" / "tokenizer.json")
    assert pq.read_table(tmp_path / "again" / "tokens.parquet").to_pylist() == table


def test_subword_without_the_library_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)   # import fails as if not installed
    src = write_texts(tmp_path / "src", {"a.txt": "a b\n"})
    with pytest.raises(OptionError, match=r"streamfit\[text\]"):
        streamfit.tokenize([src], tmp_path / "out", subword="bpe")
    assert not (tmp_path / "out").exists()


def test_token_ids_of_a_batch_are_int32_lists():
    from streamfit.data.tokenize import token_list_array

    arr = token_list_array([np.array([1, 2], np.int32), np.zeros(0, np.int32), np.array([3])])
    assert arr.type == pa.list_(pa.int32()) and arr.to_pylist() == [[1, 2], [], [3]]


# --- commands that read text directly (--text-column with --tokenizer) ------------------------
SENTENCES = ["the cat sat on the mat", "the dog sat on the log .", "a cat and a dog",
             None, "the mat and the log", "a dog sat", "the cat , the dog and the mat ."]


@pytest.fixture
def text_corpus(tmp_path):
    pq.write_table(pa.table({"text": SENTENCES, "id": list(range(len(SENTENCES)))}),
                   tmp_path / "text.parquet", row_group_size=3)
    streamfit.tokenize([tmp_path / "text.parquet"], tmp_path / "tok", text_column="text",
                       vocab_size=9)   # some words stay <unk>
    return tmp_path, tmp_path / "text.parquet", tmp_path / "tok"


@pytest.mark.parametrize("model", [["--order", "3"], ["--window", "2"]])
def test_text_column_gives_what_the_token_corpus_gives(text_corpus, model, capsys):
    tmp, text, tok = text_corpus
    tokenizer = str(tok / "tokenizer.json")
    via_text = ["--text-column", "text", "--tokenizer", tokenizer]
    assert main(["accumulate", str(text), "--stats", str(tmp / "s1"), "--quiet", *model, *via_text]) == 0
    assert main(["accumulate", str(tok / "tokens.parquet"), "--stats", str(tmp / "s2"), "--quiet",
                 "--vocab-size", "9", *model]) == 0
    s1, s2 = streamfit.load_stats(tmp / "s1"), streamfit.load_stats(tmp / "s2")
    assert (s1.n_classes, s1.n_examples) == (s2.n_classes, s2.n_examples) == (9, s2.n_examples)
    assert json.loads((tmp / "s1" / "manifest.json").read_text())["checksum"] == \
        json.loads((tmp / "s2" / "manifest.json").read_text())["checksum"]
    assert main(["finalize", "--stats", str(tmp / "s1"), "--out", str(tmp / "m.npy"), "--quiet"]) == 0
    # held-out text for the block model / the calibrated form: the fit of the token corpus
    assert main(["finalize", "--stats", str(tmp / "s1"), "--out", str(tmp / "h1.npy"), "--quiet",
                 "--heldout", str(text), *via_text]) == 0
    assert main(["finalize", "--stats", str(tmp / "s1"), "--out", str(tmp / "h2.npy"), "--quiet",
                 "--heldout", str(tok / "tokens.parquet")]) == 0
    h1, h2 = (json.loads((tmp / f"{h}.model.json").read_text()) for h in ("h1", "h2"))
    got, want = ([v for v in (d.get("tau"), d.get("beta"), d.get("smoothing"),
                              d.get("fit", {}).get("cross_entropy")) if v is not None]
                 for d in (h1, h2))
    assert got and got == pytest.approx(want, rel=1e-9)
    assert h1.get("form") in ("blocks", "calibrated")
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(tmp / "m.npy"), str(text), "--json", "--quiet",
                 *via_text]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--weights", str(tmp / "m.npy"), str(tok), "--json", "--quiet"]) == 0
    b = json.loads(capsys.readouterr().out)   # the same sums, in other batches
    assert b == {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in a.items()}
    assert main(["score", "--weights", str(tmp / "m.npy"), str(text), "--out", str(tmp / "sc"),
                 "--quiet", *via_text]) == 0
    scored = pq.read_table(tmp / "sc" / "text.parquet")
    assert scored["text"].to_pylist() == SENTENCES and scored["id"].to_pylist() == list(range(7))
    tokens = pq.read_table(tok / "tokens.parquet")
    lp = {r: v for r, v in zip(tokens["row"].to_pylist(), load_model_scores(tmp / "m.npy", tokens))}
    assert scored["log_prob"].to_pylist() == pytest.approx([lp.get(i, 0.0) for i in range(7)],
                                                           rel=1e-12)
    assert sum(scored["n_tokens"].to_pylist()) == a["n"]
    from streamfit.model.weights import load_model   # the README's pipeline form, batch by batch
    model, tk = load_model(tmp / "m.npy"), load_tokenizer(tok / "tokenizer.json")
    for batch in pq.ParquetFile(text).iter_batches(batch_size=4, columns=["text"]):
        got = model.score_documents(batch, text_column="text", tokenizer=tk)
        assert got["log_prob"].to_pylist() == pytest.approx(
            scored["log_prob"].to_pylist()[:4] if batch.num_rows == 4 else
            scored["log_prob"].to_pylist()[4:], rel=1e-12)
    # --context is tokenized, predictions printed as text
    capsys.readouterr()
    assert main(["predict", "--weights", str(tmp / "m.npy"), "--tokenizer", tokenizer,
                 "--context", "the cat", "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    vocab = load_tokenizer(tok / "tokenizer.json").vocab
    assert out["context"] == [vocab.index("the"), vocab.index("cat")]
    assert [r["token"] for r in out["top"]] == [vocab[r["id"]] for r in out["top"]]


def load_model_scores(weights, tokens: pa.Table) -> list[float]:
    from streamfit.model.weights import load_model

    return load_model(weights).score_documents(tokens.select(["tokens"]))["log_prob"].to_pylist()


def test_text_column_refusals(text_corpus, capsys):
    tmp, text, tok = text_corpus
    assert main(["accumulate", str(text), "--stats", str(tmp / "s"), "--quiet",
                 "--text-column", "text"]) == 1
    assert "go together" in capsys.readouterr().err
    streamfit.tokenize([text], tmp / "tok2", text_column="text", vocab_size=5)
    streamfit.finalize(streamfit.accumulate([tok / "tokens.parquet"], window=1, vocab_size=9),
                       tmp / "m.npy")
    assert main(["evaluate", "--weights", str(tmp / "m.npy"), str(text), "--quiet",
                 "--text-column", "text", "--tokenizer", str(tmp / "tok2" / "tokenizer.json")]) == 1
    assert "not the tokenizer it was trained with" in capsys.readouterr().err
    assert main(["evaluate", "--weights", str(tmp / "m.npy"), str(text), "--quiet",
                 "--text-column", "id", "--tokenizer", str(tok / "tokenizer.json")]) == 1
    assert "expected a string column" in capsys.readouterr().err
