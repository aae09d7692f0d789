"""One CloudStack volume per VMware disk, attached to the OMA VM and found by its /dev/disk/by-id path.

The device is found the way a KVM guest names it (cloudstack/devices.py): the by-id link of CloudStack's disk serial
under each bus prefix, accepted only when the disk behind it has the volume's size (and serial, where sysfs shows
it) — before anything is written to it.

Every external step is recorded before it is taken: the Volume row exists (state `creating`, with the name the
CloudStack volume will get) before createVolume is sent, so a crash between the call and its answer leaves a row
the reconciler can match by name — adopting the volume or deleting it, never leaving an orphan.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.devices import DEFAULT_SYS_ROOT, DeviceLookup, FoundDevice, lookup_device
from oma_server.cloudstack.errors import CloudStackError, CloudStackNotFound
from oma_server.cloudstack.limits import CloudLimits, VolumeSizeLimits
from oma_server.db.database import Database
from oma_server.db.models import Disk, Volume, utcnow
from oma_server.errors import FailedPrecondition
from oma_server.joblog import JobLogService

VOLUME_NAME_PREFIX = "oma-replica-"
LIVE_STATES = ("creating", "detached", "attached_to_oma", "attached_to_target", "error")


def volume_name(volume_row_id: str) -> str:
    """The CloudStack name of a replica volume; derived from our row id so a lost answer can be matched later."""
    return f"{VOLUME_NAME_PREFIX}{volume_row_id}"


@dataclass
class Provisioned:
    volume: Volume
    resized: bool = False
    created: bool = False  # created by this call: never written, so a full copy may skip zero blocks


@dataclass
class VolumeReconcileReport:
    adopted: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    reattached: list[str] = field(default_factory=list)


def disk_too_large(disk: Disk, problem: str) -> FailedPrecondition:
    """The refusal for a disk whose replica this CloudStack will not create (`problem` from VolumeSizeLimits)."""
    return FailedPrecondition(
        f"disk {disk.key} ({disk.label or 'no label'}, {disk.capacity_bytes} bytes) cannot be replicated to this "
        f"CloudStack: {problem}; then start the replication again",
        reason="DISK_TOO_LARGE",
        disk_id=disk.id,
        disk_key=disk.key,
        capacity_bytes=disk.capacity_bytes,
    )


async def size_limits(limits: CloudLimits) -> VolumeSizeLimits | None:
    """The cloud's volume-size limits; None (and a warning) when CloudStack cannot tell now: createVolume will."""
    try:
        return await limits.volume_sizes()
    except CloudStackError as exc:
        logger.warning("CloudStack volume-size limits not read ({e}); createVolume will check", e=exc.message)
        return None


def current_volume(disk_id: str) -> Volume | None:
    return (
        Volume.select()
        .where((Volume.disk == disk_id) & Volume.state.in_(LIVE_STATES))
        .order_by(Volume.created_at.desc())
        .first()
    )


class VolumeProvisioner:
    def __init__(
        self,
        db: Database,
        cloudstack: CloudStackClient,
        joblog: JobLogService,
        device_root: Path,
        *,
        sys_root: Path = DEFAULT_SYS_ROOT,
        device_wait_s: float = 30.0,
        limits: CloudLimits | None = None,
    ) -> None:
        self.db = db
        self.cloudstack = cloudstack
        self.limits = limits or CloudLimits(cloudstack)
        self.joblog = joblog
        self.device_root = device_root
        self.sys_root = sys_root
        self.device_wait_s = device_wait_s

    async def _save(self, volume_id: str, **fields: object) -> Volume:
        def update() -> Volume:
            Volume.update(updated_at=utcnow(), **fields).where(Volume.id == volume_id).execute()
            return Volume.get_by_id(volume_id)

        return await self.db.tx(update)

    async def ensure_attached(self, disk_id: str, job_id: str) -> Provisioned:
        """The disk's replica volume, created if needed, grown if the disk grew, attached to the OMA, device found."""
        disk: Disk = await self.db.run(Disk.get_by_id, disk_id)
        log = logger.bind(job_id=job_id, disk_id=disk_id)
        volume = await self.db.run(current_volume, disk_id)
        created = False
        if volume is None or not volume.cloudstack_id or disk.capacity_bytes > volume.size_bytes:
            sizes = await size_limits(self.limits)
            problem = sizes.problem(disk.capacity_bytes) if sizes else ""
            if problem:
                raise disk_too_large(disk, problem)
        if volume is None or not volume.cloudstack_id:
            volume, created = await self._create(disk, volume, job_id)
        resized = False
        if disk.capacity_bytes > volume.size_bytes:
            async with self.joblog.step(
                job_id, "resize_volume", f"volume {volume.cloudstack_id}: {volume.size_bytes} → {disk.capacity_bytes}"
            ):
                cs_volume = await self.cloudstack.resize_volume(volume.cloudstack_id, disk.capacity_bytes)
            volume = await self._save(volume.id, size_bytes=cs_volume.size_bytes)
            resized = True
            log.info(
                "volume {v} grown to {n} bytes; this disk gets a full copy", v=volume.cloudstack_id, n=volume.size_bytes
            )
        volume = await self._attach(volume, job_id)
        return Provisioned(volume, resized, created)

    async def _create(self, disk: Disk, pending: Volume | None, job_id: str) -> tuple[Volume, bool]:
        """The disk's volume, created now (True) or adopted from an earlier run (False)."""
        if pending is None:
            pending = await self.db.tx(
                lambda: Volume.create(disk=disk.id, name="", size_bytes=disk.capacity_bytes, state="creating")
            )
            pending = await self._save(pending.id, name=volume_name(pending.id))
        # A row left in `creating` by a crash: CloudStack may hold the volume already — adopt it by name.
        existing = [v for v in await self.cloudstack.list_volumes(name=pending.name) if v.name == pending.name]
        created = not existing
        if existing:
            cs_volume = existing[0]
            await self.joblog.note(job_id, "create_volume", f"adopted volume {cs_volume.id} left by an earlier run")
        else:
            async with self.joblog.step(
                job_id, "create_volume", f"disk {disk.key}: {pending.name}, {disk.capacity_bytes} bytes"
            ):
                cs_volume = await self.cloudstack.create_volume(pending.name, disk.capacity_bytes)
        saved = await self._save(
            pending.id, cloudstack_id=cs_volume.id, size_bytes=cs_volume.size_bytes, state="detached"
        )
        return saved, created

    async def _attach(self, volume: Volume, job_id: str) -> Volume:
        oma_vm = self.cloudstack.oma_vm_id
        cs_volume = await self.cloudstack.get_volume(volume.cloudstack_id)
        if cs_volume.virtual_machine_id and cs_volume.virtual_machine_id != oma_vm:
            raise FailedPrecondition(
                f"volume {volume.cloudstack_id} is attached to VM {cs_volume.virtual_machine_id}, not to the OMA; "
                "clean up the failover first",
                reason="VOLUME_ATTACHED_ELSEWHERE",
                volume_id=volume.cloudstack_id,
            )
        if not cs_volume.virtual_machine_id:
            async with self.joblog.step(job_id, "attach_volume", f"volume {volume.cloudstack_id} to the OMA VM"):
                cs_volume = await self.cloudstack.attach_volume(volume.cloudstack_id, oma_vm)
        async with self.joblog.step(job_id, "find_device", f"volume {volume.cloudstack_id} under {self.device_root}"):
            found = await self._wait_for_device(volume.cloudstack_id, cs_volume.size_bytes, cs_volume.device_id)
        log = logger.bind(job_id=job_id, volume_id=volume.cloudstack_id)
        log.info(
            "volume {v} is {p} ({n}, {b} bytes)",
            v=volume.cloudstack_id,
            p=found.path,
            n=found.kernel_name,
            b=found.size_bytes,
        )
        return await self._save(
            volume.id,
            state="attached_to_oma",
            attached_vm_id=oma_vm,
            device_id=cs_volume.device_id,
            device_path=str(found.path),
        )

    async def _wait_for_device(self, cs_volume_id: str, size_bytes: int, device_id: int | None) -> FoundDevice:
        """The attached volume's device, once the guest shows it; a clear error naming what was looked for and what
        was found when it does not within device_wait_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.device_wait_s
        while True:
            lookup: DeviceLookup = await asyncio.to_thread(
                lookup_device, self.device_root, cs_volume_id, size_bytes, self.sys_root
            )
            if lookup.found is not None:
                return lookup.found
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        reason = "DEVICE_MISMATCH" if lookup.refused else "DEVICE_NOT_FOUND"
        raise FailedPrecondition(
            f"volume {cs_volume_id} (serial {lookup.serial}, {size_bytes} bytes) is attached to the OMA VM as device "
            f"{device_id}, but no matching disk appeared within {self.device_wait_s:.0f}s: {lookup.describe()}. "
            "Check the OMA VM's disks (lsblk -o NAME,SERIAL,SIZE) and retry the job",
            reason=reason,
            volume_id=cs_volume_id,
            serial=lookup.serial,
            looked_for=",".join(str(p) for p in lookup.looked_for),
            found=lookup.refused or ",".join(lookup.seen),
        )

    async def detach(self, volume: Volume, job_id: str) -> Volume:
        cs_volume = await self.cloudstack.get_volume(volume.cloudstack_id)
        if cs_volume.virtual_machine_id:
            async with self.joblog.step(job_id, "detach_volume", f"volume {volume.cloudstack_id}"):
                await self.cloudstack.detach_volume(volume.cloudstack_id)
        return await self._save(volume.id, state="detached", attached_vm_id="", device_id=None, device_path="")

    async def reconcile(self) -> VolumeReconcileReport:
        """At start: match `creating` rows to CloudStack volumes by name (adopt, or forget when none exists), and
        delete CloudStack volumes that carry our name prefix but no row (a crash between create and record)."""
        report = VolumeReconcileReport()
        rows: list[Volume] = await self.db.run(lambda: list(Volume.select().where(Volume.state != "deleted")))
        by_name = {v.name: v for v in rows}
        try:
            cs_volumes = await self.cloudstack.list_volumes()
        except CloudStackError as exc:
            logger.warning("volume reconcile skipped: CloudStack unreachable ({err})", err=exc.message)
            return report
        cs_by_name = {v.name: v for v in cs_volumes}
        for row in rows:
            if row.state == "creating" and not row.cloudstack_id:
                found = cs_by_name.get(row.name)
                if found is not None:
                    await self._save(row.id, cloudstack_id=found.id, size_bytes=found.size_bytes, state="detached")
                    report.adopted.append(found.id)
                else:
                    await self._save(row.id, state="deleted")
                    report.forgotten.append(row.id)
        for cs_volume in cs_volumes:
            if cs_volume.name.startswith(VOLUME_NAME_PREFIX) and cs_volume.name not in by_name:
                try:
                    if cs_volume.virtual_machine_id:
                        await self.cloudstack.detach_volume(cs_volume.id)
                    await self.cloudstack.delete_volume(cs_volume.id)
                    report.orphans_deleted.append(cs_volume.id)
                except CloudStackNotFound:
                    pass
        if report.adopted or report.forgotten or report.orphans_deleted:
            logger.info(
                "volume reconcile: adopted {a}, forgot {f}, deleted orphans {o}",
                a=report.adopted,
                f=report.forgotten,
                o=report.orphans_deleted,
            )
        return report
