"""One view of jobs of every kind: any job by its id, all of them newest first, and a cancel that works for each.

Replication jobs live in the replication store (open ones in memory), the failover engine's jobs (test, live,
cleanup, rollback, source power) in theirs; operators should not need to know which. A lookup of the wrong kind
(a failover job's id given to GetReplicationJob) says what the id is instead of only "does not exist".
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from oma_server.db.database import Database
from oma_server.db.models import FailoverJob, ReplicationJob
from oma_server.errors import InvalidArgument, NotFound, Unavailable
from oma_server.failover.state_machine import FailoverJobState
from oma_server.failover.store import FailoverJobStore
from oma_server.pagination import decode_token, next_token, page_size_of
from oma_server.replication.service import ReplicationService
from oma_server.replication.state_machine import FINAL, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.vm_contexts.service import VmContextService

AnyJob = JobState | FailoverJobState
_REPLICATION_OPEN = [s.value for s in JobStatus if s not in FINAL]
_FAILOVER_OPEN = ["scheduled", "pending", "running"]


@dataclass(frozen=True)
class JobsPage:
    jobs: list[AnyJob]
    next_page_token: str


def kind_of(job: AnyJob) -> str:
    """'replication' or the failover engine's kind (test, live, cleanup, rollback, power_on_source, ...)."""
    return "replication" if isinstance(job, JobState) else job.kind.value


def _newest(vm_context_id: str, open_only: bool, limit: int) -> list[tuple[datetime, str, str]]:
    """(created_at, id, table) of the newest `limit` jobs of each table (runs on a database thread)."""
    out: list[tuple[datetime, str, str]] = []
    for table, model, open_statuses in (
        ("replication", ReplicationJob, _REPLICATION_OPEN),
        ("failover", FailoverJob, _FAILOVER_OPEN),
    ):
        q = model.select(model.id, model.created_at).order_by(model.created_at.desc(), model.id.desc())
        if vm_context_id:
            q = q.where(model.vm_context == vm_context_id)
        if open_only:
            q = q.where(model.status.in_(open_statuses))
        out += [(row.created_at, row.id, table) for row in q.limit(limit)]
    return out


class Jobs:
    def __init__(
        self,
        db: Database,
        replication_jobs: ReplicationJobStore,
        failover_jobs: FailoverJobStore,
        replication: ReplicationService,
        vms: VmContextService,
    ) -> None:
        self.db = db
        self.vms = vms
        self.replication_jobs = replication_jobs
        self.failover_jobs = failover_jobs
        self.replication = replication
        self._cancel_failover: Callable[[str], Awaitable[FailoverJobState]] | None = None

    def cancel_failovers_through(self, cancel: Callable[[str], Awaitable[FailoverJobState]]) -> None:
        """Who cancels a job of the failover engine (built at start: it needs CloudStack)."""
        self._cancel_failover = cancel

    async def find(self, job_id: str) -> AnyJob | None:
        job = await self.replication_jobs.lookup(job_id)
        if job is not None:
            return job.copy()
        return await self.failover_jobs.lookup(job_id)

    async def get(self, job_id: str) -> AnyJob:
        job = await self.find(job_id)
        if job is None:
            raise NotFound(
                f"job {job_id} does not exist (no replication, failover, cleanup, rollback or power job has this id); "
                "list jobs with ListJobs",
                reason="JOB_NOT_FOUND",
                job_id=job_id,
            )
        return job

    async def replication_job(self, job_id: str) -> JobState:
        """GetReplicationJob: a job of another kind is named as such."""
        job = await self.get(job_id)
        if not isinstance(job, JobState):
            raise self._other_kind(job, "replication", "GetFailoverJob")
        return job

    async def failover_job(self, job_id: str) -> FailoverJobState:
        """GetFailoverJob: a replication job is named as such."""
        job = await self.get(job_id)
        if isinstance(job, JobState):
            raise self._other_kind(job, "failover", "GetReplicationJob")
        return job

    @staticmethod
    def _other_kind(job: AnyJob, wanted: str, rpc: str) -> NotFound:
        kind = kind_of(job)
        return NotFound(
            f"job {job.id} is a {kind} job, not a {wanted} job; read it with {rpc} or GetJob",
            reason="JOB_NOT_FOUND",
            job_id=job.id,
            job_kind=kind,
        )

    async def list_jobs(
        self, page_size: int, page_token: str, vm_context_id: str = "", open_only: bool = False
    ) -> JobsPage:
        """Every kind, newest first. The page is cut from the merge of each table's newest offset+size+1 rows: the
        cost grows with the offset, which operator listings keep small."""
        await self.vms.require(vm_context_id)
        size = page_size_of(page_size)
        offset = decode_token(page_token)
        rows = await self.db.run(_newest, vm_context_id, open_only, offset + size + 1)
        merged = heapq.nlargest(offset + size + 1, rows)  # created_at desc, then id desc
        window = merged[offset : offset + size + 1]
        jobs: list[AnyJob] = []
        for _, job_id, table in window[:size]:
            job = await (
                self.replication_jobs.get(job_id) if table == "replication" else self.failover_jobs.get(job_id)
            )
            jobs.append(job)
        return JobsPage(jobs, next_token(offset, size, len(window)))

    async def cancel(self, job_id: str, force: bool = False) -> AnyJob:
        """Cancel a job of any kind; one already cancelling (unless forced) or cancelled is returned as it is.
        `force` ends a replication job whose appliance no longer answers (ReplicationService.force_cancel)."""
        job = await self.get(job_id)
        if isinstance(job, JobState):
            if job.status == JobStatus.CANCELLED or (job.status == JobStatus.CANCELLING and not force):
                return job
            return await self.replication.cancel(job_id, force)  # a job that ended is refused, saying what it is
        if force:
            raise InvalidArgument(
                f"force applies to replication jobs; {job_id} is a failover job: cancel it without force",
                reason="FORCE_NOT_APPLICABLE",
                field="force",
            )
        if self._cancel_failover is None:
            raise Unavailable("the failover service is starting; retry in a moment", reason="NOT_READY")
        return await self._cancel_failover(job_id)
