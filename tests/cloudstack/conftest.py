"""Fixtures: a real simulator on 127.0.0.1:<random port> and the real client talking to it over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.simulator import CloudStackSimulator


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[CloudStackSimulator]:
    simulator = CloudStackSimulator(tmp_path / "cs-state", api_key="test-api-key", secret_key="test-secret-KEY-42")
    await simulator.start()
    simulator.state.job_delay_s = 0.02
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def client(sim: CloudStackSimulator) -> AsyncIterator[CloudStackClient]:
    c = CloudStackClient(sim.settings())
    try:
        yield c
    finally:
        await c.close()
