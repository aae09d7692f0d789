"""Several `oma-server` processes on one real PostgreSQL (issue #18): any process takes any appliance's stream,
exclusively; a dead holder's appliances are free within seconds and move; commands and answers cross processes.

Three real processes, each with its own data directory and ports, share one database; the appliance is the stream
harness's VMA (tests/harness/stream_faults.py) over real gRPC, proving itself with its enrollment credential. The
processes' fallback polling is set to 60 s, so what arrives sooner came through LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    failover_pb2,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from oma_server.app import App
from oma_server.failover.state_machine import FailoverKind, FailoverStatus, iso_text
from oma_server.ports import free_port
from oma_server.security.tokens import ADMIN_TOKEN_FILE
from oma_server.settings import Settings
from tests.factories import seed_job
from tests.harness.oma_process import OmaProcess
from tests.harness.stream_faults import Connection, _completed, _disk_done, _progress, _started
from tests.pg import PostgresServer
from vma.v1 import stream_pb2

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DISK_BYTES = 1 << 20
CONNECTED = appliance_pb2.CONNECTION_STATE_CONNECTED


@dataclass
class Cluster:
    url: str
    processes: list[OmaProcess]
    appliance_id: str
    credential: str
    job_id: str
    disk_ids: list[str]
    cutover_id: str  # a live failover scheduled for tomorrow


async def _seed(data_dir: Path, url: str) -> tuple[str, str, str, list[str], str]:
    """An enrolled appliance with one job handed to it and a live failover of its VM scheduled for tomorrow, written
    through the real services; the admin token file."""
    app = App(
        Settings(
            listen="127.0.0.1:0",
            data_dir=data_dir,
            database=url,
            nbd_listen=f"127.0.0.1:{free_port()}",
            appliance_listen="127.0.0.1:0",
            allow_credential_hello=True,
        )
    )
    await app.start()
    try:
        enrolled = await app.appliances.enroll("vma-cluster")
        job = await seed_job(app, enrolled.appliance.id, disk_bytes=DISK_BYTES)
        tomorrow = {"start_at": iso_text(datetime.now(UTC) + timedelta(days=1))}
        cutover = await app.failover_jobs.create(
            job.vm_context_id, FailoverKind.LIVE, params=tomorrow, status=FailoverStatus.SCHEDULED
        )
        return enrolled.appliance.id, enrolled.credential, job.id, [d.disk_id for d in job.disks], cutover.id
    finally:
        await app.stop()


@pytest.fixture
async def cluster(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Cluster]:
    url = postgres.create_database()
    appliance_id, credential, job_id, disk_ids, cutover_id = await _seed(tmp_path / "seed", url)
    processes = []
    try:
        for i in range(3):
            data_dir = tmp_path / f"oma-{i}"
            data_dir.mkdir()
            shutil.copy(tmp_path / "seed" / ADMIN_TOKEN_FILE, data_dir / ADMIN_TOKEN_FILE)  # one database, one token
            oma = OmaProcess(data_dir, url, "--cluster-poll-interval", "60", "--heartbeat-interval", "2")
            processes.append(oma)
            await asyncio.to_thread(oma.start)
        yield Cluster(url, processes, appliance_id, credential, job_id, disk_ids, cutover_id)
    finally:
        for oma in processes:
            await asyncio.to_thread(oma.stop)


def _query(url: str, sql: str, *args: object) -> tuple[object, ...] | None:
    """One row of the shared database, read as an operator would (psql), outside every OMA process."""
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, args)
        row = cursor.fetchone()
    connection.close()
    return None if row is None else tuple(row)


async def _until(what: str, check: Callable[[], object], timeout: float = 20.0) -> float:
    """Seconds until `check()` is truthy (fails after `timeout`)."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _appliance(c: Cluster) -> tuple[str, str]:
    """(connection state, connected_to) as recorded."""
    row = _query(c.url, "SELECT connection_state, connected_to FROM appliance WHERE id = %s", c.appliance_id)
    assert row is not None
    return str(row[0]), str(row[1])


async def _connect(c: Cluster, oma: OmaProcess) -> tuple[Connection, int]:
    """A stream to `oma`; the Welcome cursor of the job."""
    channel = oma.channel()
    connection = Connection(channel, c.appliance_id, c.credential)
    connection.channel = channel  # type: ignore[attr-defined]  # kept open as long as the stream
    welcome = await connection.open()
    cursors = {cursor.job_id: cursor.last_applied_sequence for cursor in welcome.open_jobs}
    return connection, cursors.get(c.job_id, -1)


async def _job(oma: OmaProcess, job_id: str) -> replication_pb2.ReplicationJob:
    async with oma.channel() as channel:
        api = replication_pb2_grpc.ReplicationServiceStub(channel)
        return (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job_id))).job


def _script(c: Cluster) -> list[tuple[str, object]]:
    """The job's messages by sequence: started, progress, each disk completed, completed."""
    half, whole = DISK_BYTES // 2, DISK_BYTES
    sizes, total = [whole, whole], 2 * whole
    steps: list[tuple[str, object]] = [("event", _started(c.job_id, 1))]
    for seq, copied in enumerate(([half, 0], [whole, 0], [whole, half]), start=2):
        steps.append(("progress", _progress(c.job_id, c.disk_ids, seq, copied, sizes, total)))
    steps.append(("event", _disk_done(c.job_id, c.disk_ids[0], 5, "cid-0")))
    steps.append(("progress", _progress(c.job_id, c.disk_ids, 6, [whole, whole], sizes, total)))
    steps.append(("event", _disk_done(c.job_id, c.disk_ids[1], 7, "cid-1")))
    steps.append(("event", _completed(c.job_id, 8)))
    return steps


async def _watch(oma: OmaProcess, job_id: str, seen: list[tuple[int, int, int]]) -> None:
    """Follow one job on `oma` until its WatchJob ends (right after the final state): (revision, status,
    last_sequence) of every update."""
    async with oma.channel() as channel:
        call = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job_id))
        async for response in call:
            update = response.update
            if update.kind in (job_pb2.UPDATE_KIND_SNAPSHOT, job_pb2.UPDATE_KIND_CHANGE):
                job = update.replication_job
                seen.append((update.revision, job.status, job.last_sequence))


async def test_the_stream_moves_when_the_process_holding_it_is_killed(cluster: Cluster) -> None:
    c = cluster
    first, second, third = c.processes
    steps = _script(c)
    seen: list[tuple[int, int, int]] = []  # a watcher on a process that never holds the stream
    watcher = asyncio.create_task(_watch(first, c.job_id, seen))
    await _until("the watcher has its snapshot", lambda: bool(seen))
    vma, cursor = await _connect(c, second)
    assert cursor == 0
    assert _appliance(c) == ("connected", f"{socket.gethostname()}:{_pid(second)}")
    for kind, message in steps[:5]:
        await vma.send(kind, message)
    assert await vma.wait_ack(c.job_id, 5, timeout=20), "the holder did not ack the first disk's completion"
    await vma.send(*steps[5])  # progress 6: maybe written, maybe not, when the holder dies

    await asyncio.to_thread(second.kill)
    await vma.close()
    freed = await _until(
        "the dead holder's appliance is marked disconnected by a survivor",
        lambda: _appliance(c)[0] == "disconnected",
    )
    assert freed < 10  # the survivors' liveness pass, every heartbeat interval / 2, finds its lock gone

    vma, cursor = await _connect(c, third)
    assert cursor in (5, 6), f"the durable cursor after the kill is {cursor}"
    for kind, message in steps[cursor:]:  # the VMA resends what the cursor shows missing
        await vma.send(kind, message)
    assert await vma.wait_ack(c.job_id, 8, timeout=20), "the new holder did not ack the completion"
    job = await _job(first, c.job_id)  # read on a process that never held the stream
    assert job.status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
    assert (job.bytes_done, job.last_sequence, job.percent) == (2 * DISK_BYTES, 8, 100.0)
    assert sorted(d.new_change_id for d in job.disks) == ["cid-0", "cid-1"]
    await vma.close()
    # The watcher saw the changes the other processes applied, in order, up to the final state, and was ended.
    await asyncio.wait_for(watcher, 20)
    revisions = [r for r, _, _ in seen]
    assert revisions == sorted(set(revisions)), seen
    assert seen[-1][1:] == (replication_pb2.REPLICATION_JOB_STATUS_COMPLETED, 8)
    assert [q for _, _, q in seen] == sorted(q for _, _, q in seen)
    assert any(status == replication_pb2.REPLICATION_JOB_STATUS_REPLICATING for _, status, _ in seen)


async def test_a_newer_stream_on_another_process_takes_over_and_commands_follow_it(cluster: Cluster) -> None:
    c = cluster
    first, second, third = c.processes
    old, _ = await _connect(c, first)
    await old.send("event", _started(c.job_id, 1))
    assert await old.wait_ack(c.job_id, 1, timeout=20)

    new, cursor = await _connect(c, second)
    assert cursor == 1
    await _until("the older stream is ended by its process", lambda: old.closed)
    assert _appliance(c) == ("connected", f"{socket.gethostname()}:{_pid(second)}")

    # A cancel asked of the third process reaches the appliance on the second one (NOTIFY, not the 60 s poll),
    # and the appliance's answer, stored by the second, is seen by the third.
    async with third.channel() as channel:
        api = replication_pb2_grpc.ReplicationServiceStub(channel)
        cancelled = await api.CancelReplicationJob(replication_pb2.CancelReplicationJobRequest(id=c.job_id))
    assert cancelled.job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLING
    delivered = await _until(
        "the cancel command is answered by the appliance",
        lambda: _first_command(c, "cancel_job") == "done",
    )
    assert delivered < 10
    await new.send("event", stream_cancelled(c.job_id, 2))
    assert await new.wait_ack(c.job_id, 2, timeout=20)
    job = await _job(third, c.job_id)
    assert job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLED and job.last_sequence == 2
    listed = await _appliances(first)
    assert [(a.id, a.connection_state) for a in listed] == [(c.appliance_id, CONNECTED)]
    await new.close()


def _first_command(c: Cluster, kind: str) -> str:
    row = _query(c.url, "SELECT status FROM command WHERE appliance_id = %s AND kind = %s", c.appliance_id, kind)
    return "" if row is None else str(row[0])


def _pid(oma: OmaProcess) -> int:
    assert oma.proc is not None
    return oma.proc.pid


def stream_cancelled(job_id: str, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, cancelled=stream_pb2.JobCancelled())


async def _appliances(oma: OmaProcess) -> list[appliance_pb2.Appliance]:
    async with oma.channel() as channel:
        reply = await appliance_pb2_grpc.ApplianceServiceStub(channel).ListAppliances(
            appliance_pb2.ListAppliancesRequest()
        )
    return list(reply.appliances)


async def test_a_failover_job_changed_in_one_process_reaches_the_watchers_of_the_others(cluster: Cluster) -> None:
    """The scheduled cutover is cancelled through the first process; watchers of it on the second and the third,
    subscribed while it was scheduled, get its final state (announced at the commit, read from its row there) and
    their WatchJob ends, as on the process that changed it."""
    c = cluster
    first, second, third = c.processes
    seen: dict[int, list[int]] = {1: [], 2: []}

    async def watch(index: int, oma: OmaProcess) -> None:
        async with oma.channel() as channel:
            call = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=c.cutover_id))
            async for response in call:
                if response.update.HasField("failover_job"):
                    seen[index].append(response.update.failover_job.status)

    watchers = [asyncio.create_task(watch(1, second)), asyncio.create_task(watch(2, third))]
    try:
        await _until("both watchers have the scheduled job", lambda: all(seen.values()))
        async with first.channel() as channel:
            request = job_pb2.CancelJobRequest(id=c.cutover_id)
            cancelled = (await job_pb2_grpc.JobServiceStub(channel).CancelJob(request)).job.failover_job
        assert cancelled.status == failover_pb2.FAILOVER_JOB_STATUS_CANCELLED
        await asyncio.wait_for(asyncio.gather(*watchers), timeout=20)  # each ends after the final state
    finally:
        for task in watchers:
            task.cancel()
    scheduled, final = failover_pb2.FAILOVER_JOB_STATUS_SCHEDULED, failover_pb2.FAILOVER_JOB_STATUS_CANCELLED
    assert seen == {1: [scheduled, final], 2: [scheduled, final]}
