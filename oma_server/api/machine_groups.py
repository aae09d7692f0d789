"""MachineGroupService servicer, and the conversions of groups and group runs (domain → proto)."""

from __future__ import annotations

from typing import Any

import grpc

from oma.v1 import machine_group_pb2, machine_group_pb2_grpc
from oma_server.api.convert import enum_name, enum_value, ts
from oma_server.db.models import GroupRun
from oma_server.errors import InvalidArgument
from oma_server.groups.runs import LIVE_FAILOVER, TEST_FAILOVER, GroupRuns
from oma_server.groups.store import GroupSpec, GroupStore, GroupView, Member

RUN_STATUS = "GROUP_RUN_STATUS"
RUN_KIND = "GROUP_RUN_KIND"


def spec_of(spec: machine_group_pb2.MachineGroupSpec) -> GroupSpec:
    return GroupSpec(
        name=spec.name.strip(),
        description=spec.description,
        members=tuple(Member(m.vm_context_id, m.boot_order) for m in spec.members),
    )


def group_to_proto(view: GroupView) -> machine_group_pb2.MachineGroup:
    row = view.group
    return machine_group_pb2.MachineGroup(
        id=row.id,
        spec=machine_group_pb2.MachineGroupSpec(
            name=row.name,
            description=row.description,
            members=[
                machine_group_pb2.MachineGroupMember(vm_context_id=m.vm_context_id, boot_order=m.boot_order)
                for m in view.members
            ],
        ),
        schedule_id=view.schedule_id,
        last_run_id=view.last_run_id,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )


def _member_to_proto(member: dict[str, Any]) -> machine_group_pb2.GroupRunMember:
    return machine_group_pb2.GroupRunMember(
        vm_context_id=member["vm_context_id"],
        vm_name=member.get("vm_name", ""),
        boot_order=int(member["boot_order"]),
        failover_job_id=member.get("failover_job_id", ""),
        status=enum_value(machine_group_pb2.GroupRunStatus, RUN_STATUS, member["status"]),  # type: ignore[arg-type]
        message=member.get("message", ""),
    )


def run_to_proto(row: GroupRun) -> machine_group_pb2.GroupRun:
    run = machine_group_pb2.GroupRun(
        id=row.id,
        group_id=row.group_id,
        group_name=row.group_name,
        kind=enum_value(machine_group_pb2.GroupRunKind, RUN_KIND, row.kind),  # type: ignore[arg-type]
        status=enum_value(machine_group_pb2.GroupRunStatus, RUN_STATUS, row.status),  # type: ignore[arg-type]
        members=[_member_to_proto(m) for m in row.members],
        error_message=row.error_message,
        created_at=ts(row.created_at),
        finished_at=ts(row.finished_at),
    )
    if row.current_boot_order is not None:
        run.current_boot_order = row.current_boot_order
    return run


def _failover_kind(value: int) -> str:
    name = enum_name(machine_group_pb2.GroupRunKind, RUN_KIND, value)
    if name not in (TEST_FAILOVER, LIVE_FAILOVER):
        raise InvalidArgument(
            "kind must be GROUP_RUN_KIND_TEST_FAILOVER or GROUP_RUN_KIND_LIVE_FAILOVER (a cleanup is "
            "CleanupGroupFailover)",
            reason="GROUP_RUN_KIND_INVALID",
            field="kind",
        )
    return name


class MachineGroupServicer(machine_group_pb2_grpc.MachineGroupServiceServicer):
    def __init__(self, groups: GroupStore, runs: GroupRuns) -> None:
        self.groups = groups
        self.runs = runs

    async def CreateMachineGroup(
        self, request: machine_group_pb2.CreateMachineGroupRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.CreateMachineGroupResponse:
        view = await self.groups.create(spec_of(request.spec))
        return machine_group_pb2.CreateMachineGroupResponse(group=group_to_proto(view))

    async def GetMachineGroup(
        self, request: machine_group_pb2.GetMachineGroupRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.GetMachineGroupResponse:
        return machine_group_pb2.GetMachineGroupResponse(group=group_to_proto(await self.groups.get(request.id)))

    async def ListMachineGroups(
        self, request: machine_group_pb2.ListMachineGroupsRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.ListMachineGroupsResponse:
        views, token = await self.groups.list_groups(request.page_size, request.page_token)
        return machine_group_pb2.ListMachineGroupsResponse(
            groups=[group_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateMachineGroup(
        self, request: machine_group_pb2.UpdateMachineGroupRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.UpdateMachineGroupResponse:
        view = await self.groups.update(request.id, spec_of(request.spec))
        return machine_group_pb2.UpdateMachineGroupResponse(group=group_to_proto(view))

    async def DeleteMachineGroup(
        self, request: machine_group_pb2.DeleteMachineGroupRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.DeleteMachineGroupResponse:
        await self.groups.delete(request.id)
        return machine_group_pb2.DeleteMachineGroupResponse()

    async def StartGroupFailover(
        self, request: machine_group_pb2.StartGroupFailoverRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.StartGroupFailoverResponse:
        run = await self.runs.start_failover(request.group_id, _failover_kind(request.kind))
        return machine_group_pb2.StartGroupFailoverResponse(run=run_to_proto(run))

    async def CleanupGroupFailover(
        self, request: machine_group_pb2.CleanupGroupFailoverRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.CleanupGroupFailoverResponse:
        run = await self.runs.cleanup(request.group_id)
        return machine_group_pb2.CleanupGroupFailoverResponse(run=run_to_proto(run))

    async def CancelGroupRun(
        self, request: machine_group_pb2.CancelGroupRunRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.CancelGroupRunResponse:
        return machine_group_pb2.CancelGroupRunResponse(run=run_to_proto(await self.runs.cancel(request.id)))

    async def GetGroupRun(
        self, request: machine_group_pb2.GetGroupRunRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.GetGroupRunResponse:
        return machine_group_pb2.GetGroupRunResponse(run=run_to_proto(await self.runs.get(request.id)))

    async def ListGroupRuns(
        self, request: machine_group_pb2.ListGroupRunsRequest, context: grpc.aio.ServicerContext
    ) -> machine_group_pb2.ListGroupRunsResponse:
        rows, token = await self.runs.list_runs(request.page_size, request.page_token, request.group_id)
        return machine_group_pb2.ListGroupRunsResponse(runs=[run_to_proto(r) for r in rows], next_page_token=token)
