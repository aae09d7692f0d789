"""Fixtures of the stream client tests: a scripted fake OMA gateway and a factory of clients stopped at teardown."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.stream_client.fake_gateway import FakeGateway, FakeOma
from vma_client_stubs.stream_client import StreamClient

APPLIANCE_ID = "vma-1"
CREDENTIAL = "secret-1"


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway({APPLIANCE_ID: CREDENTIAL})


@pytest.fixture
async def fake_oma(gateway: FakeGateway) -> AsyncIterator[FakeOma]:
    oma = FakeOma(gateway)
    await oma.start()
    yield oma
    await oma.stop(0)


ClientFactory = Callable[..., StreamClient]


@pytest.fixture
async def make_client(fake_oma: FakeOma) -> AsyncIterator[ClientFactory]:
    clients: list[StreamClient] = []

    def factory(target: str | None = None, **kwargs: Any) -> StreamClient:
        kwargs.setdefault("agent_version", "test-1.0")
        kwargs.setdefault("initial_backoff_s", 0.01)
        kwargs.setdefault("max_backoff_s", 0.05)
        kwargs.setdefault("fsync", False)
        kwargs.setdefault("rng", random.Random(7))
        client = StreamClient(
            target or fake_oma.target,
            kwargs.pop("appliance_id", APPLIANCE_ID),
            kwargs.pop("credential", CREDENTIAL),
            **kwargs,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "vma-state"
