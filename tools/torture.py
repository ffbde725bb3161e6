#!/usr/bin/env python
"""Crash-safety torture: random SIGKILLs of real `streamfit` commands, then resume and compare.

For each command (accumulate with each --jobs, merge, finalize, refine) on a generated token
corpus: one uninterrupted run gives the reference; then every trial starts from the same
inputs, runs the command and kills it (SIGKILL to its whole process group, workers included)
at a random moment, up to --kills-per-trial times in a row, and finally runs it once more to
the end. After every kill, whatever output exists must load and pass its checksums (never a
half-written manifest or model); after the final run the output must be identical to the
reference — the statistics' array checksums, or the weights' — and nothing may be left in
the work directories. Kills that land after the command had already finished are not
counted.

    python tools/torture.py --kills 20 --jobs 1,2                 # the long run (≥ 20 kills each)
    python tools/torture.py --kills 2 --commands accumulate,finalize --json   # a short one

Prints a table (command, trials, kills, kills that left work in progress — temporary files,
a journal, a lock: the kill landed mid-work, not during start-up — consistent after a kill,
identical after resume) and exits 1 unless every trial was identical and every kill left a
consistent output.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (block_options, command, load_average, load_results, log,  # noqa: E402
                     machine_facts, save_and_render, utc_now, write_block)

COMMANDS = ("accumulate", "merge", "finalize", "refine")
WINDOW = 2


# --------------------------------------------------------------------------- the corpus


def make_corpus(folder: Path, *, files: int, docs: int, doc_len: int, vocab: int, seed: int) -> list[Path]:
    """Token files of Zipf-distributed ids in several row groups (deterministic by seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(files):
        lengths = rng.integers(doc_len // 2, doc_len * 3 // 2, docs)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = (rng.zipf(1.3, int(offsets[-1])) - 1) % vocab
        table = pa.table({"tokens": pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)), pa.array(ids.astype(np.int32)))})
        path = folder / f"part-{i}.parquet"
        pq.write_table(table, path, row_group_size=max(1, docs // 6))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- outputs


def stats_checksum(directory: Path) -> str | None:
    """The statistics' identity (the sha256 of their arrays, their sizes and counts), after a
    full check of every byte; None when there are none. Raises when they are damaged."""
    if not (directory / "manifest.json").exists():
        return None
    import streamfit

    s = streamfit.load_stats(directory, check=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    return json.dumps([manifest["checksum"], s.n_classes, s.n_features, s.n_examples,
                       sorted((x["path"], tuple(x["row_groups"]), x["rows"]) for x in s.sources)])


def model_checksum(weights: Path) -> str | None:
    """The weights' identity (every array's sha256) after a full check; None when there is
    no model (no sidecar). Raises when it is damaged."""
    from streamfit.model.weights import existing_sidecar, load_model

    if not existing_sidecar(weights).exists():
        return None
    model = load_model(weights, check=True)
    return json.dumps(sorted((k, v["sha256"]) for k, v in model.meta["arrays"].items()))


def leftovers(folder: Path) -> list[str]:
    """Temporary files, work directories, checkpoints and locks left under `folder`. It is
    also read while a command runs, so a folder that vanishes mid-scan is skipped (os.walk
    ignores it; Path.rglob raised FileNotFoundError)."""
    bad = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if ".tmp-" in name or name.endswith(".lock") or name in (".work", ".work-merge") or \
                    ".ckpt." in name or name.startswith("run-"):
                bad.append(str((Path(root) / name).relative_to(folder)))
    return sorted(bad)


# --------------------------------------------------------------------------- the commands


@dataclass
class Target:
    """One command under torture: how to run it, where its output is, how to compare."""

    name: str
    args: list[str]
    output: Path
    checksum: callable
    prepare: callable = lambda: None  # reset the inputs a trial starts from
    extra: dict = field(default_factory=dict)


def streamfit_cmd(args: list) -> list[str]:
    return [sys.executable, "-m", "streamfit", *map(str, args)]


def run(args: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
    return subprocess.run(streamfit_cmd(args), env=env, capture_output=True, text=True, **kw)


def must(args: list) -> None:
    r = run(args)
    if r.returncode != 0:
        raise SystemExit(f"torture: setup failed: streamfit {' '.join(map(str, args))}\n{r.stderr}")


def targets(root: Path, corpus: list[Path], wide: list[Path], jobs: list[int],
            commands: list[str]) -> list[Target]:
    """The commands to torture: accumulate and refine on `corpus`; merge and finalize on the
    statistics of `wide` (ten times the vocabulary: more to merge, larger weights to write)."""
    out = []
    half = len(wide) // 2
    base = root / "base"
    if "refine" in commands:
        must(["accumulate", *corpus, "--stats", base / "stats", "--window", WINDOW, "--quiet"])
    if "finalize" in commands:
        must(["accumulate", *wide, "--stats", base / "wide", "--window", WINDOW, "--quiet"])
    if "accumulate" in commands:
        for j in jobs:
            stats = root / f"accumulate-{j}" / "stats"
            out.append(Target(
                f"accumulate --jobs {j}",
                ["accumulate", *corpus, "--stats", stats, "--window", WINDOW, "--memory", "1M",
                 "--checkpoint", "0", "--batch-rows", "16", "--jobs", j, "--quiet"],
                stats, lambda s=stats: stats_checksum(s),
                prepare=lambda s=stats: shutil.rmtree(s.parent, ignore_errors=True)))
    if "merge" in commands:
        a, b = base / "shard-a", base / "shard-b"
        must(["accumulate", *wide[:half], "--stats", a, "--window", WINDOW, "--quiet"])
        must(["accumulate", *wide[half:], "--stats", b, "--window", WINDOW, "--quiet"])
        merged = root / "merge" / "stats"
        out.append(Target("merge", ["merge", a, b, "--out", merged, "--memory", "1M", "--quiet"],
                          merged, lambda m=merged: stats_checksum(m),
                          prepare=lambda m=merged: shutil.rmtree(m.parent, ignore_errors=True)))
    if "finalize" in commands:
        weights = root / "finalize" / "w.npy"
        out.append(Target("finalize", ["finalize", "--stats", base / "wide", "--out", weights,
                                       "--form", "paper", "--quiet"],
                          weights, lambda w=weights: model_checksum(w),
                          prepare=lambda w=weights: shutil.rmtree(w.parent, ignore_errors=True)))
    if "refine" in commands:
        start = base / "start.npy"
        must(["finalize", "--stats", base / "stats", "--out", start, "--quiet"])
        refined = root / "refine" / "r.npy"
        out.append(Target("refine", ["refine", "--weights", start, *corpus, "--method", "gis",
                                     "--passes", "6", "--out", refined, "--quiet"],
                          refined, lambda r=refined: model_checksum(r),
                          prepare=lambda r=refined: shutil.rmtree(r.parent, ignore_errors=True)))
    return out


# --------------------------------------------------------------------------- torture


@dataclass
class Row:
    command: str
    trials: int = 0
    kills: int = 0
    in_progress: int = 0    # kills that left work in progress (temporary files, journal, lock)
    consistent: int = 0     # kills after which the output was absent or whole
    identical: int = 0      # trials that ended identical to the reference, nothing left over
    seconds: float = 0.0
    failures: list = field(default_factory=list)


def kill_at(target: Target, fraction: float, work: float) -> bool:
    """Run the command and SIGKILL its process group `fraction` × `work` seconds after its
    work first shows on disk (start-up, the same in every run, is not worth killing); True
    when the kill landed (the command was still running)."""
    env = {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
    proc = subprocess.Popen(streamfit_cmd(target.args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    folder = target.output.parent
    while proc.poll() is None and not (folder.exists() and leftovers(folder)):
        time.sleep(0.002)
    try:
        proc.wait(timeout=fraction * work)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.returncode == -signal.SIGKILL


def timed_run(target: Target) -> tuple[float, float, float]:
    """Run the command to the end, watching its output folder: (seconds until its work in
    progress — temporary files, a journal, a lock — first showed on disk, seconds until it
    was last seen, seconds in all). Start-up before and exit after are not worth killing."""
    env = {k: v for k, v in os.environ.items() if k != "STREAMFIT_FAULT"}
    t0 = time.monotonic()
    proc = subprocess.Popen(streamfit_cmd(target.args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = last = None
    while proc.poll() is None:
        if target.output.parent.exists() and leftovers(target.output.parent):
            last = time.monotonic() - t0
            first = last if first is None else first
        time.sleep(0.002)
    duration = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"torture: the reference run of {target.name} failed:\n"
                         f"{proc.stderr.read()}")
    if first is None:
        first, last = 0.0, duration
    return first, last, duration


def torture(target: Target, kills: int, per_trial: int, rng: random.Random, log) -> Row:
    row = Row(target.name)
    target.prepare()
    first, last, duration = timed_run(target)
    reference = target.checksum()
    log(f"{target.name}: the uninterrupted run took {duration:.2f} s, work in progress seen "
        f"from {first:.2f} s to {last:.2f} s")
    start = time.monotonic()
    while row.kills < kills and row.trials < 4 * kills + 4:
        row.trials += 1
        target.prepare()
        for _ in range(rng.randint(1, per_trial)):
            if not kill_at(target, rng.uniform(0.0, 1.1), last - first + 0.01):
                continue
            row.kills += 1
            row.in_progress += bool(leftovers(target.output.parent))
            try:
                target.checksum()  # whatever is there must be whole
                row.consistent += 1
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                row.failures.append(f"trial {row.trials}: after a kill: {type(exc).__name__}: {exc}")
        r = run(target.args)
        try:
            same = r.returncode == 0 and target.checksum() == reference
        except Exception as exc:  # noqa: BLE001
            same, r = False, subprocess.CompletedProcess(r.args, r.returncode, "", f"{exc}")
        left = leftovers(target.output.parent)
        if same and not left:
            row.identical += 1
        else:
            row.failures.append(f"trial {row.trials}: rc {r.returncode}, "
                                f"{'identical' if same else 'DIFFERENT'}, left {left}: "
                                f"{r.stderr.strip()[-300:]}")
        log(f"{target.name}: trial {row.trials}, {row.kills} kills so far, "
            f"{row.identical} identical")
    row.seconds = round(time.monotonic() - start, 1)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| command | trials | kills | of them mid-work | consistent after a kill | "
             "identical after resume | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['command']} | {r['trials']} | {r['kills']} | {r['in_progress']} | "
                     f"{r['consistent']}/{r['kills']} | {r['identical']}/{r['trials']} | "
                     f"{r['seconds']} |")
    return lines


def readme_block(saved: dict) -> list[str]:
    """The README's torture block: how the run was made, then its table."""
    meta = saved["meta"]
    m = meta["machine"]
    return [f"Its last long run, `{meta['command']}`, on {meta['date']} ({m['cpu_count']} CPUs, "
            f"load average {meta['load_start']:.1f} at the start and "
            f"{m['load_average_end'][0]:.1f} at the end: the machine was shared):", "",
            *table(saved["rows"])]


def render(saved: dict, readme: Path) -> None:
    log(f"{write_block(readme, 'torture', readme_block(saved))}: torture table written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="kills per command (default: 20)")
    ap.add_argument("--kills-per-trial", type=int, default=2,
                    help="at most this many kills in a row before a trial's final run (default: 2)")
    ap.add_argument("--jobs", default="1,2", help="accumulate's --jobs values (default: 1,2)")
    ap.add_argument("--commands", default=",".join(COMMANDS),
                    help=f"which commands (default: {','.join(COMMANDS)})")
    ap.add_argument("--docs", type=int, default=400, help="documents per file (default: 400)")
    ap.add_argument("--files", type=int, default=4, help="corpus files (default: 4)")
    ap.add_argument("--vocab", type=int, default=300,
                    help="token ids (default: 300; merge and finalize take ten times as many)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    block_options(ap, "torture")
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.readme))
        return 0
    started, load_start = time.monotonic(), load_average()
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown or args.kills < 1:
        ap.error(f"unknown commands {sorted(unknown)}" if unknown else "--kills must be at least 1")
    jobs = [int(j) for j in args.jobs.split(",") if j]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="streamfit-torture-") as tmp:
        root = Path(args.work) if args.work else Path(tmp)
        corpus = make_corpus(root / "corpus", files=args.files, docs=args.docs, doc_len=60,
                             vocab=args.vocab, seed=args.seed)
        wide = make_corpus(root / "wide", files=args.files, docs=args.docs, doc_len=60,
                           vocab=10 * args.vocab, seed=args.seed + 1)
        rows = [torture(t, args.kills, args.kills_per_trial, rng, log)
                for t in targets(root, corpus, wide, jobs, commands)]
    found = [r.__dict__ for r in rows]
    if args.save:
        meta = {"command": command("torture.py", argv), "date": utc_now(),
                "load_start": load_start, "wall_s": time.monotonic() - started,
                "machine": machine_facts()}
        save_and_render(args.save, {"meta": meta, "rows": found}, render, Path(args.readme))
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print("\n".join(table(found)))
        for r in rows:
            for f in r.failures:
                print(f"{r.command}: {f}")
    ok = all(r.identical == r.trials and r.consistent == r.kills and r.kills > 0 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
