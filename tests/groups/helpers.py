"""What the machine-group tests share: the operator's stub and small calls."""

from __future__ import annotations

import grpc

from oma.v1 import machine_group_pb2, machine_group_pb2_grpc

TEST_FAILOVER = machine_group_pb2.GROUP_RUN_KIND_TEST_FAILOVER
LIVE_FAILOVER = machine_group_pb2.GROUP_RUN_KIND_LIVE_FAILOVER
RUN_PENDING = machine_group_pb2.GROUP_RUN_STATUS_PENDING
RUN_RUNNING = machine_group_pb2.GROUP_RUN_STATUS_RUNNING
RUN_COMPLETED = machine_group_pb2.GROUP_RUN_STATUS_COMPLETED
RUN_FAILED = machine_group_pb2.GROUP_RUN_STATUS_FAILED
RUN_SKIPPED = machine_group_pb2.GROUP_RUN_STATUS_SKIPPED
RUN_NOT_STARTED = machine_group_pb2.GROUP_RUN_STATUS_NOT_STARTED
RUN_CANCELLING = machine_group_pb2.GROUP_RUN_STATUS_CANCELLING
RUN_CANCELLED = machine_group_pb2.GROUP_RUN_STATUS_CANCELLED


def groups_stub(channel: grpc.aio.Channel) -> machine_group_pb2_grpc.MachineGroupServiceStub:
    return machine_group_pb2_grpc.MachineGroupServiceStub(channel)


def spec(name: str, members: dict[str, int], description: str = "") -> machine_group_pb2.MachineGroupSpec:
    """A spec from {vm_context_id: boot_order}."""
    return machine_group_pb2.MachineGroupSpec(
        name=name,
        description=description,
        members=[machine_group_pb2.MachineGroupMember(vm_context_id=v, boot_order=o) for v, o in members.items()],
    )


async def create_group(channel: grpc.aio.Channel, name: str, members: dict[str, int]) -> machine_group_pb2.MachineGroup:
    reply = await groups_stub(channel).CreateMachineGroup(
        machine_group_pb2.CreateMachineGroupRequest(spec=spec(name, members))
    )
    return reply.group


async def get_run(channel: grpc.aio.Channel, run_id: str) -> machine_group_pb2.GroupRun:
    return (await groups_stub(channel).GetGroupRun(machine_group_pb2.GetGroupRunRequest(id=run_id))).run
