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
from oma_server.job_watch import JobWatcher
from oma_server.joblog import JobLogService
from oma_server.replication.service import ReplicationService
from oma_server.replication.store import ReplicationJobStore
from oma_server.settings import Settings
from oma_server.stream.hub import SessionHub
from oma_server.stream.outbox import CommandOutbox
from oma_server.version import __version__
from oma_server.watch import Change, WatchHub


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
        self.joblog = JobLogService(self.db)
        self.watch = WatchHub()
        self.jobs = ReplicationJobStore(
            self.db, self.clock, self.watch, flush_interval_s=settings.progress_flush_interval_s
        )
        self.outbox = CommandOutbox(self.db, self.clock)
        self.hub = SessionHub(
            self.db,
            self.clock,
            self.appliances,
            self.jobs,
            self.outbox,
            process_id=self.process_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )
        self.replication = ReplicationService(self.db, self.clock, self.jobs, self.outbox)
        self.job_watch = JobWatcher(self.watch)
        self.job_watch.lookups.append(self._replication_change)
        self.job_watch.listers.append(self._replication_changes)
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

        await self.jobs.start()
        await self.hub.start()

    async def begin_shutdown(self) -> None:
        """Tell appliance streams to end; the server's grace period lets them drain."""
        await self.hub.stop()

    async def stop(self) -> None:
        """Finish pending writes (batched progress), then close the database."""
        await self.jobs.stop()
        self.db.close()

    async def _replication_change(self, job_id: str) -> Change | None:
        from oma_server.errors import NotFound

        try:
            job = await self.jobs.get(job_id)
        except NotFound:
            return None
        return Change(job.revision, "replication", job.id, job.vm_context_id, job, job.final)

    async def _replication_changes(self, include_finished: bool) -> list[Change]:
        if include_finished:
            page = await self.jobs.list_jobs(1000, "")
            jobs = page.jobs
        else:
            jobs = self.jobs.open_jobs()
        return [Change(j.revision, "replication", j.id, j.vm_context_id, j, j.final) for j in jobs]

    def info(self) -> ServerInfo:
        return ServerInfo(
            version=__version__,
            database_kind=self.db.kind,
            cloudstack_kind="sim" if self.settings.cloudstack == "sim" else "api",
            started_at=self.started_at,
            schema_version=self.schema_version,
            process_id=self.process_id,
        )
