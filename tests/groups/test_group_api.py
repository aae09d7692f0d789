"""MachineGroupService through the real API: a group's life, what a spec may hold, what a group run refuses."""

from __future__ import annotations

import grpc
import pytest

from oma.v1 import (
    machine_group_pb2,
    schedule_pb2,
    schedule_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.server import OmaServer
from tests.factories import enroll, inventory
from tests.groups.helpers import TEST_FAILOVER, create_group, groups_stub, spec
from vma_client_stubs.errors import error_details_of


async def register(channel: grpc.aio.Channel, appliance_id: str, name: str) -> str:
    reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=appliance_id, virtual_machine=inventory((2,), name=name))
    )
    return reply.vm_context.id


async def refused(call: object, request: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)  # type: ignore[operator]
    return err.value


def schedule_spec(kind: int, target_id: str) -> schedule_pb2.CreateScheduleRequest:
    return schedule_pb2.CreateScheduleRequest(
        spec=schedule_pb2.ScheduleSpec(
            target=schedule_pb2.ScheduleTarget(kind=kind, id=target_id),  # type: ignore[arg-type]
            interval_seconds=3600,
            rpo_target_seconds=7200,
        )
    )


async def test_a_group_is_created_read_listed_replaced_and_deleted(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    appliance = await enroll(channel)
    db, app1, app2 = [await register(channel, appliance.appliance_id, n) for n in ("db-01", "app-02", "app-01")]
    stub = groups_stub(channel)
    group = await create_group(channel, "shop", {app1: 1, db: 0, app2: 1})
    assert group.spec.name == "shop" and group.id
    # members by boot order, then VM name
    assert [(m.vm_context_id, m.boot_order) for m in group.spec.members] == [(db, 0), (app2, 1), (app1, 1)]
    assert group.schedule_id == "" and group.last_run_id == ""
    got = (await stub.GetMachineGroup(machine_group_pb2.GetMachineGroupRequest(id=group.id))).group
    assert got == group
    await create_group(channel, "another", {})
    listed = (await stub.ListMachineGroups(machine_group_pb2.ListMachineGroupsRequest())).groups
    assert [g.spec.name for g in listed] == ["another", "shop"]

    replaced = (
        await stub.UpdateMachineGroup(
            machine_group_pb2.UpdateMachineGroupRequest(id=group.id, spec=spec("shop-eu", {db: 2, app1: 0}, "EU"))
        )
    ).group
    assert replaced.spec.name == "shop-eu" and replaced.spec.description == "EU"
    assert [(m.vm_context_id, m.boot_order) for m in replaced.spec.members] == [(app1, 0), (db, 2)]
    # app2 left the group: it may join another one now
    await create_group(channel, "solo", {app2: 0})

    await stub.DeleteMachineGroup(machine_group_pb2.DeleteMachineGroupRequest(id=group.id))
    err = await refused(stub.GetMachineGroup, machine_group_pb2.GetMachineGroupRequest(id=group.id))
    assert err.code() == grpc.StatusCode.NOT_FOUND and error_details_of(err).reason == "GROUP_NOT_FOUND"
    vm = await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(vm_context_pb2.GetVmContextRequest(id=db))
    assert vm.vm_context.id == db  # a group's VMs stay when it goes


async def test_a_spec_is_checked_whole_and_a_vm_is_in_one_group(channel: grpc.aio.Channel) -> None:
    appliance = await enroll(channel)
    vm = await register(channel, appliance.appliance_id, "web-01")
    other = await register(channel, appliance.appliance_id, "web-02")
    stub = groups_stub(channel)
    group = await create_group(channel, "web", {vm: 0})

    def create(s: machine_group_pb2.MachineGroupSpec) -> machine_group_pb2.CreateMachineGroupRequest:
        return machine_group_pb2.CreateMachineGroupRequest(spec=s)

    cases = [
        (spec("", {other: 0}), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED"),
        (spec("x" * 256, {other: 0}), grpc.StatusCode.INVALID_ARGUMENT, "FIELD_TOO_LONG"),
        (spec("bad-id", {"not an id!": 0}), grpc.StatusCode.INVALID_ARGUMENT, "ID_INVALID"),
        (spec("ghost", {"no-such-vm": 0}), grpc.StatusCode.NOT_FOUND, "VM_CONTEXT_NOT_FOUND"),
        (spec("web", {other: 0}), grpc.StatusCode.ALREADY_EXISTS, "GROUP_NAME_TAKEN"),
        (spec("second", {other: 0, vm: 1}), grpc.StatusCode.ALREADY_EXISTS, "VM_IN_ANOTHER_GROUP"),
    ]
    for bad, code, reason in cases:
        err = await refused(stub.CreateMachineGroup, create(bad))
        assert (err.code(), error_details_of(err).reason) == (code, reason), bad
        if reason == "VM_IN_ANOTHER_GROUP":
            assert f"VM context {vm} is in machine group web ({group.id})" in (err.details() or "")
    twice = machine_group_pb2.MachineGroupSpec(
        name="twice",
        members=[
            machine_group_pb2.MachineGroupMember(vm_context_id=other),
            machine_group_pb2.MachineGroupMember(vm_context_id=other, boot_order=1),
        ],
    )
    err = await refused(stub.CreateMachineGroup, create(twice))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details_of(err).reason == "GROUP_MEMBER_DUPLICATE" and "spec.members[1]" in (err.details() or "")
    # nothing of a refused spec was applied: one group, its one VM; `other` is in no group
    listed = (await stub.ListMachineGroups(machine_group_pb2.ListMachineGroupsRequest())).groups
    assert [(g.id, [m.vm_context_id for m in g.spec.members]) for g in listed] == [(group.id, [vm])]
    await create_group(channel, "others", {other: 0})


async def test_schedules_of_a_group_and_of_its_vms_never_overlap(channel: grpc.aio.Channel) -> None:
    appliance = await enroll(channel)
    vm, own = [await register(channel, appliance.appliance_id, n) for n in ("db-01", "own-01")]
    schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
    stub = groups_stub(channel)
    group = await create_group(channel, "db", {vm: 0})
    group_kind, vm_kind = schedule_pb2.SCHEDULE_TARGET_KIND_MACHINE_GROUP, schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT
    created = (await schedules.CreateSchedule(schedule_spec(group_kind, group.id))).schedule
    got = (await stub.GetMachineGroup(machine_group_pb2.GetMachineGroupRequest(id=group.id))).group
    assert got.schedule_id == created.id
    # the member's RPO comes from its group's schedule
    member = await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
        vm_context_pb2.GetVmContextRequest(id=vm)
    )
    assert member.vm_context.rpo.schedule_id == created.id and member.vm_context.rpo.target_seconds == 7200

    err = await refused(schedules.CreateSchedule, schedule_spec(vm_kind, vm))  # a member follows its group's
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and error_details_of(err).reason == "SCHEDULE_CONFLICT"
    await schedules.CreateSchedule(schedule_spec(vm_kind, own))
    update = machine_group_pb2.UpdateMachineGroupRequest(id=group.id, spec=spec("db", {vm: 0, own: 1}))
    err = await refused(stub.UpdateMachineGroup, update)  # `own` has a schedule of its own
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and error_details_of(err).reason == "SCHEDULE_CONFLICT"
    err = await refused(stub.DeleteMachineGroup, machine_group_pb2.DeleteMachineGroupRequest(id=group.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and error_details_of(err).reason == "SCHEDULE_CONFLICT"
    err = await refused(schedules.CreateSchedule, schedule_spec(group_kind, "no-such-group"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and error_details_of(err).reason == "GROUP_NOT_FOUND"

    await schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(id=created.id))
    await stub.DeleteMachineGroup(machine_group_pb2.DeleteMachineGroupRequest(id=group.id))


async def test_a_group_failover_starts_nothing_unless_every_vm_is_ready(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    appliance = await enroll(channel)
    vms = [await register(channel, appliance.appliance_id, n) for n in ("db-01", "app-01")]
    stub = groups_stub(channel)
    empty = await create_group(channel, "empty", {})
    err = await refused(stub.StartGroupFailover, machine_group_pb2.StartGroupFailoverRequest(group_id=empty.id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and error_details_of(err).reason == "GROUP_RUN_KIND_INVALID"
    start = machine_group_pb2.StartGroupFailoverRequest(group_id=empty.id, kind=TEST_FAILOVER)
    err = await refused(stub.StartGroupFailover, start)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and error_details_of(err).reason == "GROUP_EMPTY"

    group = await create_group(channel, "never-replicated", {vms[0]: 0, vms[1]: 1})
    start = machine_group_pb2.StartGroupFailoverRequest(group_id=group.id, kind=TEST_FAILOVER)
    err = await refused(stub.StartGroupFailover, start)
    details = error_details_of(err)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and details.reason == "GROUP_NOT_READY"
    assert "2 of 2 VMs are not ready" in (err.details() or "") and "db-01" in (err.details() or "")
    subjects = {v.subject for v in details.precondition_violations}
    assert f"vm_contexts/{vms[0]}/replication_completed" in subjects
    assert f"vm_contexts/{vms[1]}/replication_completed" in subjects
    runs = await stub.ListGroupRuns(machine_group_pb2.ListGroupRunsRequest(group_id=group.id))
    assert list(runs.runs) == []  # nothing started
    assert oma_server.app.failover is not None
    assert (await oma_server.app.failover_jobs.list_jobs(100, "", vms[0])).jobs == []
    err = await refused(stub.GetGroupRun, machine_group_pb2.GetGroupRunRequest(id="no-such-run"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and error_details_of(err).reason == "GROUP_RUN_NOT_FOUND"
