"""The gRPC server in-process on a free port, through real channels and the generated stubs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
)
from oma_server.api.status import ERROR_DOMAIN, ErrorMappingInterceptor
from oma_server.server import SERVICE_NAMES, OmaServer
from tests.conftest import REPO
from tests.waiting import until
from vma.v1 import agent_service_pb2, agent_service_pb2_grpc
from vma_client_stubs.errors import error_info_of


async def test_health_serving_for_every_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", *SERVICE_NAMES]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_oma_and_vma_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
    assert "oma.v1.VmaGatewayService" in names
    assert "oma.v1.ReplicationService" in names
    assert "vma.v1.VmaAgentService" in names


async def test_server_info_reports_the_one_version(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    reply = await server_info_pb2_grpc.ServerInfoServiceStub(channel).GetServerInfo(
        server_info_pb2.GetServerInfoRequest()
    )
    assert reply.version == (REPO / "VERSION.txt").read_text().strip()
    assert reply.database_kind == oma_server.app.db.kind
    assert reply.schema_version >= 1


async def test_enroll_get_list_revoke(channel: grpc.aio.Channel) -> None:
    stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
    enrolled = await stub.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name="vma-east"))
    assert enrolled.credential and enrolled.appliance.id
    assert enrolled.appliance.connection_state == appliance_pb2.CONNECTION_STATE_NEVER_CONNECTED
    got = await stub.GetAppliance(appliance_pb2.GetApplianceRequest(id=enrolled.appliance.id))
    assert got.appliance.name == "vma-east"
    listed = await stub.ListAppliances(appliance_pb2.ListAppliancesRequest())
    assert [a.name for a in listed.appliances] == ["vma-east"]
    revoked = await stub.RevokeAppliance(appliance_pb2.RevokeApplianceRequest(id=enrolled.appliance.id))
    assert revoked.appliance.status == appliance_pb2.APPLIANCE_STATUS_REVOKED


async def test_bad_input_gets_status_and_error_info(channel: grpc.aio.Channel) -> None:
    stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as bad_name:
        await stub.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name="no spaces allowed"))
    assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(bad_name.value)
    assert info is not None and info.reason == "APPLIANCE_NAME_INVALID" and info.domain == ERROR_DOMAIN

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetAppliance(appliance_pb2.GetApplianceRequest(id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (missing.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as token:
        await stub.ListAppliances(appliance_pb2.ListAppliancesRequest(page_token="garbage!"))
    assert token.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(token.value)
    assert info is not None and info.reason == "PAGE_TOKEN_INVALID"

    await stub.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name="twice"))
    with pytest.raises(grpc.aio.AioRpcError) as dup:
        await stub.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name="twice"))
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_unbuilt_handler_is_a_clean_unimplemented() -> None:
    """A handler left to its generated base class answers UNIMPLEMENTED with ErrorInfo, through the one interceptor."""
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    agent_service_pb2_grpc.add_VmaAgentServiceServicer_to_server(
        agent_service_pb2_grpc.VmaAgentServiceServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_service_pb2_grpc.VmaAgentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListLocalJobs(agent_service_pb2.ListLocalJobsRequest())
    finally:
        await server.stop(0)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = error_info_of(err.value)
    assert info is not None and info.reason == "NOT_IMPLEMENTED"


async def test_health_watch_streams_serving_and_ends_when_cancelled(channel: grpc.aio.Channel) -> None:
    """grpc's health Watch writes with context.write (a coroutine, not a generator): the interceptor keeps it so, and
    a client's cancel ends the handler (a watch has no end of its own to wait for)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    first = await call.read()
    call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    def watch_tasks() -> list[asyncio.Task[object]]:  # the handler run as a task of its own (how a leak would look)
        return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").endswith(".Watch")]

    await until(lambda: not watch_tasks(), "the server's Watch handler to end")
