"""What the benchmark tools share: logging, facts about the run and the machine, results
saved as JSON with paths relative to the repository, and marked blocks of a page (README.md,
docs/*.md) rewritten from them.

A benchmark measures, saves its raw figures as JSON, and renders its page or block from that
JSON alone, by the same code as ``--render JSON``: a page never holds a figure its JSON does
not, and re-rendering needs no data folder.

Only the standard library is imported here (bench_accumulate pins thread pools before numpy
is imported).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """A progress line on stderr (stdout is for results: tables, --json)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


def command(tool: str, argv: list[str] | None) -> str:
    """How the run was started, for the page: ``python tools/TOOL ARGS``."""
    args = sys.argv[1:] if argv is None else argv
    return f"python tools/{tool}" + "".join(" " + shlex.quote(a) for a in args)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> float:
    """The 1-minute load average (nan where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_facts(*packages: str) -> dict:
    """The machine and the software, at the end of a run: CPU, cores usable by this process,
    memory, OS, Python, the versions of numpy, scipy, pyarrow, numba, streamfit and of
    `packages` (import names), the commit and whether streamfit/ had uncommitted changes,
    and the load averages (1, 5, 15 min) at the end."""
    mem = math.nan
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "streamfit"], cwd=ROOT,
                                    check=False, capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = {"cpu": cpu_model(), "cores": cores, "cpu_count": os.cpu_count(), "memory_gib": mem,
             "os": platform.platform(), "python": platform.python_version()}
    for name in ("numpy", "scipy", "pyarrow", "numba", "streamfit", *packages):
        try:
            facts[name] = importlib.import_module(name).__version__
        except ImportError:
            facts[name] = None
    facts.update(commit=commit, streamfit_modified=dirty,
                 load_average_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    return facts


# --------------------------------------------------------------------------- results as JSON


def relative(path: str | os.PathLike) -> str:
    """`path` relative to the repository when it lies inside it (``data/digits``), else as
    given: saved results must not name the folder the repository was cloned into."""
    p = Path(path)
    with contextlib.suppress(ValueError):
        return p.resolve().relative_to(ROOT).as_posix()
    return p.as_posix()


def _plain(value):
    if isinstance(value, os.PathLike):
        return relative(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return float(value)


def to_json(payload) -> str:
    """The JSON text of a run's results (what --json prints and what is saved)."""
    return json.dumps(payload, indent=1, default=_plain)


def save_results(path: str | os.PathLike, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(payload) + "\n")
    return path


def load_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- marked blocks


def markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def read_block(text: str, name: str) -> str:
    """What stands between the markers of block `name` (markers excluded)."""
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"no single {begin} … {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_block(path: str | os.PathLike, name: str, lines: list[str]) -> Path:
    """Replace the marked block `name` of the page at `path` by `lines` (the markers stay;
    the text around them is not touched)."""
    path = Path(path)
    text = path.read_text()
    old = read_block(text, name)
    begin, _ = markers(name)
    body = "\n" + "".join(line + "\n" for line in lines)
    path.write_text(text.replace(begin + old, begin + body, 1))
    return path
