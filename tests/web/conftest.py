"""An in-process OMA with its HTTP listener on a free port, and helpers to read /metrics and the SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oma_server.security.tokens import read_admin_token
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.failover.helpers import start_oma


@dataclass
class Web:
    server: OmaServer
    channel: grpc.aio.Channel
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        assert self.server.http is not None
        return f"http://127.0.0.1:{self.server.http.port}"

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) → value."""
        async with self.session.get(f"{self.base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


class EventStream:
    """A client of /api/events reading one SSE event at a time (what a browser's EventSource parses)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        while True:
            line = (await self.response.content.readline()).decode()
            if not line:
                raise AssertionError("the event stream ended")
            line = line.rstrip("\r\n")
            if not line:
                if "data" in event:
                    return event
                continue
            if line.startswith(":"):
                continue
            key, _, val = line.partition(":")
            event[key] = val.removeprefix(" ")

    async def next_update(self) -> tuple[str | None, dict[str, object]]:
        """(id, update) of the next `update` event."""
        while True:
            event = await self.next()
            if event.get("event") == "update":
                return event.get("id"), json.loads(event["data"])


def bearer(server: OmaServer) -> dict[str, str]:
    """The Authorization header with the OMA's initial admin token (the dashboard needs viewer or above)."""
    return {"Authorization": f"Bearer {read_admin_token(server.app.settings.data_dir)}"}


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    server = await start_oma(tmp_path, http_listen="127.0.0.1:0")
    async with (
        oma_channel(server) as channel,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=bearer(server)) as session,
    ):
        yield Web(server, channel, session)
    await server.stop(grace=0.5)
