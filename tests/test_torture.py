"""tools/torture.py, the short version CI runs (issue 12, case 17): random SIGKILLs of
accumulate (one and two jobs), merge, finalize and refine on a generated corpus; after every
kill the output is absent or whole, and after the resumed run identical to an uninterrupted
one, nothing left over. The long run (≥ 20 kills per command) is `python tools/torture.py`."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "torture.py"


def test_random_kills_resume_to_identical_outputs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("torture", TOOL)
    torture = importlib.util.module_from_spec(spec)
    sys.modules["torture"] = torture  # its dataclasses look their module up
    spec.loader.exec_module(torture)
    rc = torture.main(["--kills", "2", "--kills-per-trial", "2", "--jobs", "1,2", "--files", "2",
                       "--docs", "80", "--seed", "3", "--work", str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["command"] for r in rows] == ["accumulate --jobs 1", "accumulate --jobs 2", "merge",
                                            "finalize", "refine"]
    for r in rows:  # the messages name each failure (pytest shortens a whole row to "...")
        assert r["kills"] >= 2 and r["consistent"] == r["kills"], (r["command"], r["failures"])
        assert r["identical"] == r["trials"], (r["command"], r["failures"])
    assert rc == 0
