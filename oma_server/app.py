"""The application: every long-lived component, built once from Settings, started and stopped in order.

Servicers receive the App and call its services; nothing here imports grpc.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from loguru import logger

from oma_server.appliances import ApplianceService
from oma_server.clock import Clock, SystemClock
from oma_server.db.database import Database, redact_url
from oma_server.db.migrations import apply_migrations, current_version
from oma_server.settings import Settings
from oma_server.version import __version__


@dataclass(frozen=True)
class ServerInfo:
    version: str
    database_kind: str
    cloudstack_kind: str
    started_at: datetime
    schema_version: int
    process_id: str


class App:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.process_id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = self.clock.now()
        self.db = Database(settings.database_url)
        self.appliances = ApplianceService(self.db)
        self.schema_version = 0

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.run(self.db.check_connection)
        applied = await self.db.run(apply_migrations, self.db.peewee)
        self.schema_version = await self.db.run(current_version, self.db.peewee)
        logger.info(
            "database ready: {url} (schema {schema}, {n} migrations applied now)",
            url=redact_url(self.db.url),
            schema=self.schema_version,
            n=len(applied),
        )

    async def stop(self) -> None:
        """Finish pending writes, then close the database."""
        self.db.close()

    def info(self) -> ServerInfo:
        return ServerInfo(
            version=__version__,
            database_kind=self.db.kind,
            cloudstack_kind="sim" if self.settings.cloudstack == "sim" else "api",
            started_at=self.started_at,
            schema_version=self.schema_version,
            process_id=self.process_id,
        )
