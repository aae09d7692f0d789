"""What the schedule tests share: an OMA on a ManualClock, the operator's stubs, and an appliance played message by
message that finishes the syncs the scheduler starts (its replicas are read back and verified by the real OMA)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc

from oma.v1 import (
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.clock import ManualClock
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import Enrolled, RawStream, enroll, inventory
from vma.v1 import stream_pb2

T0 = datetime(2026, 3, 27, 12, 0, 0)  # two days before Europe's clocks move to summer time
VM_CONTEXT = schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT


async def start_oma(tmp_path: Path, clock: ManualClock, database_url: str = "", **overrides: object) -> OmaServer:
    settings = make_settings(tmp_path, database_url, schedule_min_interval_s=60.0, **overrides)
    server = OmaServer(App(settings, clock=clock))
    await server.start()
    return server


@contextlib.asynccontextmanager
async def oma_on_clock(
    tmp_path: Path, database_url: str = "", **overrides: object
) -> AsyncIterator[tuple[OmaServer, ManualClock, Api]]:
    """An OMA on a ManualClock at T0, and the operator's stubs on a channel to it; stopped after."""
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock, database_url, **overrides)
    try:
        async with oma_channel(server) as channel:
            yield server, clock, Api(channel)
    finally:
        await server.stop(grace=0.2)


async def restart_oma(server: OmaServer, clock: ManualClock, downtime_s: float = 0.0) -> OmaServer:
    """Stop the OMA, let `downtime_s` of wall time pass while it is down, start it again on the same data."""
    settings = server.app.settings
    await server.stop(grace=0.2)
    clock.advance(downtime_s)
    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings, clock=clock))
    await restarted.start()
    return restarted


async def step(server: OmaServer, clock: ManualClock, seconds: float) -> None:
    """Move the clock and wait for the scheduler to have looked at the new time."""
    clock.advance(seconds)
    await server.app.scheduler.pass_after_now()


def at(ts_message: object) -> datetime:
    return ts_message.ToDatetime()  # type: ignore[attr-defined, no-any-return]


def seconds_after_t0(ts_message: object) -> float:
    return (at(ts_message) - T0).total_seconds()


@dataclass
class Api:
    channel: grpc.aio.Channel

    @property
    def schedules(self) -> schedule_pb2_grpc.ScheduleServiceStub:
        return schedule_pb2_grpc.ScheduleServiceStub(self.channel)

    async def create(self, vm_id: str, **spec: object) -> schedule_pb2.Schedule:
        fields: dict[str, object] = {"rpo_target_seconds": 7200, **spec}
        request = schedule_pb2.CreateScheduleRequest(
            spec=schedule_pb2.ScheduleSpec(target=schedule_pb2.ScheduleTarget(kind=VM_CONTEXT, id=vm_id), **fields)  # type: ignore[arg-type]
        )
        return (await self.schedules.CreateSchedule(request)).schedule

    async def schedule(self, schedule_id: str) -> schedule_pb2.Schedule:
        return (await self.schedules.GetSchedule(schedule_pb2.GetScheduleRequest(id=schedule_id))).schedule

    async def register(self, enrolled: Enrolled, name: str) -> str:
        reply = await vm_context_pb2_grpc.VmContextServiceStub(self.channel).RegisterVmContext(
            vm_context_pb2.RegisterVmContextRequest(
                appliance_id=enrolled.appliance_id, virtual_machine=inventory((2,), name=name)
            )
        )
        return reply.vm_context.id

    async def vm(self, vm_id: str) -> vm_context_pb2.VmContext:
        stub = vm_context_pb2_grpc.VmContextServiceStub(self.channel)
        return (await stub.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id))).vm_context

    async def jobs(self, vm_id: str) -> list[replication_pb2.ReplicationJob]:
        """The VM's replication jobs, oldest first."""
        reply = await replication_pb2_grpc.ReplicationServiceStub(self.channel).ListReplicationJobs(
            replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_id, page_size=1000)
        )
        return sorted(reply.jobs, key=lambda j: (j.created_at.ToDatetime(), j.id))

    async def start(self, vm_id: str) -> replication_pb2.ReplicationJob:
        reply = await replication_pb2_grpc.ReplicationServiceStub(self.channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=vm_id)
        )
        return reply.job

    async def log(self, job_id: str) -> list[job_pb2.JobLogEntry]:
        reply = await job_pb2_grpc.JobServiceStub(self.channel).ListJobLogEntries(
            job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000)
        )
        return list(reply.entries)


class Vma:
    """An appliance on the stream that copies nothing and reports each sync completed with new change ids."""

    def __init__(self, channel: grpc.aio.Channel, enrolled: Enrolled) -> None:
        self.stream = RawStream(channel)
        self.enrolled = enrolled
        self.syncs = 0

    @classmethod
    async def connect(cls, channel: grpc.aio.Channel, enrolled: Enrolled | None = None) -> Vma:
        vma = cls(channel, enrolled or await enroll(channel))
        await vma.stream.hello(vma.enrolled)
        return vma

    async def command(self) -> stream_pb2.StartReplicationCommand:
        return (await self.stream.recv_until("command", timeout=30)).command.start_replication  # type: ignore[no-any-return]

    async def complete(
        self, server: OmaServer, command: stream_pb2.StartReplicationCommand, clock: ManualClock
    ) -> None:
        """Report the sync started (its snapshot: the recovery point), then, a minute later, done; wait until its
        replicas were read back and left the OMA VM."""
        self.syncs += 1
        job_id = command.job_id
        await self.stream.send(event=stream_pb2.JobEvent(job_id=job_id, sequence=1, started=stream_pb2.JobStarted()))
        await self.stream.recv_until("ack", job_id=job_id, sequence=1)
        clock.advance(60)
        seq = 1
        for disk in command.disks:
            seq += 1
            done = stream_pb2.DiskCompleted(disk_id=disk.disk_id, change_id=f"cid-{self.syncs}-{disk.disk_id[:8]}")
            await self.stream.send(event=stream_pb2.JobEvent(job_id=job_id, sequence=seq, disk_completed=done))
        seq += 1
        await self.stream.send(
            event=stream_pb2.JobEvent(job_id=job_id, sequence=seq, completed=stream_pb2.JobCompleted())
        )
        await self.stream.recv_until("ack", job_id=job_id, sequence=seq)
        assert server.app.workflow is not None
        await server.app.workflow.settled(job_id)

    async def close(self) -> None:
        await self.stream.close()
