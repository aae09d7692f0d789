"""omactl as a real process against a real in-process OMA (SQLite), run without blocking the server's event loop."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from oma_server.app import App
from oma_server.security.tokens import read_admin_token
from oma_server.server import OmaServer
from tests.clients import ca_file, oma_channel
from tests.conftest import VENV_BIN, make_settings

_SCRIPT = VENV_BIN / "omactl"
OMACTL: list[str] = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from oma_server.omactl.app import main; raise SystemExit(main())"]
)


#: where omactl looks for its user's config file in tests: a directory that does not exist
NO_USER_CONFIG = "/nonexistent/omactl-tests-config"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@dataclass(frozen=True)
class Target:
    """An OMA as omactl is pointed at it: its address, the CA file its TLS is verified with, an operator token."""

    server: str
    ca: Path
    token: str


def omactl_env(server: Target | str, **extra: str) -> dict[str, str]:
    """The environment omactl runs in; a bare address is a plaintext test double (OMA_INSECURE)."""
    drop = ("COLUMNS", "OMA_SERVER", "OMA_CA", "OMA_INSECURE", "OMA_TOKEN", "OMA_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["XDG_CONFIG_HOME"] = NO_USER_CONFIG  # a config of the machine's user never reaches a test's omactl
    if isinstance(server, Target):
        env["OMA_SERVER"], env["OMA_CA"], env["OMA_TOKEN"] = server.server, str(server.ca), server.token
    else:
        env["OMA_SERVER"], env["OMA_INSECURE"] = server, "1"
    env.update(extra)
    return env


async def run_omactl(
    server: Target | str, *args: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *OMACTL,
        *args,
        env=omactl_env(server, **(env or {})),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def spawn_omactl(server: Target | str, *args: str) -> asyncio.subprocess.Process:
    """omactl running in the background (watch), stdout a pipe (so not a TTY)."""
    return await asyncio.create_subprocess_exec(
        *OMACTL,
        *args,
        env=omactl_env(server),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def assert_one_error_line(result: Result, *fragments: str, code: int = 1) -> str:
    """Exactly one line on stderr, starting 'omactl: ', containing every fragment; no traceback."""
    assert result.code == code, result
    assert "Traceback" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("omactl: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = OmaServer(App(make_settings(tmp_path)))
    await server.start()
    yield server
    await server.stop(grace=0.5)


def target_of(server: OmaServer) -> Target:
    """An in-process OMA as omactl reaches it: its port, its CA, its initial admin token."""
    data_dir = server.app.settings.data_dir
    return Target(f"127.0.0.1:{server.port}", ca_file(data_dir), read_admin_token(data_dir))


@pytest.fixture
def address(oma: OmaServer) -> Target:
    return target_of(oma)


@pytest.fixture
async def channel(oma: OmaServer) -> AsyncIterator[grpc.aio.Channel]:
    async with oma_channel(oma) as ch:
        yield ch
