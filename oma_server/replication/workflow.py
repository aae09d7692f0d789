"""The replication workflow: from StartReplication to a job the appliance copies into NBD exports.

start → (VM context → replicating, job pending, in one transaction) → provisioning: for every disk in parallel,
ensure its CloudStack volume (create, grow, attach to the OMA VM, find its device) and its NBD export → the copy
command is queued for the appliance with each disk's target and previous change id → the stream takes over.
When the job ends, the VM context follows in the same transaction (ready_for_failover, or failed).

Incremental runs reuse volumes and exports and send each disk's last change id; a disk without one, or whose
capacity changed since it was recorded (resized), gets a full copy — that disk only, with the reason logged.
After an OMA restart, jobs still pending or provisioning run their (idempotent) steps again.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import ReplicationJob, VmContext
from oma_server.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument
from oma_server.joblog import JobLogService, note
from oma_server.replication.service import ReplicationService
from oma_server.replication.state_machine import DiskState, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.storage.exports import ExportService
from oma_server.storage.volumes import VolumeProvisioner
from oma_server.vm_contexts.service import VmContextService, VmView
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

KINDS = ("initial", "incremental", "final")
STARTABLE = (VmStatus.DISCOVERED, VmStatus.READY_FOR_FAILOVER, VmStatus.FAILED)


def plan_disks(view: VmView, kind: str) -> list[DiskState]:
    """Per disk: full or incremental, the change id to start from, and why a full copy was chosen."""
    plan = []
    for d in view.disks:
        disk = d.disk
        reason = ""
        if kind == "initial":
            reason = "initial replication"
        elif not disk.last_change_id:
            reason = "no previous change id for this disk"
        elif disk.replicated_capacity_bytes and disk.replicated_capacity_bytes != disk.capacity_bytes:
            reason = f"disk resized from {disk.replicated_capacity_bytes} to {disk.capacity_bytes} bytes"
        full = bool(reason)
        plan.append(
            DiskState(
                disk_id=disk.id,
                disk_key=disk.key,
                bytes_total=disk.capacity_bytes if full else 0,
                mode="full" if full else "incremental",
                previous_change_id="" if full else disk.last_change_id,
                full_copy_reason="" if kind == "initial" else reason,
            )
        )
    return plan


def vm_after_job(job: JobState) -> None:
    """The VM context's status when its replication job ends (runs in the job's final transaction)."""
    vm = VmContext.get_or_none(VmContext.id == job.vm_context_id)
    if vm is None or vm.active_job_id != job.id:
        return  # not the job the VM is bound to (a final sync belongs to its failover job)
    if job.status == JobStatus.COMPLETED:
        transition_vm(vm.id, VmStatus.READY_FOR_FAILOVER, active_job_id="", last_completed_job_id=job.id)
    elif job.started_at is None:
        # Nothing was copied: the replicas are as the last completed run left them.
        back = VmStatus.READY_FOR_FAILOVER if vm.last_completed_job_id else VmStatus.DISCOVERED
        transition_vm(vm.id, back, active_job_id="")
    else:
        # A partial copy leaves the replicas between two change ids: not fit for failover until a run completes.
        transition_vm(vm.id, VmStatus.FAILED, active_job_id="")


class ReplicationWorkflow:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: ReplicationJobStore,
        service: ReplicationService,
        vms: VmContextService,
        volumes: VolumeProvisioner,
        exports: ExportService,
        joblog: JobLogService,
    ) -> None:
        self.db = db
        self.clock = clock
        self.jobs = jobs
        self.service = service
        self.vms = vms
        self.volumes = volumes
        self.exports = exports
        self.joblog = joblog
        self._tasks: dict[str, asyncio.Task[None]] = {}
        jobs.final_hooks.append(vm_after_job)
        service.start_job = self.start_job

    async def start_job(self, vm_context_id: str, kind: str, request_id: str, retry_of: str) -> JobState:
        if kind and kind not in KINDS:
            raise InvalidArgument(f"unknown replication kind {kind!r}", reason="KIND_INVALID")
        if request_id:
            existing = await self.db.run(ReplicationJob.get_or_none, ReplicationJob.request_id == request_id)
            if existing is not None:
                if existing.vm_context_id != vm_context_id:
                    raise AlreadyExists(
                        f"request_id {request_id!r} was used for another VM context; use a new request_id",
                        reason="REQUEST_ID_REUSED",
                    )
                return await self.jobs.get(existing.id)
        view = await self.vms.get(vm_context_id)
        vm = view.vm
        active = [j for j in self.jobs.open_jobs() if j.vm_context_id == vm_context_id]
        # A final sync runs inside a live failover, which holds the VM's active job itself.
        if active or (vm.active_job_id and kind != "final"):
            job_id = active[0].id if active else vm.active_job_id
            raise FailedPrecondition(
                f"VM {vm.name} already has an active job {job_id}; wait for it or cancel it first",
                reason="JOB_ALREADY_ACTIVE",
                vm_context_id=vm_context_id,
                active_job_id=job_id,
            )
        if VmStatus(vm.status) not in STARTABLE and kind != "final":
            raise FailedPrecondition(
                f"VM {vm.name} is {vm.status}; replication starts only from "
                f"{', '.join(s.value for s in STARTABLE)} (clean up the failover first)",
                reason="VM_NOT_REPLICABLE",
                vm_context_id=vm_context_id,
                status=vm.status,
            )
        if not kind:
            kind = "incremental" if any(d.disk.last_change_id for d in view.disks) else "initial"
        disks = plan_disks(view, kind)

        def mark_vm(job: JobState) -> None:
            if kind != "final":
                transition_vm(vm.id, VmStatus.REPLICATING, active_job_id=job.id)
            note(job.id, "start", f"{kind} replication of {vm.name} ({len(disks)} disk(s)) requested")
            for d in disks:
                if d.full_copy_reason:
                    note(job.id, "plan", f"disk {d.disk_key}: full copy ({d.full_copy_reason})")

        job = await self.jobs.create(
            vm_context_id=vm_context_id,
            appliance_id=vm.appliance_id,
            kind=kind,
            disks=disks,
            request_id=request_id or None,
            retry_of=retry_of,
            in_tx=mark_vm,
        )
        self._spawn(job.id)
        return job

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id), name=f"replication-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def running(self, job_id: str) -> bool:
        """Whether this process runs the job's provisioning task right now."""
        return job_id in self._tasks

    def resume_job(self, job_id: str) -> None:
        """Run a pending or provisioning job's (idempotent) provisioning steps again."""
        if job_id not in self._tasks:
            self._spawn(job_id)

    async def resume_in_flight(self) -> list[str]:
        """After a restart: jobs that had not reached the appliance run their provisioning steps again."""
        resumed = [j.id for j in self.jobs.open_jobs() if j.status in (JobStatus.PENDING, JobStatus.PROVISIONING)]
        for job_id in resumed:
            logger.bind(job_id=job_id).info("resuming provisioning after a restart")
            self._spawn(job_id)
        return resumed

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait(self, job_id: str) -> None:
        """Wait until the job's provisioning task ends (tests and the demo)."""
        task = self._tasks.get(job_id)
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def _run(self, job_id: str) -> None:
        log = logger.bind(job_id=job_id)
        try:
            job = await self.jobs.get(job_id)
            if job.status == JobStatus.PENDING:
                job = await self.jobs.transition(job_id, JobStatus.PROVISIONING)
            if job.status != JobStatus.PROVISIONING:
                return
            view = await self.vms.get(job.vm_context_id)
            results = await asyncio.gather(
                *(self._provision_disk(job_id, d.disk_id) for d in job.disks), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            targets = {disk_id: (uri, resized, new) for disk_id, uri, resized, new in results}  # type: ignore[misc]

            def set_targets(state: JobState) -> None:
                for disk in state.disks:
                    uri, resized, new = targets[disk.disk_id]
                    disk.nbd_uri = uri
                    disk.target_is_new = new
                    if resized and disk.mode != "full":
                        disk.mode = "full"
                        disk.previous_change_id = ""
                        disk.full_copy_reason = "the replica volume was grown to the disk's new size"

            await self.jobs.update(job_id, set_targets, operation="Volumes and exports ready")
            capacities = {d.disk.id: d.disk.capacity_bytes for d in view.disks}
            await self.service.dispatch(job_id, view.vm.vm_uuid, capacities)
            log.info("job handed to appliance {a}", a=job.appliance_id)
        except asyncio.CancelledError:
            raise
        except FailedPrecondition as exc:
            await self._fail(job_id, exc)
        except DomainError as exc:
            await self._fail(job_id, exc)
        except Exception as exc:
            log.opt(exception=True).error("provisioning failed unexpectedly")
            await self._fail(job_id, exc)

    async def _provision_disk(self, job_id: str, disk_id: str) -> tuple[str, str, bool, bool]:
        provisioned = await self.volumes.ensure_attached(disk_id, job_id)
        export = await self.exports.ensure(provisioned.volume, job_id)
        return disk_id, export.uri, provisioned.resized, provisioned.created

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        current = self.jobs.cached(job_id)
        if current is None or current.final or current.status == JobStatus.CANCELLING:
            return  # cancelled meanwhile: nothing to fail
        reason = getattr(exc, "reason", "PROVISIONING_FAILED")
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        logger.bind(job_id=job_id).warning("job failed while provisioning: {m}", m=message)
        with contextlib.suppress(DomainError):
            await self.jobs.transition(job_id, JobStatus.FAILED, error_reason=reason, error_message=message)
