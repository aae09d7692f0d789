"""The job log: every step of a job is recorded before it is taken, then closed with its outcome.

Functions here run inside a database transaction (on a DB thread); `JobLogService` is the async face.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from oma_server.db.database import Database
from oma_server.db.models import JobLog, utcnow
from oma_server.pagination import fetch_page


def begin_step(job_id: str, step: str, message: str = "") -> int:
    return int(JobLog.create(job_id=job_id, step=step, status="running", message=message).id)


def end_step(entry_id: int, status: str = "completed", message: str | None = None) -> None:
    fields: dict[str, object] = {"status": status, "finished_at": utcnow()}
    if message is not None:
        fields["message"] = message
    JobLog.update(**fields).where(JobLog.id == entry_id).execute()


def note(job_id: str, step: str, message: str, status: str = "info") -> None:
    now = utcnow()
    JobLog.create(job_id=job_id, step=step, status=status, message=message, started_at=now, finished_at=now)


@dataclass(frozen=True)
class JobLogPage:
    entries: list[JobLog]
    next_page_token: str


class JobLogService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def begin(self, job_id: str, step: str, message: str = "") -> int:
        return await self.db.tx(begin_step, job_id, step, message)

    async def end(self, entry_id: int, status: str = "completed", message: str | None = None) -> None:
        await self.db.tx(end_step, entry_id, status, message)

    async def note(self, job_id: str, step: str, message: str, status: str = "info") -> None:
        await self.db.tx(note, job_id, step, message, status)

    @contextlib.asynccontextmanager
    async def step(self, job_id: str, step: str, message: str = "") -> AsyncIterator[None]:
        """Record a step before it is taken; close it as completed, or failed with the error's message."""
        entry = await self.begin(job_id, step, message)
        try:
            yield
        except BaseException as exc:
            detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await self.end(entry, "failed", f"{message}: {detail}" if message else detail)
            raise
        await self.end(entry, "completed")

    async def list(self, job_id: str, page_size: int, page_token: str) -> JobLogPage:
        q = JobLog.select().where(JobLog.job_id == job_id).order_by(JobLog.id)
        return JobLogPage(*await self.db.run(fetch_page, q, page_size, page_token))
