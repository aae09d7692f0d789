"""Preflight checks and refusals, and network mapping CRUD with its validation."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from oma.v1 import failover_pb2, failover_pb2_grpc, vm_context_pb2, vm_context_pb2_grpc
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import enroll
from tests.failover.helpers import LIVE, TEST, failover_stub, inventory, map_network, replicate, sim_of, start_failover
from vma_client_stubs.errors import error_info_of


async def check(channel: grpc.aio.Channel, vm_id: str, kind: int = TEST) -> dict[str, failover_pb2.ReadinessCheck]:
    reply = await failover_stub(channel).CheckFailoverReadiness(
        failover_pb2.CheckFailoverReadinessRequest(vm_context_id=vm_id, kind=kind)  # type: ignore[arg-type]
    )
    assert reply.ready == all(c.passed for c in reply.checks)
    return {c.name: c for c in reply.checks}


async def test_preflight_without_replication_or_mapping_refuses(oma: OmaServer) -> None:
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_id = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
                vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
            )
        ).vm_context.id
        checks = await check(channel, vm_id, LIVE)
        failed = {name for name, c in checks.items() if not c.passed}
        assert failed == {
            "vm_ready",
            "replication_completed",
            "disks_replicated",
            "networks_mapped",
            "appliance_connected",
        }
        assert "StartReplication" in checks["replication_completed"].reason
        assert "'VM Network' is not mapped" in checks["networks_mapped"].reason
        assert checks["service_offering"].passed and "Medium Instance" in checks["service_offering"].reason
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start_failover(channel, vm_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info_of(err.value)
        assert info is not None and info.reason == "FAILOVER_NOT_READY"
        assert set(info.metadata["failed_checks"].split(",")) == failed - {"appliance_connected"}
        assert "not mapped" in info.metadata["check_networks_mapped"]
        assert "networks_mapped" in (err.value.details() or "")
        # a wrong kind is an invalid argument
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel, vm_id, failover_pb2.FAILOVER_JOB_KIND_CLEANUP)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel, "no-such-vm")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert not sim_of(oma).state.snapshots


@pytest.mark.nbd
async def test_replicated_but_unmapped_network_and_too_small_offering(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        checks = await check(channel, r.vm_id)
        assert {n for n, c in checks.items() if not c.passed} == {"networks_mapped"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start_failover(channel, r.vm_id)
        assert error_info_of(err.value).metadata["failed_checks"] == "networks_mapped"  # type: ignore[union-attr]
        await map_network(channel, sim)
        assert all(c.passed for c in (await check(channel, r.vm_id, LIVE)).values())
        small = sim.state.find_by_name(sim.state.service_offerings, "Small Instance")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await failover_stub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=TEST, service_offering_id=small)
            )
        assert "the VM needs 2 CPU(s)" in error_info_of(err.value).metadata["check_service_offering"]  # type: ignore[union-attr]
        assert not sim.state.snapshots and len(sim.state.vms) == 1  # nothing was created
        await r.stream.close()


async def test_network_mapping_crud_and_validation(oma: OmaServer) -> None:
    sim = sim_of(oma)
    stub = failover_pb2_grpc.NetworkMappingServiceStub(channel := oma_channel(oma))
    try:
        enrolled = await enroll(channel)
        vm_id = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
                vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
            )
        ).vm_context.id
        guest = sim.state.find_by_name(sim.state.networks, "guest-net-1")
        shared = sim.state.find_by_name(sim.state.networks, "shared-net-1")

        async def create(**kw: object) -> failover_pb2.NetworkMapping:
            reply = await stub.CreateNetworkMapping(
                failover_pb2.CreateNetworkMappingRequest(mapping=failover_pb2.NetworkMapping(**kw))  # type: ignore[arg-type]
            )
            return reply.mapping

        async def refused(code: grpc.StatusCode, reason: str, **kw: object) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create(**kw)
            assert err.value.code() == code, err.value.details()
            assert error_info_of(err.value).reason == reason  # type: ignore[union-attr]

        default = await create(source_network="VM Network", target_network_id=guest)
        assert default.id and not default.vm_context_id and default.created_at.seconds
        await refused(
            grpc.StatusCode.ALREADY_EXISTS,
            "NETWORK_MAPPING_EXISTS",
            source_network="VM Network",
            target_network_id=shared,
        )
        await refused(
            grpc.StatusCode.INVALID_ARGUMENT, "TARGET_NETWORK_NOT_FOUND", source_network="x", target_network_id="nope"
        )
        await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "STATIC_IP_INVALID",
            source_network="x",
            target_network_id=guest,
            static_ip="10.1.1.300",
        )
        await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "STATIC_IP_OUTSIDE_NETWORK",
            source_network="x",
            target_network_id=guest,
            static_ip="192.168.100.5",
        )
        await refused(grpc.StatusCode.INVALID_ARGUMENT, "SOURCE_NETWORK_MISSING", target_network_id=guest)
        await refused(
            grpc.StatusCode.NOT_FOUND,
            "VM_CONTEXT_NOT_FOUND",
            vm_context_id="nope",
            source_network="x",
            target_network_id=guest,
        )
        own = await create(
            vm_context_id=vm_id,
            source_network="VM Network",
            target_network_id=shared,
            static_ip="192.168.100.20",
            keep_mac=True,
        )
        listed = (await stub.ListNetworkMappings(failover_pb2.ListNetworkMappingsRequest(vm_context_id=vm_id))).mappings
        assert {m.id for m in listed} == {default.id, own.id}
        with pytest.raises(grpc.aio.AioRpcError) as unknown:  # a typo is not "nothing mapped"
            await stub.ListNetworkMappings(failover_pb2.ListNetworkMappingsRequest(vm_context_id="nope"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info_of(unknown.value).reason == "VM_CONTEXT_NOT_FOUND"  # type: ignore[union-attr]
        # the VM's own mapping wins over the default
        checks = await check(channel, vm_id)
        assert "shared-net-1" in checks["networks_mapped"].reason
        updated = (
            await stub.UpdateNetworkMapping(
                failover_pb2.UpdateNetworkMappingRequest(
                    mapping=failover_pb2.NetworkMapping(id=own.id, target_network_id=guest, static_ip="10.1.1.77")
                )
            )
        ).mapping
        assert updated.target_network_id == guest and updated.static_ip == "10.1.1.77" and not updated.keep_mac
        await stub.DeleteNetworkMapping(failover_pb2.DeleteNetworkMappingRequest(id=own.id))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeleteNetworkMapping(failover_pb2.DeleteNetworkMappingRequest(id=own.id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        everything = (await stub.ListNetworkMappings(failover_pb2.ListNetworkMappingsRequest())).mappings
        assert [m.id for m in everything] == [default.id]
    finally:
        await channel.close()
