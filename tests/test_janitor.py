"""The janitor finishes or fails jobs left in a transient status after their cause passed (issue #10).

Each case makes the leftover for real: a database written by an OMA that stopped between the two commits of the old
completion, an appliance that refuses a command over the real stream, a provisioning task that is gone.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from oma.common.v1 import jobs_pb2
from oma.v1 import replication_pb2, replication_pb2_grpc
from oma_server.app import App
from oma_server.db.database import Database
from oma_server.db.models import JobLog, ReplicationJob, VmContext
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import RawStream, disk_done, enroll, job_on_stream, seed_job, started
from vma.v1 import stream_pb2


async def job_row(app: App, job_id: str) -> ReplicationJob:
    return await app.db.run(ReplicationJob.get_by_id, job_id)


async def janitor_notes(app: App, job_id: str) -> list[str]:
    def read() -> list[str]:
        return [e.message for e in JobLog.select().where((JobLog.job_id == job_id) & (JobLog.step == "janitor"))]

    return await app.db.run(read)


async def test_a_job_found_completing_at_start_is_completed_with_a_log_entry(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    server = OmaServer(App(settings))
    await server.start()
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        job = await seed_job(server.app, enrolled.appliance_id)
        stream = RawStream(channel)
        await stream.hello(enrolled)
        for message in (started(job, 1), disk_done(job, 2, 0, "cid-a"), disk_done(job, 3, 1, "cid-b")):
            await stream.send(event=message)
        await stream.recv_until("ack", job_id=job.id, sequence=3)
        await stream.close()
    await server.stop(grace=0.2)

    # What 0.2.0 left when it stopped between "completing" and "completed": the first commit only.
    def left_completing() -> None:
        ReplicationJob.update(status="completing", current_operation="Recording change ids", last_sequence=4).where(
            ReplicationJob.id == job.id
        ).execute()

    db = Database(settings.database_url)
    await db.tx(left_completing)
    db.close()

    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings))
    await restarted.start()
    try:
        stored = await job_row(restarted.app, job.id)
        assert (stored.status, stored.percent, stored.last_sequence) == ("completed", 100.0, 4)
        assert any("completion had begun" in n for n in await janitor_notes(restarted.app, job.id))
        vm = await restarted.app.db.run(VmContext.get_by_id, job.vm_context_id)
        assert vm.status == "ready_for_failover" and vm.last_completed_job_id == job.id
    finally:
        await restarted.stop(grace=0.2)


async def test_a_start_command_the_appliance_rejects_fails_the_job(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    command = (await stream.recv_until("command")).command
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id,
            outcome=stream_pb2.COMMAND_OUTCOME_REJECTED,
            error_class=jobs_pb2.ERROR_CLASS_INVALID_COMMAND,
            detail="VM vm-uuid is not in this vCenter",
        )
    )
    await stream.recv_until("command_result_ack", command_id=command.command_id)
    stored = await job_row(app, job.id)
    assert (stored.status, stored.error_reason) == ("failed", "VMA_COMMAND_REJECTED")
    assert "not in this vCenter" in stored.error_message and "RetryReplicationJob" in stored.error_message
    assert await janitor_notes(app, job.id)
    vm = await app.db.run(VmContext.get_by_id, job.vm_context_id)
    assert vm.status == "discovered" and not vm.active_job_id  # nothing was copied: back to where it was
    await stream.close()


async def test_a_cancel_for_a_job_the_appliance_does_not_run_ends_cancelled(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    await stream.recv_until("command")
    api = replication_pb2_grpc.ReplicationServiceStub(channel)
    await api.CancelReplicationJob(replication_pb2.CancelReplicationJobRequest(id=job.id))
    cancel = (await stream.recv_until("command")).command
    assert cancel.cancel_job.job_id == job.id
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=cancel.command_id, outcome=stream_pb2.COMMAND_OUTCOME_REJECTED, detail="no such job here"
        )
    )
    await stream.recv_until("command_result_ack", command_id=cancel.command_id)
    stored = await job_row(app, job.id)
    assert stored.status == "cancelled"
    assert any("does not run the job" in n for n in await janitor_notes(app, job.id))
    await stream.close()


async def test_a_job_whose_provisioning_task_is_gone_is_provisioned_again(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    assert app.workflow is not None and app.janitor is not None
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    # A job the store holds as pending, with no task: as a StartReplication whose task was lost leaves it.
    pending = await app.jobs.create(
        vm_context_id=job.vm_context_id,
        appliance_id=enrolled.appliance_id,
        kind="incremental",
        disks=[],
    )
    assert not app.workflow.running(pending.id)
    assert pending.id in await app.janitor.sweep()
    assert app.workflow.running(pending.id) or (await job_row(app, pending.id)).status != "pending"
    await app.workflow.wait(pending.id)
    assert any("no provisioning task" in n for n in await janitor_notes(app, pending.id))
    assert (await job_row(app, pending.id)).status != "pending"
