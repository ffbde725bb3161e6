"""A hostile or careless user (issue 12): nothing of theirs lost, nothing outside a model's or
statistics' own directory followed, no crash, and one-line errors instead of tracebacks.

Each test is named after the numbered case of the issue it closes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamfit
from streamfit.cli import main
from streamfit.synthetic import markov_chain, sample_documents

from conftest import cli, write_tokens

REPO = Path(__file__).resolve().parents[1]


def docs_of(n_docs: int, doc_len: int, seed: int, states: int = 30) -> list[list[int]]:
    chain = markov_chain(states, concentration=0.3, seed=seed)
    tokens, offsets = sample_documents(chain, n_docs, doc_len, seed=seed + 1)
    return [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(n_docs)]


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    """Two token files of a few row groups each."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    return [write_tokens(folder / f"part-{i}.parquet", docs_of(40, 30, seed=i), row_group_size=10)
            for i in range(2)]


def one_line_error(rc: int, err: str, *words: str) -> None:
    """Exit code 1 and a single line on stderr holding each of `words`."""
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def same_statistics(a: Path, b: Path) -> None:
    x, y = streamfit.load_stats(a), streamfit.load_stats(b)
    assert (x.n_classes, x.n_features, x.n_examples) == (y.n_classes, y.n_features, y.n_examples)
    assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
    assert np.array_equal(x.data, y.data)


# --- 1: --temp removes only what streamfit made there --------------------------------------
def test_1_temp_dir_keeps_the_users_files(tmp_path, corpus, capsys):
    scratch = tmp_path / "scr"
    scratch.mkdir()
    (scratch / "important.txt").write_text("keep")
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", tmp_path / "st", "--temp", scratch,
                     "--memory", "1M", "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]
    assert (scratch / "important.txt").read_text() == "keep"
    # on failure too: bad input found before anything was journalled
    bad = write_tokens(tmp_path / "bad.parquet", [[1, 2, -3]])
    rc, _, err = cli(capsys, "accumulate", bad, "--stats", tmp_path / "st2", "--temp", scratch,
                     "--quiet")
    assert rc == 1
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]


def test_1_interrupted_run_resumes_from_its_own_subdirectory(tmp_path, corpus):
    scratch = tmp_path / "scr"
    scratch.mkdir()
    (scratch / "important.txt").write_text("keep")
    args = ["accumulate", *map(str, corpus), "--stats", str(tmp_path / "st"), "--temp",
            str(scratch), "--checkpoint", "0", "--batch-rows", "5", "--quiet"]
    env = {**os.environ, "STREAMFIT_FAULT": "after_batch:6"}
    killed = subprocess.run([sys.executable, "-m", "streamfit", *args], env=env, cwd=tmp_path)
    assert killed.returncode == -9
    own = [p for p in scratch.iterdir() if p.name != "important.txt"]
    assert len(own) == 1 and own[0].is_dir()  # the journal and runs, in a subdirectory
    assert main(args) == 0
    assert sorted(p.name for p in scratch.iterdir()) == ["important.txt"]
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "ref"), "--quiet"]) == 0
    same_statistics(tmp_path / "st", tmp_path / "ref")


def test_1_dask_shards_dir_keeps_the_users_files(tmp_path, corpus):
    pytest.importorskip("distributed")
    from streamfit import distributed as D

    shards = tmp_path / "shared"
    shards.mkdir()
    (shards / "important.txt").write_text("keep")
    with D.cluster(workers=1) as client:
        D.accumulate_distributed(client, tmp_path / "st", corpus, shards=shards)
        D.accumulate_distributed(client, tmp_path / "st", corpus, shards=shards, overwrite=True)
    assert sorted(p.name for p in shards.iterdir()) == ["important.txt"]
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "ref"), "--quiet"]) == 0
    same_statistics(tmp_path / "st", tmp_path / "ref")


# --- 2: a refused writer changes nothing ------------------------------------------------------
def tree(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("temp", [False, True])
def test_2_a_refused_second_writer_changes_nothing(tmp_path, corpus, capsys, temp):
    from streamfit.io.files import DirectoryLock
    from streamfit.count.out_of_core import work_directory

    stats = tmp_path / "st"
    stats.mkdir()
    extra = ["--temp", tmp_path / "scr"] if temp else []
    work = work_directory(stats, tmp_path / "scr" if temp else None)
    work.mkdir(parents=True)
    (work / "run-0123456789ab.keys.npy").write_bytes(b"a first writer's run, not yet journalled")
    before = tree(tmp_path)
    with DirectoryLock(stats):  # the first writer, still running
        rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", stats, "--quiet", *extra)
        one_line_error(rc, err, str(stats), "in use")
        rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", stats, "--quiet", "--overwrite",
                         *extra)
        one_line_error(rc, err, "in use")
    assert tree(tmp_path) == before


# --- 3: one writer of an output at a time -----------------------------------------------------
@pytest.fixture
def stats_dir(tmp_path, corpus) -> Path:
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "st"),
                 "--window", "2", "--quiet"]) == 0
    return tmp_path / "st"


class HeldElsewhere:
    """Another process holding the output lock of `stem` (as a running finalize, refine or
    grow of that output does) until the block ends."""

    def __init__(self, stem: Path):
        self.stem = stem

    def __enter__(self):
        code = ("import sys; from streamfit.io.files import OutputLock\n"
                f"with OutputLock({str(self.stem)!r}):\n"
                "    print('locked', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


def test_3_a_second_finalize_of_the_same_output_is_refused(tmp_path, stats_dir, capsys):
    out = tmp_path / "w.npy"
    # the earlier finalize, still writing: its lock and its temporary file
    theirs = tmp_path / f".w.npy.tmp-{os.getpid()}-0123abcd"
    theirs.write_bytes(b"half-written weights")
    with HeldElsewhere(tmp_path / "w"):
        rc, _, err = cli(capsys, "finalize", "--stats", stats_dir, "--out", out, "--quiet")
        one_line_error(rc, err, str(tmp_path / "w"), "another streamfit process")
    assert theirs.read_bytes() == b"half-written weights" and not out.exists()
    theirs.unlink()
    # once it is done, finalize works and leaves no lock file
    rc, _, err = cli(capsys, "finalize", "--stats", stats_dir, "--out", out, "--quiet")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.glob(".w*")) == []


def test_3_finalize_leaves_another_models_temporary_files_alone(tmp_path, stats_dir, capsys):
    theirs = tmp_path / f".w2.npy.tmp-{os.getpid()}-0123abcd"  # model w2, being written
    theirs.write_bytes(b"half-written weights")
    rc, _, err = cli(capsys, "finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy", "--quiet")
    assert rc == 0, err
    assert theirs.exists()


def test_3_refine_and_grow_hold_the_output_too(tmp_path, stats_dir, corpus, capsys):
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(tmp_path / "w.npy"),
                 "--quiet"]) == 0
    with HeldElsewhere(tmp_path / "r"):
        rc, _, err = cli(capsys, "refine", "--weights", tmp_path / "w.npy", *corpus, "--method",
                         "gis", "--passes", "1", "--out", tmp_path / "r.npy", "--quiet")
        one_line_error(rc, err, "another streamfit process")
    with HeldElsewhere(tmp_path / "g"):
        rc, _, err = cli(capsys, "grow", *corpus, "--out", tmp_path / "g.npy", "--max-width", "2",
                         "--quiet")
        one_line_error(rc, err, "another streamfit process")
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob("g.*"))


# --- 4: a file that failed validation was not counted -----------------------------------------
def test_4_a_file_fixed_after_failing_validation_is_counted_on_rerun(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_tokens(folder / "a.parquet", docs_of(40, 30, seed=1), row_group_size=10)
    good_b = docs_of(20, 30, seed=2)
    bad_b = [list(d) for d in good_b]
    bad_b[3][5] = -1
    write_tokens(folder / "b.parquet", bad_b, row_group_size=10)
    args = ["accumulate", folder, "--stats", tmp_path / "st", "--checkpoint", "0", "--batch-rows",
            "5", "--quiet"]
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, "b.parquet", "negative token id")
    assert list((tmp_path / "st" / ".work").glob("journal.json"))  # a's work was journalled
    write_tokens(folder / "b.parquet", good_b, row_group_size=7)  # fixed (another size)
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    assert "resumed" in out
    rc, _, err = cli(capsys, "accumulate", folder, "--stats", tmp_path / "ref", "--quiet")
    same_statistics(tmp_path / "st", tmp_path / "ref")


def test_4_a_file_changed_after_part_of_it_was_counted_is_still_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    docs = docs_of(30, 30, seed=2)
    docs[25][3] = -1  # row group 2: row groups 0 and 1 are counted first
    write_tokens(folder / "b.parquet", docs, row_group_size=10)
    args = ["accumulate", folder, "--stats", tmp_path / "st", "--checkpoint", "0", "--batch-rows",
            "5", "--quiet"]
    rc, _, err = cli(capsys, *args)
    assert rc == 1
    docs[25][3] = 1
    write_tokens(folder / "b.parquet", docs, row_group_size=7)
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, "b.parquet", "changed since it was counted")


# --- 10: only files beside a manifest or sidecar are followed ---------------------------------
def rewrite_document(path: Path, edit) -> None:
    """Edit a manifest or sidecar and recompute its own checksum, as a hostile user would."""
    import json

    from streamfit.io.files import header_checksum

    doc = json.loads(path.read_text())
    edit(doc)
    doc["header_checksum"] = header_checksum(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("name", ["../a/w.npy", "ABSOLUTE"])
def test_10_a_sidecar_naming_files_elsewhere_is_refused(tmp_path, stats_dir, corpus, capsys, name):
    for d in ("a", "b"):
        assert main(["finalize", "--stats", str(stats_dir), "--out", str(tmp_path / d / "w.npy"),
                     "--quiet"]) == 0
    target = str(tmp_path / "a" / "w.npy") if name == "ABSOLUTE" else name

    def point_elsewhere(doc):
        doc["arrays"]["W"]["file"] = target
    rewrite_document(tmp_path / "b" / "w.model.json", point_elsewhere)
    rc, _, err = cli(capsys, "evaluate", "--weights", tmp_path / "b" / "w.npy", *corpus, "--quiet")
    one_line_error(rc, err, "w.model.json", "not a plain file name")


def test_10_an_ngram_sidecar_naming_files_elsewhere_is_refused(tmp_path, corpus, capsys):
    assert main(["accumulate", *map(str, corpus), "--stats", str(tmp_path / "ng"), "--order", "2",
                 "--quiet"]) == 0
    assert main(["finalize", "--stats", str(tmp_path / "ng"), "--out", str(tmp_path / "m" / "lm.npy"),
                 "--quiet"]) == 0
    capsys.readouterr()

    def point_elsewhere(doc):
        name = sorted(doc["arrays"])[0]
        doc["arrays"][name]["file"] = "../" + doc["arrays"][name]["file"]
    rewrite_document(tmp_path / "m" / "lm.model.json", point_elsewhere)
    rc, _, err = cli(capsys, "evaluate", "--weights", tmp_path / "m" / "lm.npy", *corpus, "--quiet")
    one_line_error(rc, err, "lm.model.json", "not a plain file name")


def test_10_a_manifest_naming_files_elsewhere_is_refused(tmp_path, stats_dir, capsys):
    other = tmp_path / "other"
    shutil.copytree(stats_dir, other)

    def point_elsewhere(doc):
        doc["arrays"]["data"]["file"] = str(stats_dir / doc["arrays"]["data"]["file"])
    rewrite_document(other / "manifest.json", point_elsewhere)
    rc, _, err = cli(capsys, "finalize", "--stats", other, "--out", tmp_path / "w.npy", "--quiet")
    one_line_error(rc, err, "manifest.json", "not a plain file name")


def test_10_a_journal_naming_runs_elsewhere_is_refused(tmp_path, corpus, capsys):
    import json

    stats = tmp_path / "st"
    args = ["accumulate", *map(str, corpus), "--stats", str(stats), "--checkpoint", "0",
            "--batch-rows", "5", "--quiet"]
    env = {**os.environ, "STREAMFIT_FAULT": "after_batch:6"}
    assert subprocess.run([sys.executable, "-m", "streamfit", *args], env=env).returncode == -9
    journal = json.loads((stats / ".work" / "journal.json").read_text())
    run = journal["runs"][0]["name"]
    for part in ("keys", "vals"):  # the run, moved outside the work directory
        os.replace(stats / ".work" / f"{run}.{part}.npy", tmp_path / f"victim.{part}.npy")
    journal["runs"][0]["name"] = "../../victim"
    (stats / ".work" / "journal.json").write_text(json.dumps(journal))
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, "journal.json", "'../../victim'")
    assert (tmp_path / "victim.keys.npy").exists() and (tmp_path / "victim.vals.npy").exists()


# --- 8: a damaged sparse structure is refused on open, never a crash ---------------------------
def damage(path: Path, index: int, value: int) -> None:
    arr = np.load(path, mmap_mode="r+")
    arr[index] = value
    arr.flush()
    del arr


def streamfit_process(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
    return subprocess.run([sys.executable, "-m", "streamfit", *map(str, args)], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("array,index,value,words", [
    ("S.indices", 5, 10 ** 8, ["S.indices", "out of range"]),
    ("S.indices", 0, -7, ["S.indices", "out of range"]),
    ("S.indptr", 3, 10 ** 9, ["S.indptr", "not increasing"]),
    ("S.indptr", -1, 10 ** 6, ["S.indptr", "end"]),
])
def test_8_a_damaged_sparse_model_is_refused(tmp_path, stats_dir, corpus, array, index, value, words):
    out = tmp_path / "w.npy"
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(out), "--format", "sparse",
                 "--quiet"]) == 0
    damage(tmp_path / f"w.{array}.npy", index, value)
    r = streamfit_process("evaluate", "--weights", out, *corpus, "--quiet")
    one_line_error(r.returncode, r.stderr, *words)


@pytest.mark.parametrize("array,index,value,words", [
    ("indices", 5, 10 ** 8, ["indices", "out of range"]),
    ("indptr", 3, 10 ** 9, ["indptr", "not increasing"]),
])
def test_8_damaged_statistics_are_refused(tmp_path, stats_dir, corpus, array, index, value, words):
    import json

    manifest = json.loads((stats_dir / "manifest.json").read_text())
    damage(stats_dir / manifest["arrays"][array]["file"], index, value)
    r = streamfit_process("finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy",
                          "--heldout", *corpus, "--quiet")
    one_line_error(r.returncode, r.stderr, *words)
    assert not (tmp_path / "w.npy").exists()


# --- 12: one-line errors where a traceback was --------------------------------------------------
def test_12_an_unwritable_place_is_a_one_line_error(tmp_path, corpus, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", blocker / "st", "--quiet")
    one_line_error(rc, err, str(blocker))
    # a read-only directory (as root, whom permissions do not stop, the refusal is simulated)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if os.geteuid() == 0:
        real_mkdir = Path.mkdir

        def refuse(self, *a, **k):
            if readonly in self.parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *a, **k)
        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        readonly.chmod(0o555)
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", readonly / "st", "--quiet")
    one_line_error(rc, err, str(readonly / "st"), "Permission denied")


@pytest.mark.parametrize("size", ["1e30", "inf", "-inf", "nan", "1e400"])
def test_12_an_impossible_memory_budget_is_a_one_line_error(tmp_path, corpus, capsys, size):
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", tmp_path / "st", f"--memory={size}",
                     "--quiet")
    one_line_error(rc, err, "memory budget", size)
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize("k", ["0", "-1"])
def test_12_top_k_below_one_is_a_one_line_error(tmp_path, stats_dir, corpus, capsys, k):
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(tmp_path / "w.npy"),
                 "--quiet"]) == 0
    rc, _, err = cli(capsys, "evaluate", "--weights", tmp_path / "w.npy", *corpus, f"--top-k={k}",
                     "--quiet")
    one_line_error(rc, err, "--top-k")
    rc, _, err = cli(capsys, "predict", "--weights", tmp_path / "w.npy", "--context", "1 2",
                     f"--top-k={k}")
    one_line_error(rc, err, "--top-k")


@pytest.mark.parametrize("drop", ["arrays.data", "arrays.indices.sha256", "n_features", "task"])
def test_12_a_manifest_missing_an_entry_is_a_one_line_error(tmp_path, stats_dir, capsys, drop):
    def remove(doc):
        *parents, last = drop.split(".")
        for key in parents:
            doc = doc[key]
        del doc[last]
    rewrite_document(stats_dir / "manifest.json", remove)
    rc, _, err = cli(capsys, "finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy", "--quiet")
    one_line_error(rc, err, "manifest.json", repr(drop.split(".")[-1]))


@pytest.mark.parametrize("layout,drop", [("dense", "arrays.W"), ("sparse", "arrays.S.indptr"),
                                         ("dense", "tau"), ("sparse", "layout"),
                                         ("dense", "arrays.W.file")])
def test_12_a_sidecar_missing_an_entry_is_a_one_line_error(tmp_path, stats_dir, corpus, capsys,
                                                            layout, drop):
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(tmp_path / "w.npy"),
                 "--format", layout, "--quiet"]) == 0

    def remove(doc):
        if drop.startswith("arrays."):
            name, _, field = drop.removeprefix("arrays.").partition(".file")
            if _:
                del doc["arrays"][name]["file"]
            else:
                del doc["arrays"][name]
        else:
            del doc[drop]
    rewrite_document(tmp_path / "w.model.json", remove)
    for command in (["evaluate", "--weights", tmp_path / "w.npy", *corpus, "--quiet"],
                    ["info", tmp_path / "w.npy"]):
        rc, _, err = cli(capsys, *command)
        one_line_error(rc, err, "w.model.json")


# --- 14: messages that say what is wrong ------------------------------------------------------
def test_14_uint64_ids_above_2_63_are_not_called_negative(tmp_path, capsys):
    big = 2 ** 63 + 5
    pq.write_table(pa.table({"tokens": pa.array([[1, 2, big]], type=pa.list_(pa.uint64()))}),
                   tmp_path / "t.parquet")
    rc, _, err = cli(capsys, "accumulate", tmp_path / "t.parquet", "--stats", tmp_path / "s1",
                     "--quiet")
    one_line_error(rc, err, f"token id {big}")
    assert "negative" not in err
    pq.write_table(pa.table({"label": pa.array([1, 2 ** 64 - 1], type=pa.uint64()),
                             "indices": pa.array([[0], [big]], type=pa.list_(pa.uint64())),
                             "values": pa.array([[1.0], [1.0]])}), tmp_path / "f.parquet")
    rc, _, err = cli(capsys, "accumulate", tmp_path / "f.parquet", "--stats", tmp_path / "s2",
                     "--quiet")
    one_line_error(rc, err, f"label {2 ** 64 - 1}")
    pq.write_table(pa.table({"label": pa.array([1, 2], type=pa.uint64()),
                             "indices": pa.array([[0], [big]], type=pa.list_(pa.uint64())),
                             "values": pa.array([[1.0], [1.0]])}), tmp_path / "g.parquet")
    rc, _, err = cli(capsys, "accumulate", tmp_path / "g.parquet", "--stats", tmp_path / "s3",
                     "--quiet")
    one_line_error(rc, err, f"feature index {big}")


def test_14_info_on_a_missing_path_or_a_parquet_file(tmp_path, corpus, capsys):
    rc, _, err = cli(capsys, "info", tmp_path / "nothing-here")
    one_line_error(rc, err, "nothing-here", "no such file or directory")
    assert "sidecar" not in err
    rc, _, err = cli(capsys, "info", corpus[0])
    one_line_error(rc, err, corpus[0].name, "Parquet data file")
    assert "sidecar" not in err


def test_14_column_alone_selects_the_lm_task(tmp_path, capsys):
    write_tokens(tmp_path / "t.parquet", docs_of(10, 20, seed=4), column="ids")
    rc, out, err = cli(capsys, "accumulate", tmp_path / "t.parquet", "--column", "ids", "--stats",
                       tmp_path / "st", "--quiet")
    assert rc == 0, err
    assert streamfit.load_stats(tmp_path / "st").task == "lm"


class RecordingBar:
    """Stands in for tqdm: records (desc, position) after every update."""

    log: list = []

    def __init__(self, *args, total=None, desc=None, disable=None, **kwargs):
        self.total, self.desc, self.n, self.disable = total, desc, 0, disable

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n
        RecordingBar.log.append((self.desc, self.n, self.total))

    def set_postfix(self, *a, **k):
        pass


def test_14_evaluate_progress_counts_scored_batches(tmp_path, stats_dir, corpus, monkeypatch):
    import tqdm.auto

    from streamfit.model import evaluate as ev

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)  # progress_bar imports it when shown
    RecordingBar.log = []
    model = streamfit.finalize(streamfit.load_stats(stats_dir), tmp_path / "w.npy")
    scored = []
    real_score = type(model).score

    def score(self, ex, top_k=1):
        scored.append(ex.n)
        assert len(RecordingBar.log) == len(scored) - 1  # the bar has not counted this batch yet
        return real_score(self, ex, top_k)
    monkeypatch.setattr(type(model), "score", score)
    ev.evaluate(model, corpus, progress=True, batch_rows=5)
    assert len(RecordingBar.log) == len(scored) and RecordingBar.log[-1][1] == RecordingBar.log[-1][2]


def test_14_the_final_merge_has_a_bar(tmp_path, corpus, monkeypatch):
    import tqdm.auto

    from streamfit.count.out_of_core import accumulate_into

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.log = []
    accumulate_into(tmp_path / "st", corpus, memory=1 << 16, batch_rows=5, progress=True)
    merge = [entry for entry in RecordingBar.log if entry[0] == "merge"]
    assert merge and merge[-1][1] == merge[-1][2] > 0


# --- 15: the Python API's edges ----------------------------------------------------------------
def test_15_update_accepts_a_pandas_dataframe_and_says_what_it_takes():
    pd = pytest.importorskip("pandas")
    docs = docs_of(6, 12, seed=5)
    from_arrow = streamfit.Accumulator("lm", window=2)
    from_arrow.update(pa.table({"tokens": pa.array(docs, type=pa.list_(pa.int64()))}))
    from_pandas = streamfit.Accumulator("lm", window=2)
    from_pandas.update(pd.DataFrame({"tokens": docs}))
    a, b = from_arrow.stats(), from_pandas.stats()
    assert np.array_equal(a.data, b.data) and np.array_equal(a.indices, b.indices)
    assert a.n_examples == b.n_examples
    with pytest.raises(TypeError, match="RecordBatch or Table"):
        streamfit.Accumulator("lm").update({"tokens": docs})


def test_15_add_tokens_refuses_ids_that_would_corrupt_the_table():
    from streamfit.data.featurize import TokenArrays

    offsets = np.array([0, 3], dtype=np.int64)
    for tokens, words in [(np.array([1, -1, 2]), "negative"), (np.array([1, -5, 2]), "negative"),
                          (np.array([1.0, 2.0, 3.0]), "integer"),
                          (np.array([1, 2, 1 << 40]), "out of range")]:
        acc = streamfit.Accumulator("lm")
        with pytest.raises(streamfit.InputError, match=words):
            acc.add_tokens(TokenArrays(tokens, offsets))
        assert acc.stats().n_examples == 0 and acc.stats().nnz == 0
    acc = streamfit.Accumulator("lm", vocab_size=3)
    with pytest.raises(streamfit.InputError, match="out of range"):
        acc.add_tokens(TokenArrays(np.array([0, 1, 3]), offsets))
    with pytest.raises(streamfit.InputError, match="offsets"):
        acc.add_tokens(TokenArrays(np.array([0, 1, 2]), np.array([0, 5], dtype=np.int64)))
    acc.add_tokens(TokenArrays(np.array([0, 1, 2], dtype=np.uint8), offsets))  # any integer type
    assert acc.stats().n_examples == 3 and int(acc.stats().data.sum()) == 3


def test_15_add_rows_refuses_bad_rows():
    from streamfit.data.featurize import FeatureRows

    def rows(indices=(0, 1), values=(1.0, 2.0), labels=(0,), indptr=(0, 2)):
        return FeatureRows(np.array(indptr, dtype=np.int64), np.asarray(indices),
                           np.asarray(values), np.asarray(labels), 2)
    for bad, words in [(rows(indices=(0, -1)), "feature index"),
                       (rows(indices=(0.0, 1.0)), "integer"),
                       (rows(labels=(-1,)), "label"),
                       (rows(values=(1.0, np.nan)), "NaN"),
                       (rows(values=(1.0, -2.0)), "negative"),
                       (rows(indptr=(0, 3)), "indptr")]:
        acc = streamfit.Accumulator("classify")
        with pytest.raises(streamfit.InputError, match=words):
            acc.add_rows(bad)
        assert acc.stats().n_examples == 0
    acc = streamfit.Accumulator("classify")
    acc.add_rows(rows())
    assert acc.stats().n_examples == 1


def test_15_merging_statistics_with_themselves_is_refused(tmp_path, stats_dir, capsys):
    acc = streamfit.Accumulator("lm")
    acc.update(pa.table({"tokens": pa.array(docs_of(5, 10, seed=1))}))
    s = acc.stats()
    with pytest.raises(streamfit.StreamfitError, match="twice"):
        streamfit.merge(s, s)
    import dataclasses

    with pytest.raises(streamfit.StreamfitError, match="twice"):
        streamfit.merge(s, dataclasses.replace(s))  # another object, the same arrays
    rc, _, err = cli(capsys, "merge", stats_dir, stats_dir, "--out", tmp_path / "m", "--quiet")
    one_line_error(rc, err, "twice")


# --- 6: the spill merge within the open-file limit ---------------------------------------------
def test_6_hundreds_of_runs_merge_under_a_low_open_file_limit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    docs = docs_of(260, 25, seed=6, states=60)
    write_tokens(folder / "c.parquet", docs, row_group_size=20)
    stats = tmp_path / "st"
    # one run per document (a spill after every batch of one row): 260 runs, 520 files
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        from streamfit.cli import main
        sys.exit(main(["accumulate", {str(folder)!r}, "--stats", {str(stats)!r}, "--window", "2",
                       "--memory", "1M", "--checkpoint", "0", "--batch-rows", "1", "--quiet"]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = streamfit.accumulate([folder / "c.parquet"], window=2)
    got = streamfit.load_stats(stats)
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.indices, expected.indices)
    assert np.array_equal(got.data, expected.data) and got.n_examples == expected.n_examples


def test_6_merge_levels_give_the_one_level_result(tmp_path, monkeypatch):
    """A fan-in of 3 over 20 runs: three levels of intermediate runs, the same statistics."""
    from streamfit.count import spill
    from streamfit.count.out_of_core import accumulate_into

    folder = tmp_path / "in"
    folder.mkdir()
    write_tokens(folder / "c.parquet", docs_of(20, 40, seed=7, states=50), row_group_size=5)
    monkeypatch.setattr(spill, "MERGE_FAN_IN", 3)
    opened = []
    real = spill._RunReader.__init__

    def counting(self, directory, entry, step):
        opened.append(entry["name"])
        real(self, directory, entry, step)
    monkeypatch.setattr(spill._RunReader, "__init__", counting)
    accumulate_into(tmp_path / "st", [folder], window=3, memory=1 << 16, batch_rows=1,
                    checkpoint_seconds=0)
    assert len(opened) > 20  # intermediate runs were merged again
    expected = streamfit.accumulate([folder], window=3)
    got = streamfit.load_stats(tmp_path / "st")
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.data, expected.data)
    assert not (tmp_path / "st" / ".work").exists()


# --- 11: a full disk is a one-line error that leaves nothing behind ---------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB tmpfs (needs root and mount; skipped elsewhere, where the simulated tests
    below still run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture(scope="module")
def wide_corpus(tmp_path_factory) -> Path:
    """2,000 token ids in random order: dense window-2 weights of 32 MB, more than the disk."""
    path = tmp_path_factory.mktemp("wide") / "wide.parquet"
    rng = np.random.default_rng(0)
    write_tokens(path, [rng.integers(0, 2000, 500).tolist() for _ in range(200)],
                 row_group_size=20)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp-" in p.name or p.name.endswith(".lock"))


def test_11_dense_finalize_on_a_full_disk(tmp_path, small_disk, wide_corpus, corpus):
    small_stats, wide_stats = tmp_path / "small", tmp_path / "wide"
    assert main(["accumulate", *map(str, corpus), "--stats", str(small_stats), "--quiet"]) == 0
    assert main(["accumulate", str(wide_corpus), "--stats", str(wide_stats), "--window", "2",
                 "--quiet"]) == 0
    out = small_disk / "w.npy"
    assert main(["finalize", "--stats", str(small_stats), "--out", str(out), "--quiet"]) == 0
    before = tree(small_disk)
    r = streamfit_process("finalize", "--stats", wide_stats, "--out", out, "--quiet")
    one_line_error(r.returncode, r.stderr, "w.npy", "no space left on device", "MiB")
    assert tree(small_disk) == before and not leftovers(small_disk)  # the previous model, intact


def test_11_accumulate_and_merge_on_a_full_disk(tmp_path, small_disk, wide_corpus):
    import json

    big = tmp_path / "big.parquet"
    rng = np.random.default_rng(1)
    write_tokens(big, [rng.integers(0, 20000, 1000).tolist() for _ in range(600)], row_group_size=50)
    stats = small_disk / "st"
    r = streamfit_process("accumulate", big, "--stats", stats, "--window", "3", "--memory", "1M",
                          "--quiet")
    one_line_error(r.returncode, r.stderr, "no space left on device")
    assert not leftovers(small_disk)
    journal = json.loads((stats / ".work" / "journal.json").read_text())
    runs = {f"{run['name']}.{part}.npy" for run in journal["runs"] for part in ("keys", "vals")}
    assert {p.name for p in (stats / ".work").iterdir()} == runs | {"journal.json"}  # to resume
    shutil.rmtree(stats)
    local = tmp_path / "local"
    assert main(["accumulate", str(wide_corpus), "--stats", str(local), "--window", "3",
                 "--quiet"]) == 0
    (small_disk / "filler").write_bytes(b"\0" * (20 * 2 ** 20 - 300_000))
    r = streamfit_process("merge", local, "--out", small_disk / "m", "--quiet")
    one_line_error(r.returncode, r.stderr, "no space left on device")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_11_a_refused_reservation_is_reported_with_the_size_needed(tmp_path, stats_dir, capsys,
                                                                     monkeypatch):
    """Where no small disk can be mounted: the reservation of the dense weights fails as
    on a full disk."""
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    rc, _, err = cli(capsys, "finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy", "--quiet")
    one_line_error(rc, err, "w.npy", "no space left on device", "needs")
    assert not leftovers(tmp_path) and not list(tmp_path.glob("w.*"))


def test_11_the_free_space_quoted_is_the_space_when_the_write_failed(tmp_path, monkeypatch):
    """Not the space after the partial files were removed (that read "needs 2.0 MiB, 20.0 MiB
    free there"), also after the error travelled from a worker process to its parent."""
    import pickle
    from collections import namedtuple

    from streamfit.errors import DiskFullError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2 ** 30, 2 ** 30 - 4096, 4096))
    err = DiskFullError(tmp_path / "run.keys.npy", needed=3 * 2 ** 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2 ** 30, 0, 2 ** 30))
    for e in (err, pickle.loads(pickle.dumps(err))):
        assert "needs 3.0 MiB, 4.0 KiB free there" in str(e) and "run.keys.npy" in str(e)


# --- 13: numba's cache where it can be written, else none ---------------------------------------
def read_only_install(tmp_path: Path) -> dict:
    """A copy of the package where no cache can be written beside it (each __pycache__ a
    file), and an environment whose home cannot hold ~/.cache: what a read-only install
    with an unwritable $HOME looks like, even to root."""
    pkg = tmp_path / "pkg"
    shutil.copytree(Path(streamfit.__file__).parent, pkg / "streamfit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for d in [pkg / "streamfit", *(p for p in (pkg / "streamfit").rglob("*") if p.is_dir())]:
        (d / "__pycache__").write_text("not a directory")
    (tmp_path / "home").write_text("not a directory either")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "STREAMFIT_FAULT")}
    return {**env, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
            "PYTHONPATH": str(pkg)}


def run_from_copy(env: dict, tmp_path: Path, corpus) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys, streamfit
        assert streamfit.__file__.startswith({str(tmp_path / "pkg")!r}), streamfit.__file__
        from streamfit.cli import main
        sys.exit(main(["accumulate", *{[str(p) for p in corpus]!r}, "--stats",
                       {str(tmp_path / "st")!r}, "--quiet"]))
    """)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_13_a_read_only_install_with_an_unwritable_home_still_runs(tmp_path, corpus):
    env = read_only_install(tmp_path)
    r = run_from_copy(env, tmp_path, corpus)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    own = tmp_path / "tmp" / f"streamfit-numba-cache-{os.getuid()}"
    assert any(own.rglob("*.nbi"))  # the cache went to streamfit's own private directory
    expected = streamfit.accumulate(corpus)
    assert np.array_equal(streamfit.load_stats(tmp_path / "st").data, expected.data)


def test_13_no_private_place_at_all_compiles_without_a_cache(tmp_path, corpus):
    env = read_only_install(tmp_path)
    planted = tmp_path / "tmp" / f"streamfit-numba-cache-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # writable by anyone: not a cache to load code from
    r = run_from_copy(env, tmp_path, corpus)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "cache" in lines[0], r.stderr
    assert not any(planted.rglob("*.nbi"))


# --- 5: the memory budget holds inside one record batch -----------------------------------------
@pytest.fixture
def long_document(tmp_path) -> Path:
    """One document of 30,000 tokens over 5,000 ids: ~90,000 distinct window-3 keys in a
    single record batch, against a table of 2,048 slots."""
    rng = np.random.default_rng(5)
    return write_tokens(tmp_path / "long.parquet", [rng.integers(0, 5000, 30_000).tolist()])


def test_5_the_table_never_outgrows_the_budget_within_a_batch(tmp_path, long_document, monkeypatch):
    from streamfit.count.accumulate import CountTable
    from streamfit.count.out_of_core import accumulate_into

    sizes = []
    real = CountTable._allocate

    def recording(self, bits):
        if self.max_bits is not None:  # the counting tables (not the template accumulators)
            sizes.append(bits)
        real(self, bits)
    monkeypatch.setattr(CountTable, "_allocate", recording)
    accumulate_into(tmp_path / "st", [long_document], window=3, memory=1 << 16)
    budget_bits = max(10, int(np.log2((1 << 16) // 2 // 16)))
    assert max(sizes) <= budget_bits, (max(sizes), budget_bits)
    expected = streamfit.accumulate([long_document], window=3)
    got = streamfit.load_stats(tmp_path / "st")
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.indices, expected.indices)
    assert np.array_equal(got.data, expected.data) and got.n_examples == 30_000


@pytest.mark.parametrize("jobs", [1, 2])
def test_5_killed_between_spills_inside_a_batch_resumes_identically(tmp_path, long_document, jobs):
    other = tmp_path / "other.parquet"
    rng = np.random.default_rng(6)
    write_tokens(other, [rng.integers(0, 5000, 20_000).tolist()])
    args = ["accumulate", long_document, other, "--stats", tmp_path / "st", "--window", "3",
            "--memory", "1M", "--jobs", str(jobs), "--quiet"]
    env = {**os.environ, "STREAMFIT_FAULT": "mid_batch_spill:3"}
    r = subprocess.run([sys.executable, "-m", "streamfit", *map(str, args)], env=env)
    assert r.returncode != 0  # killed (it, or a worker) after three runs written inside a batch
    assert main([str(a) for a in args]) == 0
    expected = streamfit.accumulate([long_document, other], window=3)
    got = streamfit.load_stats(tmp_path / "st")
    assert np.array_equal(got.indptr, expected.indptr) and np.array_equal(got.data, expected.data)


# --- 9: checksums verified wherever an array is read whole ---------------------------------------
def flip_byte(path: Path, offset_from_end: int = 5) -> None:
    with open(path, "r+b") as fh:
        fh.seek(-offset_from_end, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-offset_from_end, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0x10]))


def flip_low_bit(path: Path, low: np.ndarray, high: np.ndarray) -> None:
    """Flip the lowest bit of the first entry whose new value stays within [low, high]
    (entry by entry): a silent change that no structure check can see."""
    arr = np.load(path, mmap_mode="r+")
    new = arr ^ 1
    i = int(np.flatnonzero((new >= low) & (new <= high))[len(arr) // 2 if arr.size > 2 else 0])
    arr[i] = new[i]
    arr.flush()
    del arr


@pytest.mark.parametrize("array", ["data", "indices", "indptr"])
def test_9_finalize_merge_and_accumulate_refuse_damaged_statistics(tmp_path, stats_dir, corpus,
                                                                    capsys, array):
    import json

    manifest = json.loads((stats_dir / "manifest.json").read_text())
    damaged = stats_dir / manifest["arrays"][array]["file"]
    arr = np.load(damaged)
    if array == "indptr":  # still never decreasing
        flip_low_bit(damaged, np.concatenate([[0], arr[:-1]]), np.concatenate([arr[1:], [0]]))
    else:  # still in range
        flip_low_bit(damaged, np.zeros_like(arr), np.full_like(arr, 29 if array == "indices" else 10 ** 9))
    assert streamfit.load_stats(stats_dir).nnz  # structurally sound: it opens
    for command in (["finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy"],
                    ["finalize", "--stats", stats_dir, "--out", tmp_path / "w.npy", "--format",
                     "sparse"],
                    ["merge", stats_dir, "--out", tmp_path / "m"],
                    ["accumulate", write_tokens(tmp_path / "more.parquet", docs_of(5, 20, seed=9)),
                     "--stats", stats_dir]):
        rc, _, err = cli(capsys, *command, "--quiet")
        one_line_error(rc, err, damaged.name, "checksum mismatch")
    assert not (tmp_path / "w.npy").exists() and not (tmp_path / "m").exists()


def test_9_verify_on_evaluate_and_predict_and_always_on_refine(tmp_path, stats_dir, corpus, capsys):
    assert main(["finalize", "--stats", str(stats_dir), "--out", str(tmp_path / "w.npy"),
                 "--quiet"]) == 0
    flip_byte(tmp_path / "w.npy")
    rc, _, err = cli(capsys, "evaluate", "--weights", tmp_path / "w.npy", *corpus, "--quiet")
    assert rc == 0, err  # by default the weights are memory-mapped, not read whole
    rc, _, err = cli(capsys, "evaluate", "--weights", tmp_path / "w.npy", *corpus, "--quiet",
                     "--verify")
    one_line_error(rc, err, "w.npy", "checksum mismatch")
    rc, _, err = cli(capsys, "predict", "--weights", tmp_path / "w.npy", "--context", "1 2",
                     "--verify")
    one_line_error(rc, err, "w.npy", "checksum mismatch")
    rc, _, err = cli(capsys, "refine", "--weights", tmp_path / "w.npy", *corpus, "--method", "gis",
                     "--passes", "1", "--out", tmp_path / "r.npy", "--quiet")
    one_line_error(rc, err, "w.npy", "checksum mismatch")


# --- 7: calibration and grow within the budget -------------------------------------------------
def test_7_calibration_reads_f_in_place(tmp_path, stats_dir, corpus, monkeypatch):
    """The held-out sample is gathered against F's memory-mapped counts, not a float64 copy
    of all of them (8 bytes per non-zero)."""
    from streamfit.solve import calibrate

    stats = streamfit.load_stats(stats_dir)
    seen = []
    real = calibrate.expand_support

    def spy(*args):
        seen.append(np.may_share_memory(args[6], stats.data))
        return real(*args)
    monkeypatch.setattr(calibrate, "expand_support", spy)
    from streamfit.model.evaluate import iter_examples

    model = streamfit.finalize(stats, form="calibrated", heldout=iter_examples(
        corpus, task="lm", window=stats.window, n_classes=stats.n_classes,
        n_features=stats.n_features))
    assert seen == [True] and model.meta["form"] == "calibrated"


def test_7_grow_checks_the_input_size_before_reading_the_corpus(tmp_path, capsys):
    docs = [[1, 2, 5000]] + [[1, 2, 3]] * 30
    docs[20] = [1, -2, 3]  # bad input far beyond the first batch: never reached
    write_tokens(tmp_path / "t.parquet", docs, row_group_size=5)
    rc, _, err = cli(capsys, "grow", tmp_path / "t.parquet", "--out", tmp_path / "g.npy",
                     "--batch-rows", "5", "--quiet")
    one_line_error(rc, err, "above the limit")
    assert not list(tmp_path.glob("g.*"))


# --- 16: --memory as a share of the machine's memory ---------------------------------------------
def test_16_memory_as_a_share_of_physical_memory(tmp_path, corpus, capsys):
    from streamfit.count.out_of_core import parse_size, physical_memory

    total = physical_memory()
    assert total and total > 1 << 26
    assert parse_size("50%") == int(total * 0.5)
    assert parse_size(" 12.5% ") == int(total * 0.125)
    for bad in ("0%", "-5%", "150%", "abc%", "%", "nan%"):
        with pytest.raises(streamfit.OptionError):
            parse_size(bad)
    rc, out, err = cli(capsys, "accumulate", *corpus, "--stats", tmp_path / "st", "--memory", "5%",
                       "--quiet")
    assert rc == 0, err
    rc, _, err = cli(capsys, "merge", tmp_path / "st", "--out", tmp_path / "m", "--memory", "5%",
                     "--quiet")
    assert rc == 0, err
    rc, _, err = cli(capsys, "accumulate", *corpus, "--stats", tmp_path / "st2", "--memory", "200%",
                     "--quiet")
    one_line_error(rc, err, "200%")
