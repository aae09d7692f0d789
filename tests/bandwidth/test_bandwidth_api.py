"""Bandwidth limits through the real API and stream: an OMA on a ManualClock (window edges in moments), an
appliance played message by message that receives the rates in force as SetBandwidthLimitCommands."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from oma.v1 import bandwidth_pb2, bandwidth_pb2_grpc
from oma_server.db.models import Command as CommandRow
from oma_server.server import OmaServer
from tests.factories import RawStream, completed, disk_done, enroll, seed_job, started
from tests.schedules.helpers import oma_on_clock, seconds_after_t0
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
MIB = 2**20
HOUR = 3600
APPLIANCE = bandwidth_pb2.BANDWIDTH_TARGET_KIND_APPLIANCE
JOB = bandwidth_pb2.BANDWIDTH_TARGET_KIND_REPLICATION_JOB
WEEKDAYS = [
    bandwidth_pb2.WEEKDAY_MONDAY,
    bandwidth_pb2.WEEKDAY_TUESDAY,
    bandwidth_pb2.WEEKDAY_WEDNESDAY,
    bandwidth_pb2.WEEKDAY_THURSDAY,
    bandwidth_pb2.WEEKDAY_FRIDAY,
]
OFFICE_HOURS = bandwidth_pb2.BandwidthWindow(days=WEEKDAYS, start="08:00", end="18:00", bytes_per_second=100 * MIB)


def office_hours_limit(appliance_id: str) -> bandwidth_pb2.SetBandwidthLimitRequest:
    """100 MiB/s Mon-Fri 08:00-18:00 Berlin, unlimited otherwise."""
    return bandwidth_pb2.SetBandwidthLimitRequest(
        spec=bandwidth_pb2.BandwidthLimitSpec(
            target=bandwidth_pb2.BandwidthTarget(kind=APPLIANCE, id=appliance_id),
            windows=[OFFICE_HOURS],
            time_zone="Europe/Berlin",
        )
    )


def job_limit(job_id: str, rate: int) -> bandwidth_pb2.SetBandwidthLimitRequest:
    return bandwidth_pb2.SetBandwidthLimitRequest(
        spec=bandwidth_pb2.BandwidthLimitSpec(
            target=bandwidth_pb2.BandwidthTarget(kind=JOB, id=job_id), bytes_per_second=rate
        )
    )


class LimitsPeer:
    """The appliance's side of the limits: reads its stream, answers each SetBandwidthLimitCommand as the agent does
    (other commands are skipped), and keeps the messages that arrive while it waits for another."""

    def __init__(self, stream: RawStream) -> None:
        self.stream = stream
        self.commands: list[stream_pb2.Command] = []
        self.acked: set[str] = set()

    async def _read(self) -> None:
        message = await self.stream.recv(timeout=10)
        kind = message.WhichOneof("message")
        if kind == "command" and message.command.WhichOneof("kind") == "set_bandwidth_limit":
            self.commands.append(message.command)
        elif kind == "command_result_ack":
            self.acked.add(message.command_result_ack.command_id)

    async def next(self) -> tuple[int, dict[str, int]]:
        """The rates of the next limit command, answered."""
        while not self.commands:
            await self._read()
        command = self.commands.pop(0)
        result = stream_pb2.CommandResult(
            command_id=command.command_id, outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="applied"
        )
        await self.stream.send(command_result=result)
        while command.command_id not in self.acked:
            await self._read()
        return rates(command)

    async def reach(self, expected: tuple[int, dict[str, int]]) -> list[tuple[int, dict[str, int]]]:
        """Answer limit commands until one holds `expected`; every set seen on the way. After a reconnect a set
        may come twice (resent by the outbox, and sent for the new session), which the appliance takes idempotently."""
        seen = [await self.next()]
        while seen[-1] != expected:
            seen.append(await self.next())
        return seen


async def all_answered(server: OmaServer, appliance_id: str) -> list[CommandRow]:
    """The appliance's limit commands once none is open: each answered, or closed because a newer one came."""
    commands = await limit_commands(server, appliance_id)
    assert {c.status for c in commands} == {"done"}
    assert {c.result_outcome for c in commands} <= {"succeeded", "superseded"}
    assert commands[-1].result_outcome == "succeeded"
    return commands


def rates(command: stream_pb2.Command) -> tuple[int, dict[str, int]]:
    limits = command.set_bandwidth_limit
    return limits.appliance_bytes_per_second, dict(limits.job_bytes_per_second)


async def limit_commands(server: OmaServer, appliance_id: str) -> list[CommandRow]:
    def query() -> list[CommandRow]:
        return list(
            CommandRow.select()
            .where((CommandRow.appliance == appliance_id) & (CommandRow.kind == "set_bandwidth_limit"))
            .order_by(CommandRow.created_at, CommandRow.id)
        )

    return await server.app.db.run(query)


async def test_office_hours_reach_the_appliance_at_each_window_edge_and_again_after_a_reconnect(
    tmp_path: Path, database_url: str
) -> None:
    async with oma_on_clock(tmp_path, database_url) as (server, clock, api):
        stub = bandwidth_pb2_grpc.BandwidthServiceStub(api.channel)
        enrolled = await enroll(api.channel)
        stream = RawStream(api.channel)
        await stream.hello(enrolled)
        peer = LimitsPeer(stream)

        limit = (await stub.SetBandwidthLimit(office_hours_limit(enrolled.appliance_id))).limit
        # T0 is Friday 12:00 UTC, 13:00 in Berlin: inside the window until 18:00 Berlin (17:00 UTC)
        assert limit.current_bytes_per_second == 100 * MIB
        assert seconds_after_t0(limit.next_change_at) == 5 * HOUR
        assert limit.spec.time_zone == "Europe/Berlin" and list(limit.spec.windows[0].days) == WEEKDAYS
        assert await peer.next() == (100 * MIB, {})

        clock.advance(5 * HOUR - 1)
        await server.app.governor.pass_after_now()
        clock.advance(1)  # 18:00 Berlin: unlimited for the weekend
        await server.app.governor.pass_after_now()
        assert await peer.next() == (0, {})
        got = (await stub.GetBandwidthLimit(bandwidth_pb2.GetBandwidthLimitRequest(id=limit.id))).limit
        assert got.current_bytes_per_second == 0
        # Monday 08:00 Berlin is 06:00 UTC: summer time began on Sunday
        assert got.next_change_at.ToDatetime().isoformat() == "2026-03-30T06:00:00"

        # the same spec again changes nothing and sends nothing
        again = (await stub.SetBandwidthLimit(office_hours_limit(enrolled.appliance_id))).limit
        assert again.id == limit.id and again.updated_at == limit.updated_at
        await server.app.governor.pass_after_now()
        assert len(await limit_commands(server, enrolled.appliance_id)) == 2

        # an appliance that reconnects (its agent may have restarted) is told the set in force again
        await stream.close()
        clock.advance(2 * 24 * HOUR + 13 * HOUR)  # Monday 09:00 Berlin
        stream = RawStream(api.channel)
        await stream.hello(enrolled)
        peer = LimitsPeer(stream)
        assert set(map(str, await peer.reach((100 * MIB, {})))) == {str((100 * MIB, {}))}

        # deleted: unlimited within a pass
        await stub.DeleteBandwidthLimit(bandwidth_pb2.DeleteBandwidthLimitRequest(id=limit.id))
        seen = await peer.reach((0, {}))
        assert set(map(str, seen)) <= {str((100 * MIB, {})), str((0, {}))}
        await all_answered(server, enrolled.appliance_id)
        listed = await stub.ListBandwidthLimits(bandwidth_pb2.ListBandwidthLimitsRequest())
        assert list(listed.limits) == []
        await stream.close()


async def test_a_job_limit_rides_with_the_appliance_set_and_ends_with_the_job(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, _clock, api):
        stub = bandwidth_pb2_grpc.BandwidthServiceStub(api.channel)
        enrolled = await enroll(api.channel)
        job = await seed_job(server.app, enrolled.appliance_id)
        stream = RawStream(api.channel)
        await stream.hello(enrolled)
        peer = LimitsPeer(stream)
        await stub.SetBandwidthLimit(
            bandwidth_pb2.SetBandwidthLimitRequest(
                spec=bandwidth_pb2.BandwidthLimitSpec(
                    target=bandwidth_pb2.BandwidthTarget(kind=APPLIANCE, id=enrolled.appliance_id),
                    bytes_per_second=200 * MIB,
                )
            )
        )
        assert await peer.next() == (200 * MIB, {})
        job_row = (await stub.SetBandwidthLimit(job_limit(job.id, 20 * MIB))).limit
        assert job_row.current_bytes_per_second == 20 * MIB and not job_row.HasField("next_change_at")
        assert await peer.next() == (200 * MIB, {job.id: 20 * MIB})

        # a change while the last set is unanswered: the newer set closes the older one
        await stub.SetBandwidthLimit(job_limit(job.id, 25 * MIB))
        await server.app.governor.pass_after_now()
        await stub.SetBandwidthLimit(job_limit(job.id, 30 * MIB))
        await server.app.governor.pass_after_now()
        outcomes = [c.result_outcome for c in await limit_commands(server, enrolled.appliance_id)]
        assert outcomes[-2:] == ["superseded", ""]
        assert await peer.reach((200 * MIB, {job.id: 30 * MIB}))
        assert len(await all_answered(server, enrolled.appliance_id)) == 4

        # the job completes: its limit is gone and the appliance is told the set without it
        await stream.send(event=started(job, 1))
        await stream.send(event=disk_done(job, 2, 0, "cid-a"))
        await stream.send(event=disk_done(job, 3, 1, "cid-b"))
        await stream.send(event=completed(job, 4))
        assert await peer.next() == (200 * MIB, {})
        listed = await stub.ListBandwidthLimits(bandwidth_pb2.ListBandwidthLimitsRequest(target_id=job.id))
        assert list(listed.limits) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetBandwidthLimit(job_limit(job.id, 20 * MIB))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info_of(err.value).reason == "JOB_FINISHED"
        assert enrolled.appliance_id in (err.value.details() or "")
        await stream.close()


@pytest.mark.parametrize(
    ("spec", "code", "reason", "field"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "BANDWIDTH_TARGET_INVALID", "spec.target.kind"),
        ({"target": {"kind": 7, "id": "x"}}, grpc.StatusCode.INVALID_ARGUMENT, "", "spec.target.kind"),
        ({"target": {"kind": APPLIANCE}}, grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED", "spec.target.id"),
        ({"target": {"kind": APPLIANCE, "id": "nope"}}, grpc.StatusCode.NOT_FOUND, "APPLIANCE_NOT_FOUND", ""),
        ({"target": {"kind": JOB, "id": "nope"}}, grpc.StatusCode.NOT_FOUND, "REPLICATION_JOB_NOT_FOUND", ""),
        (
            {"target": {"kind": APPLIANCE, "id": "x"}, "windows": [{"start": "8am", "end": "18:00"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
            "spec.windows[0].start",
        ),
        (
            {"target": {"kind": APPLIANCE, "id": "x"}, "time_zone": "Europe/Atlantis"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "TIME_ZONE_UNKNOWN",
            "spec.time_zone",
        ),
        (
            {"target": {"kind": APPLIANCE, "id": "x"}, "windows": [{"days": [9], "start": "08:00", "end": "09:00"}]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
            "spec.windows[0].days[0]",  # the request check: 9 is no Weekday
        ),
    ],
)
async def test_a_bad_limit_is_refused_whole_with_its_field(
    tmp_path: Path, spec: dict[str, object], code: grpc.StatusCode, reason: str, field: str
) -> None:
    from google.protobuf import json_format

    async with oma_on_clock(tmp_path) as (_server, _clock, api):
        stub = bandwidth_pb2_grpc.BandwidthServiceStub(api.channel)
        request = bandwidth_pb2.SetBandwidthLimitRequest()
        json_format.ParseDict({"spec": spec}, request, ignore_unknown_fields=False)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetBandwidthLimit(request)
        assert err.value.code() == code, err.value.details()
        info = error_info_of(err.value)
        if reason:
            assert info.reason == reason
        if field:
            assert info.metadata["field"] == field and field in (err.value.details() or "")
        assert list((await stub.ListBandwidthLimits(bandwidth_pb2.ListBandwidthLimitsRequest())).limits) == []
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetBandwidthLimit(bandwidth_pb2.GetBandwidthLimitRequest(id="no-such-limit"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info_of(missing.value).reason == "BANDWIDTH_LIMIT_NOT_FOUND"
