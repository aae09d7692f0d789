"""SQLite serves one OMA process (issue #18): a second OMA, or a migration, on a SQLite database another OMA serves
is refused with who holds it and what to do; the hold ends with its process however it ends (stop or SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from oma_server.app import App
from oma_server.errors import FailedPrecondition
from oma_server.ports import free_port
from oma_server.server import OmaServer
from tests.conftest import make_settings
from tests.test_cli_process import OMA_SERVER, processes_of, server_env, wait_serving


async def test_a_second_oma_on_the_same_sqlite_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    first = OmaServer(App(make_settings(tmp_path)))
    await first.start()
    second = App(make_settings(tmp_path))
    try:
        with pytest.raises(FailedPrecondition) as refused:
            await second.start()
        assert refused.value.reason == "DATABASE_IN_USE"
        assert f"in use by oma-server pid {os.getpid()}" in refused.value.message
        assert "(serving, since" in refused.value.message and "PostgreSQL" in refused.value.message
    finally:
        await second.stop()
    assert (await first.app.appliances.enroll("vma-still-served")).appliance.name == "vma-still-served"
    await first.stop(grace=0.2)

    again = OmaServer(App(make_settings(tmp_path)))
    await again.start()  # the first one's stop gave the database up
    await again.stop(grace=0.2)


@pytest.fixture
def killed_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    for entry in processes_of(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)


@pytest.mark.usefixtures("killed_leftovers")
def test_a_second_process_and_a_migration_are_refused_and_sigkill_frees_the_database(tmp_path: Path) -> None:
    port = free_port()
    serving = subprocess.Popen(
        [OMA_SERVER, "serve", "--listen", f"127.0.0.1:{port}"],
        env=server_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_serving(port, serving, tmp_path)
    for argv in (["serve", "--listen", f"127.0.0.1:{free_port()}"], ["migrate"]):
        refused = subprocess.run(
            [OMA_SERVER, *argv], env=server_env(tmp_path), capture_output=True, text=True, timeout=120, check=False
        )
        assert refused.returncode == 2, (argv, refused.stderr)
        assert f"in use by oma-server pid {serving.pid}" in refused.stderr, refused.stderr
        assert "SQLite serves one OMA process" in refused.stderr

    serving.kill()  # no stop at all: the kernel drops the hold with the process
    serving.wait(timeout=30)
    migrated = subprocess.run(
        [OMA_SERVER, "migrate"], env=server_env(tmp_path), capture_output=True, text=True, timeout=120, check=False
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "schema version" in migrated.stdout
