"""Scheduled cutover through the real API on a ManualClock: a live failover scheduled for a time starts by itself
then, can be cancelled until it starts (touching nothing), keeps or cancels on a missed final-sync deadline, and
starts after an OMA restart that slept through its time. CloudStack simulator, real nbd-server, scripted appliance."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from oma.common.v1 import inventory_pb2
from oma.v1 import (
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
from oma_server.clock import ManualClock
from oma_server.db.models import Command
from oma_server.errors import FailedPrecondition
from oma_server.failover.cutover_runner import claim_scheduled_row
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import RawStream
from tests.failover.helpers import (
    LIVE,
    TEST,
    VM_LIVE,
    VM_READY,
    Replicated,
    answer_power,
    failover_stub,
    get_job,
    get_vm,
    map_network,
    play_replication,
    replicate,
    sim_of,
    wait_job,
    world,
)
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
T0 = datetime(2026, 12, 5, 1, 0, 0)
SCHEDULED = failover_pb2.FAILOVER_JOB_STATUS_SCHEDULED
CANCELLED = failover_pb2.FAILOVER_JOB_STATUS_CANCELLED
COMPLETED = failover_pb2.FAILOVER_JOB_STATUS_COMPLETED
WAIT = failover_pb2.DEADLINE_MISSED_ACTION_WAIT
CANCEL = failover_pb2.DEADLINE_MISSED_ACTION_CANCEL


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def start_oma(tmp_path: Path, clock: ManualClock) -> OmaServer:
    server = OmaServer(App(make_settings(tmp_path), clock=clock))
    await server.start()
    return server


@contextlib.asynccontextmanager
async def oma_on_clock(tmp_path: Path) -> AsyncIterator[tuple[OmaServer, ManualClock]]:
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock)
    holder = [server]
    try:
        yield server, clock
    finally:
        await holder[0].stop(grace=0.2)


async def schedule(
    channel: grpc.aio.Channel,
    vm_id: str,
    start_at: datetime | None,
    deadline: datetime | None = None,
    action: int = 0,
    kind: int = LIVE,
) -> failover_pb2.FailoverJob:
    request = failover_pb2.StartFailoverRequest(vm_context_id=vm_id, kind=kind, on_deadline_missed=action)  # type: ignore[arg-type]
    if start_at is not None:
        request.start_at.CopyFrom(stamp(start_at))
    if deadline is not None:
        request.final_sync_deadline.CopyFrom(stamp(deadline))
    return (await failover_stub(channel).StartFailover(request)).job


async def at(server: OmaServer, clock: ManualClock, when: datetime) -> None:
    """Move the clock to `when` and wait for the cutover loop to have looked at it."""
    clock.set(when)
    assert server.app.cutover is not None
    await server.app.cutover.pass_after_now()


async def log_of(channel: grpc.aio.Channel, job_id: str) -> list[str]:
    reply = await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
        job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000)
    )
    return [e.message for e in reply.entries]


async def until(channel: grpc.aio.Channel, job_id: str, done: object, timeout: float = 20) -> failover_pb2.FailoverJob:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        job = await get_job(channel, job_id)
        if done(job):  # type: ignore[operator]
            return job
        assert loop.time() < deadline, job
        await asyncio.sleep(0.05)


async def watched_status(channel: grpc.aio.Channel, vm_id: str, job_id: str) -> int:
    """The job's status in WatchJobs' initial snapshot of the VM's active jobs."""
    call = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest(vm_context_id=vm_id))
    try:
        async for reply in call:
            if reply.update.failover_job.id == job_id:
                return int(reply.update.failover_job.status)
    finally:
        call.cancel()
    raise AssertionError("the watch ended")


async def cancel(channel: grpc.aio.Channel, job_id: str) -> failover_pb2.FailoverJob:
    reply = await job_pb2_grpc.JobServiceStub(channel).CancelJob(job_pb2.CancelJobRequest(id=job_id))
    return reply.job.failover_job


async def refused(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    info = error_info_of(err.value)
    assert info is not None, err.value
    return err.value.code(), info.reason, dict(info.metadata)


async def commands_of(server: OmaServer, job_id: str) -> list[str]:
    """The kinds of the commands queued for the appliance on behalf of a job (none: nothing was sent)."""

    def read() -> list[str]:
        return [c.kind for c in Command.select().where(Command.job_id == job_id)]

    return await server.app.db.run(read)


async def incremental(channel: grpc.aio.Channel, r: Replicated, tmp_path: Path, tag: str) -> None:
    inc = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
        replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
    )
    await play_replication(r.stream, tmp_path, tag, r.sources, job_id=inc.job.id)
    assert (await get_vm(channel, r.vm_id)).status == VM_READY


async def test_a_scheduled_cutover_starts_at_its_time_and_completes(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock), oma_channel(server) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim_of(server), vm_id=r.vm_id)
        start_at = T0 + timedelta(hours=1)
        job = await schedule(channel, r.vm_id, start_at, start_at + timedelta(hours=2), CANCEL)
        assert job.status == SCHEDULED and job.start_at.ToDatetime() == start_at
        assert job.final_sync_deadline.ToDatetime() == start_at + timedelta(hours=2)
        assert job.on_deadline_missed == CANCEL
        assert any("scheduled for 2026-12-05 02:00:00 UTC" in m for m in await log_of(channel, job.id))
        listed = await job_pb2_grpc.JobServiceStub(channel).ListJobs(job_pb2.ListJobsRequest(open_only=True))
        assert job.id in [j.failover_job.id for j in listed.jobs]
        assert await watched_status(channel, r.vm_id, job.id) == SCHEDULED
        # the VM context is not claimed: replication goes on until the cutover starts
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_READY and not vm.active_job_id
        await incremental(channel, r, tmp_path, "2")
        # a second failover of the VM is refused, naming the scheduled one
        code, reason, meta = await refused(
            failover_stub(channel).StartFailover(failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=TEST))
        )
        assert (code, reason, meta["job_id"]) == (grpc.StatusCode.FAILED_PRECONDITION, "CUTOVER_SCHEDULED", job.id)
        code, reason, meta = await refused(
            vm_context_pb2_grpc.VmContextServiceStub(channel).DeleteVmContext(
                vm_context_pb2.DeleteVmContextRequest(id=r.vm_id)
            )
        )
        assert (code, meta["active_job_id"]) == (grpc.StatusCode.FAILED_PRECONDITION, job.id)

        await at(server, clock, start_at - timedelta(seconds=1))
        assert (await get_job(channel, job.id)).status == SCHEDULED
        assert await commands_of(server, job.id) == []
        await at(server, clock, start_at)
        await answer_power(r.stream, "power_off", vm.vm_uuid)
        await play_replication(r.stream, tmp_path, "final", r.sources)
        done = await wait_job(server, channel, job.id)
        assert done.status == COMPLETED, done
        assert not done.deadline_missed
        assert (await get_vm(channel, r.vm_id)).status == VM_LIVE
        assert any("scheduled start 2026-12-05 02:00:00 UTC" in m for m in await log_of(channel, job.id))
        await r.stream.close()


async def test_a_scheduled_cutover_cancelled_before_its_start_touches_nothing(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock), oma_channel(server) as channel:
        sim = sim_of(server)
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        before_world, before_vm = world(sim), await get_vm(channel, r.vm_id)
        start_at = T0 + timedelta(minutes=30)
        job = await schedule(channel, r.vm_id, start_at)
        stopped = await cancel(channel, job.id)
        assert stopped.status == CANCELLED, stopped
        assert "nothing was changed" in stopped.outcome
        assert all(s.status == failover_pb2.STEP_STATUS_PENDING for s in stopped.steps)
        await at(server, clock, start_at + timedelta(minutes=5))
        assert (await get_job(channel, job.id)).status == CANCELLED
        assert await commands_of(server, job.id) == []
        after = await get_vm(channel, r.vm_id)
        assert (after.status, after.active_job_id) == (before_vm.status, before_vm.active_job_id)
        assert world(sim) == before_world
        await incremental(channel, r, tmp_path, "2")
        # the claim a start (or another OMA process) would take is refused now: the row is no longer scheduled
        with pytest.raises(FailedPrecondition) as refused_claim:
            await server.app.db.tx(claim_scheduled_row, job.id)
        assert refused_claim.value.reason == "NOT_SCHEDULED"
        # a new schedule is possible again
        again = await schedule(channel, r.vm_id, start_at + timedelta(hours=1))
        assert again.status == SCHEDULED
        await r.stream.close()


async def test_a_scheduled_cutover_not_ready_at_its_time_fails_touching_nothing(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock), oma_channel(server) as channel:
        sim = sim_of(server)
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        job = await schedule(channel, r.vm_id, T0 + timedelta(hours=1))
        mappings = failover_pb2_grpc.NetworkMappingServiceStub(channel)
        [mapping] = (await mappings.ListNetworkMappings(failover_pb2.ListNetworkMappingsRequest())).mappings
        await mappings.DeleteNetworkMapping(failover_pb2.DeleteNetworkMappingRequest(id=mapping.id))
        before = world(sim)
        await at(server, clock, T0 + timedelta(hours=1))
        failed = await get_job(channel, job.id)
        assert failed.status == failover_pb2.FAILOVER_JOB_STATUS_FAILED, failed
        assert failed.error.reason == "FAILOVER_NOT_READY" and "networks_mapped" in failed.error.message
        assert "nothing was changed" in failed.outcome
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_READY and not vm.active_job_id
        assert world(sim) == before and await commands_of(server, job.id) == []
        await r.stream.close()


async def started_final_sync(server: OmaServer, clock: ManualClock, channel: grpc.aio.Channel, r: Replicated) -> str:
    """Bring the scheduled cutover to its final sync, begun by the appliance; the sync's job id."""
    vm = await get_vm(channel, r.vm_id)
    await at(server, clock, T0 + timedelta(hours=1))
    await answer_power(r.stream, "power_off", vm.vm_uuid)
    start = (await r.stream.recv_until("command", timeout=20)).command.start_replication
    await r.stream.send(event=stream_pb2.JobEvent(job_id=start.job_id, sequence=1, started=stream_pb2.JobStarted()))
    await r.stream.recv_until("ack", timeout=20, job_id=start.job_id, sequence=1)
    return str(start.job_id)


async def test_a_missed_final_sync_deadline_with_wait_goes_on(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock), oma_channel(server) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim_of(server), vm_id=r.vm_id)
        deadline = T0 + timedelta(hours=1, minutes=10)
        job = await schedule(channel, r.vm_id, T0 + timedelta(hours=1), deadline, WAIT)
        sync_id = await started_final_sync(server, clock, channel, r)
        clock.set(deadline + timedelta(seconds=1))
        missed = await until(channel, job.id, lambda j: j.deadline_missed)
        assert missed.status == failover_pb2.FAILOVER_JOB_STATUS_RUNNING
        assert any("2026-12-05 02:10:00 UTC passed" in m and "waiting on" in m for m in await log_of(channel, job.id))
        # the appliance finishes the final sync late; the failover completes
        seq = 1
        for i, disk in enumerate((await get_vm(channel, r.vm_id)).disks):
            seq += 1
            await r.stream.send(
                event=stream_pb2.JobEvent(
                    job_id=sync_id,
                    sequence=seq,
                    disk_completed=stream_pb2.DiskCompleted(disk_id=disk.id, change_id=f"cid-{i}-late"),
                )
            )
        await r.stream.send(
            event=stream_pb2.JobEvent(job_id=sync_id, sequence=seq + 1, completed=stream_pb2.JobCompleted())
        )
        done = await wait_job(server, channel, job.id, timeout=60)
        assert done.status == COMPLETED, done
        assert (await get_vm(channel, r.vm_id)).status == VM_LIVE
        await r.stream.close()


async def test_a_missed_final_sync_deadline_with_cancel_rolls_back_and_powers_the_source_on(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock), oma_channel(server) as channel:
        sim = sim_of(server)
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        before = world(sim)
        vm = await get_vm(channel, r.vm_id)
        deadline = T0 + timedelta(hours=1, minutes=10)
        job = await schedule(channel, r.vm_id, T0 + timedelta(hours=1), deadline, CANCEL)
        sync_id = await started_final_sync(server, clock, channel, r)
        clock.set(deadline + timedelta(seconds=1))
        stopped = await until(channel, job.id, lambda j: j.status == CANCELLED)
        assert stopped.error.reason == "FINAL_SYNC_DEADLINE_MISSED", stopped
        assert "2026-12-05 02:10:00 UTC" in stopped.error.message and stopped.deadline_missed
        assert any(m.startswith("ALERT") for m in await log_of(channel, job.id))
        # the final sync is cancelled through the appliance; then the rollback starts by itself and powers on
        command = (await r.stream.recv_until("command", timeout=20)).command
        assert command.cancel_job.job_id == sync_id
        await r.stream.send(
            event=stream_pb2.JobEvent(job_id=sync_id, sequence=2, cancelled=stream_pb2.JobCancelled(detail="stop"))
        )
        await answer_power(r.stream, "power_on", vm.vm_uuid)
        listed = (
            await failover_stub(channel).ListFailoverJobs(failover_pb2.ListFailoverJobsRequest(vm_context_id=r.vm_id))
        ).jobs
        rollback = next(j for j in listed if j.kind == failover_pb2.FAILOVER_JOB_KIND_ROLLBACK)
        undone = await wait_job(server, channel, rollback.id)
        assert undone.status == COMPLETED, undone
        assert undone.outcome.startswith("rolled back; the source VM was powered on"), undone.outcome
        assert world(sim) == before
        # the final sync had begun copying: the replicas are between two change ids (replicate again)
        assert (await get_vm(channel, r.vm_id)).status == vm_context_pb2.VM_CONTEXT_STATUS_FAILED
        assert any(f"rollback job {rollback.id} started" in m for m in await log_of(channel, job.id))
        await r.stream.close()


async def power_off_after_resent_commands(stream: RawStream, vm_uuid: str) -> None:
    """Answer the power-off; commands an earlier session left unanswered come again first and are skipped."""
    while True:
        command = (await stream.recv_until("command", timeout=20)).command
        if command.WhichOneof("kind") == "power_off":
            break
    assert command.power_off.vm_uuid == vm_uuid
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id,
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            power=stream_pb2.PowerResult(power_state=inventory_pb2.POWER_STATE_POWERED_OFF),
        )
    )


async def test_a_cutover_due_while_the_oma_was_down_starts_when_its_appliance_is_back(tmp_path: Path) -> None:
    """Down through the start time and through the final-sync deadline, with WAIT: it starts anyway, noted."""
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock)
    try:
        async with oma_channel(server) as channel:
            r = await replicate(channel, tmp_path)
            await map_network(channel, sim_of(server), vm_id=r.vm_id)
            vm = await get_vm(channel, r.vm_id)
            late = await schedule(channel, r.vm_id, T0 + timedelta(hours=1), T0 + timedelta(minutes=90), WAIT)
            await r.stream.close()
        settings = server.app.settings
        await server.stop(grace=0.2)
        clock.advance(2 * 3600)  # down through the start time and the deadline
        settings.listen = "127.0.0.1:0"
        server = OmaServer(App(settings, clock=clock))
        await server.start()
        async with oma_channel(server) as channel:
            assert server.app.cutover is not None
            await server.app.cutover.pass_after_now()
            waiting = await get_job(channel, late.id)
            assert waiting.status == SCHEDULED  # its appliance has not dialled in yet
            notes = await log_of(channel, late.id)
            assert any("not connected" in m and "waiting" in m for m in notes), notes
            assert waiting.deadline_missed and any("starting anyway" in m for m in notes), notes
            stream = RawStream(channel)
            await stream.hello(r.enrolled)
            await power_off_after_resent_commands(stream, vm.vm_uuid)
            await play_replication(stream, tmp_path, "final", r.sources)
            done = await wait_job(server, channel, late.id)
            assert done.status == COMPLETED, done
            assert sum("02:30:00 UTC passed" in m for m in await log_of(channel, late.id)) == 1  # noted once
            assert (await get_vm(channel, r.vm_id)).status == VM_LIVE
            await stream.close()
    finally:
        await server.stop(grace=0.2)


async def test_a_cutover_whose_deadline_passed_while_the_oma_was_down_is_cancelled_untouched(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock)
    try:
        async with oma_channel(server) as channel:
            r = await replicate(channel, tmp_path)
            await map_network(channel, sim_of(server), vm_id=r.vm_id)
            job = await schedule(channel, r.vm_id, T0 + timedelta(hours=1), T0 + timedelta(hours=2), CANCEL)
            await r.stream.close()
        settings = server.app.settings
        await server.stop(grace=0.2)
        clock.advance(3 * 3600)
        settings.listen = "127.0.0.1:0"
        server = OmaServer(App(settings, clock=clock))
        await server.start()
        async with oma_channel(server) as channel:
            assert server.app.cutover is not None
            await server.app.cutover.pass_after_now()
            stopped = await get_job(channel, job.id)
            assert stopped.status == CANCELLED and stopped.error.reason == "FINAL_SYNC_DEADLINE_MISSED", stopped
            assert "nothing was changed" in stopped.outcome
            vm = await get_vm(channel, r.vm_id)
            assert vm.status == VM_READY and not vm.active_job_id
    finally:
        await server.stop(grace=0.2)


@pytest.mark.parametrize(
    ("start", "deadline", "action", "kind", "reason", "field"),
    [
        (-3600, None, 0, LIVE, "START_AT_IN_PAST", "start_at"),
        (3600, 1800, 0, LIVE, "FINAL_SYNC_DEADLINE_BEFORE_START", "final_sync_deadline"),
        (None, -60, 0, LIVE, "FINAL_SYNC_DEADLINE_IN_PAST", "final_sync_deadline"),
        (3600, None, CANCEL, LIVE, "FINAL_SYNC_DEADLINE_MISSING", "final_sync_deadline"),
        (3600, None, 0, TEST, "SCHEDULE_LIVE_ONLY", "start_at"),
    ],
)
async def test_a_timing_that_cannot_be_honoured_is_refused_before_anything_is_applied(
    tmp_path: Path,
    start: int | None,
    deadline: int | None,
    action: int,
    kind: int,
    reason: str,
    field: str,
) -> None:
    async with oma_on_clock(tmp_path) as (server, _clock), oma_channel(server) as channel:
        vm_id = "vm-unknown"  # the timing is checked before the VM context is even looked up
        code, got, meta = await refused(
            schedule(
                channel,
                vm_id,
                None if start is None else T0 + timedelta(seconds=start),
                None if deadline is None else T0 + timedelta(seconds=deadline),
                action,
                kind,
            )
        )
        assert (code, got, meta.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
        listed = await job_pb2_grpc.JobServiceStub(channel).ListJobs(job_pb2.ListJobsRequest())
        assert list(listed.jobs) == []
