"""Operator-facing replication actions: start, cancel (and force-cancel), retry; and handing a provisioned job to its
appliance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Appliance, NbdExport, Volume, utcnow
from oma_server.db.models import Command as CommandRow
from oma_server.errors import FailedPrecondition, Unavailable
from oma_server.joblog import note
from oma_server.outbox import CommandOutbox, insert_command
from oma_server.replication.commands import cancel_command, start_replication_command
from oma_server.replication.state_machine import CANCELLABLE, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore

#: a cancel the appliance has not answered for this long may be forced even while its stream is up (a hung agent)
FORCE_AFTER_S = 60.0
#: statuses in which the appliance holds the job (its copy, its snapshot): what a force-cancel stops waiting for
APPLIANCE_HOLDS = (JobStatus.WAITING_FOR_VMA, JobStatus.REPLICATING, JobStatus.STALLED, JobStatus.CANCELLING)

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

    async def force_cancel(self, job: JobState) -> JobState:
        """End a job whose appliance no longer answers: `cancelled` now, without its confirmation.

        Allowed when the appliance is not connected, or when it has left a cancel of this job unanswered for
        FORCE_AFTER_S (connected but hung); otherwise a plain cancel is the way (FAILED_PRECONDITION). The cancel
        command stays queued, so an appliance that comes back stops its copy and deletes its snapshot of the VM;
        its later reports of the job are acknowledged and change nothing (the job is final). What the job leaves
        behind is written to its log: the appliance side (the copy and the snapshot, until it returns) and the
        OMA's volumes and exports, which stay for the next run as after every cancel (DeleteVmContext removes
        them)."""
        why = await self.db.run(_why_force_is_allowed, job)
        left = await self.db.run(_left_behind, job)

        def queue_cancel(state: JobState) -> None:
            insert_command(state.appliance_id, cancel_command(state.id), job_id=state.id)
            note(state.id, "cancel", "cancel requested by the operator (forced)")

        def record(state: JobState) -> None:
            note(state.id, "force_cancel", f"force-cancelled: {why}; left behind: {left}", "completed")

        if job.status != JobStatus.CANCELLING:
            await self.jobs.transition(job.id, JobStatus.CANCELLING, in_tx=queue_cancel)
        after = await self.jobs.transition(job.id, JobStatus.CANCELLED, in_tx=record)
        logger.bind(job_id=job.id, appliance_id=job.appliance_id, vm_context_id=job.vm_context_id).warning(
            "replication job force-cancelled: {why}; left behind: {left}", why=why, left=left
        )
        return after

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

    async def retarget(self, job_id: str, uris: dict[str, str], vm_uuid: str, capacities: dict[str, int]) -> JobState:
        """The job's exports are served at new addresses (`uris`: disk id → NBD URI; this OMA process took the
        replicas over from one that died): the disks' targets recorded and a start command naming them queued in one
        transaction, then delivered. An appliance running the job moves its copies there (they resume from their
        acknowledged points, vma.v1 StartReplicationCommand); one that starts it again starts it with them."""

        def make(before: JobState) -> JobState:
            after = before.copy()
            for disk in after.disks:
                disk.nbd_uri = uris.get(disk.disk_id, disk.nbd_uri)
            after.updated_at = self.clock.now()
            return after

        def queue(state: JobState) -> None:
            command = start_replication_command(state, vm_uuid, capacities)
            insert_command(state.appliance_id, command, job_id=state.id)
            note(state.id, "command_vma", f"start command naming the new NBD targets of {len(uris)} disk(s) queued")

        after = await self.jobs.change(job_id, make, in_tx=queue)
        await self.outbox.kick(after.appliance_id)
        return after

    async def cancel(self, job_id: str, force: bool = False) -> JobState:
        """Cancel a job. Before the appliance was commanded it ends at once; after, the appliance is told and the job
        is `cancelling` until it confirms. Volumes and exports stay for the next run. `force`: see `force_cancel`."""
        job = await self.jobs.get(job_id)
        if force and job.status in APPLIANCE_HOLDS:
            return await self.force_cancel(job)
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


def _why_force_is_allowed(job: JobState) -> str:
    """Why the appliance will not confirm the cancel; FAILED_PRECONDITION when it still may."""
    appliance = Appliance.get_by_id(job.appliance_id)
    if appliance.connection_state != "connected":
        seen = f"{appliance.last_seen_at:%Y-%m-%d %H:%M:%S} UTC" if appliance.last_seen_at else "never"
        return f"appliance {appliance.id} is not connected (last seen {seen})"
    cancel = (
        CommandRow.select()
        .where((CommandRow.job_id == job.id) & (CommandRow.kind == "cancel_job"))
        .order_by(CommandRow.created_at.desc())
        .first()
    )
    waited = (utcnow() - cancel.created_at).total_seconds() if cancel is not None else 0.0
    if cancel is not None and cancel.status != "done" and waited >= FORCE_AFTER_S:
        return f"appliance {appliance.id} left the cancel unanswered for {waited:.0f} s"
    raise FailedPrecondition(
        f"appliance {appliance.id} is connected and may still confirm: cancel replication job {job.id} without "
        f"force (it confirms within seconds); force applies once the appliance is disconnected or has left a cancel "
        f"unanswered for {FORCE_AFTER_S:.0f} s" + (f" ({waited:.0f} s so far)" if cancel is not None else ""),
        reason="APPLIANCE_MAY_ANSWER",
        job_id=job.id,
        appliance_id=appliance.id,
    )


def _left_behind(job: JobState) -> str:
    disk_ids = [d.disk_id for d in job.disks]
    volumes = list(Volume.select().where(Volume.disk.in_(disk_ids) & (Volume.state != "deleted")))
    exports = list(NbdExport.select().where(NbdExport.volume.in_([v.id for v in volumes])))
    oma = ", ".join(f"volume {v.name} ({v.cloudstack_id or 'not created'}, {v.state})" for v in volumes)
    shares = ", ".join(f"export {e.name}" for e in exports)
    return (
        f"on appliance {job.appliance_id} its copy and its snapshot of the VM until it returns (the cancel stays "
        f"queued; it stops and deletes the snapshot then); on the OMA {oma or 'no volume'}"
        + (f" and {shares}" if shares else "")
        + ", kept for the next run (DeleteVmContext removes them)"
    )
