"""The reference agent's commands about a source VM itself rather than its disks' data: power off and on, discovery,
and the release of a migrated VM's source side (CBT off, the agent's snapshots of it deleted)."""

from __future__ import annotations

import asyncio
from typing import Any

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.agent.discovery import power_state_proto
from vma_client_stubs.agent.vcenter import FakeVCenter, SnapshotNotFound, VmNotFound

#: how the agent describes the snapshot it takes for a job (`OMA job <id>`): the ones a release deletes
SNAPSHOT_DESCRIPTION_PREFIX = "OMA job "


def rejected(detail: str) -> stream_pb2.CommandResult:
    return stream_pb2.CommandResult(
        outcome=stream_pb2.COMMAND_OUTCOME_REJECTED, error_class=jobs_pb2.ERROR_CLASS_INVALID_COMMAND, detail=detail
    )


class SourceCommands:
    def __init__(self, vcenter: FakeVCenter, log: Any) -> None:
        self.vcenter = vcenter
        self.log = log

    async def _power(self, vm_uuid: str, on: bool) -> stream_pb2.CommandResult:
        try:
            vm = await asyncio.to_thread(self.vcenter.set_power, vm_uuid, on)
        except VmNotFound as exc:
            return rejected(str(exc))
        self.log.info("VM {name} powered {state}", name=vm.name, state=vm.power_state)
        return stream_pb2.CommandResult(
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            power=stream_pb2.PowerResult(power_state=power_state_proto(vm.power_state)),
        )

    async def power_off(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        return await self._power(command.power_off.vm_uuid, False)

    async def power_on(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        return await self._power(command.power_on.vm_uuid, True)

    async def discover(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        def discover() -> list[Any]:
            return [self.vcenter.to_proto(vm) for vm in self.vcenter.list_vms(command.discover.name_filter)]

        vms = await asyncio.to_thread(discover)
        return stream_pb2.CommandResult(
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            discovery=stream_pb2.DiscoveryResult(virtual_machines=vms),
        )

    async def release_source(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        """CBT off on every disk, every snapshot this agent took of the VM deleted; idempotent."""
        vm_uuid = command.release_source.vm_uuid

        def release() -> tuple[str, int, int]:
            self.vcenter.get_vm(vm_uuid)  # VmNotFound before anything is locked or written
            vm = self.vcenter.set_cbt(vm_uuid, False)
            deleted = 0
            for snapshot_id in self.vcenter.list_snapshots(vm_uuid):
                try:
                    snapshot = self.vcenter.get_snapshot(vm_uuid, snapshot_id)
                    if snapshot.description.startswith(SNAPSHOT_DESCRIPTION_PREFIX):
                        self.vcenter.remove_snapshot(vm_uuid, snapshot_id)
                        deleted += 1
                except SnapshotNotFound:  # removed meanwhile
                    continue
            return vm.name, len(vm.disks), deleted

        try:
            name, disks, deleted = await asyncio.to_thread(release)
        except VmNotFound as exc:
            return rejected(str(exc))
        detail = f"VM {name}: CBT disabled on {disks} disk(s); {deleted} snapshot(s) deleted"
        self.log.info("source released: {detail}", detail=detail)
        return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail=detail)
