"""The reference agent's release_source command against its fake vCenter: CBT off, its own snapshots deleted, an
operator's snapshot kept; idempotent; an unknown VM rejected."""

from __future__ import annotations

from loguru import logger

from vma.v1 import stream_pb2
from vma_client_stubs.agent.agent import snapshot_description
from vma_client_stubs.agent.source_commands import SourceCommands
from vma_client_stubs.agent.vcenter import FakeVCenter

MIB = 1 << 20


def release(vm_uuid: str) -> stream_pb2.Command:
    return stream_pb2.Command(command_id="c-1", release_source=stream_pb2.ReleaseSourceCommand(vm_uuid=vm_uuid))


async def test_release_source_disables_cbt_and_deletes_the_agents_snapshots(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("db", [4 * MIB, 2 * MIB], seed=3)
    ours = vcenter.create_snapshot(vm.uuid, snapshot_description("job-1"))
    theirs = vcenter.create_snapshot(vm.uuid, "before the upgrade")
    commands = SourceCommands(vcenter, logger)

    result = await commands.release_source(release(vm.uuid))
    assert result.outcome == stream_pb2.COMMAND_OUTCOME_SUCCEEDED
    assert result.detail == "VM db: CBT disabled on 2 disk(s); 1 snapshot(s) deleted"
    assert [d.cbt_enabled for d in vcenter.get_vm(vm.uuid).disks] == [False, False]
    assert vcenter.list_snapshots(vm.uuid) == [theirs.id] and ours.id != theirs.id

    again = await commands.release_source(release(vm.uuid))
    assert again.outcome == stream_pb2.COMMAND_OUTCOME_SUCCEEDED and "0 snapshot(s) deleted" in again.detail

    unknown = await commands.release_source(release("no-such-uuid"))
    assert unknown.outcome == stream_pb2.COMMAND_OUTCOME_REJECTED and "no-such-uuid" in unknown.detail
