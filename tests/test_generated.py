"""generated/ must match what protos/ generates; a stale checkout fails here (run `make generate`)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "generate.sh"), str(out)],
        check=True,
        cwd=REPO,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
    )
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    committed = sorted(
        p.relative_to(REPO / "generated")
        for p in (REPO / "generated").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated/ has missing or extra files: run `make generate`"
    stale = [str(p) for p in fresh if not filecmp.cmp(out / p, REPO / "generated" / p, shallow=False)]
    assert not stale, f"generated/ is stale for {stale}: run `make generate` and commit"
