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
import time
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


# --------------------------------------------------------------------------- pages and blocks


def page_options(ap, page: str, datasets, quick: str) -> None:
    """The options of a benchmark that writes docs/PAGE.md, its plots and the saved
    PAGE.json: ``--datasets`` (comma-separated, of `datasets`), ``--quick`` (`quick` says what
    it does), ``--data``, ``--json``, ``--out``, ``--render`` and ``--no-plots``."""
    ap.add_argument("--datasets", default=",".join(datasets),
                    help=f"comma-separated, of {', '.join(datasets)} (default: all)")
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--data", default=str(ROOT / "data"), help="corpora folder (default: data)")
    ap.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    ap.add_argument("--out", default=str(ROOT / "docs"),
                    help=f"where {page}.md, {page}.json and the plots go (default: docs)")
    ap.add_argument("--render", metavar="JSON",
                    help=f"write the page and plots again from a saved {page}.json, running nothing")
    ap.add_argument("--no-plots", action="store_true", help="write the page only, not the plots")


def page_args(ap, argv: list[str] | None, render, datasets):
    """The parsed options of a page's benchmark, ``names`` the datasets to run; None when
    ``--render JSON`` was given: then the page has been rendered from that file, and
    nothing is to run."""
    args = ap.parse_args(argv)
    if args.render:
        render(load_results(args.render), Path(args.out), plots=not args.no_plots)
        return None
    args.names = dataset_names(args.datasets, datasets)
    args.mode = "quick" if args.quick else "default"
    args.started, args.load_start = time.perf_counter(), load_average()
    return args


def run_meta(tool: str, argv: list[str] | None, args, *packages: str) -> dict:
    """The facts of a page's run, at its end (`args` from page_args): command, date, mode,
    machine (with the versions of `packages` too), minutes, load average at the start."""
    return {"command": command(tool, argv), "date": utc_now(), "mode": args.mode,
            "machine": machine_facts(*packages), "wall_s": time.perf_counter() - args.started,
            "load_start": args.load_start}


def page_main(argv: list[str] | None, description: str, tool: str, page: str, *, datasets,
              quick: str, render, run, packages=(), options=None) -> int:
    """The command line of a benchmark that writes docs/PAGE.md (see page_options):
    ``run(name, args, tmp)`` measures one dataset and returns its results; the results of
    all, with the run's facts, are saved as PAGE.json and the page is rendered from that
    file by ``render(saved, out_dir, plots=...)``. `options(ap)` adds the tool's own."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=description)
    page_options(ap, page, datasets, quick)
    if options is not None:
        options(ap)
    args = page_args(ap, argv, render, datasets)
    if args is None:
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix=f"{Path(tool).stem}-") as tmp:
        for name in args.names:
            results[name] = run(name, args, Path(tmp))
    save_page(args, page, {"meta": run_meta(tool, argv, args, *packages), "results": results},
              render)
    return 0


def save_page(args, page: str, payload: dict, render) -> None:
    """Save a page's run as PAGE.json in --out, render the page from that file, and with
    --json print it."""
    save_and_render(Path(args.out) / f"{page}.json", payload, render, Path(args.out))
    log(f"{page}.json: written ({payload['meta']['wall_s'] / 60:.1f} min)")
    if args.json:
        print(to_json(payload))


def report_status(table: str, report: dict, as_json: bool, failure: str) -> int:
    """Print a run's table (or, `as_json`, its report on stdout and the table on stderr);
    the exit status: 1 with the `failure` line when the report is not ok."""
    if as_json:
        log(table)
        print(to_json(report))
    else:
        print(table)
    if not report["ok"]:
        log(failure)
        return 1
    return 0


def block_options(ap, block: str, *, save: str | None = "", flag: str = "--readme",
                  page: Path = ROOT / "README.md") -> None:
    """``--save``, ``--render`` and the page (`flag`) of a benchmark that writes the marked
    block `block` of a page; `save` words what --save keeps (default: every figure; None:
    no --save, the tool saves on its own)."""
    if save is not None:
        ap.add_argument("--save", metavar="JSON",
                        help=(save or "save every figure there (paths relative to the repository)")
                        + f" and write the {block} block from that file")
    ap.add_argument("--render", metavar="JSON",
                    help=f"write the {block} block again from a saved JSON, running nothing")
    ap.add_argument(flag, default=str(page),
                    help=f"the page holding the results:{block} block (default: {relative(page)})")


def dataset_names(text: str, known) -> list[str]:
    """The comma-separated dataset names of `text`, each one of `known`."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in known:
            raise SystemExit(f"unknown dataset {n!r}; choose from {', '.join(known)}")
    return names


def write_page(out_dir: Path, name: str, lines: list[str], plots=()) -> Path:
    """The page `name` in `out_dir` from its `lines`, after its plots: (draw, results,
    file name) each, drawn as draw(results, out_dir / file name)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for draw, res, filename in plots:
        draw(res, out_dir / filename)
    path = out_dir / name
    path.write_text("\n".join(lines))
    log(f"{path}: written")
    return path


def save_and_render(path: str | os.PathLike, payload: dict, render, *args, **kw):
    """Save a run's results at `path`, then render from the saved file (what --render reads,
    so that a page never holds what its JSON does not)."""
    return render(load_results(save_results(path, payload)), *args, **kw)
