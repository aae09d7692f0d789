"""Shared fixtures: real PostgreSQL, database URLs for both stores, an in-process OMA on a free port."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from oma_server.app import App
from oma_server.db.database import Database
from oma_server.db.migrations import apply_migrations
from oma_server.logging import configure_logging
from oma_server.ports import free_port
from oma_server.server import OmaServer
from oma_server.settings import Settings
from tests.clients import oma_channel
from tests.pg import PostgresServer

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

configure_logging(level=os.environ.get("OMA_TEST_LOG_LEVEL", "WARNING"))


# oma-server --listen, --appliance-listen and --nbd-listen, oma-cloudstack-sim --listen, PostgreSQL: the defaults of a
# real set-up.
DEFAULT_PORTS = (50051, 50052, 10809, 8080, 5432)


@pytest.fixture(scope="session", autouse=True)
def _default_ports_taken() -> Iterator[None]:
    """Bind the default ports (without listening) for the whole run, so a test or a server under test that falls
    back to a default fails at once with "address in use" instead of colliding with another run or a real server.
    A port something else already holds is left to it."""
    held = []
    for port in DEFAULT_PORTS:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            held.append(sock)
        except OSError:
            sock.close()
    yield
    for sock in held:
        sock.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on SQLite and on a fresh database of the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oma.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database of each backend (`database_url`), closed after the test."""
    database = Database(database_url)
    await database.run(apply_migrations, database.peewee)
    yield database
    database.close()


def make_settings(tmp_path: Path, database_url: str = "", **overrides: object) -> Settings:
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "oma",
        database=database_url,
        nbd_listen=f"127.0.0.1:{free_port()}",
        appliance_listen="127.0.0.1:0",
        # Most tests drive the stream as a VMA of 0.2 did, by the (deprecated) enrollment credential on the operator
        # port; tests/test_appliance_certificates.py and the demo run the default, certificates only.
        allow_credential_hello=True,
        shutdown_grace_s=1.0,
        progress_flush_interval_s=0.05,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
async def oma_server(tmp_path: Path, database_url: str) -> AsyncIterator[OmaServer]:
    server = OmaServer(App(make_settings(tmp_path, database_url)))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def channel(oma_server: OmaServer) -> AsyncIterator[grpc.aio.Channel]:
    async with oma_channel(oma_server) as ch:
        yield ch
