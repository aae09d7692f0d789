"""The API's uniform corners (issue #19): every List pages the same way (AIP-158), UpdateNetworkMapping honours its
field mask (AIP-134), errors carry typed details a Python client decodes (AIP-193), every RPC that starts work
answers with the job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2
from google.protobuf.message import Message

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
    bandwidth_pb2,
    bandwidth_pb2_grpc,
    cloud_pb2,
    cloud_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    machine_group_pb2,
    machine_group_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.server import SERVICE_NAMES, OmaServer
from tests.factories import enroll, inventory, seed_job
from vma_client_stubs.operator_client import describe_error, error_details

FOREIGN_TOKEN = "eyJvZmZzZXQiOiAzfQ"  # base64 JSON, but not a token this server issued


def methods() -> list[Any]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


def test_every_list_rpc_pages_the_same_way() -> None:
    for method in (m for m in methods() if m.name.startswith("List")):
        request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
        assert {"page_size", "page_token"} <= set(request), method.full_name
        assert "next_page_token" in response, method.full_name


def test_every_rpc_that_starts_work_answers_with_the_job() -> None:
    starts = [m for m in methods() if m.name.startswith(("Start", "Retry", "Cleanup", "Rollback", "PowerO"))]
    group_runs = [m for m in starts if m.containing_service.name == "MachineGroupService"]
    assert len(starts) == 9 and len(group_runs) == 2
    for method in starts:
        if method in group_runs:  # a group's run of its members' jobs: each member names its job
            run = method.output_type.fields_by_name["run"].message_type
            assert {"id", "kind", "status", "members"} <= set(run.fields_by_name), method.full_name
            member = run.fields_by_name["members"].message_type
            assert {"failover_job_id", "status"} <= set(member.fields_by_name), method.full_name
            continue
        job = method.output_type.fields_by_name["job"].message_type
        assert {"id", "kind", "status", "revision"} <= set(job.fields_by_name), method.full_name


async def seed(channel: grpc.aio.Channel, oma_server: OmaServer) -> str:
    """Two of each thing the List RPCs list; returns a replication job id (with log entries)."""
    sim = oma_server.app.simulator
    assert sim is not None
    tokens = access_pb2_grpc.AccessServiceStub(channel)
    for name in ("t1", "t2"):
        await tokens.CreateApiToken(access_pb2.CreateApiTokenRequest(name=name, role=access_pb2.ROLE_VIEWER))
    enrolled = await enroll(channel)
    other = await enroll(channel)
    limits = bandwidth_pb2_grpc.BandwidthServiceStub(channel)
    for appliance in (enrolled, other):
        target = bandwidth_pb2.BandwidthTarget(
            kind=bandwidth_pb2.BANDWIDTH_TARGET_KIND_APPLIANCE, id=appliance.appliance_id
        )
        spec = bandwidth_pb2.BandwidthLimitSpec(target=target, bytes_per_second=50 * 2**20)
        await limits.SetBandwidthLimit(bandwidth_pb2.SetBandwidthLimitRequest(spec=spec))
    vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
    schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
    for _ in range(2):
        request = vm_context_pb2.RegisterVmContextRequest(
            appliance_id=enrolled.appliance_id, virtual_machine=inventory()
        )
        vm = (await vms.RegisterVmContext(request)).vm_context
        target = schedule_pb2.ScheduleTarget(kind=schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT, id=vm.id)
        spec = schedule_pb2.ScheduleSpec(target=target, interval_seconds=3600, rpo_target_seconds=7200)
        await schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(spec=spec))
    mappings = failover_pb2_grpc.NetworkMappingServiceStub(channel)
    guest = sim.state.find_by_name(sim.state.networks, "guest-net-1")
    for source in ("VM Network", "Backup", "DMZ"):
        mapping = failover_pb2.NetworkMapping(source_network=source, target_network_id=guest)
        await mappings.CreateNetworkMapping(failover_pb2.CreateNetworkMappingRequest(mapping=mapping))
    groups = machine_group_pb2_grpc.MachineGroupServiceStub(channel)
    for name in ("web tier", "db tier"):
        spec = machine_group_pb2.MachineGroupSpec(name=name)
        await groups.CreateMachineGroup(machine_group_pb2.CreateMachineGroupRequest(spec=spec))
    job = await seed_job(oma_server.app, enrolled.appliance_id)
    await seed_job(oma_server.app, enrolled.appliance_id)
    return job.id


Page = Callable[[int, str], Any]


def list_rpcs(channel: grpc.aio.Channel, job_id: str) -> dict[str, tuple[Page, str, int]]:
    """List RPC → (call with page_size and page_token, the repeated field, how many items it has at least)."""
    tokens = access_pb2_grpc.AccessServiceStub(channel)
    appliances = appliance_pb2_grpc.ApplianceServiceStub(channel)
    vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
    replication = replication_pb2_grpc.ReplicationServiceStub(channel)
    jobs = job_pb2_grpc.JobServiceStub(channel)
    failover = failover_pb2_grpc.FailoverServiceStub(channel)
    mappings = failover_pb2_grpc.NetworkMappingServiceStub(channel)
    volumes = storage_pb2_grpc.VolumeServiceStub(channel)
    exports = storage_pb2_grpc.NbdExportServiceStub(channel)
    cloud = cloud_pb2_grpc.CloudServiceStub(channel)
    schedule_stub = schedule_pb2_grpc.ScheduleServiceStub(channel)
    bandwidth = bandwidth_pb2_grpc.BandwidthServiceStub(channel)
    groups = machine_group_pb2_grpc.MachineGroupServiceStub(channel)

    def rpc(call: Any, request_type: Any, **fields: Any) -> Page:
        return lambda size, token: call(request_type(page_size=size, page_token=token, **fields))

    return {
        "ListApiTokens": (rpc(tokens.ListApiTokens, access_pb2.ListApiTokensRequest), "tokens", 3),
        "ListSchedules": (rpc(schedule_stub.ListSchedules, schedule_pb2.ListSchedulesRequest), "schedules", 2),
        "ListBandwidthLimits": (
            rpc(bandwidth.ListBandwidthLimits, bandwidth_pb2.ListBandwidthLimitsRequest),
            "limits",
            2,
        ),
        "ListMachineGroups": (
            rpc(groups.ListMachineGroups, machine_group_pb2.ListMachineGroupsRequest),
            "groups",
            2,
        ),
        "ListGroupRuns": (rpc(groups.ListGroupRuns, machine_group_pb2.ListGroupRunsRequest), "runs", 0),
        # the seed's creations are mutations of an admin: each one is in the audit log
        "ListAuditEntries": (rpc(tokens.ListAuditEntries, access_pb2.ListAuditEntriesRequest), "entries", 9),
        "ListAppliances": (rpc(appliances.ListAppliances, appliance_pb2.ListAppliancesRequest), "appliances", 2),
        "ListVmContexts": (rpc(vms.ListVmContexts, vm_context_pb2.ListVmContextsRequest), "vm_contexts", 4),
        "ListReplicationJobs": (
            rpc(replication.ListReplicationJobs, replication_pb2.ListReplicationJobsRequest),
            "jobs",
            2,
        ),
        "ListJobs": (rpc(jobs.ListJobs, job_pb2.ListJobsRequest), "jobs", 2),
        "ListJobLogEntries": (
            rpc(jobs.ListJobLogEntries, job_pb2.ListJobLogEntriesRequest, job_id=job_id),
            "entries",
            0,
        ),
        "ListFailoverJobs": (rpc(failover.ListFailoverJobs, failover_pb2.ListFailoverJobsRequest), "jobs", 0),
        "ListNetworkMappings": (
            rpc(mappings.ListNetworkMappings, failover_pb2.ListNetworkMappingsRequest),
            "mappings",
            3,
        ),
        "ListVolumes": (rpc(volumes.ListVolumes, storage_pb2.ListVolumesRequest), "volumes", 0),
        "ListNbdExports": (rpc(exports.ListNbdExports, storage_pb2.ListNbdExportsRequest), "nbd_exports", 0),
        "ListZones": (rpc(cloud.ListZones, cloud_pb2.ListZonesRequest), "zones", 1),
        "ListNetworks": (rpc(cloud.ListNetworks, cloud_pb2.ListNetworksRequest), "networks", 2),
        "ListServiceOfferings": (
            rpc(cloud.ListServiceOfferings, cloud_pb2.ListServiceOfferingsRequest),
            "service_offerings",
            2,
        ),
        "ListDiskOfferings": (rpc(cloud.ListDiskOfferings, cloud_pb2.ListDiskOfferingsRequest), "disk_offerings", 1),
        "ListTemplates": (rpc(cloud.ListTemplates, cloud_pb2.ListTemplatesRequest), "templates", 1),
    }


async def test_each_list_pages_to_its_end_one_item_a_page_and_refuses_a_foreign_token(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    job_id = await seed(channel, oma_server)
    rpcs = list_rpcs(channel, job_id)
    served = {m.name for m in methods() if m.name.startswith("List")}
    assert set(rpcs) == served  # every List RPC is in the table
    for name, (page, items, at_least) in rpcs.items():
        whole = list(getattr(await page(1000, ""), items))
        assert len(whole) >= at_least, name
        paged: list[Message] = []
        token, pages = "", 0
        while True:
            reply = await page(1, token)
            paged.extend(getattr(reply, items))
            pages += 1
            token = reply.next_page_token
            if not token:
                break
        assert paged == whole and pages == max(1, len(whole)), name
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await page(1, FOREIGN_TOKEN)
        details = error_details(err.value)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "PAGE_TOKEN_INVALID", name
        assert [v.field for v in details.field_violations] == ["page_token"], name


async def test_update_network_mapping_changes_what_its_mask_names_and_refuses_the_rest(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    sim = oma_server.app.simulator
    assert sim is not None
    guest = sim.state.find_by_name(sim.state.networks, "guest-net-1")
    shared = sim.state.find_by_name(sim.state.networks, "shared-net-1")
    stub = failover_pb2_grpc.NetworkMappingServiceStub(channel)
    created = (
        await stub.CreateNetworkMapping(
            failover_pb2.CreateNetworkMappingRequest(
                mapping=failover_pb2.NetworkMapping(
                    source_network="VM Network", target_network_id=guest, static_ip="10.1.1.20", keep_mac=True
                )
            )
        )
    ).mapping

    async def update(paths: list[str], **fields: Any) -> failover_pb2.NetworkMapping:
        request = failover_pb2.UpdateNetworkMappingRequest(
            mapping=failover_pb2.NetworkMapping(id=created.id, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        return (await stub.UpdateNetworkMapping(request)).mapping

    async def refused(paths: list[str], reason: str, field: str, **fields: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await update(paths, **fields)
        details = error_details(err.value)
        assert (err.value.code(), details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), err.value.details()
        assert [v.field for v in details.field_violations] == [field]

    # only static_ip changes: the target and keep_mac stay although the request leaves them empty
    changed = await update(["static_ip"], static_ip="10.1.1.30")
    assert (changed.target_network_id, changed.static_ip, changed.keep_mac) == (guest, "10.1.1.30", True)
    changed = await update(["keep_mac"], keep_mac=False)
    assert (changed.target_network_id, changed.static_ip, changed.keep_mac) == (guest, "10.1.1.30", False)
    changed = await update(["target_network_id", "static_ip"], target_network_id=shared, static_ip="192.168.100.20")
    assert (changed.target_network_id, changed.static_ip, changed.keep_mac) == (shared, "192.168.100.20", False)
    # no mask: every mutable field is replaced (what the request leaves empty becomes empty)
    replaced = await update([], target_network_id=guest)
    assert (replaced.target_network_id, replaced.static_ip, replaced.keep_mac) == (guest, "", False)
    await refused(["source_network"], "FIELD_IMMUTABLE", "update_mask.paths[0]", source_network="Other")
    await refused(["static_ip", "colour"], "UPDATE_MASK_INVALID", "update_mask.paths[1]")
    # an immutable field sent with another value is refused, never dropped
    await refused([], "FIELD_IMMUTABLE", "mapping.source_network", target_network_id=guest, source_network="Other")
    same = await update([], target_network_id=guest, source_network="VM Network")  # its own value: fine
    assert same.source_network == "VM Network"


async def test_typed_error_details_are_decoded_by_the_python_client(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    jobs = job_pb2_grpc.JobServiceStub(channel)
    # BadRequest: the field of a bad request
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.GetJob(job_pb2.GetJobRequest(id="not an id!"))
    bad = error_details(err.value)
    assert bad.reason == "ID_INVALID" and [v.field for v in bad.field_violations] == ["id"]
    assert "not valid" in bad.field_violations[0].description
    # ResourceInfo: what was not found
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.GetJob(job_pb2.GetJobRequest(id="no-such-job"))
    missing = error_details(err.value)
    assert [(r.resource_type, r.resource_name) for r in missing.resources] == [("oma.v1.Job", "no-such-job")]
    assert describe_error(err.value).endswith("(JOB_NOT_FOUND)")
    # PreconditionFailure: the active job that blocks a start, with its id
    enrolled = await enroll(channel)
    job = await seed_job(oma_server.app, enrolled.appliance_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=job.vm_context_id)
        )
    active = error_details(err.value)
    assert (err.value.code(), active.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_ALREADY_ACTIVE")
    assert active.active_job_id() == job.id
    assert [(r.resource_type, r.resource_name) for r in active.resources] == [("oma.v1.Job", job.id)]
    # PreconditionFailure: every failed readiness check, by name, with its reason
    vm_id = (
        await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
            vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
        )
    ).vm_context.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await failover_pb2_grpc.FailoverServiceStub(channel).StartFailover(
            failover_pb2.StartFailoverRequest(vm_context_id=vm_id, kind=failover_pb2.FAILOVER_JOB_KIND_TEST)
        )
    readiness = error_details(err.value)
    assert readiness.reason == "FAILOVER_NOT_READY"
    failed = readiness.failed_checks()
    assert set(failed) == set(readiness.info.metadata["failed_checks"].split(","))  # type: ignore[union-attr]
    assert {"replication_completed", "networks_mapped"} <= set(failed)
    assert "'VM Network' is not mapped" in failed["networks_mapped"]
