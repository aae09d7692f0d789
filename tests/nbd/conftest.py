"""Fixtures for the NBD tests: a real nbdkit per test (own port, own directory) and real NBD clients."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from oma_server.nbd import NbdExportManager, procs
from oma_server.ports import free_port

NBDKIT = shutil.which("nbdkit")
NBDCOPY = shutil.which("nbdcopy")
NBDINFO = shutil.which("nbdinfo")

requires_nbd = pytest.mark.skipif(
    NBDKIT is None or NBDCOPY is None or NBDINFO is None,
    reason="needs nbdkit (Debian package nbdkit) and nbdcopy/nbdinfo (libnbd-bin); `make test` installs them",
)


async def run(*argv: str, input: bytes | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def nbd_list(host: str, port: int) -> set[str]:
    """Export names as the real nbdinfo client sees them."""
    rc, out, err = await run("nbdinfo", "--list", "--json", f"nbd://{host}:{port}")
    assert rc == 0, err
    return {e["export-name"] for e in json.loads(out)["exports"]}


async def nbdcopy(src: str, dst: str, *extra: str) -> None:
    rc, _, err = await run("nbdcopy", *extra, src, dst, timeout=120)
    assert rc == 0, f"nbdcopy {src} -> {dst} failed: {err}"


def make_disk(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def pattern(size: int, seed: int) -> bytes:
    """Deterministic random data, different per seed."""
    return random.Random(seed).randbytes(size)


@pytest.fixture
def nbd_port() -> int:
    return free_port()


@pytest.fixture
async def manager_factory(tmp_path: Path) -> AsyncIterator[Callable[..., NbdExportManager]]:
    made: list[NbdExportManager] = []

    def factory(config_dir: Path | None = None, port: int | None = None, **kw: object) -> NbdExportManager:
        m = NbdExportManager(
            config_dir or tmp_path / "nbd",
            listen=f"127.0.0.1:{port or free_port()}",
            probe_interval_s=float(kw.pop("probe_interval_s", 0.3)),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        made.append(m)
        return m

    yield factory
    for m in made:
        await m.stop()
        # Belt and braces: no nbdkit of this test may outlive it.
        for info in procs.server_processes("nbdkit", str(m.exports_dir)):
            procs.kill(info.pid, signal.SIGKILL)


@pytest.fixture
async def manager(manager_factory: Callable[..., NbdExportManager]) -> AsyncIterator[NbdExportManager]:
    m = manager_factory()
    await m.start()
    await m.wait_ready()
    yield m
