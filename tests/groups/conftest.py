"""An OMA for the group tests (as the failover tests have it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma_server.server import OmaServer
from tests.failover.helpers import start_oma


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path)
    yield server
    await server.stop(grace=0.2)
