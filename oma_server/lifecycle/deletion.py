"""Deleting a VM context that will not be migrated: its replicas' CloudStack volumes and NBD exports go, then the
VM context with everything recorded about it (disks, change ids, jobs, block maps, its schedule, network maps).

Refused (FAILED_PRECONDITION) while a replication or failover job of the VM runs, and while the VM is anything but
discovered, ready_for_failover or failed: a test VM runs on snapshots of the replicas (clean it up first), a live VM
owns them (close the migration instead), a half-done failover needs its cleanup. Every step is a job-log entry under
the VM context's id (readable with ListJobLogEntries after the VM context is gone: the record of the deletion). A
deletion cut half-way (an outage, a restart) is finished by calling it again: each step is idempotent — a volume
already gone from CloudStack is recorded deleted, and the rows go last, in one transaction that checks again that
no job started meanwhile.

Exports: a replica's export was retired when its last job ended (recorded `removed`, its nbd-server entry dormant
with the device gone); its row goes with its volume, and nbd-server drops the dormant entry at the OMA's next start
rather than restarting now and cutting the other appliances' transfers (storage/exports.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackNotFound
from oma_server.db.database import Database
from oma_server.db.models import (
    Disk,
    FailoverJob,
    JobLog,
    NbdExport,
    NetworkMapping,
    ReplicationJob,
    Schedule,
    VmContext,
    Volume,
)
from oma_server.errors import FailedPrecondition, NotFound
from oma_server.failover.state_machine import FailoverStatus
from oma_server.joblog import JobLogService
from oma_server.replication.state_machine import FINAL
from oma_server.storage.attachments import OmaAttachments
from oma_server.vm_contexts.state_machine import VmStatus

DELETABLE = (VmStatus.DISCOVERED, VmStatus.READY_FOR_FAILOVER, VmStatus.FAILED)
FAILOVER_FINAL = (FailoverStatus.COMPLETED, FailoverStatus.FAILED, FailoverStatus.CANCELLED)
_WHAT_TO_DO = {
    VmStatus.REPLICATING: "wait for its replication job or cancel it",
    VmStatus.FAILED_OVER_TEST: "clean up its test failover first (omactl failover cleanup)",
    VmStatus.FAILED_OVER_LIVE: "it runs in CloudStack on these volumes: close the migration instead",
    VmStatus.COMPLETED: "its migration is closed; the volumes belong to the CloudStack VM",
    VmStatus.CLEANUP_REQUIRED: "run its cleanup first (omactl failover cleanup)",
}


@dataclass
class DeletedVm:
    vm_context_id: str
    name: str
    volumes_deleted: list[str] = field(default_factory=list)  # CloudStack volume ids
    exports_removed: list[str] = field(default_factory=list)  # NBD export names


def running_job(vm_id: str) -> str:
    """A replication or failover job of the VM that has not ended ("" when none)."""
    job = ReplicationJob.get_or_none(
        (ReplicationJob.vm_context == vm_id) & ReplicationJob.status.not_in([s.value for s in FINAL])
    ) or FailoverJob.get_or_none(
        (FailoverJob.vm_context == vm_id) & FailoverJob.status.not_in([s.value for s in FAILOVER_FINAL])
    )
    return "" if job is None else str(job.id)


def replica_volumes(vm_id: str) -> list[Volume]:
    """The VM's replica volumes that have not been deleted."""
    disks = Disk.select(Disk.id).where(Disk.vm_context == vm_id)
    return list(Volume.select().where(Volume.disk.in_(disks) & (Volume.state != "deleted")))


def _check(vm_id: str) -> tuple[VmContext, list[Volume]]:
    vm = VmContext.get_or_none(VmContext.id == vm_id)
    if vm is None:
        raise NotFound(f"VM context {vm_id} does not exist", reason="VM_CONTEXT_NOT_FOUND", vm_context_id=vm_id)
    running = running_job(vm_id)
    if running:
        raise FailedPrecondition(
            f"VM {vm.name} has job {running} running or scheduled; wait for it or cancel it, then delete the VM "
            "context",
            reason="JOB_ALREADY_ACTIVE",
            vm_context_id=vm_id,
            active_job_id=running,
        )
    status = VmStatus(vm.status)
    if status not in DELETABLE:
        raise FailedPrecondition(
            f"VM {vm.name} is {status.value}: {_WHAT_TO_DO.get(status, 'it cannot be deleted now')}",
            reason="VM_NOT_DELETABLE",
            vm_context_id=vm_id,
            status=status.value,
        )
    return vm, replica_volumes(vm_id)


def _remove_rows(vm_id: str, deleted: DeletedVm) -> None:
    """The VM context and what hangs on it, in one transaction; refused if a job started meanwhile."""
    running = running_job(vm_id)
    if running:
        raise FailedPrecondition(
            f"job {running} started while the VM context was being deleted; its replicas are gone, so it provisions "
            "new ones: cancel it and delete again, or keep the VM",
            reason="JOB_ALREADY_ACTIVE",
            vm_context_id=vm_id,
            active_job_id=running,
        )
    disks = Disk.select(Disk.id).where(Disk.vm_context == vm_id)
    volumes = Volume.select(Volume.id).where(Volume.disk.in_(disks))
    deleted.exports_removed += [e.name for e in NbdExport.select(NbdExport.name).where(NbdExport.volume.in_(volumes))]
    NbdExport.delete().where(NbdExport.volume.in_(volumes)).execute()
    Volume.delete().where(Volume.disk.in_(disks)).execute()
    jobs = [j.id for j in ReplicationJob.select(ReplicationJob.id).where(ReplicationJob.vm_context == vm_id)]
    jobs += [j.id for j in FailoverJob.select(FailoverJob.id).where(FailoverJob.vm_context == vm_id)]
    if jobs:
        JobLog.delete().where(JobLog.job_id.in_(jobs)).execute()
    Schedule.delete().where(Schedule.target_id == vm_id).execute()
    NetworkMapping.delete().where(NetworkMapping.vm_context_id == vm_id).execute()
    VmContext.delete().where(VmContext.id == vm_id).execute()  # disks, change ids, jobs, block maps: cascaded


class VmDeletion:
    def __init__(
        self,
        db: Database,
        cloudstack: CloudStackClient,
        attachments: OmaAttachments,
        joblog: JobLogService,
    ) -> None:
        self.db = db
        self.cloudstack = cloudstack
        self.attachments = attachments
        self.joblog = joblog
        #: called after a VM context is gone (the scheduler forgets its RPO)
        self.on_deleted: list[Callable[[str], None]] = []

    async def delete(self, vm_id: str) -> DeletedVm:
        vm, volumes = await self.db.run(_check, vm_id)
        log = logger.bind(vm_context_id=vm_id)
        deleted = DeletedVm(vm_id, vm.name)
        await self.joblog.note(vm_id, "delete_vm_context", f"deleting VM context {vm.name}: {len(volumes)} volume(s)")
        for volume in volumes:
            await self._delete_volume(vm_id, volume, deleted)
        await self.db.tx(_remove_rows, vm_id, deleted)
        await self.joblog.note(
            vm_id,
            "delete_vm_context",
            f"VM context {vm.name} deleted: CloudStack volumes {', '.join(deleted.volumes_deleted) or 'none'}, "
            f"exports {', '.join(deleted.exports_removed) or 'none'}",
            "completed",
        )
        log.info("VM context {name} deleted", name=vm.name)
        for hook in self.on_deleted:
            hook(vm_id)
        return deleted

    async def _delete_volume(self, vm_id: str, volume: Volume, deleted: DeletedVm) -> None:
        """Off the OMA VM (export retired, detached), then deleted in CloudStack; gone already is fine."""
        if volume.cloudstack_id:
            await self.attachments.release_disk(volume.disk_id, vm_id)
            async with self.joblog.step(vm_id, "delete_volume", f"volume {volume.cloudstack_id}"):
                try:
                    await self.cloudstack.delete_volume(volume.cloudstack_id)
                except CloudStackNotFound:
                    pass  # deleted by an earlier, cut-off attempt (or by hand)
            deleted.volumes_deleted.append(volume.cloudstack_id)
        await self.db.tx(Volume.update(state="deleted").where(Volume.id == volume.id).execute)
