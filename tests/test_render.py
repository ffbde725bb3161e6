"""Results pages are rendered from their saved JSON alone.

Each benchmark saves the raw figures of a run as JSON and writes its page (docs/*.md) or its
marked block of a page (README.md, docs/distributed.md) from that JSON by the same code as
``python tools/BENCH.py --render JSON``. Here every committed JSON is rendered again, as that
command, from a temporary working directory with no data folder, and the result must equal
the committed page to the byte: a page never drifts from its figures, and no figure is
copied by hand. Plots are not compared (matplotlib is not installed in CI: ``--no-plots``).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"

# (tool, saved JSON, page it renders; for a block: the block's name). Every saved JSON is
# committed: a page without one fails.
PAGES = [
    ("bench_quality.py", "docs/results.json", "docs/results.md", None),
    ("bench_grow.py", "docs/growth.json", "docs/growth.md", None),
    ("bench_subspace.py", "docs/subspace.json", "docs/subspace.md", None),
    ("bench_forms.py", "docs/forms.json", "README.md", "forms"),
    ("bench_accumulate.py", "docs/accumulate.json", "README.md", "accumulate"),
    ("bench_scale.py", "docs/scale.json", "README.md", "scale"),
    ("bench_dask.py", "docs/distributed.json", "docs/distributed.md", "distributed"),
    ("bench_lm.py", "docs/lm.json", "docs/lm.md", None),
    ("bench_classify.py", "docs/classify.json", "docs/classify.md", None),
    ("torture.py", "docs/torture.json", "README.md", "torture"),
    ("bench_small.py", "docs/small.json", "docs/small.md", None),
    ("bench_score.py", "docs/score.json", "README.md", "score"),
]


def harness():
    spec = importlib.util.spec_from_file_location("harness", TOOLS / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tool, saved, page, block", PAGES, ids=[p[1] for p in PAGES])
def test_page_is_rendered_from_its_json(tool, saved, page, block, tmp_path):
    assert (ROOT / saved).exists(), f"{saved} is missing: rerun python tools/{tool} to save it"
    work = tmp_path / "work"   # the command's working directory: no data/ folder anywhere
    work.mkdir()
    json_copy = tmp_path / Path(saved).name
    shutil.copy(ROOT / saved, json_copy)
    if block is None:
        out = tmp_path / "out"
        cmd = ["--render", str(json_copy), "--out", str(out), "--no-plots"]
        rendered = out / Path(page).name
    else:
        rendered = tmp_path / Path(page).name
        shutil.copy(ROOT / page, rendered)
        option = "--doc" if tool == "bench_dask.py" else "--readme"
        cmd = ["--render", str(json_copy), option, str(rendered)]
    proc = subprocess.run([sys.executable, str(TOOLS / tool), *cmd], cwd=work,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert rendered.read_text() == (ROOT / page).read_text(), \
        f"{page} differs from what {saved} renders: run python tools/{tool} --render {saved}"
    assert not any(work.iterdir())


@pytest.mark.parametrize("saved", [p[1] for p in PAGES])
def test_saved_results_name_no_absolute_data_folder(saved):
    bad = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith("/") and ("/data/" in v or v.endswith("/data")):
            bad.append(v)
    walk(json.loads((ROOT / saved).read_text()))
    assert not bad, f"{saved} names data folders by absolute path: {bad[:3]}"


def test_write_block_replaces_only_the_marked_block(tmp_path):
    h = harness()
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- results:a -->\nold\n<!-- /results:a -->\nmiddle\n"
                    "<!-- results:b -->\nkeep\n<!-- /results:b -->\n")
    h.write_block(page, "a", ["new 1", "", "new 2"])
    assert page.read_text() == ("intro\n<!-- results:a -->\nnew 1\n\nnew 2\n<!-- /results:a -->\n"
                                "middle\n<!-- results:b -->\nkeep\n<!-- /results:b -->\n")
    assert h.read_block(page.read_text(), "b") == "\nkeep\n"
    with pytest.raises(SystemExit):
        h.write_block(page, "missing", ["x"])


def test_relative_paths(tmp_path):
    h = harness()
    assert h.relative(ROOT / "data" / "digits") == "data/digits"
    assert h.relative(tmp_path / "x") == (tmp_path / "x").as_posix()
    assert json.loads(h.to_json({"folder": ROOT / "data" / "gcide"})) == {"folder": "data/gcide"}
