"""Fixtures of the agent tests: SQLite only (the OMA's store is covered on both databases elsewhere), a real
nbdkit, a fake vCenter."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.nbd import NbdServer
from vma_client_stubs.agent.vcenter import FakeVCenter

pytestmark = pytest.mark.nbd


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'oma.db'}"


@pytest.fixture
def nbd_server(tmp_path: Path) -> Iterator[NbdServer]:
    if shutil.which("nbdkit") is None:
        pytest.skip("nbdkit is not installed (make system-deps)")
    server = NbdServer(tmp_path / "nbd")
    yield server
    server.stop()


@pytest.fixture
def vcenter(tmp_path: Path) -> FakeVCenter:
    return FakeVCenter(tmp_path / "vcenter")
