"""Closing a migration: a VM that runs in CloudStack after a live failover becomes `completed`.

In one transaction: the NBD export records of its replicas go (the replicas left the OMA VM at the failover; their
dormant nbd-server entries are dropped at the OMA's next start, see storage/exports.py), the volumes stay recorded as
the CloudStack VM's disks, its schedule goes, the VM context becomes completed (its state machine's
failed_over_live → completed), and a `release_source` command for its appliance enters the durable outbox: the
appliance disables CBT on the source's disks and deletes the snapshots it took, whenever it is next connected. Its
answer is recorded in the job log under the VM context's id, beside the record of the completion. Nothing here waits
for the appliance: a migration closes even when the VMware side is already gone, and the outbox says what is still
owed to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import Command as CommandRow
from oma_server.db.models import FailoverJob, NbdExport, Schedule, VmContext
from oma_server.errors import FailedPrecondition, NotFound
from oma_server.joblog import JobLogService, note
from oma_server.lifecycle.deletion import replica_volumes, running_job
from oma_server.outbox import CommandOutbox, insert_command
from oma_server.protocol.commands import CommandResult, ReleaseSource
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

RELEASE_SOURCE = "release_source"


@dataclass
class CompletedVm:
    vm_context_id: str
    appliance_id: str
    target_vm_id: str
    kept_volumes: list[str] = field(default_factory=list)  # CloudStack volume ids
    exports_removed: list[str] = field(default_factory=list)
    release_command_id: str = ""


def _close(vm_id: str) -> tuple[CompletedVm, bool]:
    """The whole completion in the caller's transaction; (what it did, whether it did it now)."""
    vm = VmContext.get_or_none(VmContext.id == vm_id)
    if vm is None:
        raise NotFound(f"VM context {vm_id} does not exist", reason="VM_CONTEXT_NOT_FOUND", vm_context_id=vm_id)
    live = (
        FailoverJob.select()
        .where((FailoverJob.vm_context == vm_id) & (FailoverJob.kind == "live") & (FailoverJob.status == "completed"))
        .order_by(FailoverJob.finished_at.desc())
        .first()
    )
    volumes = replica_volumes(vm_id)
    done = CompletedVm(vm_id, vm.appliance_id, live.target_vm_id if live else "", [v.cloudstack_id for v in volumes])
    if vm.status == VmStatus.COMPLETED.value:
        earlier = CommandRow.get_or_none((CommandRow.job_id == vm_id) & (CommandRow.kind == RELEASE_SOURCE))
        done.release_command_id = earlier.id if earlier else ""
        return done, False
    running = running_job(vm_id)
    if running:
        raise FailedPrecondition(
            f"VM {vm.name} has job {running} running; wait for it, then complete the migration",
            reason="JOB_ALREADY_ACTIVE",
            vm_context_id=vm_id,
            active_job_id=running,
        )
    if vm.status != VmStatus.FAILED_OVER_LIVE.value:
        raise FailedPrecondition(
            f"VM {vm.name} is {vm.status}; only a VM that runs in CloudStack after a live failover (failed_over_live) "
            "completes its migration — fail it over live first, or delete the VM context if it will not be migrated",
            reason="VM_NOT_FAILED_OVER_LIVE",
            vm_context_id=vm_id,
            status=vm.status,
        )
    exports = NbdExport.select(NbdExport.name).where(NbdExport.volume.in_([v.id for v in volumes]))
    done.exports_removed = [e.name for e in exports]
    NbdExport.delete().where(NbdExport.volume.in_([v.id for v in volumes])).execute()
    Schedule.delete().where(Schedule.target_id == vm_id).execute()
    transition_vm(vm_id, VmStatus.COMPLETED, active_job_id="")
    queued = insert_command(vm.appliance_id, ReleaseSource(vm_uuid=vm.vm_uuid), job_id=vm_id)
    done.release_command_id = queued.command_id
    note(
        vm_id,
        "complete_migration",
        f"migration of {vm.name} completed: it runs in CloudStack as VM {done.target_vm_id or '(unknown)'} on volumes "
        f"{', '.join(done.kept_volumes) or 'none'} (kept); export records removed: "
        f"{', '.join(done.exports_removed) or 'none'}; source release queued for appliance {vm.appliance_id} "
        f"(command {queued.command_id})",
        "completed",
    )
    return done, True


class MigrationCompletion:
    def __init__(self, db: Database, outbox: CommandOutbox, joblog: JobLogService) -> None:
        self.db = db
        self.outbox = outbox
        self.joblog = joblog
        #: called after a migration closed (the scheduler forgets the VM's RPO)
        self.on_completed: list[Callable[[str], None]] = []
        outbox.on_result(RELEASE_SOURCE, self._answered)

    async def complete(self, vm_id: str) -> CompletedVm:
        done, now = await self.db.tx(_close, vm_id)
        if now:
            logger.bind(vm_context_id=vm_id, target_vm_id=done.target_vm_id).info("migration completed")
            await self.outbox.kick(done.appliance_id)
            for hook in self.on_completed:
                hook(vm_id)
        return done

    async def _answered(self, command: CommandRow, result: CommandResult) -> None:
        """The appliance's answer to a release: in the VM's job log, beside the completion."""
        status = "completed" if result.succeeded else "failed"
        detail = result.detail or "no detail"
        message = f"appliance {command.appliance_id} released the source side: {detail}"
        if not result.succeeded:
            message = f"appliance {command.appliance_id} did not release the source side ({result.outcome}): {detail}"
        await self.joblog.note(command.job_id, RELEASE_SOURCE, message, status)
        logger.bind(vm_context_id=command.job_id, command_id=command.id).info(message)
