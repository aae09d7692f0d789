"""Operator-facing replication actions: start, cancel, retry; and handing a provisioned job to its appliance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.errors import FailedPrecondition, Unavailable
from oma_server.joblog import note
from oma_server.outbox import CommandOutbox, insert_command
from oma_server.replication.commands import cancel_command, start_replication_command
from oma_server.replication.state_machine import CANCELLABLE, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore

# The replication workflow's start: (vm_context_id, kind, request_id, retry_of) → the new job.
StartJob = Callable[[str, str, str, str], Awaitable[JobState]]


class ReplicationService:
    def __init__(self, db: Database, clock: Clock, jobs: ReplicationJobStore, outbox: CommandOutbox) -> None:
        self.db = db
        self.clock = clock
        self.jobs = jobs
        self.outbox = outbox
        self._start_job: StartJob | None = None

    def start_through(self, start_job: StartJob) -> None:
        """Who starts jobs: the replication workflow (built when CloudStack is reachable)."""
        self._start_job = start_job

    async def start(self, vm_context_id: str, kind: str, request_id: str) -> JobState:
        if self._start_job is None:
            raise Unavailable("the OMA is still starting; try again in a moment", reason="SERVER_STARTING")
        return await self._start_job(vm_context_id, kind, request_id, "")

    async def retry(self, job_id: str) -> JobState:
        job = await self.jobs.get(job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise FailedPrecondition(
                f"replication job {job_id} is {job.status.value}; only a failed or cancelled job can be retried",
                reason="JOB_NOT_RETRYABLE",
                job_id=job_id,
                status=job.status.value,
            )
        if self._start_job is None:
            raise Unavailable("the OMA is still starting; try again in a moment", reason="SERVER_STARTING")
        return await self._start_job(job.vm_context_id, job.kind, "", job.id)

    async def dispatch(self, job_id: str, vm_uuid: str, capacities: dict[str, int]) -> JobState:
        """Job → waiting_for_vma and the StartReplicationCommand queued, in one transaction; then delivered."""
        job = await self.jobs.get(job_id)
        command = start_replication_command(job, vm_uuid, capacities)

        def queue(state: JobState) -> None:
            insert_command(state.appliance_id, command, job_id=state.id)
            note(state.id, "command_vma", f"start command for {len(command.disks)} disk(s) queued")

        after = await self.jobs.transition(job_id, JobStatus.WAITING_FOR_VMA, in_tx=queue)
        await self.outbox.kick(after.appliance_id)
        return after

    async def cancel(self, job_id: str) -> JobState:
        """Cancel a job. Before the appliance was commanded it ends at once; after, the appliance is told and the job
        is `cancelling` until it confirms. Volumes and exports stay for the next run."""
        job = await self.jobs.get(job_id)
        if job.status not in CANCELLABLE:
            raise FailedPrecondition(
                f"replication job {job_id} is {job.status.value} and cannot be cancelled",
                reason="JOB_NOT_CANCELLABLE",
                job_id=job_id,
                status=job.status.value,
            )
        appliance_working = job.status in (JobStatus.WAITING_FOR_VMA, JobStatus.REPLICATING, JobStatus.STALLED)

        def queue_cancel(state: JobState) -> None:
            if appliance_working:
                insert_command(state.appliance_id, cancel_command(state.id), job_id=state.id)
            note(state.id, "cancel", "cancel requested by the operator")

        after = await self.jobs.transition(job_id, JobStatus.CANCELLING, in_tx=queue_cancel)
        if not appliance_working:
            return await self.jobs.transition(job_id, JobStatus.CANCELLED)
        await self.outbox.kick(after.appliance_id)
        return after
