"""The steps of test and live failover, each idempotent (see `steps.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from loguru import logger

from oma_server.cloudstack.models import NicSpec
from oma_server.errors import DeadlineExceeded, FailedPrecondition
from oma_server.failover.cutover import CutoverTiming, DeadlineAction, DeadlineMissed, missed_text
from oma_server.failover.state_machine import FailoverJobState
from oma_server.failover.step_base import (
    SNAPSHOT_BUSY,
    VM_UNUSABLE,
    StepBase,
    StepContext,
    StepResult,
    _set_snapshot,
    _set_target,
    snapshot_name,
)
from oma_server.integrity.gate import describe, unverified_disks
from oma_server.joblog import note
from oma_server.protocol.commands import PowerOff
from oma_server.replication.state_machine import JobStatus
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm


class ForwardSteps(StepBase):
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
        sync_id = str(job.params.get("final_sync_job_id", "")) or await self._start_final_sync(ctx)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.final_sync_timeout_s
        while True:
            sync = await self.replication_jobs.get(sync_id)
            if sync.final:
                break
            await self._check_deadline(ctx, f"while final sync {sync_id} was {sync.status.value}")
            if loop.time() > deadline:
                raise DeadlineExceeded(
                    f"final sync {sync_id} did not finish within {self.settings.final_sync_timeout_s:.0f}s "
                    f"(it is {sync.status.value})",
                    reason="FINAL_SYNC_TIMEOUT",
                    replication_job_id=sync_id,
                )
            await asyncio.sleep(self.settings.poll_interval_s)
        if sync.status != JobStatus.COMPLETED:
            if sync.started_at is not None:
                # The appliance began copying: the replicas are between two change ids, and the undo of this
                # failover leaves the VM `failed` (replicate again). The final sync is not the VM's active job, so
                # its end does not move the VM context itself.

                def dirty(state: FailoverJobState) -> None:
                    state.params["replicas_dirty"] = True

                await ctx.save(dirty)
            raise FailedPrecondition(
                f"final sync {sync_id} {sync.status.value}: {sync.error_message or 'no detail'}",
                reason="FINAL_SYNC_FAILED",
                replication_job_id=sync_id,
            )

        # Nothing is deployed on replicas not proven identical: wait for the final sync's read-back, then check it.
        with contextlib.suppress(TimeoutError):  # bounded: a read-back that never ends must not hold the failover
            async with asyncio.timeout(self.settings.verify_wait_s):
                await self.final_sync_settled(sync_id)
        unverified = await self.db.run(unverified_disks, job.vm_context_id)
        if unverified:
            raise FailedPrecondition(
                f"final sync {sync_id} completed but its replicas are not verified — {describe(unverified)}",
                reason="REPLICA_NOT_VERIFIED",
                replication_job_id=sync_id,
                disks=",".join(str(d.key) for d in unverified),
            )

        def take_back(state: FailoverJobState) -> None:
            transition_vm(state.vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=state.id)

        return StepResult(message=f"final sync {sync_id} completed and verified", in_tx=take_back)

    async def _start_final_sync(self, ctx: StepContext) -> str:
        job = ctx.job
        await self._check_deadline(ctx, "before the final sync could start")
        # The VM context is handed to the final sync (replication refuses to start while another job is active).
        await self.db.tx(lambda: transition_vm(job.vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=""))
        started = await self.start_final_sync(job.vm_context_id, "final", f"failover-{job.id}-final", "")
        sync_id = str(started.id)

        def remember(state: FailoverJobState) -> None:
            state.params["final_sync_job_id"] = sync_id

        await ctx.save(remember)
        ctx.log.info("final sync {sync} started", sync=sync_id)
        return sync_id

    async def _check_deadline(self, ctx: StepContext, what: str) -> None:
        """The operator's final-sync deadline (cutover.py): past it, CANCEL raises DeadlineMissed (the runner cancels
        the job and rolls back); WAIT notes it once in the job log and as a warning, and the sync goes on."""
        timing = CutoverTiming.of(ctx.job.params)
        deadline = timing.final_sync_deadline
        if deadline is None or self.clock.now() < deadline:
            return
        text = missed_text(deadline, what)
        if timing.action == DeadlineAction.CANCEL:
            raise DeadlineMissed(
                f"{text}; on_deadline_missed is cancel",
                deadline=deadline.isoformat(),
            )
        if ctx.job.params.get("deadline_missed"):
            return
        ctx.log.warning("final-sync deadline missed: {text}; waiting on (on_deadline_missed wait)", text=text)

        def missed(state: FailoverJobState) -> None:
            state.params["deadline_missed"] = True

        await ctx.save(missed, lambda s: note(s.id, "final_sync", f"{text}; on_deadline_missed is wait: waiting on"))

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
