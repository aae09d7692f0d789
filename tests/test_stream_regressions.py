"""Named regressions of issue #10: each broke a promise of the stream on 0.2.0 and must never again.

1. A stream cut while the OMA commits an event leaves memory behind the database (a job stuck in `completing`).
2. An undecodable report is partly applied and its corrected resend ignored.
3. Bytes over the known total are accepted when the report leaves `bytes_total` unset.
4. A `WatchJobs` opened while a change is in flight loses that change for good.

The in-flight moments are made real, not mocked: an outside PostgreSQL transaction holds a lock on the job's row, so
the OMA's own UPDATE waits inside the database (seen in `pg_stat_activity`) while the test cuts the stream or opens
the watch; then the outside transaction ends and the OMA's commit goes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.v1 import (
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import ReplicationJob
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import (
    RawStream,
    completed,
    disk_done,
    enroll,
    inventory,
    job_on_stream,
    progress,
    seed_job,
    started,
)
from tests.pg import PostgresServer, row_locked, wait_until_blocked
from vma.v1 import stream_pb2

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_server(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[tuple[OmaServer, str]]:
    url = postgres.create_database()
    server = OmaServer(App(make_settings(tmp_path, url)))
    await server.start()
    yield server, url
    await server.stop(grace=0.5)


async def db_row(app: App, job_id: str) -> ReplicationJob:
    return await app.db.run(ReplicationJob.get_by_id, job_id)


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_cut_during_the_completed_commit_never_leaves_the_job_short_of_completed(
    pg_server: tuple[OmaServer, str],
) -> None:
    server, url = pg_server
    app = server.app
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        job = await seed_job(app, enrolled.appliance_id)
        stream = RawStream(channel)
        welcome = await stream.hello(enrolled)
        for message in (started(job, 1), disk_done(job, 2, 0, "cid-a"), disk_done(job, 3, 1, "cid-b")):
            await stream.send(event=message)
        await stream.recv_until("ack", job_id=job.id, sequence=3)
        with row_locked(url, "replication_job", job.id):
            await stream.send(event=completed(job, 4))
            await wait_until_blocked(url)
            await stream.close()  # the cut: the OMA's reader is cancelled while its commit waits in the database
            await until(lambda: _reader_cancelled(welcome.session_id))
        # The outside lock is gone, the OMA's unit of work goes through — whole, memory included.
        await until(lambda: _row_status_is(app, job.id, "completed"))
        stored = await db_row(app, job.id)
        api = replication_pb2_grpc.ReplicationServiceStub(channel)
        seen = (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job.id))).job
        assert seen.status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
        assert (stored.last_sequence, stored.percent) == (4, 100.0)
        # A correct VMA reconnects; the welcome says everything is applied, it resends nothing, the job is done.
        again = RawStream(channel)
        welcome = await again.hello(enrolled)
        assert [c.job_id for c in welcome.open_jobs] == []
        await again.close()
    assert app.jobs.cached(job.id) is None or app.jobs.cached(job.id).status.value == "completed"  # type: ignore[union-attr]


async def _disconnected(app: App, appliance_id: str) -> bool:
    return not app.hub.connected(appliance_id)


async def _reader_cancelled(session_id: str) -> bool:
    """The cut reached the OMA: its reader task for the session has been told to stop (it waits for its unit)."""
    return any(t.get_name() == f"vma-reader-{session_id}" and t.cancelling() for t in asyncio.all_tasks())


async def _row_status_is(app: App, job_id: str, status: str) -> bool:
    return (await db_row(app, job_id)).status == status


async def test_cut_during_a_commit_keeps_the_cursor_equal_to_the_database(pg_server: tuple[OmaServer, str]) -> None:
    server, url = pg_server
    app = server.app
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        job = await seed_job(app, enrolled.appliance_id)
        stream = RawStream(channel)
        welcome = await stream.hello(enrolled)
        with row_locked(url, "replication_job", job.id):
            await stream.send(event=started(job, 1))
            await wait_until_blocked(url)
            await stream.close()
            await until(lambda: _reader_cancelled(welcome.session_id))
        await until(lambda: _disconnected(app, enrolled.appliance_id))
        await until(lambda: _row_status_is(app, job.id, "replicating"))
        again = RawStream(channel)
        welcome = await again.hello(enrolled)
        stored = await db_row(app, job.id)
        assert [(c.job_id, c.last_applied_sequence) for c in welcome.open_jobs] == [(job.id, stored.last_sequence)]
        assert stored.last_sequence == 1
        await again.close()


@pytest.mark.parametrize(
    "spoil",
    ["disk phase 999", "disk mode 77", "job phase 999", "eta 2^62 s", "negative eta", "bytes beyond int64"],
)
async def test_an_undecodable_report_changes_nothing_and_its_corrected_resend_is_applied(
    channel: grpc.aio.Channel, oma_server: OmaServer, spoil: str
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    total = sum(d.bytes_total for d in job.disks)
    await stream.send(progress=progress(job, 1, total // 4))
    await stream.recv_until("ack", job_id=job.id, sequence=1)
    before = await db_row(app, job.id)

    bad = progress(job, 2, total // 2, current_operation="spoiled")
    if spoil == "disk phase 999":
        bad.disks[0].phase = 999  # type: ignore[assignment]
    elif spoil == "disk mode 77":
        bad.disks[0].mode = 77  # type: ignore[assignment]
    elif spoil == "job phase 999":
        bad.phase = 999  # type: ignore[assignment]
    elif spoil == "eta 2^62 s":
        bad.eta.seconds = 2**62
    elif spoil == "negative eta":
        bad.eta.seconds = -5
    else:
        bad.bytes_total = 2**64 - 1
        bad.bytes_done = 2**63
    await stream.send(progress=bad)
    error = (await stream.recv_until("error", job_id=job.id)).error
    assert error.code == stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE, error
    assert error.sequence == 2 and error.message
    assert "could not apply" not in error.message  # a named field, not an exception's text

    api = replication_pb2_grpc.ReplicationServiceStub(channel)
    seen = (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job.id))).job
    assert (seen.last_sequence, seen.bytes_done, seen.current_operation, seen.percent) == (
        1,
        before.bytes_done,
        before.current_operation,
        before.percent,
    )
    corrected = progress(job, 2, total // 2, current_operation="corrected")
    await stream.send(progress=corrected)
    await stream.recv_until("ack", job_id=job.id, sequence=2)
    stored = await db_row(app, job.id)
    assert (stored.last_sequence, stored.bytes_done, stored.current_operation) == (2, total // 2, "corrected")
    await stream.close()


@pytest.mark.parametrize("level", ["job", "disk"])
async def test_bytes_over_the_known_total_are_refused_when_the_report_omits_the_total(
    channel: grpc.aio.Channel, oma_server: OmaServer, level: str
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    total = sum(d.bytes_total for d in job.disks)
    await stream.send(progress=progress(job, 1, total // 10))  # the job's total is now known
    await stream.recv_until("ack", job_id=job.id, sequence=1)
    bad = progress(job, 2, total // 5)
    if level == "job":
        bad.bytes_total = 0
        bad.bytes_done = total * 10
    else:
        bad.disks[0].bytes_total = 0
        bad.disks[0].bytes_done = job.disks[0].bytes_total * 10
    await stream.send(progress=bad)
    error = (await stream.recv_until("error", job_id=job.id)).error
    assert error.code == stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE and "exceeds" in error.message
    stored = await db_row(app, job.id)
    assert (stored.last_sequence, stored.percent) == (1, pytest.approx(10.0, abs=0.01))
    # The correct 20 % report with the same sequence is applied and shows 20 %.
    await stream.send(progress=progress(job, 2, total // 5))
    await stream.recv_until("ack", job_id=job.id, sequence=2)
    stored = await db_row(app, job.id)
    assert stored.percent == pytest.approx(20.0, abs=0.01)
    await stream.close()


async def test_a_first_report_cannot_exceed_the_sum_of_the_disks(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    _, job, stream = await job_on_stream(channel, app)
    total = sum(d.bytes_total for d in job.disks)
    bad = progress(job, 1, total * 10)
    bad.bytes_total = 0
    await stream.send(progress=bad)
    error = (await stream.recv_until("error", job_id=job.id)).error
    assert error.code == stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE and "exceeds" in error.message
    assert (await db_row(app, job.id)).last_sequence == 0
    await stream.close()


async def test_watch_jobs_opened_while_a_change_is_in_flight_sees_that_change(
    pg_server: tuple[OmaServer, str],
) -> None:
    server, url = pg_server
    app = server.app
    async with oma_channel(server) as channel:
        _, job, stream = await job_on_stream(channel, app)
        watch = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest())
        with row_locked(url, "replication_job", job.id):
            await stream.send(event=started(job, 1))  # waiting_for_vma → replicating: a commit, now in flight
            await wait_until_blocked(url)
            synced_at = 0
            views: dict[str, int] = {}
            while True:
                update = (await asyncio.wait_for(watch.read(), 5)).update
                if update.kind == job_pb2.UPDATE_KIND_SYNCED:
                    synced_at = update.revision
                    break
                views[update.replication_job.id] = update.replication_job.status
        # The commit lands; a watcher told SYNCED must see it (it is above the SYNCED revision).
        while views.get(job.id) != replication_pb2.REPLICATION_JOB_STATUS_REPLICATING:
            update = (await asyncio.wait_for(watch.read(), 5)).update
            assert update.kind == job_pb2.UPDATE_KIND_CHANGE
            assert update.revision > synced_at, "a change at or below SYNCED arrived after SYNCED"
            views[update.replication_job.id] = update.replication_job.status
        stored = await db_row(app, job.id)
        assert stored.status == "replicating" and stored.revision > synced_at
        watch.cancel()
        await stream.close()


async def test_a_start_replication_whose_caller_goes_away_mid_commit_still_runs(
    pg_server: tuple[OmaServer, str],
) -> None:
    """Not only stream handlers: an operator RPC cancelled by its client (a dropped connection, a deadline) while its
    transaction waits still finishes its unit — the job it created is provisioned, not left pending."""
    server, url = pg_server
    app = server.app
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        registered = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
            vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory((2,)))
        )
        vm_id = registered.vm_context.id
        api = replication_pb2_grpc.ReplicationServiceStub(channel)
        with row_locked(url, "vm_context", vm_id):
            call = api.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=vm_id))
            await wait_until_blocked(url)
            call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        async def handed_to_the_appliance() -> bool:
            jobs = await app.db.run(lambda: list(ReplicationJob.select().where(ReplicationJob.vm_context == vm_id)))
            return len(jobs) == 1 and jobs[0].status == "waiting_for_vma"

        await until(handed_to_the_appliance)
