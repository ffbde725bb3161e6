"""The `streamfit` command, end to end, in-process through `streamfit.cli.main` (and a few
real subprocesses for exit codes, stderr and --help).

Numbers are checked against oracles computed here with numpy from the token lists: the
bigram conditional model is W_ij = log(F_ij + a) − log(f_i + a·V) with F counted by hand
(row V = "before the document start"), the paper and calibrated forms add
tau·(x̃·W) − beta·log(c_j + a·D). The CLI's numbers must also equal the Python API's (the
CLI is a thin layer), but that alone would be the code checked against itself.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import logsumexp

from streamfit.cli import main
from streamfit.model.evaluate import evaluate
from streamfit.model.weights import load_model
from streamfit.count.stats import load as load_stats
from streamfit import synthetic

from conftest import cli, ok, lm_count_oracle, markov_docs, write_tokens

V = 8            # states of the chain = vocabulary size
DOC_LEN = 50
N_DOCS = {"train": 100, "valid": 60, "test": 60}
ROW_GROUP = 37   # 100 training documents -> 3 row groups
A = 0.01         # the CLI's default smoothing


# --- helpers ----------------------------------------------------------------------------------
def snapshot(directory: Path) -> dict | None:
    """Every file under `directory` and its bytes (None when it does not exist)."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def bigram_counts(docs) -> np.ndarray:
    """F ((V+1) × V) by definition: F[previous token, token] += 1, previous = V (BOS) for
    the first token of each document."""
    f = np.zeros((V + 1, V))
    for d in docs:
        d = np.asarray(d)
        np.add.at(f, (np.concatenate([[V], d[:-1]]), d), 1.0)
    return f


def contexts_targets(docs) -> tuple[np.ndarray, np.ndarray]:
    """Per token of the documents: its previous token (V at a document start) and itself."""
    ctx = np.concatenate([np.concatenate([[V], np.asarray(d[:-1])]) for d in docs]).astype(int)
    return ctx, np.concatenate([np.asarray(d) for d in docs]).astype(int)


def conditional_logp(f: np.ndarray, a: float) -> np.ndarray:
    """W_ij = log(F_ij + a) − log(f_i + a·V): smoothed log P(next | previous)."""
    return np.log(f + a) - np.log(f.sum(axis=1, keepdims=True) + a * f.shape[1])


def bigram_logits(f: np.ndarray, a: float, tau: float, beta: float) -> np.ndarray:
    """Logits per context row of the window-1 model: tau·W − beta·log(c_j + a·D)."""
    d = f.shape[0]  # n_features = V + 1
    return tau * conditional_logp(f, a) - beta * np.log(f.sum(axis=0) + a * d)


def cross_entropy(logits_per_ctx: np.ndarray, docs) -> float:
    ctx, tgt = contexts_targets(docs)
    z = logits_per_ctx[ctx]
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(tgt.size), tgt]))


def top_order(row: np.ndarray) -> np.ndarray:
    """Classes by descending value, ties by class id."""
    return np.lexsort((np.arange(row.size), -row))


# --- one corpus, statistics and weights for the whole module ------------------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """train / valid / test token corpora of an 8-state Markov chain, their statistics
    (windows 1 and 2) and weights of every form, all made through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    chain = synthetic.markov_chain(V, concentration=1.0, seed=5)
    docs = {s: markov_docs(chain, n, DOC_LEN, seed=10 + i) for i, (s, n) in enumerate(N_DOCS.items())}
    assert all(set(np.concatenate(d).tolist()) == set(range(V)) for d in docs.values())
    paths = {s: write_tokens(root / f"{s}.parquet", d, row_group_size=ROW_GROUP)
             for s, d in docs.items()}
    stats, stats2 = root / "stats", root / "stats2"
    ok("accumulate", paths["train"], "--stats", stats, "--quiet")
    ok("accumulate", paths["train"], "--stats", stats2, "--window", "2", "--quiet")
    w = root / "weights"
    ok("finalize", "--stats", stats, "--out", w / "dense.npy", "--quiet")
    ok("finalize", "--stats", stats, "--out", w / "sparse.npy", "--format", "sparse", "--quiet")
    ok("finalize", "--stats", stats2, "--out", w / "paper2.npy", "--form", "paper", "--quiet")
    ok("finalize", "--stats", stats, "--out", w / "calibrated.npy", "--heldout", paths["valid"],
       "--quiet")
    ok("finalize", "--stats", stats, "--out", w / "calibrated-a.npy", "--form", "calibrated",
       "--smoothing", str(A), "--heldout", paths["valid"], "--quiet")
    return dict(root=root, docs=docs, paths=paths, stats=stats, stats2=stats2, w=w,
                f=bigram_counts(docs["train"]))


def n_tokens(docs) -> int:
    return sum(len(d) for d in docs)


def evaluate_json(capsys, weights, path) -> dict:
    rc, out, err = cli(capsys, "evaluate", "--weights", weights, path, "--json", "--quiet")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one JSON object, nothing else on stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


# --- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dense", "sparse", "paper2", "calibrated", "calibrated-a"])
def test_evaluate_json_matches_the_python_api(ws, capsys, name):
    weights = ws["w"] / f"{name}.npy"
    result = evaluate_json(capsys, weights, ws["paths"]["test"])
    assert {"cross_entropy", "perplexity", "accuracy", "n"} <= result.keys()
    assert result["n"] == n_tokens(ws["docs"]["test"]) == 3000
    assert result["perplexity"] == pytest.approx(math.exp(result["cross_entropy"]), rel=1e-12)
    api = evaluate(load_model(weights), [ws["paths"]["test"]])
    for key in ("cross_entropy", "perplexity", "accuracy", "n"):
        assert result[key] == pytest.approx(api[key], rel=1e-12), key


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_bigram_conditional_cross_entropy_and_accuracy_match_hand_computation(ws, capsys, layout):
    result = evaluate_json(capsys, ws["w"] / f"{layout}.npy", ws["paths"]["test"])
    logp = conditional_logp(ws["f"], A)
    want = cross_entropy(logp, ws["docs"]["test"])
    assert result["cross_entropy"] == pytest.approx(want, rel=1e-5)  # weights stored as float32
    ctx, tgt = contexts_targets(ws["docs"]["test"])
    assert result["accuracy"] == np.mean(np.argmax(logp, axis=1)[ctx] == tgt)


def test_finalize_sidecar_says_what_was_asked(ws):
    meta = {n: json.loads((ws["w"] / f"{n}.model.json").read_text())
            for n in ("dense", "sparse", "paper2", "calibrated", "calibrated-a")}
    assert (meta["dense"]["layout"], meta["sparse"]["layout"]) == ("dense", "sparse")
    for n in ("dense", "sparse"):
        assert (meta[n]["form"], meta[n]["tau"], meta[n]["beta"], meta[n]["smoothing"]) == \
            ("conditional", 1.0, 0.0, A)
    # paper form for a window-2 language model: K = 2, tau = K, beta = K − 1
    assert (meta["paper2"]["form"], meta["paper2"]["tau"], meta["paper2"]["beta"]) == ("paper", 2.0, 1.0)
    # --heldout alone: calibrated, smoothing chosen on the held-out data
    assert meta["calibrated"]["form"] == "calibrated"
    assert meta["calibrated-a"]["smoothing"] == A
    for n in ("calibrated", "calibrated-a"):
        assert meta[n]["calibration"]["examples"] == n_tokens(ws["docs"]["valid"])
    assert (ws["w"] / "paper2.bias.npy").exists() and not (ws["w"] / "dense.bias.npy").exists()


def test_finalize_writes_the_explicit_solution(ws):
    """The files themselves, read with plain numpy: dense W = log(F + a) − log(f + a·V),
    sparse S = log1p(F / a) as CSR on F's support (the rows' constants cancel in scoring,
    so only the files can show them)."""
    f = ws["f"]
    w = np.load(ws["w"] / "dense.npy")
    assert (w.dtype, w.shape) == (np.float32, (V + 1, V))
    np.testing.assert_allclose(w, conditional_logp(f, A), rtol=1e-6, atol=1e-6)
    indptr, indices, data = (np.load(ws["w"] / f"sparse.S.{n}.npy") for n in ("indptr", "indices", "data"))
    s = np.zeros_like(f)
    rows = np.repeat(np.arange(V + 1), np.diff(indptr))
    s[rows, indices] = data
    assert indptr[-1] == np.count_nonzero(f)
    np.testing.assert_allclose(s, np.log1p(f / A), rtol=1e-6)


def test_paper_form_window_2_matches_hand_computation(ws, capsys):
    result = evaluate_json(capsys, ws["w"] / "paper2.npy", ws["paths"]["test"])
    f = lm_count_oracle(ws["docs"]["train"], 2, V).astype(float)  # 2·(V+1) × V
    w = np.log(f + A) - np.log(f.sum(axis=1, keepdims=True) + A * V)
    bias = -1.0 * np.log(f.sum(axis=0) + A * f.shape[0])  # beta = K − 1 = 1, D = 2(V+1)
    nll = []
    for d in ws["docs"]["test"]:
        for t, target in enumerate(d):
            r0 = d[t - 1] if t >= 1 else V
            r1 = (V + 1) + (d[t - 2] if t >= 2 else V)
            z = 2.0 * (0.5 * w[r0] + 0.5 * w[r1]) + bias
            nll.append(logsumexp(z) - z[target])
    assert result["cross_entropy"] == pytest.approx(np.mean(nll), rel=1e-5)


def test_calibrated_form_matches_hand_computation_and_beats_conditional(ws, capsys):
    f, valid, test = ws["f"], ws["docs"]["valid"], ws["docs"]["test"]
    for name in ("calibrated", "calibrated-a"):
        meta = json.loads((ws["w"] / f"{name}.model.json").read_text())
        a, tau, beta = meta["smoothing"], meta["tau"], meta["beta"]
        result = evaluate_json(capsys, ws["w"] / f"{name}.npy", ws["paths"]["test"])
        assert result["cross_entropy"] == pytest.approx(
            cross_entropy(bigram_logits(f, a, tau, beta), test), rel=1e-5)
        # The sample is all of valid (stride 1): the recorded held-out loss is the true one.
        best = [g for g in meta["calibration"]["grid"] if g["smoothing"] == a]
        assert len(best) == 1
        assert best[0]["cross_entropy"] == pytest.approx(
            cross_entropy(bigram_logits(f, a, tau, beta), valid), rel=1e-9)
        # (tau, beta) = (1, 0), the conditional form, is one of the candidates.
        assert cross_entropy(bigram_logits(f, a, tau, beta), valid) <= \
            cross_entropy(bigram_logits(f, a, 1.0, 0.0), valid) + 1e-9
    chosen = json.loads((ws["w"] / "calibrated.model.json").read_text())
    losses = {g["smoothing"]: cross_entropy(bigram_logits(f, g["smoothing"], g["tau"], g["beta"]), valid)
              for g in chosen["calibration"]["grid"]}
    assert chosen["smoothing"] == min(losses, key=losses.get)


def test_evaluate_text_output(ws, capsys):
    rc, out, _ = cli(capsys, "evaluate", "--weights", ws["w"] / "dense.npy", ws["paths"]["test"],
                     "--quiet")
    assert rc == 0
    want = cross_entropy(conditional_logp(ws["f"], A), ws["docs"]["test"])
    assert out.startswith("3,000 tokens: cross-entropy ")
    assert f"{want:.4f} nats" in out and f"perplexity {math.exp(want):.2f}" in out


# --- accumulate into an existing directory -----------------------------------------------------
def manifest(stats_dir: Path) -> dict:
    return json.loads((stats_dir / "manifest.json").read_text())


def assert_same_stats(got_dir: Path, want_dir: Path) -> None:
    got, want = load_stats(got_dir), load_stats(want_dir)
    assert (got.task, got.window, got.n_classes, got.n_features, got.n_examples, got.l1_sum) == \
        (want.task, want.window, want.n_classes, want.n_features, want.n_examples, want.l1_sum)
    for name in ("indptr", "indices", "data"):
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.sources == want.sources


def test_accumulating_the_same_files_twice_adds_nothing(markov_corpus, capsys, tmp_path):
    c = markov_corpus(V, n_docs=30, doc_len=20, row_group_size=7)
    stats = tmp_path / "stats"
    rc, out, _ = cli(capsys, "accumulate", c.train, "--stats", stats, "--quiet")
    assert rc == 0 and "600 tokens" in out
    assert manifest(stats)["n_examples"] == 600
    np.testing.assert_array_equal(load_stats(stats).csr().toarray(),
                                  lm_count_oracle(c.train_docs, 1, V))
    before = snapshot(stats)
    rc, out, _ = cli(capsys, "accumulate", c.train, "--stats", stats, "--quiet")
    assert rc == 0 and "nothing to add" in out
    assert snapshot(stats) == before
    assert manifest(stats)["n_examples"] == 600


def test_accumulating_file_by_file_equals_all_at_once(markov_corpus, capsys, tmp_path):
    c = markov_corpus(V, n_docs=30, doc_len=20, row_group_size=7)
    at_once, one_by_one, overlapping = (tmp_path / n for n in ("once", "seq", "overlap"))
    assert cli(capsys, "accumulate", c.train, c.heldout, "--stats", at_once, "--quiet")[0] == 0
    assert cli(capsys, "accumulate", c.train, "--stats", one_by_one, "--quiet")[0] == 0
    assert cli(capsys, "accumulate", c.heldout, "--stats", one_by_one, "--quiet")[0] == 0
    # A, then A and B: A's row groups are skipped, only B's are added
    assert cli(capsys, "accumulate", c.train, "--stats", overlapping, "--quiet")[0] == 0
    rc, out, _ = cli(capsys, "accumulate", c.train, c.heldout, "--stats", overlapping, "--quiet")
    assert rc == 0 and "1,200 tokens" in out
    assert_same_stats(one_by_one, at_once)
    assert_same_stats(overlapping, at_once)
    np.testing.assert_array_equal(load_stats(at_once).csr().toarray(),
                                  lm_count_oracle(c.train_docs + c.heldout_docs, 1, V))


def test_a_different_window_into_an_existing_directory_needs_overwrite(markov_corpus, capsys, tmp_path):
    c = markov_corpus(V, n_docs=30, doc_len=20, row_group_size=7)
    stats = tmp_path / "stats"
    assert cli(capsys, "accumulate", c.train, "--stats", stats, "--quiet")[0] == 0
    before = snapshot(stats)
    rc, out, err = cli(capsys, "accumulate", c.heldout, "--stats", stats, "--window", "2", "--quiet")
    assert rc == 1 and out == ""
    assert str(stats) in err and "window 1" in err and "window 2" in err and "--overwrite" in err
    assert snapshot(stats) == before
    rc, _, err = cli(capsys, "accumulate", c.heldout, "--stats", stats, "--window", "2",
                     "--overwrite", "--quiet")
    assert rc == 0, err
    m = manifest(stats)
    assert (m["window"], m["n_examples"]) == (2, 600)  # replaced, not added to
    np.testing.assert_array_equal(load_stats(stats).csr().toarray(),
                                  lm_count_oracle(c.heldout_docs, 2, V))
    # without --window, an existing directory's window is kept
    rc, out, err = cli(capsys, "accumulate", c.train, "--stats", stats, "--quiet")
    assert rc == 0, err
    assert manifest(stats)["window"] == 2 and manifest(stats)["n_examples"] == 1200


def test_a_file_changed_since_it_was_counted_is_refused(capsys, tmp_path):
    path = write_tokens(tmp_path / "c.parquet", [[1, 2, 3]] * 5)
    stats = tmp_path / "stats"
    assert cli(capsys, "accumulate", path, "--stats", stats, "--quiet")[0] == 0
    before = snapshot(stats)
    write_tokens(path, [[1, 2, 3, 4, 5]] * 9)  # rewritten in place: another size
    rc, out, err = cli(capsys, "accumulate", path, "--stats", stats, "--quiet")
    assert rc == 1 and out == ""
    assert str(path.resolve()) in err and "changed" in err
    assert snapshot(stats) == before


# --- merge ------------------------------------------------------------------------------------
def test_merge_equals_accumulating_both_and_refuses_overlap(markov_corpus, capsys, tmp_path):
    c = markov_corpus(V, n_docs=30, doc_len=20, row_group_size=7)
    sa, sb, both, merged = (tmp_path / n for n in ("a", "b", "both", "merged"))
    for files, d in (([c.train], sa), ([c.heldout], sb), ([c.train, c.heldout], both)):
        assert cli(capsys, "accumulate", *files, "--stats", d, "--quiet")[0] == 0
    rc, out, err = cli(capsys, "merge", sa, sb, "--out", merged)
    assert rc == 0, err
    assert "merged 2 shards" in out and "1,200 examples" in out
    assert_same_stats(merged, both)
    rc, out, err = cli(capsys, "merge", sa, both, "--out", tmp_path / "overlap")
    assert rc == 1 and out == ""
    assert "overlap" in err and str(c.train.resolve()) in err
    assert not (tmp_path / "overlap").exists()


# --- info -------------------------------------------------------------------------------------
def test_info_on_a_statistics_directory(ws, capsys):
    stats = ws["stats"]
    array_bytes = sum(p.stat().st_size for p in stats.glob("F-*.npy"))
    rc, out, _ = cli(capsys, "info", stats)
    assert rc == 0
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()}
    assert lines["task"] == "lm" and lines["window"] == "1"
    assert lines["n_examples"] == "5000" and lines["n_classes"] == str(V)
    assert lines["sources"] == "1 files, 3 row groups"
    assert lines["bytes"] == str(array_bytes)
    rc, out, _ = cli(capsys, "info", stats, "--json")
    assert rc == 0
    info = json.loads(out)
    assert (info["task"], info["n_examples"], info["vocab_size"], info["n_features"]) == \
        ("lm", 5000, V, V + 1)
    assert info["nnz"] == int(np.count_nonzero(ws["f"]))
    assert info["bytes"] == array_bytes and "arrays" not in info
    assert info["sources"][0]["path"] == str(ws["paths"]["train"].resolve())
    rc, out, _ = cli(capsys, "info", stats, "--check")
    assert rc == 0 and "checksums: ok" in out


def test_info_on_a_weights_file(ws, capsys):
    rc, out, _ = cli(capsys, "info", ws["w"] / "dense.npy")
    assert rc == 0
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()}
    assert (lines["form"], lines["layout"], lines["dtype"], lines["task"]) == \
        ("conditional", "dense", "float32", "lm")
    rc, out, _ = cli(capsys, "info", ws["w"] / "paper2.json", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["files"] == {"W": "paper2.npy", "bias": "paper2.bias.npy"}
    assert info["bytes"] == sum((ws["w"] / f).stat().st_size for f in info["files"].values())
    assert (info["n_features"], info["n_classes"], info["window"]) == (2 * (V + 1), V, 2)
    rc, out, _ = cli(capsys, "info", ws["w"] / "sparse.npy", "--json", "--check")
    assert rc == 0
    assert set(json.loads(out)["files"]) == {"S.indptr", "S.indices", "S.data"}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_info_check_detects_a_flipped_byte(ws, capsys, tmp_path):
    stats = tmp_path / "stats"
    shutil.copytree(ws["stats"], stats)
    data_file = stats / manifest(stats)["arrays"]["data"]["file"]
    flip_last_byte(data_file)
    assert cli(capsys, "info", stats)[0] == 0  # same size: only the checksum can tell
    rc, out, err = cli(capsys, "info", stats, "--check")
    assert rc == 1 and "checksum" in err and str(data_file) in err

    for name in ("dense.npy", "dense.model.json"):
        shutil.copy(ws["w"] / name, tmp_path / name)
    flip_last_byte(tmp_path / "dense.npy")
    assert cli(capsys, "info", tmp_path / "dense.npy")[0] == 0
    rc, out, err = cli(capsys, "info", tmp_path / "dense.npy", "--check")
    assert rc == 1 and "checksum" in err and str(tmp_path / "dense.npy") in err


# --- predict ----------------------------------------------------------------------------------
def test_predict_context_ids_json(ws, capsys):
    rc, out, err = cli(capsys, "predict", "--weights", ws["w"] / "dense.npy", "--context", "1 2",
                       "--json", "--top-k", "5")
    assert rc == 0, err
    got = json.loads(out)
    assert got["context"] == [1, 2]
    logp = conditional_logp(ws["f"], A)[2]  # window 1: only the last token counts
    want = top_order(logp)[:5]
    assert [r["id"] for r in got["top"]] == want.tolist()
    probs = np.array([r["probability"] for r in got["top"]])
    np.testing.assert_allclose(probs, np.exp(logp[want]), rtol=1e-5)
    assert np.all(np.diff(probs) <= 0) and probs.sum() <= 1.0


def test_predict_top_k_beyond_the_vocabulary_lists_every_class_once(ws, capsys):
    rc, out, err = cli(capsys, "predict", "--weights", ws["w"] / "sparse.npy", "--context", "3",
                       "--json", "--top-k", "20")
    assert rc == 0, err
    top = json.loads(out)["top"]
    assert sorted(r["id"] for r in top) == list(range(V))
    assert sum(r["probability"] for r in top) == pytest.approx(1.0, rel=1e-5)


def test_predict_context_words_through_a_vocabulary(ws, capsys, tmp_path):
    words = ["<unk>", "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    rc, out, err = cli(capsys, "predict", "--weights", ws["w"] / "dense.npy", "--vocab", vocab,
                       "--context", "gamma neverseen", "--json", "--top-k", "3")
    assert rc == 0, err
    got = json.loads(out)
    assert got["context"] == [3, 0]  # an unknown word is <unk>, id 0
    want = top_order(conditional_logp(ws["f"], A)[0])[:3]
    assert [(r["id"], r["token"]) for r in got["top"]] == [(int(i), words[i]) for i in want]
    probs = [r["probability"] for r in got["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
    rc, out, _ = cli(capsys, "predict", "--weights", ws["w"] / "dense.npy", "--vocab", vocab,
                     "--context", "gamma neverseen", "--top-k", "3")
    assert rc == 0
    assert [line.split()[1] for line in out.splitlines()] == [words[i] for i in want]


def test_predict_context_word_without_vocabulary_is_an_error(ws, capsys):
    rc, out, err = cli(capsys, "predict", "--weights", ws["w"] / "dense.npy", "--context", "def x")
    assert rc == 1 and out == "" and "'def'" in err and "--vocab" in err


def test_predict_paths_writes_one_row_per_token(ws, capsys, tmp_path):
    out_path = tmp_path / "preds.parquet"
    rc, out, err = cli(capsys, "predict", "--weights", ws["w"] / "dense.npy", ws["paths"]["test"],
                       "--out", out_path, "--top-k", "3", "--quiet")
    assert rc == 0, err
    assert "3,000 examples" in out
    table = pq.read_table(out_path)
    assert table.num_rows == n_tokens(ws["docs"]["test"])
    classes = np.array(table.column("top_classes").to_pylist())
    probs = np.array(table.column("top_probabilities").to_pylist())
    logp = conditional_logp(ws["f"], A)
    ctx, _ = contexts_targets(ws["docs"]["test"])
    want = np.array([top_order(row)[:3] for row in logp])[ctx]
    np.testing.assert_array_equal(classes, want)
    np.testing.assert_allclose(probs, np.exp(np.take_along_axis(logp[ctx], want, axis=1)), rtol=1e-5)


# --- bad input: a clear error, non-zero exit, nothing written -----------------------------------
N_ROWS, GROUP = 25, 10  # the bad row is absolute row 17: row group 1, row 7


def dense_rows(bad=None):
    rows = [[1.0, 0.0, 2.0] for _ in range(N_ROWS)]
    if bad is not None:
        rows[17] = bad
    return {"label": pa.array([i % 3 for i in range(N_ROWS)], pa.int64()),
            "features": pa.array(rows, pa.list_(pa.float64()))}


def write_table(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=GROUP)
    return path


BAD_INPUTS = {
    # name: (base task, writer, extra arguments, fragments stderr must hold besides the path)
    "wrong column type": ("lm", lambda p: write_table(p, {"tokens": pa.array(
        [[1.5, 2.0]] * N_ROWS, pa.list_(pa.float64()))}), [], ["row group 0", "'tokens'", "list<integer>"]),
    "negative feature": ("classify", lambda p: write_table(p, dense_rows([1.0, -2.0, 0.5])), [],
                         ["row group 1", "row 7", "'features'", "negative"]),
    "NaN feature": ("classify", lambda p: write_table(p, dense_rows([1.0, math.nan, 0.5])), [],
                    ["row group 1", "row 7", "'features'", "NaN"]),
    "missing column": ("classify", lambda p: write_table(p, {"features": dense_rows()["features"]}),
                       ["--task", "classify"], ["missing column", "'label'"]),
    "non-Parquet file": ("lm", lambda p: p.write_text("tokens\n1 2 3\n") and p, [],
                         ["not a readable Parquet file"]),
    "empty file": ("lm", lambda p: write_table(p, {"tokens": pa.array([], pa.list_(pa.int32()))}),
                   [], ["no examples"]),
}


# An empty file into existing statistics is no error (there is nothing to add), so it is
# only a case for a new directory.
BAD_CASES = [(case, existing) for case in BAD_INPUTS for existing in (False, True)
             if not (existing and case == "empty file")]


@pytest.mark.parametrize("case,existing", BAD_CASES,
                         ids=[f"{c}-{'existing' if e else 'new'}-dir" for c, e in BAD_CASES])
def test_bad_input_is_refused_and_writes_nothing(capsys, tmp_path, case, existing):
    task, writer, extra, fragments = BAD_INPUTS[case]
    bad = writer(tmp_path / "bad.parquet")
    stats = tmp_path / "stats"
    if existing:
        good = tmp_path / "good.parquet"
        if task == "lm":
            write_tokens(good, [[0, 1, 2], [2, 1]])
        else:
            write_table(good, dense_rows())
        assert cli(capsys, "accumulate", good, "--stats", stats, "--quiet")[0] == 0
    before = snapshot(stats)
    rc, out, err = cli(capsys, "accumulate", bad, "--stats", stats, "--quiet", *extra)
    assert rc == 1 and out == ""
    assert err.startswith("streamfit accumulate: error: ") and err.count("\n") == 1
    assert str(bad) in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert snapshot(stats) == before  # None: the directory was not even created


def test_finalize_errors_write_no_weights(ws, capsys, tmp_path):
    out = tmp_path / "w.npy"
    cases = [
        (["--form", "calibrated"], ["--heldout"]),
        (["--smoothing", "-1"], ["--smoothing", "'-1'"]),
        (["--smoothing", "0"], ["--smoothing"]),
        (["--smoothing", "nan"], ["--smoothing"]),
        (["--smoothing", "lots"], ["--smoothing", "'lots'"]),
        (["--smoothing", "-1", "--form", "calibrated", "--heldout", str(ws["paths"]["valid"])],
         ["--smoothing"]),
        (["--heldout", str(tmp_path / "missing.parquet")], ["missing.parquet"]),
    ]
    for args, fragments in cases:
        rc, stdout, err = cli(capsys, "finalize", "--stats", ws["stats"], "--out", out, "--quiet", *args)
        assert rc == 1 and stdout == "", args
        assert err.startswith("streamfit finalize: error: ")
        for fragment in fragments:
            assert fragment in err, (args, err)
        assert list(tmp_path.iterdir()) == [], args
    rc, _, err = cli(capsys, "finalize", "--stats", tmp_path / "nostats", "--out", out)
    assert rc == 1 and str(tmp_path / "nostats") in err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_with_missing_weights(ws, capsys, tmp_path):
    rc, out, err = cli(capsys, "evaluate", "--weights", tmp_path / "nope.npy", ws["paths"]["test"])
    assert rc == 1 and out == ""
    assert str(tmp_path / "nope.model.json") in err
    assert list(tmp_path.iterdir()) == []


# --- help -------------------------------------------------------------------------------------
HELP_FLAGS = {
    "accumulate": ["--stats", "--window", "--task", "--vocab-size", "--overwrite", "--column"],
    "finalize": ["--stats", "--out", "--form", "--format", "--dtype", "--smoothing", "--heldout"],
    "evaluate": ["--weights", "--top-k", "--json"],
    "predict": ["--weights", "--context", "--vocab", "--out", "--top-k", "--json"],
    "merge": ["--out"],
    "info": ["--check", "--json"],
}


@pytest.mark.parametrize("command", list(HELP_FLAGS))
def test_subcommand_help(capsys, command):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streamfit {command}")
    for flag in HELP_FLAGS[command]:
        assert flag in out, flag


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["finalize", "--stats", "x"])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


# --- real subprocesses ------------------------------------------------------------------------
def run_streamfit(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamfit", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_subprocess_help_lists_the_commands():
    r = run_streamfit("--help")
    assert r.returncode == 0
    for command in HELP_FLAGS:
        assert command in r.stdout


def test_subprocess_bad_input_exit_code_and_stderr(tmp_path):
    bad = write_table(tmp_path / "bad.parquet", dense_rows([1.0, math.nan, 0.5]))
    r = run_streamfit("accumulate", bad, "--stats", tmp_path / "stats")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == (
        f"streamfit accumulate: error: {bad}, row group 1, row 7, column 'features': NaN feature "
        f"value (nan); features must be finite and non-negative")
    assert not (tmp_path / "stats").exists()
