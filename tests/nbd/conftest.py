"""Fixtures for the NBD tests: a real nbd-server per test (own port, own directory) and real NBD clients."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from oma_server.nbd import NbdExportManager, procs

NBD_SERVER = shutil.which("nbd-server") or shutil.which("/usr/sbin/nbd-server")
NBDCOPY = shutil.which("nbdcopy")
NBDINFO = shutil.which("nbdinfo")

requires_nbd = pytest.mark.skipif(
    NBD_SERVER is None or NBDCOPY is None or NBDINFO is None,
    reason="needs nbd-server (Debian package nbd-server) and nbdcopy/nbdinfo (libnbd-bin); `make test` installs them",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    """Export names as the real nbdinfo client sees them (the probe export excluded)."""
    rc, out, err = await run("nbdinfo", "--list", "--json", f"nbd://{host}:{port}")
    assert rc == 0, err
    return {e["export-name"] for e in json.loads(out)["exports"]} - {"oma-probe"}


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
        await m.stop(disconnect_clients=True)
        # Belt and braces: no nbd-server of this test may outlive it.
        for info in procs.nbd_server_processes(m.config_path):
            procs.kill(info.pid, signal.SIGKILL)


@pytest.fixture
async def manager(manager_factory: Callable[..., NbdExportManager]) -> AsyncIterator[NbdExportManager]:
    m = manager_factory()
    await m.start()
    await m.wait_ready()
    yield m
