"""The janitor: no job stays in a transient status after its cause has passed.

Every unit of work finishes whole, but a job can still be left waiting for something that will never come: a
provisioning task that died, a completion that an older OMA recorded in two steps and did not finish, an appliance
that refused the start command or answered a cancel for a job it does not run. The janitor looks at every open job
at start-up, whenever an appliance answers a start or cancel command, and every `interval_s`, and finishes or fails
each such job through its state machine — with a job-log entry saying what it found and did. Statuses with a live
cause are left alone: `stalled` (the appliance is away), `replicating` and `waiting_for_vma` with an unanswered or
accepted command (the appliance works on it; liveness stalls it if the appliance goes silent).

With several OMA processes on one PostgreSQL every process's janitor looks at every open job (read from the
database), and a job without a task is resumed only when no process holds its claim (engine.JobRunner): so the
jobs of a process that died are taken over by the first janitor to look, and a job running elsewhere is left alone.
A job another process changed in the last `CLAIM_GRACE` is left for the next look (its task there may be about to
take its claim). Each pass also takes over the replicas no process holds (replication/takeover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Command
from oma_server.engine import JobRunner
from oma_server.errors import DomainError
from oma_server.failover.workflow import FailoverWorkflow
from oma_server.idempotency import purge_expired
from oma_server.joblog import note
from oma_server.protocol.commands import CommandResult
from oma_server.replication.state_machine import JobState, JobStatus, complete, transition
from oma_server.replication.store import ReplicationJobStore
from oma_server.replication.workflow import ReplicationWorkflow

CLAIM_GRACE = timedelta(seconds=5)


class HeldLocks(Protocol):
    """Which locks no OMA process holds (cluster/ownership.ProcessLocks)."""

    async def unheld(self, names: Iterable[str]) -> set[str]: ...


@dataclass(frozen=True)
class CommandAnswer:
    outcome: str  # "" while unanswered
    detail: str


def latest_answer(job_id: str, kind: str) -> CommandAnswer | None:
    """The appliance's answer to the newest command of `kind` for a job (None when there is no such command)."""
    row = (
        Command.select(Command.result_outcome, Command.result_detail)
        .where((Command.job_id == job_id) & (Command.kind == kind))
        .order_by(Command.created_at.desc(), Command.id.desc())
        .first()
    )
    return None if row is None else CommandAnswer(row.result_outcome, row.result_detail)


class Janitor:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: ReplicationJobStore,
        replication: ReplicationWorkflow,
        failover: FailoverWorkflow,
        *,
        interval_s: float = 30.0,
        locks: HeldLocks | None = None,
    ) -> None:
        self.db = db
        #: several OMA processes: a job without a task here is resumed only when no process claims it
        self.locks = locks
        self.clock = clock
        self.jobs = jobs
        self.replication = replication
        self.failover = failover
        self.interval_s = interval_s
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sweep()
        self._loop = asyncio.create_task(self._run(), name="janitor")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except Exception:
                logger.opt(exception=True).error("janitor sweep failed; trying again at the next interval")

    async def on_answer(self, command: Command, _result: CommandResult) -> None:
        """An appliance answered a start or cancel command: look at its job now."""
        if command.job_id:
            await self.check_replication(command.job_id)

    async def sweep(self) -> list[str]:
        """Check every open job once; returns the ids of the jobs it moved or restarted."""
        if self.locks is not None:
            await self.jobs.refresh_open()  # jobs other processes started or changed
            try:
                await self.replication.take_over_orphans()  # the replicas of a process that is gone
            except Exception:  # the jobs' own checks below still run; the next pass tries again
                logger.opt(exception=True).error("replicas of a process that is gone not taken over")
        repaired = [j.id for j in self.jobs.open_jobs() if await self.check_replication(j.id)]
        if purged := await self.db.tx(purge_expired, self.clock.now()):
            logger.info("purged {n} expired idempotency record(s)", n=purged)
        for job in await self.failover.store.open_jobs():
            recent = job.updated_at if job.claimed_by != self.failover.process_id else None
            if not self.failover.running(job.id) and await self._unclaimed(self.failover.runner, job.id, recent):
                logger.bind(job_id=job.id).warning("failover job {id} had no runner; resuming it", id=job.id)
                await self.db.tx(note, job.id, "janitor", "the job had no runner in this OMA; resumed")
                self.failover.resume_job(job.id)
                repaired.append(job.id)
        return repaired

    async def check_replication(self, job_id: str) -> bool:
        """Finish, fail or restart one replication job if its transient status has no cause any more."""
        job = self.jobs.cached(job_id)
        if job is None or job.final:
            return False
        log = logger.bind(job_id=job.id, vm_context_id=job.vm_context_id)
        if job.status in (JobStatus.PENDING, JobStatus.PROVISIONING):
            if self.replication.running(job.id):
                return False
            recent = job.updated_at if self.jobs.changed_elsewhere(job.id) else None
            if not await self._unclaimed(self.replication.runner, job.id, recent):
                return False  # its task runs in another OMA process
            log.warning("job {id} was {s} with no provisioning task; provisioning again", id=job.id, s=job.status)
            await self.db.tx(
                note, job.id, "janitor", f"{job.status.value} with no provisioning task; provisioning again"
            )
            self.replication.resume_job(job.id)
            return True
        fix = await self._fix_for(job)
        if fix is None:
            return False
        make, what = fix
        try:
            await self.jobs.change(job.id, make, in_tx=lambda s: note(s.id, "janitor", what))
        except DomainError as exc:  # the job moved meanwhile: the next look decides again
            log.info("janitor left job {id} alone: {e}", id=job.id, e=exc.message)
            return False
        log.warning("janitor: {what}", what=what)
        return True

    async def _unclaimed(self, runner: JobRunner, job_id: str, changed_at: datetime | None) -> bool:
        """Whether no OMA process runs the job's task (always, with one process); `changed_at`: when another
        process last changed it (None: this one did)."""
        if self.locks is None:
            return True
        if changed_at is not None and self.clock.now() - changed_at < CLAIM_GRACE:
            return False
        name = runner.claim_name(job_id)
        return name in await self.locks.unheld([name])

    async def _fix_for(self, job: JobState) -> tuple[Callable[[JobState], JobState], str] | None:
        now = self.clock.now()
        if job.status == JobStatus.COMPLETING:
            return (lambda s: complete(s, now)), "completion had begun and not finished; finished it"
        if job.status in (JobStatus.WAITING_FOR_VMA, JobStatus.STALLED) and job.started_at is None:
            answer = await self.db.run(latest_answer, job.id, "start_replication")
            if answer is not None and answer.outcome in ("failed", "rejected"):
                outcome, detail = answer.outcome, answer.detail or "no detail"
                message = (
                    f"the appliance {outcome} the start command: {detail}; fix the cause, then retry the job "
                    "(RetryReplicationJob)"
                )

                def fail(s: JobState) -> JobState:
                    return transition(
                        s,
                        JobStatus.FAILED,
                        now,
                        error_reason=f"VMA_COMMAND_{outcome.upper()}",
                        error_message=message,
                    )

                return fail, f"start command {outcome} by the appliance ({detail}); job failed"
        if job.status == JobStatus.CANCELLING:
            answer = await self.db.run(latest_answer, job.id, "cancel_job")
            if answer is not None and answer.outcome == "rejected":
                why = answer.detail or "cancel rejected"
                return (
                    lambda s: transition(s, JobStatus.CANCELLED, now),
                    f"the appliance does not run the job ({why}); cancelled",
                )
        return None
