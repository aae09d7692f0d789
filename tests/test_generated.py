"""generated/ must match what protos/ generates; a stale checkout fails here (run `make generate`).

Python: every file under generated/ but typescript/. TypeScript: generated/typescript/{oma,vma,google} (the rest of
that package — sdk/, test/, examples/, package.json — is written by hand).
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

TS_GENERATED = ("oma", "vma", "google")


def generated_files(root: Path) -> list[Path]:
    """The files `scripts/generate.sh` writes under `root`, relative to it."""
    python = [
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.relative_to(root).parts[0] != "typescript"
    ]
    typescript = [
        p.relative_to(root) for d in TS_GENERATED for p in (root / "typescript" / d).rglob("*") if p.is_file()
    ]
    return sorted(python + typescript)


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
    fresh = generated_files(out)
    committed = generated_files(REPO / "generated")
    assert any(p.suffix == ".ts" for p in fresh), "the TypeScript SDK was not generated"
    assert fresh == committed, "generated/ has missing or extra files: run `make generate`"
    stale = [str(p) for p in fresh if not filecmp.cmp(out / p, REPO / "generated" / p, shallow=False)]
    assert not stale, f"generated/ is stale for {stale}: run `make generate` and commit"
