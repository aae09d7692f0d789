"""Taking over the replicas of an OMA process that is gone (several processes on one PostgreSQL).

The process that attaches a job's replicas holds them (storage/attachments.py): it serves their exports from its NBD
server, reads each disk back after its sync and releases them at the job's end. If it dies for good, its locks go
with its database connection, and the next janitor pass of another process takes the replicas over
(`ReplicaTakeover.run`, every `--janitor-interval`):

- a job still copying (waiting for its appliance, replicating, stalled): its exports are served by this process's NBD
  server and the new addresses recorded and sent to the appliance in a start command (`ReplicationService.retarget`);
  the copies reconnect there and resume from their acknowledged points — the reference agent keeps reconnecting for
  `--target-wait` (120 s by default, longer than a janitor interval). Disks it completed meanwhile are read back now.
- a job pending or provisioning: its replicas are held here; its provisioning is resumed by the janitor like any
  unclaimed job's and exports them here.
- a job that ended meanwhile: read back (if it completed) and released, as after a restart.

Replicas live on the OMA VM, which the processes share (one host, or hosts that see the same OMA VM's disks): a
process can read and export a replica another attached.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loguru import logger

from oma_server.db.runner import Runner
from oma_server.integrity.maps import unread_on_oma_vm
from oma_server.integrity.verifier import ReplicaVerifier
from oma_server.joblog import JobLogService
from oma_server.replication.service import ReplicationService
from oma_server.replication.state_machine import JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.storage.attachments import OmaAttachments
from oma_server.vm_contexts.service import VmContextService

#: statuses in which the appliance copies (or is about to) into the job's exports
COPYING = (JobStatus.WAITING_FOR_VMA, JobStatus.REPLICATING, JobStatus.STALLED)

#: read back (if completed) and release finished jobs' replicas: the workflow's release_after_restart
Release = Callable[[list[str]], Awaitable[None]]


class ReplicaTakeover:
    def __init__(
        self,
        db: Runner,
        jobs: ReplicationJobStore,
        service: ReplicationService,
        vms: VmContextService,
        attachments: OmaAttachments,
        joblog: JobLogService,
        verifier: ReplicaVerifier | None,
        release: Release,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.service = service
        self.vms = vms
        self.attachments = attachments
        self.joblog = joblog
        self.verifier = verifier
        self.release = release

    async def run(self) -> list[str]:
        """The replicas no OMA process holds, taken over here (see the module docstring); returns the ids of the
        jobs whose replicas this process took."""
        unread = await self.db.run(unread_on_oma_vm)
        open_jobs = [(j.id, [d.disk_id for d in j.disks]) for j in self.jobs.open_jobs()]
        held, detached = await self.attachments.take_over_orphans([*open_jobs, *unread.items()])
        if detached:
            logger.info("replicas of finished jobs left by a process that is gone, detached: {n}", n=len(detached))
        for job_id in sorted(held):
            job = await self.jobs.get(job_id)
            log = logger.bind(job_id=job_id, vm_context_id=job.vm_context_id, appliance_id=job.appliance_id)
            log.warning("took over the replicas of job {job} from an OMA process that is gone", job=job_id)
            await self.joblog.note(job_id, "take_over", "replicas taken over from an OMA process that is gone")
            if job.final:  # ended while nobody held its replicas (or just now): read back if completed, released
                await self.release([job_id])
            elif job.status in COPYING:
                await self._continue_copy(job)
        return sorted(held)

    async def _continue_copy(self, job: JobState) -> None:
        """The exports of the disks still to copy served here and named to the appliance; completed disks read
        back."""
        if self.verifier is not None:
            for disk in job.disks:
                if disk.completed:
                    self.verifier.verify_disk_soon(job.id, disk.disk_id)
        uris = {}
        for disk in job.disks:
            if not disk.completed:
                export = await self.attachments.serve_here(job.id, disk.disk_id)
                if export.uri != disk.nbd_uri:
                    uris[disk.disk_id] = export.uri
        if not uris:
            return
        view = await self.vms.get(job.vm_context_id)
        capacities = {d.disk.id: d.disk.capacity_bytes for d in view.disks}
        await self.service.retarget(job.id, uris, view.vm.vm_uuid, capacities)
        logger.bind(job_id=job.id).info("the appliance is told the new NBD address of {n} disk(s)", n=len(uris))
