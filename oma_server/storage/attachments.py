"""The OMA VM's data-volume slots: replicas are attached only while a job writes them, and work queues when it is full.

Every replica the OMA exports over NBD is a data volume attached to the OMA VM, and CloudStack lets a VM hold only so
many (the hypervisor's `maxdatavolumeslimit`, cloudstack/limits.py). Keeping every replica attached would bound the
number of VMs a cloud can replicate at all, so a replica is attached when a replication job is about to write it and
detached (its export removed first) when the job ends. A job that needs more slots than are free waits — first come
first served, a live failover's final sync ahead of the rest (its source VM is powered off while it waits) — with its
place shown in the job's current_operation and the job log; it keeps no status of its own (it is `provisioning`).

Capacity = the limit minus the data volumes on the OMA VM that are not our replicas. The limit is read from the cloud
at start; an account that may not read hypervisor capabilities learns it from CloudStack's refusal of an attach
("already has the maximum number of data disks (N)"), and the refused job goes back to the queue.

Per disk, one lock orders attach and detach, and the job that attached a replica owns it: a finished job's release
never detaches a replica the next job of the same VM has taken meanwhile. After a crash, `reconcile` holds the slots
of the jobs still open and detaches every other replica left on the OMA VM.

Several OMA processes on one PostgreSQL: the process that attaches a replica holds a lock `replica:<disk id>`
(`claims`, cluster/ownership.py) from just before the attach until it takes the replica off, so a process that
starts leaves every replica another live process holds alone — its `reconcile` neither counts their slots nor
detaches them — and takes over (holds, or detaches when its job is over) only those whose process is gone: at its
start, and on every janitor pass while it runs (`take_over_orphans`; the replication workflow then serves their
exports here and names the new address to the appliance: replication/takeover.py). Slots are counted per process;
CloudStack's refusal of an attach to a full VM sends a job back to the queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackError, CloudStackNotFound
from oma_server.cloudstack.limits import CloudLimits, DataVolumeLimit, limit_from_refusal
from oma_server.cloudstack.models import VolumeType
from oma_server.db.database import Database
from oma_server.db.models import JobDisk, ReplicationJob, Volume
from oma_server.engine import Claims
from oma_server.errors import FailedPrecondition
from oma_server.joblog import JobLogService
from oma_server.storage.exports import ExportService, ExportView
from oma_server.storage.volumes import VOLUME_NAME_PREFIX, Provisioned, VolumeProvisioner, current_volume

#: queue priorities: lower goes first
FINAL_SYNC_PRIORITY = 0
DEFAULT_PRIORITY = 1


@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting job stands."""

    needed: int
    ahead: int
    in_use: int
    capacity: int | None

    def describe(self) -> str:
        return (
            f"Waiting for {self.needed} free data-volume slot(s) on the OMA VM "
            f"({self.in_use} of {self.capacity} in use, {self.ahead} job(s) ahead)"
        )


OnWait = Callable[[QueuePlace], Awaitable[None]]


@dataclass(eq=False)
class _Waiter:
    job_id: str
    needed: int
    priority: int
    order: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SlotPool:
    """Who holds how many slots and who waits (by priority, then arrival). In memory: `reconcile` rebuilds it."""

    def __init__(self, capacity: int | None = None) -> None:
        self._capacity = capacity
        #: what the capacity is made of, for messages
        self.capacity_note = "the limit is not known yet"
        self._held: dict[str, int] = {}
        self._waiting: list[_Waiter] = []
        self._arrivals = itertools.count()
        #: the most slots ever held at once (benchmarks and tests check it against the capacity)
        self.peak = 0

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def set_capacity(self, capacity: int | None, note: str) -> None:
        self._capacity = capacity
        self.capacity_note = note
        self._wake_all()

    @property
    def in_use(self) -> int:
        return sum(self._held.values())

    def held_by(self, job_id: str) -> int:
        return self._held.get(job_id, 0)

    def waiting(self) -> list[str]:
        return [w.job_id for w in sorted(self._waiting, key=lambda w: (w.priority, w.order))]

    def hold(self, job_id: str, count: int) -> None:
        """Record slots a job already holds (at start, for the jobs whose replicas are attached)."""
        self._held[job_id] = count
        self.peak = max(self.peak, self.in_use)

    def _too_many(self, needed: int) -> FailedPrecondition:
        return FailedPrecondition(
            f"the job needs {needed} data-volume slots on the OMA VM, which holds at most {self._capacity} replicas "
            f"({self.capacity_note}); raise the hypervisor's data-volume limit (updateHypervisorCapabilities "
            "maxdatavolumeslimit) or detach the OMA VM's other data disks",
            reason="OMA_CAPACITY_TOO_SMALL",
            needed=needed,
            capacity=self._capacity,
        )

    def check_fits(self, needed: int) -> None:
        """Refuse at once a job the OMA VM could never hold."""
        if self._capacity is not None and needed > self._capacity:
            raise self._too_many(needed)

    def _fits(self, waiter: _Waiter) -> bool:
        if self._capacity is None:
            return True
        others = self.in_use - self.held_by(waiter.job_id)
        return others + waiter.needed <= self._capacity

    def _place(self, waiter: _Waiter) -> QueuePlace:
        order = sorted(self._waiting, key=lambda w: (w.priority, w.order))
        return QueuePlace(waiter.needed, order.index(waiter), self.in_use, self._capacity)

    async def acquire(self, job_id: str, needed: int, *, priority: int = DEFAULT_PRIORITY, on_wait: OnWait) -> bool:
        """Hold `needed` slots for the job (what it holds already counts); True if it had to wait."""
        self.check_fits(needed)
        waiter = _Waiter(job_id, needed, priority, next(self._arrivals))
        self._waiting.append(waiter)
        waited = False
        last: QueuePlace | None = None
        try:
            while True:
                self.check_fits(needed)  # the capacity may have shrunk meanwhile
                first = min(self._waiting, key=lambda w: (w.priority, w.order))
                if first is waiter and self._fits(waiter):
                    break
                place = self._place(waiter)
                if place != last:
                    await on_wait(place)
                    last, waited = place, True
                waiter.wake.clear()
                await waiter.wake.wait()
            self._held[job_id] = needed
            self.peak = max(self.peak, self.in_use)
        finally:
            self._waiting.remove(waiter)
            self._wake_all()
        return waited

    def release(self, job_id: str) -> int:
        freed = self._held.pop(job_id, 0)
        self._wake_all()
        return freed

    def _wake_all(self) -> None:
        for waiter in self._waiting:
            waiter.wake.set()


class OmaAttachments:
    """Attaching replicas to the OMA VM for the jobs that write them, and taking them off again."""

    def __init__(
        self,
        db: Database,
        cloudstack: CloudStackClient,
        limits: CloudLimits,
        volumes: VolumeProvisioner,
        exports: ExportService,
        joblog: JobLogService,
    ) -> None:
        self.db = db
        self.cs = cloudstack
        self.limits = limits
        self.volumes = volumes
        self.exports = exports
        self.joblog = joblog
        self.pool = SlotPool()
        self.limit: DataVolumeLimit | None = None
        #: a limit taken from CloudStack's refusal of an attach (the account could not read it)
        self._learned_limit: int | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner: dict[str, str] = {}
        #: several OMA processes: a lock per replica this process has attached (None: one process)
        self.claims: Claims | None = None

    def _lock(self, disk_id: str) -> asyncio.Lock:
        return self._locks.setdefault(disk_id, asyncio.Lock())

    async def _claim(self, disk_id: str) -> bool:
        """Hold the disk's replica for this process (True), or another OMA process does."""
        return self.claims is None or await self.claims.take(f"replica:{disk_id}")

    async def _unclaim(self, disk_id: str) -> None:
        if self.claims is not None:
            await self.claims.give_up(f"replica:{disk_id}")

    async def _claimed(self, disk_id: str) -> None:
        if not await self._claim(disk_id):
            raise FailedPrecondition(
                f"the replica of disk {disk_id} is attached by another OMA process; try again when its job is over",
                reason="REPLICA_HELD_ELSEWHERE",
                disk_id=disk_id,
            )

    # ---- capacity -------------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """The capacity from the cloud: the OMA VM's data-volume limit minus its data volumes that are not ours."""
        try:
            oma = self.cs.oma_vm_id
            self.limit = await self.limits.data_volumes(oma)
            on_oma = await self.cs.list_volumes(vm_id=oma)
        except (CloudStackError, FailedPrecondition) as exc:  # unreachable, or the OMA VM id is not configured
            logger.warning("OMA VM capacity not read ({e}); keeping {c}", e=exc.message, c=self.pool.capacity)
            return
        foreign = [v for v in on_oma if v.type is VolumeType.DATADISK and not v.name.startswith(VOLUME_NAME_PREFIX)]
        limit = self.limit.limit if self.limit.limit is not None else self._learned_limit
        if limit is None:
            self.pool.set_capacity(None, f"the limit is not readable ({self.limit.source}); learnt from CloudStack")
        else:
            source = self.limit.source if self.limit.limit is not None else "CloudStack's refusal of an attach"
            note = f"data-volume limit {limit} from {source}, {len(foreign)} taken by the OMA VM's own disks"
            self.pool.set_capacity(max(0, limit - len(foreign)), note)
        logger.info("OMA VM data-volume slots for replicas: {c} ({n})", c=self.pool.capacity, n=self.pool.capacity_note)

    async def learn_from(self, error: CloudStackError) -> bool:
        """An attach refused because the OMA VM is full: take the limit CloudStack names. True if it was that."""
        limit = limit_from_refusal(error)
        if limit is None:
            return False
        self._learned_limit = limit
        await self.refresh()
        return True

    # ---- jobs -------------------------------------------------------------------------------------------------
    def holds(self, job_id: str) -> bool:
        """Whether the job holds slots or owns a replica on the OMA VM (its release is still to come)."""
        return self.pool.held_by(job_id) > 0 or job_id in self._owner.values()

    async def admit(self, job_id: str, disks: int, *, final_sync: bool, on_wait: OnWait) -> bool:
        """Wait for a slot per disk of the job; True if it waited."""
        priority = FINAL_SYNC_PRIORITY if final_sync else DEFAULT_PRIORITY
        return await self.pool.acquire(job_id, disks, priority=priority, on_wait=on_wait)

    async def attach(self, job_id: str, disk_id: str) -> tuple[Provisioned, ExportView]:
        """The disk's replica attached to the OMA VM and exported, owned by the job."""
        async with self._lock(disk_id):
            await self._claimed(disk_id)  # before the attach: a process starting now leaves it alone
            provisioned = await self.volumes.ensure_attached(disk_id, job_id)
            export = await self.exports.ensure(provisioned.volume, job_id)
            self._owner[disk_id] = job_id
        return provisioned, export

    async def attach_for_read(self, job_id: str, disk_id: str) -> Provisioned:
        """The disk's existing replica attached to the OMA VM for reading only (a verification at rest): owned by the
        job, never exported. Released like a writer's, by `release_job`."""
        async with self._lock(disk_id):
            await self._claimed(disk_id)
            provisioned = await self.volumes.ensure_attached(disk_id, job_id)
            self._owner[disk_id] = job_id
        return provisioned

    async def release_job(self, job_id: str, disk_ids: Iterable[str]) -> int:
        """After a job: its replicas leave the OMA VM (unless another job took them) and its slots are free.
        Returns how many volumes were detached. A replica CloudStack would not detach keeps its slot (held as
        `unreleased:<disk>`) until the next start's reconcile takes it off, and the error is raised after the rest."""
        detached = 0
        stuck: list[tuple[str, CloudStackError]] = []
        for disk_id in disk_ids:
            async with self._lock(disk_id):
                if self._owner.get(disk_id, job_id) != job_id:
                    continue  # the next job of this VM has it now
                try:
                    detached += await self._take_off(disk_id, job_id)
                except CloudStackError as exc:
                    stuck.append((disk_id, exc))
                    continue
                self._owner.pop(disk_id, None)
                await self._unclaim(disk_id)
        self.pool.release(job_id)
        for disk_id, _ in stuck:
            self.pool.hold(f"unreleased:{disk_id}", 1)
        if stuck:
            raise FailedPrecondition(
                f"{len(stuck)} replica(s) could not be detached from the OMA VM ({stuck[0][1].message}); they keep "
                "their slots until the OMA's next start detaches them",
                reason="REPLICA_NOT_RELEASED",
                disk_ids=",".join(d for d, _ in stuck),
            )
        return detached

    async def release_disk(self, disk_id: str, job_id: str) -> bool:
        """The disk's replica off the OMA VM whoever attached it (failover: the VM is no longer replicated)."""
        async with self._lock(disk_id):
            detached = await self._take_off(disk_id, job_id)
            self._owner.pop(disk_id, None)
            await self._unclaim(disk_id)
        return detached

    async def _take_off(self, disk_id: str, job_id: str) -> bool:
        volume = await self.db.run(current_volume, disk_id)
        if volume is None or not volume.cloudstack_id:
            return False
        await self.exports.retire(volume, job_id)
        try:
            cs_volume = await self.cs.get_volume(volume.cloudstack_id)
        except CloudStackNotFound:
            return False
        if cs_volume.virtual_machine_id and cs_volume.virtual_machine_id != self.cs.oma_vm_id:
            return False  # on a failover target: not ours to move here
        await self.volumes.detach(volume, job_id)
        return bool(cs_volume.virtual_machine_id)

    # ---- after a restart, and replicas of a process that is gone ----------------------------------------------
    async def reconcile(self, open_jobs: Iterable[tuple[str, list[str]]]) -> list[str]:
        """At start, before nbd-server serves the recorded exports: the capacity from the cloud, slots held for the
        open jobs (job id, disk ids) whose replicas are attached, and every other replica on the OMA VM detached.
        Returns the disk ids detached."""
        await self.refresh()
        _, detached = await self._settle_attached(open_jobs)
        if detached:
            logger.info("replicas of finished jobs detached from the OMA VM at start: {n}", n=len(detached))
        return detached

    async def take_over_orphans(self, open_jobs: Iterable[tuple[str, list[str]]]) -> tuple[set[str], list[str]]:
        """Several OMA processes, while running: the replicas on the OMA VM that no process holds (the process that
        attached them died, or lost its database connection) settled as at a start — held here for their open jobs
        (job id, disk ids), detached when their job is over. Returns (the ids of the jobs whose replicas this process
        now holds, the disk ids detached)."""
        return await self._settle_attached(open_jobs)

    async def _settle_attached(self, open_jobs: Iterable[tuple[str, list[str]]]) -> tuple[set[str], list[str]]:
        disks_of_job = {job_id: list(disks) for job_id, disks in open_jobs}
        job_of_disk = {disk_id: job_id for job_id, disks in disks_of_job.items() for disk_id in disks}
        held: set[str] = set()
        detached = []
        attached = [d for d in await self.db.run(_attached_disk_ids) if d not in self._owner]
        if self.claims is not None:  # one query for which are free, rather than a refused lock per replica
            free = await self.claims.unheld(f"replica:{d}" for d in attached)
            attached = [d for d in attached if f"replica:{d}" in free]
        for disk_id, last_job_id in await self.db.run(_with_latest_jobs, attached):
            async with self._lock(disk_id):  # an attach or release here in progress ends first
                if disk_id in self._owner or not await self._claim(disk_id):
                    continue  # this process's own, or another live OMA process's: its slots and release are its own
                if not await self.db.run(_attached_to_oma, disk_id):  # released just before the claim
                    await self._unclaim(disk_id)
                    continue
                job_id = job_of_disk.get(disk_id)
                if job_id is not None:
                    self._owner[disk_id] = job_id
                    self.pool.hold(job_id, len(disks_of_job[job_id]))
                    held.add(job_id)
                    continue
            try:
                # logged under the disk's last job: the one whose end should have released it
                if await self.release_disk(disk_id, last_job_id):
                    detached.append(disk_id)
            except CloudStackError as exc:
                logger.warning("replica of disk {d} left on the OMA VM: {e}", d=disk_id, e=exc.message)
        return held, detached

    async def serve_here(self, job_id: str, disk_id: str) -> ExportView:
        """The export of a replica this process holds, served by this process's NBD server (a replica taken over
        from a process that is gone: its appliance is told the new address)."""
        async with self._lock(disk_id):
            volume = await self.db.run(current_volume, disk_id)
            if volume is None or disk_id not in self._owner:
                raise FailedPrecondition(
                    f"the replica of disk {disk_id} is not held by this OMA process",
                    reason="REPLICA_NOT_HELD",
                    disk_id=disk_id,
                )
            return await self.exports.ensure(volume, job_id)


def _attached_disk_ids() -> list[str]:
    """The disk ids of every replica recorded as attached to the OMA VM."""
    return [v.disk_id for v in Volume.select(Volume.disk).where(Volume.state == "attached_to_oma")]


def _with_latest_jobs(disk_ids: list[str]) -> list[tuple[str, str]]:
    """(disk id, id of the disk's latest replication job, "" if none) of each disk. Asked only for the replicas a
    pass settles: a running process's pass, which finds none nearly always, costs two queries."""
    out = []
    for disk_id in disk_ids:
        latest = (
            JobDisk.select(JobDisk.job)
            .join(ReplicationJob)
            .where(JobDisk.disk == disk_id)
            .order_by(ReplicationJob.created_at.desc())
            .first()
        )
        out.append((disk_id, latest.job_id if latest else ""))
    return out


def _attached_to_oma(disk_id: str) -> bool:
    volume = current_volume(disk_id)
    return volume is not None and volume.state == "attached_to_oma"
