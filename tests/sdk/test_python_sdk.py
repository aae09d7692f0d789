"""The Python SDK (vma_client_stubs.operator_client) for real: pagination against an OMA, a watch that resumes by
itself across an OMA restart, ErrorInfo, and — against a small real gRPC server that answers what a test needs —
retries of UNAVAILABLE only, the bearer token on every call, TLS with a CA made here by openssl."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.v1 import job_pb2, replication_pb2, schedule_pb2, server_info_pb2, server_info_pb2_grpc, vm_context_pb2
from oma_server.ports import free_port
from tests.clients import ca_file
from tests.factories import inventory
from tests.failover.helpers import replicate
from tests.stream_client.test_real_oma import Oma
from tests.tls import SERVER_NAME, make_pki
from vma_client_stubs.operator_client import (
    OperatorClient,
    RetryPolicy,
    TlsConfig,
    describe_error,
    error_details,
    error_info,
)

COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
FAST_RETRY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[Oma]:
    server = Oma(tmp_path)
    await server.start()
    yield server
    await server.stop()


async def test_pagination_follows_page_tokens(oma: Oma) -> None:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token()) as client:
        names = [f"vma-page-{i}" for i in range(5)]
        for name in names:
            await client.enroll_appliance(name)
        assert [a.name async for a in client.iter_appliances(page_size=2)] == names


async def test_a_repeated_enrollment_with_its_request_id_gets_the_first_answer(oma: Oma) -> None:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token()) as client:
        first = await client.enroll_appliance("vma-retried", request_id="enroll-vma-retried")
        again = await client.enroll_appliance("vma-retried", request_id="enroll-vma-retried")
        assert (again.appliance_id, again.credential) == (first.appliance_id, first.credential)
        assert [a.name async for a in client.iter_appliances()] == ["vma-retried"]
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await client.enroll_appliance("vma-other", request_id="enroll-vma-retried")
    details = error_details(reused.value)
    assert details.reason == "REQUEST_ID_REUSED" and [v.field for v in details.field_violations] == ["request_id"]


async def test_errors_carry_their_error_info(oma: Oma) -> None:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token(), retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.get_appliance("no-such-appliance")
    info = error_info(refused.value)
    assert info is not None and info.reason == "APPLIANCE_NOT_FOUND" and info.domain == "oma.control-plane"
    assert info.metadata["appliance_id"] == "no-such-appliance"
    assert describe_error(refused.value).startswith("NOT_FOUND: appliance no-such-appliance does not exist")
    assert describe_error(refused.value).endswith("(APPLIANCE_NOT_FOUND)")


async def test_watch_resumes_by_itself_across_an_oma_restart(oma: Oma, tmp_path: Path) -> None:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token(), resume_backoff_s=(0.02, 0.2)) as client:
        assert oma.server is not None
        async with oma.channel() as channel:
            replicated = await replicate(channel, tmp_path, inventory(disk_mib=(2,)))
        updates = client.watch_jobs(include_finished=True)
        kinds = []
        async for update in updates:
            kinds.append(update.kind)
            if update.kind == job_pb2.UPDATE_KIND_SYNCED:
                synced = update.revision
                break
        assert kinds == [job_pb2.UPDATE_KIND_SNAPSHOT, job_pb2.UPDATE_KIND_SYNCED]  # the completed job, then SYNCED
        await replicated.stream.close()
        await oma.stop()
        await oma.start()
        # A job after the restart reaches the same iterator. A restarted OMA holds no history, so it answers the
        # resume with OUT_OF_RANGE and the SDK re-lists (a new snapshot, then SYNCED); revisions kept growing.
        async with oma.channel() as channel:
            again = await replicate(channel, tmp_path, inventory(disk_mib=(2,), name="web-02"))
        async with asyncio.timeout(30):
            async for update in updates:
                if update.replication_job.vm_context_id == again.vm_id and update.replication_job.status == COMPLETED:
                    assert update.revision > synced, "revisions only grow, across restarts too"
                    break
        await again.stream.close()


class ServerInfo(server_info_pb2_grpc.ServerInfoServiceServicer):
    """Answers UNAVAILABLE (or another code) the first `failures` times, then the version; records metadata."""

    def __init__(self, failures: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.failures = failures
        self.code = code
        self.calls: list[dict[str, str]] = []

    async def GetServerInfo(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(dict(context.invocation_metadata()))
        if len(self.calls) <= self.failures:
            await context.abort(self.code, f"attempt {len(self.calls)} refused")
        return server_info_pb2.GetServerInfoResponse(version="9.9.9")


async def serve(servicer: ServerInfo, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server_info_pb2_grpc.add_ServerInfoServiceServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    await server.start()
    return server, address


async def get_info(client: OperatorClient) -> server_info_pb2.GetServerInfoResponse:
    stub = server_info_pb2_grpc.ServerInfoServiceStub(client.channel)
    return await stub.GetServerInfo(server_info_pb2.GetServerInfoRequest(), timeout=10)


async def outcome(servicer: ServerInfo, retry: RetryPolicy | None) -> tuple[grpc.StatusCode, int]:
    """The code one call through the SDK ended with, and how many attempts reached the server."""
    server, address = await serve(servicer)
    try:
        async with OperatorClient(address, retry=retry) as client:
            try:
                await get_info(client)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
    finally:
        await server.stop(None)
    return code, len(servicer.calls)


async def test_unavailable_is_retried_and_nothing_else() -> None:
    ok, unavailable, refused = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION
    assert await outcome(ServerInfo(failures=2), FAST_RETRY) == (ok, 3), "two UNAVAILABLE, then the third attempt"
    assert await outcome(ServerInfo(failures=1, code=refused), FAST_RETRY) == (refused, 1), "no other code retried"
    assert await outcome(ServerInfo(failures=1), None) == (unavailable, 1), "retry=None: one attempt"


async def test_the_token_goes_on_every_call() -> None:
    recorder = ServerInfo()
    server, address = await serve(recorder)
    tokens = iter(["tok-1", "tok-2"])
    try:
        async with OperatorClient(address, token=lambda: next(tokens)) as client:
            await get_info(client)
            await get_info(client)
        assert [c.get("authorization") for c in recorder.calls] == ["Bearer tok-1", "Bearer tok-2"]
    finally:
        await server.stop(None)


async def test_tls_with_the_omas_ca(tmp_path: Path) -> None:
    pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    recorder = ServerInfo()
    server, address = await serve(
        recorder, grpc.ssl_server_credentials([(pki.key.read_bytes(), pki.cert.read_bytes())])
    )
    try:
        tls = TlsConfig.from_files(ca=pki.ca, server_name=SERVER_NAME)
        async with OperatorClient(address, tls=tls, retry=None) as client:
            assert (await get_info(client)).version == "9.9.9"
        # Without the OMA's CA the certificate is not trusted: the call fails, nothing reaches the server.
        async with OperatorClient(address, tls=TlsConfig(server_name=SERVER_NAME), retry=None) as client:
            with pytest.raises(grpc.aio.AioRpcError) as untrusted:
                await get_info(client)
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(recorder.calls) == 1
    finally:
        await server.stop(None)


async def test_the_example_lists_and_watches(oma: Oma, tmp_path: Path) -> None:
    async with oma.channel() as channel:
        replicated = await replicate(channel, tmp_path, inventory(disk_mib=(2,), name="web-example"))
    example = [sys.executable, "-m", "vma_client_stubs.examples.watch_jobs", "--server", oma.target]
    example += ["--ca", str(ca_file(oma.settings.data_dir)), "--token-file", str(oma.settings.data_dir / "admin.token")]
    result = await asyncio.to_thread(
        subprocess.run, [*example, "--until-synced"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "web-example  ready_for_failover  1 disk(s)" in result.stdout
    assert " completed  100.0 %" in result.stdout and "-- synced at revision" in result.stdout
    await replicated.stream.close()
    await oma.stop()
    down = await asyncio.to_thread(subprocess.run, example, capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and down.stderr.startswith("watch_jobs: UNAVAILABLE"), down.stderr


async def test_schedules_are_listed_page_by_page(oma: Oma) -> None:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token()) as client:
        enrolled = await client.enroll_appliance("vma-sched")
        made = []
        for i in range(3):
            vm = (
                await client.vm_contexts.RegisterVmContext(
                    vm_context_pb2.RegisterVmContextRequest(
                        appliance_id=enrolled.appliance_id, virtual_machine=inventory(name=f"sched-{i}")
                    )
                )
            ).vm_context
            target = schedule_pb2.ScheduleTarget(kind=schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT, id=vm.id)
            spec = schedule_pb2.ScheduleSpec(target=target, interval_seconds=3600, rpo_target_seconds=7200)
            made.append((await client.schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(spec=spec))).schedule)
        assert [s.id async for s in client.iter_schedules(page_size=2)] == [s.id for s in made]
        assert [s.id async for s in client.iter_schedules(target_id=made[1].spec.target.id)] == [made[1].id]
