"""The steps of cleanup and rollback, each idempotent (see `steps.py`). Detach comes before destroy: destroying
with expunge deletes the VM's ROOT volume, which is our OS disk."""

from __future__ import annotations

from oma_server.cloudstack.errors import CloudStackNotFound
from oma_server.cloudstack.models import VirtualMachine
from oma_server.errors import FailedPrecondition
from oma_server.failover.step_base import (
    SNAPSHOT_BUSY,
    SNAPSHOT_PREFIX,
    VM_UNUSABLE,
    StepBase,
    StepContext,
    StepResult,
)
from oma_server.protocol.commands import PowerOn


class UndoSteps(StepBase):
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
