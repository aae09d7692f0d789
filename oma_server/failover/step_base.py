"""What every failover, cleanup and rollback step shares: its context and result, the replicas it works on, the
parts it talks to, and the helpers of more than one step (`StepBase`). The steps themselves are in
`forward_steps.py` (test and live failover) and `undo_steps.py` (cleanup and rollback); `steps.py` declares them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from oma_server.clock import Clock, SystemClock
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackNotFound
from oma_server.cloudstack.models import Snapshot, VirtualMachine
from oma_server.db.database import Database
from oma_server.db.models import Disk, VmContext, Volume, new_id, utcnow
from oma_server.engine import Step
from oma_server.errors import FailedPrecondition
from oma_server.failover.readiness import ReadinessChecker
from oma_server.failover.state_machine import FailoverJobState
from oma_server.failover.store import InTx, Mutate
from oma_server.joblog import JobLogService
from oma_server.outbox import CommandOutbox, insert_command
from oma_server.protocol.commands import PowerOff, PowerOn
from oma_server.replication.store import ReplicationJobStore
from oma_server.storage.attachments import OmaAttachments
from oma_server.storage.volumes import VolumeProvisioner, current_volume

SNAPSHOT_PREFIX = "oma-fo-"
# Names and ids the OMA treats as "ours" when it sweeps leftovers.
SNAPSHOT_BUSY = ("Allocated", "Creating", "BackingUp")
VM_UNUSABLE = ("Error", "Destroyed", "Expunging")

StartFinalSync = Callable[[str, str, str, str], Awaitable[Any]]
# Wait until a finished replication job's replicas were read back and left the OMA VM (ReplicationWorkflow.settled).
SyncSettled = Callable[[str], Awaitable[None]]
Record = Callable[[Mutate, InTx | None], Awaitable[FailoverJobState]]


def snapshot_name(job_id: str, disk_key: int) -> str:
    """The CloudStack name of the snapshot a failover job takes of one disk's volume (found again by it)."""
    return f"{SNAPSHOT_PREFIX}{job_id}-{disk_key}"


FailoverStep = Step["StepContext", "StepResult"]


@dataclass
class StepResult:
    skipped: bool = False
    message: str = ""
    mutate: Mutate | None = None
    in_tx: InTx | None = None


@dataclass
class StepContext:
    job: FailoverJobState
    record: Record
    # the failover a cleanup or rollback undoes (None for test and live)
    source: FailoverJobState | None = None
    log: Any = field(default=logger)

    async def save(self, mutate: Mutate, in_tx: InTx | None = None) -> None:
        self.job = await self.record(mutate, in_tx)


@dataclass(frozen=True)
class Replica:
    disk: Disk
    volume: Volume

    @property
    def cs_id(self) -> str:
        return str(self.volume.cloudstack_id)


def _load_replicas(vm_context_id: str) -> list[Replica]:
    out = []
    for disk in Disk.select().where(Disk.vm_context == vm_context_id).order_by(Disk.unit_number, Disk.key):
        volume = current_volume(disk.id)
        if volume is None or not volume.cloudstack_id:
            raise FailedPrecondition(
                f"disk {disk.key} has no replica volume; replicate the VM first",
                reason="VOLUME_MISSING",
                disk_id=disk.id,
            )
        out.append(Replica(disk, volume))
    return out


@dataclass
class StepSettings:
    driver_injection_command: str = ""
    driver_injection_timeout_s: float = 1800.0
    command_timeout_s: float = 600.0
    power_off_graceful_s: int = 300
    final_sync_timeout_s: float = 6 * 3600.0
    snapshot_wait_s: float = 600.0
    # how long a live failover waits for its final sync's read-back (a whole 1 TiB disk at 1 GB/s: ~18 min)
    verify_wait_s: float = 3600.0
    poll_interval_s: float = 0.2


class StepBase:
    """The parts the steps use and the helpers they share."""

    def __init__(
        self,
        db: Database,
        cloudstack: CloudStackClient,
        volumes: VolumeProvisioner,
        attachments: OmaAttachments,
        joblog: JobLogService,
        outbox: CommandOutbox,
        replication_jobs: ReplicationJobStore,
        start_final_sync: StartFinalSync,
        final_sync_settled: SyncSettled,
        readiness: ReadinessChecker,
        settings: StepSettings,
        clock: Clock | None = None,
    ) -> None:
        """`clock` gives wall time for deadlines set by operators (a scheduled cutover's final-sync deadline)."""
        self.clock: Clock = clock or SystemClock()
        self.db = db
        self.cs = cloudstack
        self.volumes = volumes
        self.attachments = attachments
        self.joblog = joblog
        self.outbox = outbox
        self.replication_jobs = replication_jobs
        self.start_final_sync = start_final_sync
        self.final_sync_settled = final_sync_settled
        self.readiness = readiness
        self.settings = settings

    # ---- helpers ------------------------------------------------------------------------------------------------
    async def _replicas(self, vm_context_id: str) -> list[Replica]:
        return await self.db.run(_load_replicas, vm_context_id)

    async def _vm(self, vm_context_id: str) -> VmContext:
        return await self.db.run(VmContext.get_by_id, vm_context_id)

    async def _save_volume(self, volume_id: str, **fields: object) -> None:
        await self.db.tx(lambda: Volume.update(updated_at=utcnow(), **fields).where(Volume.id == volume_id).execute())

    async def _find_vm(self, vm_id: str, name: str, by_name: bool) -> VirtualMachine | None:
        """The target VM by its recorded id, else (when this job asked CloudStack for it) by its name."""
        if vm_id:
            try:
                return await self.cs.get_vm(vm_id)
            except CloudStackNotFound:
                pass
        if by_name and name:
            found = [v for v in await self.cs.list_vms(name=name) if v.name == name]
            if found:
                return await self.cs.get_vm(found[0].id)
        return None

    async def _wait_snapshot(self, snapshot_id: str) -> Snapshot | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.snapshot_wait_s
        while True:
            found = await self.cs.list_snapshots(snapshot_id=snapshot_id)
            if not found:
                return None
            if found[0].state not in SNAPSHOT_BUSY or loop.time() > deadline:
                return found[0]
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _power_command(self, ctx: StepContext, key: str, command: PowerOff | PowerOn, what: str) -> str:
        """Queue a power command once (its id recorded on the job in the same transaction), wait for the answer."""
        vm = await self._vm(ctx.job.vm_context_id)
        command_id = str(ctx.job.params.get(key, ""))
        if not command_id:
            command_id = new_id()

            def remember(state: FailoverJobState) -> None:
                state.params[key] = command_id

            def queue(state: FailoverJobState) -> None:
                insert_command(vm.appliance_id, command, job_id=state.id, command_id=command_id)

            await ctx.save(remember, queue)
            await self.outbox.kick(vm.appliance_id)
        async with self.joblog.step(ctx.job.id, what, f"VM {vm.name} ({vm.vm_uuid}) via appliance {vm.appliance_id}"):
            result = await self.outbox.wait_result(command_id, self.settings.command_timeout_s)
            if not result.succeeded:
                raise FailedPrecondition(
                    f"the appliance could not {what.replace('_', ' ')} VM {vm.name}: {result.detail or result.outcome}",
                    reason=f"{what.upper()}_FAILED",
                    command_id=command_id,
                )
        return command_id

    async def _delete_volume_if_present(self, job_id: str, cs_volume_id: str) -> bool:
        try:
            volume = await self.cs.get_volume(cs_volume_id)
        except CloudStackNotFound:
            return False
        if volume.virtual_machine_id:
            async with self.joblog.step(job_id, "detach_volume", f"{cs_volume_id} from VM {volume.virtual_machine_id}"):
                await self.cs.detach_volume(cs_volume_id)
        async with self.joblog.step(job_id, "delete_volume", cs_volume_id):
            await self.cs.delete_volume(cs_volume_id)
        return True


def _set_snapshot(cs_volume_id: str, snapshot_id: str) -> Mutate:
    def apply(state: FailoverJobState) -> None:
        state.snapshot_ids[cs_volume_id] = snapshot_id

    return apply


def _set_target(vm_id: str) -> Mutate:
    def apply(state: FailoverJobState) -> None:
        state.target_vm_id = vm_id

    return apply
