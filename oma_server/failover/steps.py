"""The steps of failover, cleanup and rollback: each idempotent, each checks CloudStack's state before it acts.

A step may run again after a crash, so every step first looks at what exists: a snapshot already taken is found by
its recorded id or its deterministic name, a VM already deployed is adopted by id or by name (only when this job
asked CloudStack for it), a volume already attached where it should be is left alone. What a step learns is recorded
on the job (snapshot_ids, target_vm_id, params) as soon as it is known, in a committed change of the job.

External actions inside steps are job-log entries of their own (create_snapshot, deploy_vm, attach_volume...), so
the job log names every CloudStack call and how it ended.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackNotFound
from oma_server.cloudstack.models import NicSpec, Snapshot, VirtualMachine
from oma_server.db.database import Database
from oma_server.db.models import Disk, VmContext, Volume, new_id, utcnow
from oma_server.engine import OUTAGE, Step
from oma_server.errors import DeadlineExceeded, FailedPrecondition
from oma_server.failover.readiness import ReadinessChecker
from oma_server.failover.state_machine import FailoverJobState
from oma_server.failover.store import InTx, Mutate
from oma_server.joblog import JobLogService
from oma_server.outbox import CommandOutbox, insert_command
from oma_server.protocol.commands import PowerOff, PowerOn
from oma_server.replication.state_machine import JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.storage.attachments import OmaAttachments
from oma_server.storage.volumes import VolumeProvisioner, current_volume
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

SNAPSHOT_PREFIX = "oma-fo-"
# Names and ids the OMA treats as "ours" when it sweeps leftovers.
SNAPSHOT_BUSY = ("Allocated", "Creating", "BackingUp")
VM_UNUSABLE = ("Error", "Destroyed", "Expunging")

StartFinalSync = Callable[[str, str, str, str], Awaitable[Any]]
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
    poll_interval_s: float = 0.2


class FailoverSteps:
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
        readiness: ReadinessChecker,
        settings: StepSettings,
    ) -> None:
        self.db = db
        self.cs = cloudstack
        self.volumes = volumes
        self.attachments = attachments
        self.joblog = joblog
        self.outbox = outbox
        self.replication_jobs = replication_jobs
        self.start_final_sync = start_final_sync
        self.readiness = readiness
        self.settings = settings
        # Every step once: its function, where an operator looks when it fails, its retry rule. Steps that talk to
        # CloudStack wait out an outage (engine.OUTAGE); the others fail at once. The order of the steps of each kind
        # of job is the state machine's (state_machine.STEPS).
        declared: list[FailoverStep] = [
            Step(
                "validate", self.validate, "the readiness checks (CheckFailoverReadiness) say what is missing", OUTAGE
            ),
            Step(
                "power_off_source", self.power_off_source, "check that the appliance is connected and can reach vCenter"
            ),
            Step("final_sync", self.final_sync, "see the replication job's error; the appliance must be connected"),
            Step(
                "snapshot_volumes",
                self.snapshot_volumes,
                "check the volumes' primary storage and snapshot limits in CloudStack",
                OUTAGE,
            ),
            Step(
                "detach_from_oma",
                self.detach_from_oma,
                "check the volume in CloudStack (it must be attached to the OMA VM or to none)",
                OUTAGE,
            ),
            Step(
                "deploy_vm",
                self.deploy_vm,
                "check the service offering, the template, the networks' capacity and the static IPs in the network "
                "mappings",
                OUTAGE,
            ),
            Step(
                "remove_template_root",
                self.remove_template_root,
                "check the template's root volume of the target VM in CloudStack",
                OUTAGE,
            ),
            Step(
                "attach_volumes",
                self.attach_volumes,
                "check that the volumes are not attached elsewhere and the target VM is stopped",
                OUTAGE,
            ),
            Step(
                "inject_drivers",
                self.inject_drivers,
                "see the command's output above; fix the command (--driver-injection-command)",
            ),
            Step("start_vm", self.start_vm, "check host capacity and the CloudStack events of the target VM", OUTAGE),
            Step("verify_running", self.verify_running, "check the target VM in CloudStack", OUTAGE),
            Step(
                "stop_vm",
                self.stop_vm,
                "check the target VM in CloudStack (it may be stuck Starting or Stopping)",
                OUTAGE,
            ),
            Step("detach_from_vm", self.detach_from_vm, "check the volumes' attachments in CloudStack", OUTAGE),
            Step("destroy_vm", self.destroy_vm, "check the target VM in CloudStack", OUTAGE),
            Step(
                "revert_volumes",
                self.revert_volumes,
                "check the snapshot in CloudStack (it must be BackedUp and its volume detached)",
                OUTAGE,
            ),
            Step("delete_snapshots", self.delete_snapshots, "check the snapshots in CloudStack", OUTAGE),
            Step(
                "release_volumes",
                self.release_volumes,
                "check the volumes' attachments in CloudStack and the NBD exports (ListNbdExports)",
                OUTAGE,
            ),
            Step(
                "power_on_source",
                self.power_on_source,
                "check that the appliance is connected; the source can also be powered on in vCenter",
            ),
        ]
        self.declared: dict[str, FailoverStep] = {step.name: step for step in declared}
        # the step's name before replicas left the OMA VM between jobs: cleanup jobs recorded with it resume
        self.declared["reattach_to_oma"] = self.declared["release_volumes"]

    def step(self, name: str) -> FailoverStep:
        return self.declared[name]

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

    # ---- failover (test and live) -------------------------------------------------------------------------------
    async def validate(self, ctx: StepContext) -> StepResult:
        job = ctx.job
        readiness = await self.readiness.check(
            job.vm_context_id,
            job.kind,
            service_offering_id=str(job.params.get("service_offering_id", "")),
            own_job_id=job.id,
            target_name=job.target_vm_name,
        )
        if not readiness.ready:
            vm = await self._vm(job.vm_context_id)
            raise readiness.refuse(vm.name, vm.id)
        return StepResult(message=f"{len(readiness.checks)} checks passed")

    async def power_off_source(self, ctx: StepContext) -> StepResult:
        vm = await self._vm(ctx.job.vm_context_id)
        command = PowerOff(vm_uuid=vm.vm_uuid, graceful_timeout_s=int(self.settings.power_off_graceful_s))
        command_id = await self._power_command(ctx, "power_off_command_id", command, "power_off")

        def powered_off(state: FailoverJobState) -> None:
            state.params["source_powered_off"] = True

        return StepResult(message=f"source powered off (command {command_id})", mutate=powered_off)

    async def final_sync(self, ctx: StepContext) -> StepResult:
        """A replication job of kind final; the failover waits for it and fails if it fails."""
        job = ctx.job
        sync_id = str(job.params.get("final_sync_job_id", ""))
        if not sync_id:
            # The VM context is handed to the final sync (replication refuses to start while another job is active).
            await self.db.tx(lambda: transition_vm(job.vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=""))
            started = await self.start_final_sync(job.vm_context_id, "final", f"failover-{job.id}-final", "")
            sync_id = started.id

            def remember(state: FailoverJobState) -> None:
                state.params["final_sync_job_id"] = sync_id

            await ctx.save(remember)
            ctx.log.info("final sync {sync} started", sync=sync_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.final_sync_timeout_s
        while True:
            sync = await self.replication_jobs.get(sync_id)
            if sync.final:
                break
            if loop.time() > deadline:
                raise DeadlineExceeded(
                    f"final sync {sync_id} did not finish within {self.settings.final_sync_timeout_s:.0f}s "
                    f"(it is {sync.status.value})",
                    reason="FINAL_SYNC_TIMEOUT",
                    replication_job_id=sync_id,
                )
            await asyncio.sleep(self.settings.poll_interval_s)
        if sync.status != JobStatus.COMPLETED:
            vm = await self._vm(job.vm_context_id)
            if vm.status == VmStatus.FAILED.value:

                def dirty(state: FailoverJobState) -> None:
                    state.params["replicas_dirty"] = True

                await ctx.save(dirty)
            raise FailedPrecondition(
                f"final sync {sync_id} {sync.status.value}: {sync.error_message or 'no detail'}",
                reason="FINAL_SYNC_FAILED",
                replication_job_id=sync_id,
            )

        def take_back(state: FailoverJobState) -> None:
            transition_vm(state.vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=state.id)

        return StepResult(message=f"final sync {sync_id} completed", in_tx=take_back)

    async def snapshot_volumes(self, ctx: StepContext) -> StepResult:
        taken = adopted = 0
        for replica in await self._replicas(ctx.job.vm_context_id):
            name = snapshot_name(ctx.job.id, replica.disk.key)
            recorded = ctx.job.snapshot_ids.get(replica.cs_id, "")
            candidates = [recorded] if recorded else []
            if not recorded:  # a crash between createSnapshot and its answer: find it by name
                candidates = [s.id for s in await self.cs.list_snapshots(volume_id=replica.cs_id) if s.name == name]
            usable = ""
            for snap_id in candidates:
                snap = await self._wait_snapshot(snap_id)
                if snap is not None and snap.state == "BackedUp":
                    usable = snap.id
                elif snap is not None:
                    async with self.joblog.step(ctx.job.id, "delete_snapshot", f"{snap.id} ({snap.state}, unusable)"):
                        await self.cs.delete_snapshot(snap.id)
            if usable:
                if not recorded:
                    adopted += 1
                    await ctx.save(_set_snapshot(replica.cs_id, usable))
                continue
            async with self.joblog.step(
                ctx.job.id, "create_snapshot", f"volume {replica.cs_id} (disk {replica.disk.key})"
            ):
                try:
                    snap = await self.cs.create_volume_snapshot(replica.cs_id, name)
                except Exception:
                    await self._drop_failed_snapshots(replica.cs_id, name)
                    raise
            await ctx.save(_set_snapshot(replica.cs_id, snap.id))
            taken += 1
        return StepResult(message=f"{taken} snapshot(s) taken, {adopted} adopted")

    async def _drop_failed_snapshots(self, cs_volume_id: str, name: str) -> None:
        """A failed createSnapshot may leave an Error snapshot behind: remove it now (cleanup sweeps too)."""
        try:
            for snap in await self.cs.list_snapshots(volume_id=cs_volume_id):
                if snap.name == name and snap.state not in SNAPSHOT_BUSY:
                    await self.cs.delete_snapshot(snap.id)
        except Exception as exc:  # best effort: CleanupFailover sweeps what is left
            logger.warning("could not remove failed snapshot {n}: {e}", n=name, e=exc)

    async def detach_from_oma(self, ctx: StepContext) -> StepResult:
        oma = self.cs.oma_vm_id
        detached = 0
        for replica in await self._replicas(ctx.job.vm_context_id):
            cs_volume = await self.cs.get_volume(replica.cs_id)
            if cs_volume.virtual_machine_id and cs_volume.virtual_machine_id != oma:
                raise FailedPrecondition(
                    f"volume {replica.cs_id} is attached to VM {cs_volume.virtual_machine_id}, not to the OMA",
                    reason="VOLUME_ATTACHED_ELSEWHERE",
                    volume_id=replica.cs_id,
                )
            # replicas leave the OMA VM when their replication ends; one may still be on its way off
            if await self.attachments.release_disk(replica.disk.id, ctx.job.id):
                detached += 1
        return StepResult(message=f"{detached} volume(s) detached from the OMA, exports retired")

    async def deploy_vm(self, ctx: StepContext) -> StepResult:
        job = ctx.job
        name = job.target_vm_name
        existing = await self._find_vm(job.target_vm_id, name, bool(job.params.get("deploy_requested")))
        if existing is not None and existing.state in VM_UNUSABLE:
            async with self.joblog.step(
                job.id, "destroy_vm", f"{existing.id} ({existing.state}, left by a failed deploy)"
            ):
                await self.cs.destroy_vm(existing.id, expunge=True)
            existing = None
        if existing is not None:
            vm_id = existing.id
            if vm_id != job.target_vm_id:
                await ctx.save(_set_target(vm_id))
            return StepResult(message=f"VM {name} ({vm_id}) already deployed; adopted")

        def requested(state: FailoverJobState) -> None:
            state.params["deploy_requested"] = True

        await ctx.save(requested)  # recorded before the call: a lost answer is then found by name
        nics = [NicSpec(n[0], n[1] or None, n[2] or None) for n in job.params.get("nics", [])]
        async with self.joblog.step(job.id, "deploy_vm", f"{name}: offering {job.params.get('service_offering_id')}"):
            vm = await self.cs.deploy_vm(
                name,
                str(job.params["service_offering_id"]),
                str(job.params["template_id"]),
                str(job.params["zone_id"]),
                nics,
                start=False,
            )
        await ctx.save(_set_target(vm.id))
        return StepResult(message=f"VM {name} ({vm.id}) deployed stopped with {len(nics)} NIC(s)")

    async def remove_template_root(self, ctx: StepContext) -> StepResult:
        job = ctx.job
        ours = {r.cs_id for r in await self._replicas(job.vm_context_id)}
        template_root = str(job.params.get("template_root_volume_id", ""))
        if not template_root:
            vm = await self.cs.get_vm(job.target_vm_id)
            root = vm.root_volume
            if root is None or root.id in ours:
                return StepResult(skipped=True, message="the VM has no template root volume")
            template_root = root.id

            def remember(state: FailoverJobState) -> None:
                state.params["template_root_volume_id"] = template_root

            await ctx.save(remember)  # recorded before detach: once detached it is a DATADISK nobody else tracks
        removed = await self._delete_volume_if_present(job.id, template_root)
        return StepResult(message=f"template root volume {template_root} {'deleted' if removed else 'already gone'}")

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

    async def attach_volumes(self, ctx: StepContext) -> StepResult:
        """The OS disk (first in VMware order) as ROOT at device 0, then the data disks in VMware order."""
        job = ctx.job
        target = job.target_vm_id
        attached = 0
        for index, replica in enumerate(await self._replicas(job.vm_context_id)):
            cs_volume = await self.cs.get_volume(replica.cs_id)
            if cs_volume.virtual_machine_id and cs_volume.virtual_machine_id != target:
                raise FailedPrecondition(
                    f"volume {replica.cs_id} (disk {replica.disk.key}) is attached to VM "
                    f"{cs_volume.virtual_machine_id}; detach it there first",
                    reason="VOLUME_ATTACHED_ELSEWHERE",
                    volume_id=replica.cs_id,
                )
            if not cs_volume.virtual_machine_id:
                device = 0 if index == 0 else None
                role = "root (device 0)" if index == 0 else "data disk"
                async with self.joblog.step(
                    job.id, "attach_volume", f"volume {replica.cs_id} (disk {replica.disk.key}) to {target} as {role}"
                ):
                    cs_volume = await self.cs.attach_volume(replica.cs_id, target, device)
                attached += 1
            await self._save_volume(
                replica.volume.id, state="attached_to_target", attached_vm_id=target, device_id=cs_volume.device_id
            )
        return StepResult(message=f"{attached} volume(s) attached to {target}")

    async def inject_drivers(self, ctx: StepContext) -> StepResult:
        command = self.settings.driver_injection_command
        job = ctx.job
        if not command:
            await self.joblog.note(
                job.id, "inject_drivers", "no driver-injection command configured; skipped", "skipped"
            )
            return StepResult(skipped=True, message="no driver-injection command configured")
        vm = await self._vm(job.vm_context_id)
        replicas = await self._replicas(job.vm_context_id)
        target = await self.cs.get_vm(job.target_vm_id)
        devices = {v.id: v.device_id for v in target.volumes}
        volumes = [
            {
                "disk_id": r.disk.id,
                "disk_key": r.disk.key,
                "unit_number": r.disk.unit_number,
                "volume_id": r.volume.id,
                "cloudstack_volume_id": r.cs_id,
                "device_id": devices.get(r.cs_id),
                "role": "root" if i == 0 else "data",
            }
            for i, r in enumerate(replicas)
        ]
        env = {
            **os.environ,
            "OMA_FAILOVER_JOB_ID": job.id,
            "OMA_FAILOVER_KIND": job.kind.value,
            "OMA_VM_CONTEXT_ID": vm.id,
            "OMA_VM_NAME": vm.name,
            "OMA_GUEST_OS": vm.guest_os,
            "OMA_FIRMWARE": vm.firmware,
            "OMA_TARGET_VM_ID": job.target_vm_id,
            "OMA_TARGET_VM_NAME": job.target_vm_name,
            "OMA_FAILOVER_VOLUMES": json.dumps(volumes),
        }
        async with self.joblog.step(job.id, "driver_injection_command", command):
            proc = await asyncio.create_subprocess_shell(
                command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), self.settings.driver_injection_timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise DeadlineExceeded(
                    f"driver-injection command did not finish within {self.settings.driver_injection_timeout_s:.0f}s",
                    reason="DRIVER_INJECTION_TIMEOUT",
                ) from None
            tail = out.decode(errors="replace").strip()[-500:]
            if proc.returncode != 0:
                raise FailedPrecondition(
                    f"driver-injection command exited with {proc.returncode}: {tail or 'no output'}",
                    reason="DRIVER_INJECTION_FAILED",
                )
        return StepResult(message=f"driver-injection command succeeded{': ' + tail if tail else ''}")

    async def start_vm(self, ctx: StepContext) -> StepResult:
        vm = await self.cs.get_vm(ctx.job.target_vm_id, with_volumes=False)
        if vm.state == "Running":
            return StepResult(message=f"VM {vm.name} already running")
        async with self.joblog.step(ctx.job.id, "start_vm", f"{vm.name} ({vm.id})"):
            await self.cs.start_vm(vm.id)
        return StepResult(message=f"VM {vm.name} started")

    async def verify_running(self, ctx: StepContext) -> StepResult:
        job = ctx.job
        vm = await self.cs.get_vm(job.target_vm_id)
        replicas = await self._replicas(job.vm_context_id)
        problems = []
        if vm.state != "Running":
            problems.append(f"VM {vm.name} is {vm.state}, not Running")
        root = vm.root_volume
        if root is None or root.id != replicas[0].cs_id:
            problems.append(f"its ROOT volume is {root.id if root else 'missing'}, not the OS disk {replicas[0].cs_id}")
        attached = {v.id for v in vm.volumes}
        missing = [r.cs_id for r in replicas if r.cs_id not in attached]
        if missing:
            problems.append(f"volume(s) {missing} are not attached")
        if problems:
            raise FailedPrecondition("; ".join(problems), reason="TARGET_VM_NOT_RUNNING", vm_id=vm.id)
        return StepResult(message=f"VM {vm.name} is Running with {len(replicas)} volume(s)")

    # ---- cleanup and rollback -----------------------------------------------------------------------------------
    async def _target(self, ctx: StepContext) -> VirtualMachine | None:
        source = ctx.source
        if source is None:
            return None
        return await self._find_vm(
            source.target_vm_id, source.target_vm_name, bool(source.params.get("deploy_requested"))
        )

    async def stop_vm(self, ctx: StepContext) -> StepResult:
        vm = await self._target(ctx)
        if vm is None:
            return StepResult(skipped=True, message="no target VM exists")
        if vm.state in ("Stopped", *VM_UNUSABLE):
            return StepResult(message=f"VM {vm.name} is {vm.state}")
        async with self.joblog.step(ctx.job.id, "stop_vm", f"{vm.name} ({vm.id})"):
            await self.cs.stop_vm(vm.id, forced=True)
        return StepResult(message=f"VM {vm.name} stopped")

    async def detach_from_vm(self, ctx: StepContext) -> StepResult:
        """Our volumes off the target VM (and, when they are to be reverted, off the OMA: a revert needs the volume
        detached or its VM stopped, and the OMA runs)."""
        oma = self.cs.oma_vm_id
        snapshot_ids = ctx.source.snapshot_ids if ctx.source else {}
        detached = 0
        for replica in await self._replicas(ctx.job.vm_context_id):
            cs_volume = await self.cs.get_volume(replica.cs_id)
            vm_id = cs_volume.virtual_machine_id
            if vm_id == oma:
                if replica.cs_id not in snapshot_ids:
                    continue  # nothing to revert: release_volumes takes it off
                if await self.attachments.release_disk(replica.disk.id, ctx.job.id):
                    detached += 1
                continue
            if vm_id:
                detached += 1
            await self.volumes.detach(replica.volume, ctx.job.id)
        return StepResult(message=f"{detached} volume(s) detached")

    async def destroy_vm(self, ctx: StepContext) -> StepResult:
        """Destroy with expunge — after our volumes were detached, since expunge deletes the VM's ROOT volume."""
        vm = await self._target(ctx)
        messages = []
        if vm is not None:
            ours = {r.cs_id for r in await self._replicas(ctx.job.vm_context_id)}
            still = [v.id for v in vm.volumes if v.id in ours]
            if still:
                raise FailedPrecondition(
                    f"volume(s) {still} are still attached to VM {vm.name}; destroying it would delete them",
                    reason="VOLUMES_STILL_ATTACHED",
                )
            async with self.joblog.step(ctx.job.id, "destroy_vm", f"{vm.name} ({vm.id}), expunge"):
                await self.cs.destroy_vm(vm.id, expunge=True)
            messages.append(f"VM {vm.name} destroyed")
        template_root = str(ctx.source.params.get("template_root_volume_id", "")) if ctx.source else ""
        if template_root and await self._delete_volume_if_present(ctx.job.id, template_root):
            messages.append(f"template root volume {template_root} deleted")
        if not messages:
            return StepResult(skipped=True, message="no target VM exists")
        return StepResult(message="; ".join(messages))

    async def revert_volumes(self, ctx: StepContext) -> StepResult:
        snapshot_ids = ctx.source.snapshot_ids if ctx.source else {}
        reverted = 0
        notes = []
        for cs_volume_id, snap_id in sorted(snapshot_ids.items()):
            snap = await self._wait_snapshot(snap_id)
            if snap is None:
                notes.append(f"snapshot {snap_id} is gone (already reverted and deleted)")
                continue
            if snap.state != "BackedUp":
                notes.append(f"snapshot {snap_id} is {snap.state}; volume {cs_volume_id} was not used by a VM")
                continue
            async with self.joblog.step(ctx.job.id, "revert_snapshot", f"volume {cs_volume_id} to snapshot {snap_id}"):
                await self.cs.revert_snapshot(snap_id)
            reverted += 1
        if not snapshot_ids:
            return StepResult(skipped=True, message="no snapshots were taken")
        return StepResult(message="; ".join([f"{reverted} volume(s) reverted", *notes]))

    async def delete_snapshots(self, ctx: StepContext) -> StepResult:
        """Every failover snapshot of our volumes: the recorded ones and any left by an interrupted createSnapshot."""
        deleted = 0
        for replica in await self._replicas(ctx.job.vm_context_id):
            for snap in await self.cs.list_snapshots(volume_id=replica.cs_id):
                if not snap.name.startswith(SNAPSHOT_PREFIX):
                    continue
                if snap.state in SNAPSHOT_BUSY:
                    await self._wait_snapshot(snap.id)
                async with self.joblog.step(ctx.job.id, "delete_snapshot", f"{snap.id} of volume {replica.cs_id}"):
                    try:
                        await self.cs.delete_snapshot(snap.id)
                    except CloudStackNotFound:
                        pass
                deleted += 1
        if not deleted:
            return StepResult(skipped=True, message="no snapshots to delete")
        return StepResult(message=f"{deleted} snapshot(s) deleted")

    async def release_volumes(self, ctx: StepContext) -> StepResult:
        """Every replica detached from every VM and exported nowhere: the state the next replication attaches from
        (replicas stay on the OMA VM only while a job writes them)."""
        count = 0
        for replica in await self._replicas(ctx.job.vm_context_id):
            if await self.attachments.release_disk(replica.disk.id, ctx.job.id):
                count += 1
        return StepResult(message=f"{count} volume(s) taken off the OMA VM; every replica is detached")

    async def power_on_source(self, ctx: StepContext) -> StepResult:
        if not ctx.job.params.get("power_on_source"):
            return StepResult(skipped=True, message="powering the source on was not requested")
        vm = await self._vm(ctx.job.vm_context_id)
        command_id = await self._power_command(ctx, "power_on_command_id", PowerOn(vm_uuid=vm.vm_uuid), "power_on")
        return StepResult(message=f"source powered on (command {command_id})")


def _set_snapshot(cs_volume_id: str, snapshot_id: str) -> Mutate:
    def apply(state: FailoverJobState) -> None:
        state.snapshot_ids[cs_volume_id] = snapshot_id

    return apply


def _set_target(vm_id: str) -> Mutate:
    def apply(state: FailoverJobState) -> None:
        state.target_vm_id = vm_id

    return apply
