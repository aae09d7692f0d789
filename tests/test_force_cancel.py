"""Force-cancelling a replication job whose appliance no longer answers, through the real API and stream: refused
while the appliance may still confirm, allowed once it is gone (or has left a cancel unanswered for a minute); the
job ends at once with what it left behind in its log, and an appliance that comes back is told to cancel and has
its late reports of the job taken in and ignored."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2, replication_pb2_grpc
from oma_server.db.models import Appliance, JobLog, VmContext
from oma_server.db.models import Command as CommandRow
from oma_server.replication.service import FORCE_AFTER_S
from oma_server.server import OmaServer
from tests.factories import RawStream, enroll, progress, seed_job, started
from tests.waiting import until
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

CANCELLED = replication_pb2.REPLICATION_JOB_STATUS_CANCELLED


async def job_status(server: OmaServer, job_id: str) -> str:
    return (await server.app.jobs.get(job_id)).status.value


async def test_a_job_of_a_vanished_appliance_is_force_cancelled_and_a_returning_appliance_cleans_up(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    replication = replication_pb2_grpc.ReplicationServiceStub(channel)
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    await stream.recv_until("command")  # the start
    await stream.send(event=started(job, 1))
    await stream.send(progress=progress(job, 2, 1024))
    await stream.recv_until("ack", job_id=job.id, sequence=2)

    # connected: a plain cancel is the way, force is refused and changes nothing
    force = replication_pb2.CancelReplicationJobRequest(id=job.id, force=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await replication.CancelReplicationJob(force)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info_of(err.value).reason == "APPLIANCE_MAY_ANSWER"
    assert "without force" in (err.value.details() or "")
    assert await job_status(oma_server, job.id) == "replicating"

    # the appliance goes away for good while the job runs: stalled, then forced
    await stream.close()
    await until(
        lambda: app.db.run(lambda: Appliance.get_by_id(enrolled.appliance_id).connection_state == "disconnected"),
        "the appliance is marked disconnected",
    )
    reply = await job_pb2_grpc.JobServiceStub(channel).CancelJob(job_pb2.CancelJobRequest(id=job.id, force=True))
    assert reply.job.replication_job.status == CANCELLED
    assert await job_status(oma_server, job.id) == "cancelled"
    entries = await app.db.run(lambda: list(JobLog.select().where(JobLog.job_id == job.id)))
    [forced] = [e for e in entries if e.step == "force_cancel"]
    assert f"appliance {enrolled.appliance_id} is not connected" in forced.message
    assert "the cancel stays queued" in forced.message and "kept for the next run" in forced.message
    vm = await app.db.run(VmContext.get_by_id, job.vm_context_id)
    assert vm.active_job_id in ("", None) and vm.status != "replicating"
    with pytest.raises(grpc.aio.AioRpcError) as ended:  # forced again: the job ended, refused like any cancel
        await replication.CancelReplicationJob(force)
    assert error_info_of(ended.value).reason == "JOB_NOT_CANCELLABLE"
    # the VM can sync again at once
    retried = await replication.RetryReplicationJob(replication_pb2.RetryReplicationJobRequest(id=job.id))
    assert retried.job.id != job.id

    # it comes back: not told of the job, told to cancel it, and its late reports change nothing
    stream = RawStream(channel)
    welcome = await stream.hello(enrolled)
    assert job.id not in [c.job_id for c in welcome.open_jobs]
    while True:
        command = (await stream.recv_until("command")).command
        if command.WhichOneof("kind") == "cancel_job":
            break
    assert command.cancel_job.job_id == job.id
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id, outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="not running"
        )
    )
    await stream.recv_until("command_result_ack", command_id=command.command_id)
    await stream.send(progress=progress(job, 3, 4096))
    await stream.recv_until("ack", job_id=job.id, sequence=3)  # taken in and ignored: the appliance may stop
    after = await app.jobs.get(job.id)
    assert after.status.value == "cancelled" and after.bytes_done == 1024
    await stream.close()


async def test_a_hung_appliance_that_leaves_a_cancel_unanswered_for_a_minute_is_forced(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    replication = replication_pb2_grpc.ReplicationServiceStub(channel)
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)  # connected, heartbeating through gRPC, but it never answers the cancel
    cancelling = await replication.CancelReplicationJob(replication_pb2.CancelReplicationJobRequest(id=job.id))
    assert cancelling.job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLING
    force = replication_pb2.CancelReplicationJobRequest(id=job.id, force=True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await replication.CancelReplicationJob(force)
    assert error_info_of(err.value).reason == "APPLIANCE_MAY_ANSWER"
    assert f"{FORCE_AFTER_S:.0f} s" in (err.value.details() or "")

    def a_minute_ago() -> None:  # the cancel as it stands after a minute without an answer
        cancel = CommandRow.get((CommandRow.job_id == job.id) & (CommandRow.kind == "cancel_job"))
        cancel.created_at -= timedelta(seconds=FORCE_AFTER_S + 1)
        cancel.save()

    await app.db.tx(a_minute_ago)
    reply = await replication.CancelReplicationJob(force)
    assert reply.job.status == CANCELLED
    [forced] = await app.db.run(
        lambda: list(JobLog.select().where((JobLog.job_id == job.id) & (JobLog.step == "force_cancel")))
    )
    assert "left the cancel unanswered for" in forced.message
    await stream.close()
