"""The README's worked example on real text: train a language model on prose (the docstrings
of Python's standard library), score other documents — held-out docstrings and, mixed in, the
code of the same modules — and keep those under a perplexity threshold. Prose must score
lower than code: the threshold that keeps a quarter of the documents (half as many as there
are docstrings) keeps (nearly) only docstrings.
The text comes from this machine's Python install; nothing is downloaded or shipped."""
from __future__ import annotations

import ast
import json
import sysconfig
import zlib
from pathlib import Path

import pyarrow.parquet as pq

from streamfit.cli import main
from streamfit.data.text import load_tokenizer

MODULES = 60


def stdlib_documents() -> tuple[dict[str, str], dict[str, str]]:
    """(docstrings, code) of the first stdlib modules in sorted order: each function's or
    class's docstring, and each function's source without its docstring."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())[:MODULES]
    prose, code = {}, {}
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                continue
            key = f"{path.stem}.{node.name}.{node.lineno}"
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 8:
                prose[key] = doc
            if isinstance(node, ast.FunctionDef) and len(node.body) > 2:
                first = node.body[1 if doc else 0]
                text = "\n".join(lines[first.lineno - 1:node.end_lineno])
                if len(text.split()) >= 8:
                    code[key] = text
    return prose, code


def write_folder(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for key, text in docs.items():
        (folder / f"{key}.txt").write_text(text, encoding="utf-8")
    return folder


def test_train_on_prose_score_code_and_prose_keep_under_threshold(tmp_path, capsys):
    prose, code = stdlib_documents()
    test_keys = {k for k in prose if zlib.crc32(k.encode()) % 5 == 0}
    train = write_folder(tmp_path / "docstrings", {k: v for k, v in prose.items() if k not in test_keys})
    n_mixed = min(len(test_keys), len(code))
    assert n_mixed >= 50, "too few documents in this Python's stdlib for the test"
    mixed_prose = sorted(test_keys)[:n_mixed]
    mixed_code = sorted(code)[:n_mixed]
    other = write_folder(tmp_path / "other", {**{f"prose-{k}": prose[k] for k in mixed_prose},
                                              **{f"code-{k}": code[k] for k in mixed_code}})

    # the three commands of the README (and one more to tokenize the other folder the same way)
    assert main(["tokenize", str(train), "--out", str(tmp_path / "corpus"), "--quiet"]) == 0
    assert main(["accumulate", str(tmp_path / "corpus"), "--order", "3", "--stats",
                 str(tmp_path / "stats"), "--quiet"]) == 0
    assert main(["finalize", "--stats", str(tmp_path / "stats"), "--out", str(tmp_path / "lm.npy"),
                 "--quiet"]) == 0
    assert main(["tokenize", str(other), "--tokenizer", str(tmp_path / "corpus" / "tokenizer.json"),
                 "--out", str(tmp_path / "other-tokens"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", "--weights", str(tmp_path / "lm.npy"), str(tmp_path / "other-tokens"),
                 "--out", str(tmp_path / "scored"), "--quiet", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["documents"] == 2 * n_mixed
    scored = pq.read_table(tmp_path / "scored" / "tokens.parquet").to_pylist()
    ppl = {"prose": [], "code": []}
    for r in scored:
        ppl[Path(r["path"]).name.split("-", 1)[0]].append(r["perplexity"])
    prose_median, code_median = (sorted(v)[len(v) // 2] for v in (ppl["prose"], ppl["code"]))
    assert code_median > 1.5 * prose_median
    # keep the quarter of lowest perplexity: (nearly) all prose
    threshold = sorted(r["perplexity"] for r in scored)[n_mixed // 2 - 1]
    assert main(["score", "--weights", str(tmp_path / "lm.npy"), str(tmp_path / "other-tokens"),
                 "--out", str(tmp_path / "kept"), "--quiet", "--max-perplexity", repr(threshold)]) == 0
    kept = pq.read_table(tmp_path / "kept" / "tokens.parquet").to_pylist()
    assert len(kept) == n_mixed // 2
    kept_prose = sum(Path(r["path"]).name.startswith("prose-") for r in kept)
    assert kept_prose >= 0.9 * len(kept), (kept_prose, len(kept))
    assert all(r["perplexity"] <= threshold for r in kept)
    # the vocabulary and the model agree: text → ids → text through the model's tokenizer
    tok = load_tokenizer(tmp_path / "corpus" / "tokenizer.json")
    first = pq.read_table(tmp_path / "corpus" / "tokens.parquet").to_pylist()[0]
    assert tok.encode(tok.decode(first["tokens"])).tolist() == first["tokens"]
    assert json.loads((tmp_path / "lm.model.json").read_text())["vocab_size"] == tok.vocab_size

