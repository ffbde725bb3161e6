"""The package's import graph: no cycle, stages import only earlier stages, and no training
method imports another method or the dispatcher. Read from the source (every import
statement, also those inside functions), so a lazy import cannot hide a cycle.

    python -m pytest tests/test_structure.py     # the check; its failure names the edge
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import streamfit

PACKAGE = Path(streamfit.__file__).parent
# The data flow: a module may import its own stage and earlier ones.
STAGES = ["io", "data", "count", "model", "solve", "train", "distributed", "cli"]
ANYWHERE = {"streamfit", "streamfit.errors",           # __version__ and the exceptions
            "streamfit.lite",                        # numpy alone, imports no streamfit module
            "streamfit.defaults"}                    # option defaults, the standard library alone
TRAIN_SHARED = {"streamfit.train.core", "streamfit.train.lbfgs"}
TRAIN_METHODS = {"streamfit.train.newton", "streamfit.train.subspace", "streamfit.train.grow",
                 "streamfit.train.ngram", "streamfit.train.plbfgs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The streamfit modules a file imports (a `from pkg import name` of a submodule counts
    as that submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "streamfit"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "streamfit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(g.get(m, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m)


def test_stages_import_only_earlier_stages():
    bad = []
    for m, deps in graph().items():
        if m in ("streamfit", "streamfit.__main__"):
            continue
        s = stage(m)
        for dep in deps - ANYWHERE:
            d = stage(dep)
            if s is None and m != "streamfit.synthetic":
                continue
            if d is None or s is None or d > s:
                bad.append(f"{m} imports {dep}")
    assert not bad, "\n".join(bad)


def test_training_methods_import_only_the_shared_machinery():
    g = graph()
    for m in TRAIN_METHODS | TRAIN_SHARED:
        train_deps = {d for d in g[m] if d.startswith("streamfit.train.")}
        assert train_deps <= {"streamfit.train.core"}, f"{m} imports {sorted(train_deps)}"
    assert not any(d.startswith("streamfit.train.") for d in g["streamfit.train.core"])


def test_import_streamfit_loads_no_stage():
    """`import streamfit` is cheap: the API is imported on first use."""
    code = ("import sys, streamfit; print(sorted(m for m in sys.modules if m.startswith("
            "('numba', 'scipy', 'pyarrow', 'dask', 'matplotlib', 'streamfit.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['streamfit.errors']"
    code = "import streamfit; print(streamfit.finalize.__module__, streamfit.refine.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["streamfit.solve.explicit", "streamfit.train.refine"]


def test_commands_import_only_what_they_use():
    """Dask, scipy.optimize and matplotlib stay out of the CLI until a command needs them."""
    code = ("import sys, streamfit.cli; print(sorted(m for m in ('dask', 'distributed', "
            "'scipy.optimize', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


HEAVY = ("numba", "scipy", "pyarrow", "dask", "distributed", "matplotlib")


def test_help_imports_no_heavy_module():
    """Every `streamfit COMMAND --help` (and the bare one) answers without numba, scipy,
    pyarrow, Dask or matplotlib: the parser takes its defaults from streamfit.defaults."""
    code = ("import sys, contextlib, io\n"
            "from streamfit.cli import build_parser, main\n"
            "commands = [None] + sorted(build_parser()._subparsers._group_actions[0].choices)\n"
            "for c in commands:\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(['--help'] if c is None else [c, '--help'])\n"
            f"print(len(commands), sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) >= 8 and loaded.strip() == "[]", out.stdout
