"""How watch streams end (job.proto): a WatchJob ends with OK right after the job's final state unless asked to keep
following, WatchJobs never ends on its own, and a from_revision the server cannot resume from is OUT_OF_RANGE with
what to do. Real server, real channel, an appliance's real stream driving the job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2
from oma_server.app import App
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import RawStream, completed, disk_done, job_on_stream, progress, started
from vma_client_stubs.errors import error_info_of

SNAPSHOT, CHANGE, NOTIFY, SYNCED = (
    job_pb2.UPDATE_KIND_SNAPSHOT,
    job_pb2.UPDATE_KIND_CHANGE,
    job_pb2.UPDATE_KIND_PROGRESS_NOTIFY,
    job_pb2.UPDATE_KIND_SYNCED,
)
COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
NOTIFY_S = 0.2


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = OmaServer(App(make_settings(tmp_path)))
    server.app.job_watch.notify_interval_s = NOTIFY_S  # PROGRESS_NOTIFY often, so "still open" shows quickly
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def channel(oma: OmaServer) -> AsyncIterator[grpc.aio.Channel]:
    async with oma_channel(oma) as ch:
        yield ch


async def complete_job(stream: RawStream, job: object) -> None:
    await stream.send(event=started(job, 1))  # type: ignore[arg-type]
    await stream.send(progress=progress(job, 2, 1 << 20))  # type: ignore[arg-type]
    await stream.send(event=disk_done(job, 3, 0, "cid-a"))  # type: ignore[arg-type]
    await stream.send(event=disk_done(job, 4, 1, "cid-b"))  # type: ignore[arg-type]
    await stream.send(event=completed(job, 5))  # type: ignore[arg-type]
    await stream.recv_until("ack", job_id=job.id, sequence=5)  # type: ignore[attr-defined]


async def read_all(call: grpc.aio.UnaryStreamCall, timeout: float = 10.0) -> list[job_pb2.JobUpdate]:
    """Every update until the stream ends on its own (a hang fails the test at `timeout`)."""

    async def drain() -> list[job_pb2.JobUpdate]:
        updates = []
        while (response := await call.read()) != grpc.aio.EOF:
            updates.append(response.update)
        return updates

    updates = await asyncio.wait_for(drain(), timeout)
    assert await call.code() == grpc.StatusCode.OK
    return updates


async def test_watch_of_a_finished_job_sends_its_final_state_and_ends(
    channel: grpc.aio.Channel, oma: OmaServer
) -> None:
    _, job, stream = await job_on_stream(channel, oma.app)
    await complete_job(stream, job)
    stub = job_pb2_grpc.JobServiceStub(channel)

    fresh = await read_all(stub.WatchJob(job_pb2.WatchJobRequest(job_id=job.id)))
    assert [u.kind for u in fresh] == [SNAPSHOT]
    assert fresh[0].replication_job.status == COMPLETED
    final_revision = fresh[0].revision

    # Resuming after the end (from the final revision, or from an earlier one) also ends with the final state.
    for resume in (final_revision, final_revision - 1):
        resumed = await read_all(stub.WatchJob(job_pb2.WatchJobRequest(job_id=job.id, from_revision=resume)))
        assert resumed and resumed[-1].replication_job.status == COMPLETED, resumed
        assert all(u.kind in (SNAPSHOT, CHANGE) for u in resumed)
    await stream.close()


async def test_live_watch_follows_the_job_and_ends_after_completed(channel: grpc.aio.Channel, oma: OmaServer) -> None:
    _, job, stream = await job_on_stream(channel, oma.app)
    stub = job_pb2_grpc.JobServiceStub(channel)
    call = stub.WatchJob(job_pb2.WatchJobRequest(job_id=job.id))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.update.kind == SNAPSHOT
    await complete_job(stream, job)
    rest = await read_all(call)
    jobs = [u.replication_job for u in rest if u.WhichOneof("job")]
    assert jobs[-1].status == COMPLETED
    assert rest[-1].replication_job.status == COMPLETED  # nothing after the final state: the stream ended
    assert [u.revision for u in rest if u.kind == CHANGE] == sorted(u.revision for u in rest if u.kind == CHANGE)
    await stream.close()


async def test_keep_following_stays_open_after_the_final_state(channel: grpc.aio.Channel, oma: OmaServer) -> None:
    _, job, stream = await job_on_stream(channel, oma.app)
    await complete_job(stream, job)
    call = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job.id, keep_following=True))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.update.replication_job.status == COMPLETED
    notify = await asyncio.wait_for(call.read(), 5)  # still open: it says so with a PROGRESS_NOTIFY
    assert notify.update.kind == NOTIFY and notify.update.revision >= first.update.revision
    call.cancel()
    await stream.close()


async def test_watch_jobs_keeps_running_after_every_job_ended(channel: grpc.aio.Channel, oma: OmaServer) -> None:
    _, job, stream = await job_on_stream(channel, oma.app)
    call = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest(vm_context_id=job.vm_context_id))
    assert (await asyncio.wait_for(call.read(), 5)).update.kind == SNAPSHOT
    assert (await asyncio.wait_for(call.read(), 5)).update.kind == SYNCED
    await complete_job(stream, job)
    seen_final = False
    while not seen_final:
        update = (await asyncio.wait_for(call.read(), 5)).update
        seen_final = update.replication_job.status == COMPLETED
    after = (await asyncio.wait_for(call.read(), 5)).update  # the stream goes on: nothing changes, so a notify
    assert after.kind == NOTIFY
    call.cancel()
    await stream.close()


async def test_a_revision_ahead_of_the_server_is_out_of_range_with_what_to_do(
    channel: grpc.aio.Channel, oma: OmaServer
) -> None:
    _, job, stream = await job_on_stream(channel, oma.app)
    stub = job_pb2_grpc.JobServiceStub(channel)
    ahead = oma.app.watch.revision + 99_999
    for call in (
        stub.WatchJob(job_pb2.WatchJobRequest(job_id=job.id, from_revision=ahead)),
        stub.WatchJobs(job_pb2.WatchJobsRequest(from_revision=ahead)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), 5)
        error = raised.value
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        info = error_info_of(error)
        assert info is not None and info.reason == "REVISION_AHEAD"
        assert info.metadata["revision"] == str(ahead)
        assert f"revision {ahead} is ahead of this server" in (error.details() or "")
        assert "watch from revision 0" in (error.details() or "")
    # the latest revision itself is fine: a resume from it waits for what comes next
    call = stub.WatchJob(job_pb2.WatchJobRequest(job_id=job.id, from_revision=oma.app.watch.revision))
    assert (await asyncio.wait_for(call.read(), 5)).update.kind == NOTIFY
    call.cancel()
    await stream.close()


async def test_watching_jobs_of_an_unknown_vm_is_not_found(channel: grpc.aio.Channel) -> None:
    call = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest(vm_context_id="no-such-vm"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), 5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info_of(raised.value)
    assert info is not None and info.reason == "VM_CONTEXT_NOT_FOUND"
