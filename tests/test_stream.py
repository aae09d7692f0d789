"""The VMA stream against the real in-process server: session, sequencing, acks, commands, liveness, watch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2, replication_pb2_grpc
from oma_server.app import App
from oma_server.db.models import Appliance, ChangeIdRecord, Command, Disk, ReplicationJob
from oma_server.replication.state_machine import JobStatus
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import RawStream, completed, disk_done, enroll, progress, seed_job, started
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of


async def row(app: App, job_id: str) -> ReplicationJob:
    return await app.db.run(ReplicationJob.get_by_id, job_id)


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# ---- session and auth --------------------------------------------------------------------------------------------
async def test_first_message_must_be_hello(channel: grpc.aio.Channel) -> None:
    stream = RawStream(channel)
    await stream.send(heartbeat=stream_pb2.Heartbeat())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.recv()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info_of(err.value).reason == "HELLO_MISSING"  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["appliance_id", "credential", "last_command_id"])
async def test_a_hello_with_a_nul_is_invalid_and_changes_nothing(channel: grpc.aio.Channel, field: str) -> None:
    """Found by the reflection walk on PostgreSQL: an appliance id with a NUL reached the database (INTERNAL)."""
    enrolled = await enroll(channel)
    hello = stream_pb2.Hello(appliance_id=enrolled.appliance_id, credential=enrolled.credential)
    setattr(hello, field, "x\x00y")
    stream = RawStream(channel)
    await stream.send(hello=hello)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(err.value)
    assert info is not None and info.reason == "HELLO_INVALID" and info.metadata["field"] == field


@pytest.mark.parametrize("case", ["wrong secret", "unknown appliance", "revoked"])
async def test_bad_credentials_are_unauthenticated(channel: grpc.aio.Channel, oma_server: OmaServer, case: str) -> None:
    enrolled = await enroll(channel)
    hello = stream_pb2.Hello(appliance_id=enrolled.appliance_id, credential=enrolled.credential)
    if case == "wrong secret":
        hello.credential = "not-it"
    elif case == "unknown appliance":
        hello.appliance_id = "nobody"
    else:
        await oma_server.app.appliances.revoke(enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.send(hello=hello)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.recv()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    appliance = await oma_server.app.db.run(Appliance.get_or_none, Appliance.id == enrolled.appliance_id)
    assert appliance is None or appliance.connection_state != "connected"


async def test_welcome_then_pending_command(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    welcome = await stream.hello(enrolled, capabilities=["resume-from-extent"])
    assert welcome.session_id and welcome.heartbeat_interval.seconds == 10
    assert [(c.job_id, c.last_applied_sequence) for c in welcome.open_jobs] == [(job.id, 0)]
    command = (await stream.recv_until("command")).command
    assert command.start_replication.job_id == job.id
    assert [d.disk_id for d in command.start_replication.disks] == [d.disk_id for d in job.disks]
    appliance = await app.db.run(Appliance.get_by_id, enrolled.appliance_id)
    assert appliance.connection_state == "connected" and appliance.capabilities == ["resume-from-extent"]
    await stream.close()


async def test_second_connect_replaces_the_first(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    enrolled = await enroll(channel)
    first = RawStream(channel)
    w1 = await first.hello(enrolled)
    second = RawStream(channel)
    w2 = await second.hello(enrolled)
    assert w1.session_id != w2.session_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            if await first.recv() == grpc.aio.EOF:
                break
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert oma_server.app.hub.sessions[enrolled.appliance_id].session_id == w2.session_id
    appliance = await oma_server.app.db.run(Appliance.get_by_id, enrolled.appliance_id)
    assert appliance.connection_state == "connected" and appliance.session_id == w2.session_id
    await second.close()


# ---- reports, sequencing, acks -------------------------------------------------------------------------------------
async def test_progress_is_applied_once_in_order_and_acked_when_durable(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    total = sum(d.bytes_total for d in job.disks)
    await stream.send(event=started(job, 1))
    await stream.recv_until("ack", job_id=job.id, sequence=1)
    await stream.send(progress=progress(job, 2, total // 2))
    ack = await stream.recv_until("ack", job_id=job.id, sequence=2)
    assert ack.ack.sequence == 2
    stored = await row(app, job.id)
    assert stored.last_sequence == 2 and stored.bytes_done == total // 2 and stored.status == "replicating"
    # a duplicate and a stale report change nothing and are acked with the durable sequence
    await stream.send(progress=progress(job, 2, total))
    await stream.send(progress=progress(job, 1, total))
    await stream.recv_until("ack", job_id=job.id, sequence=2)
    assert (await row(app, job.id)).bytes_done == total // 2
    # a later report with fewer bytes (a resumed copy) never moves the percentage backwards
    await stream.send(progress=progress(job, 3, total // 4))
    await stream.recv_until("ack", job_id=job.id, sequence=3)
    stored = await row(app, job.id)
    assert stored.percent == pytest.approx(50.0) and stored.bytes_done == total // 4
    await stream.close()


async def test_bad_messages_get_an_error_reply_and_the_stream_stays_up(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    mine, other = await enroll(channel), await enroll(channel)
    my_job = await seed_job(app, mine.appliance_id)
    their_job = await seed_job(app, other.appliance_id)
    stream = RawStream(channel)
    await stream.hello(mine)
    cases = [
        ("UNKNOWN_JOB", stream_pb2.ProgressReport(job_id="no-such-job", sequence=1)),
        ("FOREIGN_JOB", progress(their_job, 1, 10)),
        ("INVALID_MESSAGE", progress(my_job, 0, 10)),
        ("INVALID_MESSAGE", progress(my_job, 1, 10, total=5)),
        ("INVALID_MESSAGE", stream_pb2.ProgressReport(job_id="", sequence=1)),
    ]
    for code, report in cases:
        await stream.send(progress=report)
        error = (await stream.recv_until("error")).error
        assert stream_pb2.StreamErrorCode.Name(error.code) == f"STREAM_ERROR_CODE_{code}", error
        assert error.message
    await stream.send(event=stream_pb2.JobEvent(job_id=their_job.id, sequence=5, completed=stream_pb2.JobCompleted()))
    assert (await stream.recv_until("error")).error.code == stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB
    await stream.send(event=disk_done(my_job, 1, 0, ""))  # a completion without a change id
    assert (await stream.recv_until("error")).error.code == stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE
    await stream.send(command_result=stream_pb2.CommandResult(command_id="nope", outcome=1))
    assert (await stream.recv_until("error")).error.code == stream_pb2.STREAM_ERROR_CODE_UNKNOWN_COMMAND
    # nothing of any of it was applied, and the stream still works
    assert (await row(app, their_job.id)).status == "waiting_for_vma"
    assert (await row(app, their_job.id)).last_sequence == 0
    assert (await row(app, my_job.id)).last_sequence == 0
    await stream.send(progress=progress(my_job, 1, 10))
    await stream.recv_until("ack", job_id=my_job.id, sequence=1)
    await stream.close()


@pytest.mark.parametrize("order", ["progress-then-event", "event-then-late-progress"])
async def test_completion_is_exactly_once_whatever_the_order(
    channel: grpc.aio.Channel, oma_server: OmaServer, order: str
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    total = sum(d.bytes_total for d in job.disks)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.send(event=started(job, 1))
    await stream.send(event=disk_done(job, 2, 0, "cid-a"))
    await stream.send(event=disk_done(job, 3, 1, "cid-b"))
    last_progress = progress(job, 4, total, phase=jobs_pb2.COPY_PHASE_DONE, current_operation="Completed")
    if order == "progress-then-event":
        await stream.send(progress=last_progress)
        await stream.send(event=completed(job, 5))
        await stream.recv_until("ack", job_id=job.id, sequence=5)
    else:
        await stream.send(event=completed(job, 5))
        await stream.recv_until("ack", job_id=job.id, sequence=5)
        last_progress.sequence = 4  # arrives late: stale, ignored
        await stream.send(progress=last_progress)
        await stream.send(event=completed(job, 5))  # a resent completion: a duplicate
        await stream.recv_until("ack", job_id=job.id, sequence=5)
    stored = await row(app, job.id)
    assert stored.status == "completed" and stored.percent == 100.0 and stored.finished_at is not None
    assert stored.current_operation == "Completed"
    records = await app.db.run(lambda: list(ChangeIdRecord.select().where(ChangeIdRecord.job_id == job.id)))
    assert sorted(r.change_id for r in records) == ["cid-a", "cid-b"]  # recorded once each
    disks = await app.db.run(lambda: {d.id: d.last_change_id for d in Disk.select()})
    assert disks[job.disks[0].disk_id] == "cid-a" and disks[job.disks[1].disk_id] == "cid-b"
    await stream.close()


async def test_failed_event_records_the_error_class(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.send(
        event=stream_pb2.JobEvent(
            job_id=job.id,
            sequence=1,
            failed=stream_pb2.JobFailed(error_class=jobs_pb2.ERROR_CLASS_SNAPSHOT_FAILED, detail="vCenter said no"),
        )
    )
    await stream.recv_until("ack", job_id=job.id, sequence=1)
    stored = await row(app, job.id)
    assert (stored.status, stored.error_class, stored.error_message) == ("failed", "snapshot_failed", "vCenter said no")
    await stream.close()


# ---- commands ----------------------------------------------------------------------------------------------
async def test_commands_are_resent_until_answered(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    first = RawStream(channel)
    await first.hello(enrolled)
    command = (await first.recv_until("command")).command
    await first.close()
    await wait_for(lambda: _not_connected(app, enrolled.appliance_id))
    second = RawStream(channel)
    await second.hello(enrolled)
    again = (await second.recv_until("command")).command
    assert again.command_id == command.command_id  # same id: the appliance deduplicates
    await second.send(
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id, outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED
        )
    )
    await second.recv_until("command_result_ack", command_id=command.command_id)
    stored = await app.db.run(Command.get_by_id, command.command_id)
    assert stored.status == "done" and stored.result_outcome == "succeeded" and stored.job_id == job.id
    await second.close()
    third = RawStream(channel)
    await third.hello(enrolled)
    await third.send(heartbeat=stream_pb2.Heartbeat())
    with pytest.raises(TimeoutError):
        await third.recv_until("command", timeout=0.5)  # answered: never sent again
    await third.close()


async def _not_connected(app: App, appliance_id: str) -> bool:
    return not app.hub.connected(appliance_id)


async def test_cancel_tells_the_appliance_and_waits_for_it(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.recv_until("command")
    reply = await replication_pb2_grpc.ReplicationServiceStub(channel).CancelReplicationJob(
        replication_pb2.CancelReplicationJobRequest(id=job.id)
    )
    assert reply.job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLING
    cancel = (await stream.recv_until("command")).command
    assert cancel.cancel_job.job_id == job.id
    await stream.send(event=started(job, 1))  # the cancel overtook the start: accepted, still cancelling
    await stream.recv_until("ack", job_id=job.id, sequence=1)
    assert (await row(app, job.id)).status == "cancelling"
    await stream.send(event=stream_pb2.JobEvent(job_id=job.id, sequence=2, cancelled=stream_pb2.JobCancelled()))
    await stream.recv_until("ack", job_id=job.id, sequence=2)
    assert (await row(app, job.id)).status == "cancelled"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await replication_pb2_grpc.ReplicationServiceStub(channel).CancelReplicationJob(
            replication_pb2.CancelReplicationJobRequest(id=job.id)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stream.close()


# ---- liveness ----------------------------------------------------------------------------------------------
async def test_silent_appliance_stalls_its_jobs_and_resumes_them(tmp_path: Path) -> None:
    server = OmaServer(App(make_settings(tmp_path, heartbeat_interval_s=0.2)))
    await server.start()
    app = server.app
    try:
        async with oma_channel(server) as channel:
            enrolled = await enroll(channel)
            job = await seed_job(app, enrolled.appliance_id)
            stream = RawStream(channel)
            welcome = await stream.hello(enrolled)
            assert welcome.heartbeat_interval.nanos == 200_000_000
            await stream.send(event=started(job, 1))
            await stream.recv_until("ack", job_id=job.id, sequence=1)
            # silence: no heartbeats. The OMA closes the session, then stalls the job (never fails it).
            await wait_for(lambda: _status_is(app, job.id, "stalled"), timeout=5)
            appliance = await app.db.run(Appliance.get_by_id, enrolled.appliance_id)
            assert appliance.connection_state == "disconnected"
            again = RawStream(channel)
            welcome = await again.hello(enrolled)
            assert [(c.job_id, c.last_applied_sequence) for c in welcome.open_jobs] == [(job.id, 1)]
            assert (await row(app, job.id)).status == "replicating"
            await again.close()
            await stream.close()
    finally:
        await server.stop(grace=0.2)


async def _status_is(app: App, job_id: str, status: str) -> bool:
    return (await row(app, job_id)).status == status


# ---- watch ----------------------------------------------------------------------------------------------
async def test_watch_job_snapshot_changes_and_resume(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    jobs = job_pb2_grpc.JobServiceStub(channel)
    watch = jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job.id))
    first = (await asyncio.wait_for(watch.read(), 5)).update
    assert first.kind == job_pb2.UPDATE_KIND_SNAPSHOT
    assert first.replication_job.status == replication_pb2.REPLICATION_JOB_STATUS_WAITING_FOR_VMA
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.send(progress=progress(job, 1, 1000))
    seen = []
    while True:
        update = (await asyncio.wait_for(watch.read(), 5)).update
        seen.append(update)
        if update.replication_job.bytes_done == 1000:
            break
    assert seen[-1].kind == job_pb2.UPDATE_KIND_CHANGE
    resume_from = seen[-1].revision
    watch.cancel()
    await stream.send(progress=progress(job, 2, 2000))
    await stream.recv_until("ack", job_id=job.id, sequence=2)
    resumed = jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job.id, from_revision=resume_from))
    update = (await asyncio.wait_for(resumed.read(), 5)).update
    assert update.kind == job_pb2.UPDATE_KIND_CHANGE and update.replication_job.bytes_done == 2000
    assert update.revision > resume_from
    resumed.cancel()
    await stream.close()


async def test_watch_from_a_compacted_revision_says_relist(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    app.watch._history_max = 3  # a tiny history, so it compacts quickly
    stream = RawStream(channel)
    await stream.hello(enrolled)
    for seq in range(1, 8):
        await stream.send(progress=progress(job, seq, seq * 100))
    await stream.recv_until("ack", job_id=job.id, sequence=7)
    watch = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job.id, from_revision=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(watch.read(), 5)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert error_info_of(err.value).reason == "REVISION_COMPACTED"  # type: ignore[union-attr]
    assert "watch from revision 0" in (err.value.details() or "")
    await stream.close()


async def test_watch_jobs_sends_snapshot_synced_then_changes(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    job_a = await seed_job(app, enrolled.appliance_id)
    job_b = await seed_job(app, enrolled.appliance_id)
    watch = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest())
    kinds, ids = [], set()
    while True:
        update = (await asyncio.wait_for(watch.read(), 5)).update
        kinds.append(update.kind)
        if update.kind == job_pb2.UPDATE_KIND_SYNCED:
            break
        ids.add(update.replication_job.id)
    assert ids == {job_a.id, job_b.id}
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.send(progress=progress(job_b, 1, 77))
    while True:
        update = (await asyncio.wait_for(watch.read(), 5)).update
        if update.replication_job.bytes_done == 77:
            assert update.replication_job.id == job_b.id
            break
    watch.cancel()
    await stream.close()


async def test_unknown_job_watch_is_not_found(channel: grpc.aio.Channel) -> None:
    watch = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id="nope"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await watch.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---- restart ----------------------------------------------------------------------------------------------
async def test_progress_and_commands_survive_an_oma_restart(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    server = OmaServer(App(settings))
    await server.start()
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        job = await seed_job(server.app, enrolled.appliance_id)
        stream = RawStream(channel)
        await stream.hello(enrolled)
        command = (await stream.recv_until("command")).command
        await stream.send(event=started(job, 1))
        await stream.send(progress=progress(job, 2, 500))
        await stream.recv_until("ack", job_id=job.id, sequence=2)
        await stream.send(progress=progress(job, 3, 600))  # applied in memory; written at stop
        await asyncio.sleep(0)
    await server.stop(grace=0.5)

    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings))
    await restarted.start()
    try:
        async with oma_channel(restarted) as channel:
            stream = RawStream(channel)
            welcome = await stream.hello(enrolled)
            (cursor,) = welcome.open_jobs
            assert cursor.job_id == job.id and cursor.last_applied_sequence in (2, 3)
            again = (await stream.recv_until("command")).command
            assert again.command_id == command.command_id
            stored = await row(restarted.app, job.id)
            assert stored.status == "replicating" and stored.last_sequence == cursor.last_applied_sequence
            await stream.close()
    finally:
        await restarted.stop(grace=0.2)
    assert JobStatus(stored.status) == JobStatus.REPLICATING


async def test_revoking_an_appliance_closes_its_stream(channel: grpc.aio.Channel, oma_server: OmaServer) -> None:
    enrolled = await enroll(channel)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await oma_server.app.appliances.revoke(enrolled.appliance_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while await stream.recv() != grpc.aio.EOF:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info_of(err.value).reason == "APPLIANCE_REVOKED"  # type: ignore[union-attr]
