"""The TypeScript SDK (generated/typescript) exercised for real: its Node tests and its example against a real
oma-server process — unary calls, WatchJobs through a whole replication, the bidi VMA stream written in TypeScript,
ErrorInfo decoded in TypeScript. Node and the SDK's packages come from `make tools` (npm ci of the committed lock).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import ca_file
from tests.conftest import REPO
from tests.harness.oma_process import OmaProcess
from tests.tls import make_pki

pytestmark = pytest.mark.slow

SDK = REPO / "generated" / "typescript"
TSC = SDK / "node_modules" / ".bin" / "tsc"


@pytest.fixture(scope="module")
def built() -> Path:
    """Type-checks and compiles the SDK, its tests and its example (tsc, strict) into dist/."""
    assert TSC.exists(), "the SDK's packages are not installed: run `make tools`"
    result = subprocess.run([str(TSC), "-p", str(SDK)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"
    return SDK / "dist"


@pytest.fixture
def oma(tmp_path: Path) -> Iterator[OmaProcess]:
    server = OmaProcess(tmp_path / "oma")
    server.start()
    yield server
    server.stop()


def node(
    *args: str, address: str, tls_dir: Path | None = None, oma_ca: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMA_ADDRESS": address,
        "OMA_TEST_TLS_DIR": str(tls_dir or ""),
        "OMA_CA_FILE": str(oma_ca or ""),
        "OMA_TOKEN_FILE": str(oma_ca.parent.parent / "admin.token" if oma_ca else ""),
    }
    return subprocess.run(["node", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=SDK)


def declared_tests() -> int:
    """How many `test(` calls the TypeScript test files declare: every one must pass, none may be skipped."""
    return sum(len(re.findall(r"^test\(", p.read_text(), re.M)) for p in (SDK / "test").glob("*.test.ts"))


def test_typescript_sdk_against_a_real_oma(built: Path, oma: OmaProcess, tmp_path: Path) -> None:
    files = sorted(str(p) for p in (built / "test").glob("*.test.js"))
    assert len(files) >= 2
    pki = make_pki(tmp_path / "pki")
    oma_ca = ca_file(oma.data_dir)
    result = node("--test", "--test-reporter=tap", *files, address=oma.address, tls_dir=pki.ca.parent, oma_ca=oma_ca)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output[-6000:]}"
    passed = int(re.search(r"^# pass (\d+)$", result.stdout, re.M).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"^# fail (\d+)$", result.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert (passed, failed) == (declared_tests(), 0), output[-3000:]

    # The runnable example, against the same OMA: what the tests left is listed and watched to SYNCED.
    example = node(
        str(built / "examples" / "watch-jobs.js"), "--server", oma.address, "--ca", str(oma_ca),
        "--token-file", str(oma.data_dir / "admin.token"), "--until-synced", address="",
    )  # fmt: skip
    assert example.returncode == 0, example.stderr
    assert re.search(r"^job \S+  completed  100\.0 %", example.stdout, re.M), example.stdout
    assert "-- synced at revision" in example.stdout


def test_example_reports_an_unreachable_oma_in_one_line(built: Path, tmp_path: Path) -> None:
    from oma_server.ports import free_port

    result = node(
        str(built / "examples" / "watch-jobs.js"), "--server", f"127.0.0.1:{free_port()}", address="", timeout=60
    )
    assert result.returncode == 1
    assert re.fullmatch(r"watch-jobs: UNAVAILABLE: .*\n", result.stderr), result.stderr
