"""Safe retries (issue #19, AIP-155): every mutating RPC takes a request_id; a retry after a lost answer gets the
first answer and changes nothing, also after a restart; the same id with another request is INVALID_ARGUMENT.

"A lost answer" is what a client sees when the server acted but the answer never arrived: the call is made, its
answer thrown away, and the same request sent again. The effect is counted through the public List RPCs (and, for
commands to an appliance, the outbox)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
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
    failover_pb2,
    failover_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import ApiToken, Command, IdempotencyRecord
from oma_server.errors import Aborted
from oma_server.idempotency import IdempotencyStore, RequestKey, purge_expired
from oma_server.server import SERVICE_NAMES, OmaServer
from tests.agent.helpers import make_agent, wait_connected
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import enroll, inventory, job_on_stream
from vma.v1 import stream_pb2
from vma_client_stubs.agent.vcenter import FakeVCenter
from vma_client_stubs.errors import error_details_of

Call = Callable[[Any], Awaitable[Any]]
# Verbs of the RPCs that create or change something; each such request must take a request_id.
MUTATING_VERBS = ("Create", "Update", "Delete", "Start", "Cancel", "Retry", "Cleanup", "Rollback", "Enroll", "Revoke")
MUTATING_VERBS += ("Register", "Discover", "PowerOn", "PowerOff")
MIB = 1 << 20


async def retried(call: Call, request: Message) -> Any:
    """Send `request`, lose its answer, send it again: the retry's answer, which must be the first one."""
    first = await call(request)
    again = await call(request)
    assert again == first, "a retry with the same request_id must get the first answer"
    return again


async def refused(call: Call, request: Message) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    return err.value


async def refused_reuse(call: Call, request: Message) -> None:
    error = await refused(call, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details = error_details_of(error)
    assert details.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in details.field_violations] == ["request_id"]


def test_every_mutating_request_takes_a_request_id() -> None:
    pool = descriptor_pool.Default()
    missing = []
    for service in SERVICE_NAMES:
        for method in pool.FindServiceByName(service).methods:
            if method.name.startswith(MUTATING_VERBS) and "request_id" not in method.input_type.fields_by_name:
                missing.append(f"{service}/{method.name}")
    assert missing == []


async def test_enroll_retried_after_a_lost_answer_and_after_a_restart_enrolls_once(
    tmp_path: Path, database_url: str
) -> None:
    server = OmaServer(App(make_settings(tmp_path, database_url)))
    await server.start()
    request = appliance_pb2.EnrollApplianceRequest(name="vma-once", request_id="enroll-1")
    try:
        async with oma_channel(server) as channel:
            stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
            first = await retried(stub.EnrollAppliance, request)
            assert first.credential
            await refused_reuse(
                stub.EnrollAppliance, appliance_pb2.EnrollApplianceRequest(name="vma-other", request_id="enroll-1")
            )
        settings = server.app.settings
        await server.stop(grace=0.2)
        settings.listen = "127.0.0.1:0"
        server = OmaServer(App(settings))
        await server.start()
        async with oma_channel(server) as channel:
            stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
            assert await stub.EnrollAppliance(request) == first  # the same credential: the first answer, kept
            listed = await stub.ListAppliances(appliance_pb2.ListAppliancesRequest())
            assert [a.name for a in listed.appliances] == ["vma-once"]
    finally:
        await server.stop(grace=0.2)


async def test_tokens_appliances_and_vm_contexts_change_once_per_request_id(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    tokens = access_pb2_grpc.AccessServiceStub(channel)
    before = len((await tokens.ListApiTokens(access_pb2.ListApiTokensRequest())).tokens)
    create = access_pb2.CreateApiTokenRequest(name="ci", role=access_pb2.ROLE_VIEWER, request_id="tok-1")
    created = await retried(tokens.CreateApiToken, create)
    assert len((await tokens.ListApiTokens(access_pb2.ListApiTokensRequest())).tokens) == before + 1
    revoked = await retried(
        tokens.RevokeApiToken, access_pb2.RevokeApiTokenRequest(id=created.token.id, request_id="r1")
    )
    assert revoked.token.HasField("revoked_at")
    await refused_reuse(tokens.RevokeApiToken, access_pb2.RevokeApiTokenRequest(id="other", request_id="r1"))

    appliances = appliance_pb2_grpc.ApplianceServiceStub(channel)
    enrolled = await enroll(channel)
    revoke = appliance_pb2.RevokeApplianceRequest(id=enrolled.appliance_id, request_id="rev-1")
    assert (
        await retried(appliances.RevokeAppliance, revoke)
    ).appliance.status == appliance_pb2.APPLIANCE_STATUS_REVOKED

    vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
    owner = await enroll(channel)
    vm = inventory()
    register = vm_context_pb2.RegisterVmContextRequest(
        appliance_id=owner.appliance_id, virtual_machine=vm, request_id="reg-1"
    )
    registered = await retried(vms.RegisterVmContext, register)
    assert registered.created  # the retry says "created" too: it is the first answer, not a second registration
    without_id = vm_context_pb2.RegisterVmContextRequest(appliance_id=owner.appliance_id, virtual_machine=vm)
    assert not (await vms.RegisterVmContext(without_id)).created
    listed = await vms.ListVmContexts(vm_context_pb2.ListVmContextsRequest(appliance_id=owner.appliance_id))
    assert [v.id for v in listed.vm_contexts] == [registered.vm_context.id]


async def test_network_mappings_change_once_per_request_id(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    sim = oma_server.app.simulator
    assert sim is not None
    guest = sim.state.find_by_name(sim.state.networks, "guest-net-1")
    shared = sim.state.find_by_name(sim.state.networks, "shared-net-1")
    stub = failover_pb2_grpc.NetworkMappingServiceStub(channel)
    mapping = failover_pb2.NetworkMapping(source_network="VM Network", target_network_id=guest)
    created = (
        await retried(
            stub.CreateNetworkMapping, failover_pb2.CreateNetworkMappingRequest(mapping=mapping, request_id="m1")
        )
    ).mapping
    # without a request_id the same create is a second request: refused, the mapping exists
    error = await refused(stub.CreateNetworkMapping, failover_pb2.CreateNetworkMappingRequest(mapping=mapping))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    update = failover_pb2.UpdateNetworkMappingRequest(
        mapping=failover_pb2.NetworkMapping(id=created.id, target_network_id=shared),
        update_mask=field_mask_pb2.FieldMask(paths=["target_network_id"]),
        request_id="u1",
    )
    assert (await retried(stub.UpdateNetworkMapping, update)).mapping.target_network_id == shared
    delete = failover_pb2.DeleteNetworkMappingRequest(id=created.id, request_id="d1")
    await retried(stub.DeleteNetworkMapping, delete)  # the retry is OK, not NOT_FOUND: the delete happened once
    assert (
        await refused(stub.DeleteNetworkMapping, failover_pb2.DeleteNetworkMappingRequest(id=created.id))
    ).code() == (grpc.StatusCode.NOT_FOUND)
    assert list((await stub.ListNetworkMappings(failover_pb2.ListNetworkMappingsRequest())).mappings) == []
    await refused_reuse(
        stub.DeleteNetworkMapping, failover_pb2.DeleteNetworkMappingRequest(id="another", request_id="d1")
    )


async def cancel_commands(app: App, job_id: str) -> int:
    return await app.db.run(
        lambda: Command.select().where((Command.job_id == job_id) & (Command.kind == "cancel_job")).count()
    )


async def test_replication_cancel_and_retry_change_once_per_request_id(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    await stream.recv_until("command")
    api = replication_pb2_grpc.ReplicationServiceStub(channel)
    cancel = replication_pb2.CancelReplicationJobRequest(id=job.id, request_id="cancel-1")
    assert (
        await retried(api.CancelReplicationJob, cancel)
    ).job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLING
    sent = (await stream.recv_until("command")).command
    assert sent.cancel_job.job_id == job.id
    assert await cancel_commands(app, job.id) == 1  # one cancel told to the appliance
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=sent.command_id, outcome=stream_pb2.COMMAND_OUTCOME_REJECTED, detail="no such job here"
        )
    )
    await stream.recv_until("command_result_ack", command_id=sent.command_id)
    retry = replication_pb2.RetryReplicationJobRequest(id=job.id, request_id="retry-1")
    again = (await retried(api.RetryReplicationJob, retry)).job
    assert again.retry_of == job.id
    listed = await api.ListReplicationJobs(replication_pb2.ListReplicationJobsRequest(vm_context_id=job.vm_context_id))
    assert sorted(j.id for j in listed.jobs) == sorted([job.id, again.id])  # one retry, not two
    await stream.close()


async def test_concurrent_repeats_share_one_effect_and_one_answer(channel: grpc.aio.Channel) -> None:
    tokens = access_pb2_grpc.AccessServiceStub(channel)
    request = access_pb2.CreateApiTokenRequest(name="twice", role=access_pb2.ROLE_VIEWER, request_id="same-time")
    answers = await asyncio.gather(*(tokens.CreateApiToken(request) for _ in range(4)))
    assert len({a.token.id for a in answers}) == 1 and len({a.secret for a in answers}) == 1
    listed = (await tokens.ListApiTokens(access_pb2.ListApiTokensRequest())).tokens
    assert [t.name for t in listed].count("twice") == 1


async def test_an_expired_record_is_purged_and_its_id_may_serve_a_new_request(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    tokens = access_pb2_grpc.AccessServiceStub(channel)
    request = access_pb2.CreateApiTokenRequest(name="old", role=access_pb2.ROLE_VIEWER, request_id="kept-a-day")
    first = await tokens.CreateApiToken(request)
    assert await app.db.tx(purge_expired, app.clock.now()) == 0  # not expired yet
    assert await app.db.tx(purge_expired, app.clock.now() + timedelta(hours=24, seconds=1)) == 1  # a day later
    second = await tokens.CreateApiToken(request)
    assert second.token.id != first.token.id  # the id is free again: a new request, a new token


async def test_a_change_without_its_answer_is_never_made_twice(oma_server: OmaServer) -> None:
    """The record is written in the transaction of the change: a call that changed something and then failed (as if
    its server stopped before answering) is answered REQUEST_PENDING, and its work does not run again."""
    app = oma_server.app
    store = IdempotencyStore(app.db, app.clock)
    key = RequestKey("/test/Change", "lost-1", "f" * 64)
    runs: list[str] = []

    async def change_then_fail() -> bytes:
        runs.append("ran")
        await app.db.tx(lambda: ApiToken.create(id=f"t{len(runs)}", name="x", role="viewer", secret_hash="h"))
        raise RuntimeError("the server stopped before it could answer")

    with pytest.raises(RuntimeError):
        await store.once(key, change_then_fail, bytes, bytes)
    with pytest.raises(Aborted) as pending:
        await store.once(key, change_then_fail, bytes, bytes)
    assert pending.value.reason == "REQUEST_PENDING" and runs == ["ran"]

    async def rolled_back() -> bytes:  # a change that rolls back takes its record with it: the retry runs again
        runs.append("rolled back")

        def write_then_fail() -> None:
            ApiToken.create(id="t-rolled", name="x", role="viewer", secret_hash="h")
            raise RuntimeError("the transaction fails")

        await app.db.tx(write_then_fail)
        return b""

    other = RequestKey("/test/Change", "rolled-1", "f" * 64)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await store.once(other, rolled_back, bytes, bytes)
    assert runs == ["ran", "rolled back", "rolled back"]
    rows = await app.db.run(lambda: [r.request_id for r in IdempotencyRecord.select()])
    assert "rolled-1" not in rows and await app.db.run(ApiToken.get_or_none, ApiToken.id == "t-rolled") is None


async def test_start_replication_and_cancel_job_change_once_per_request_id(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    enrolled = await enroll(channel)
    register = vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
    vm_id = (await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(register)).vm_context.id
    api = replication_pb2_grpc.ReplicationServiceStub(channel)
    start = replication_pb2.StartReplicationRequest(vm_context_id=vm_id, request_id="start-1")
    job = (await retried(api.StartReplication, start)).job
    await refused_reuse(
        api.StartReplication, replication_pb2.StartReplicationRequest(vm_context_id="x", request_id="start-1")
    )
    jobs = job_pb2_grpc.JobServiceStub(channel)
    cancelled = (await retried(jobs.CancelJob, job_pb2.CancelJobRequest(id=job.id, request_id="cancel-job-1"))).job
    assert cancelled.replication_job.id == job.id
    listed = await api.ListReplicationJobs(replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_id))
    assert [j.id for j in listed.jobs] == [job.id]  # one job started


async def test_discover_vms_retried_registers_once(
    oma_server: OmaServer, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    vcenter = FakeVCenter(tmp_path / "vcenter")
    vcenter.create_vm("retry-01", [MIB], seed=3)
    enrolled = await enroll(channel)
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent"):
        await wait_connected(channel, enrolled.appliance_id)
        vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
        discover = vm_context_pb2.DiscoverVmsRequest(
            appliance_id=enrolled.appliance_id, name_filter="retry-01", register=True, request_id="discover-1"
        )
        found = await retried(vms.DiscoverVms, discover)
        assert [v.name for v in found.vm_contexts] == ["retry-01"]
        listed = await vms.ListVmContexts(vm_context_pb2.ListVmContextsRequest(appliance_id=enrolled.appliance_id))
        assert [v.id for v in listed.vm_contexts] == [found.vm_contexts[0].id]


async def test_what_a_call_spawns_writes_on_its_own_after_the_call(oma_server: OmaServer) -> None:
    """A task started by the call (a job's workflow) inherits its context; once the call answered, the task's
    writes are its own: they neither claim the key nor fail on it."""
    app = oma_server.app
    store = IdempotencyStore(app.db, app.clock)
    released = asyncio.Event()
    spawned: list[asyncio.Task[None]] = []

    async def later() -> None:
        await released.wait()
        await app.db.tx(lambda: ApiToken.create(id="t-later", name="x", role="viewer", secret_hash="h"))

    async def start_work() -> bytes:  # changes nothing itself: only what it spawns writes
        spawned.append(asyncio.create_task(later()))
        return b"the answer"

    key = RequestKey("/test/Start", "spawn-1", "e" * 64)
    assert await store.once(key, start_work, bytes, bytes) == b"the answer"
    released.set()
    await spawned[0]  # wrote without raising
    assert await app.db.run(ApiToken.get_or_none, ApiToken.id == "t-later") is not None
    assert await store.once(key, start_work, bytes, bytes) == b"the answer"  # the stored answer, no second start
    assert len(spawned) == 1
