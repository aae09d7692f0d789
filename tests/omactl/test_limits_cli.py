"""omactl limits as a real process against a real OMA on a ManualClock: set with windows, list, show, delete, the
rate in force now; and the window syntax parsed before anything is sent."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma.v1 import bandwidth_pb2
from oma_server.clock import ManualClock
from oma_server.omactl.limits import parse_rate, parse_window
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import enroll, seed_job
from tests.omactl.conftest import assert_one_error_line, run_omactl, target_of
from tests.schedules.helpers import T0, start_oma

MIB = 2**20


@pytest.fixture
async def oma_at_t0(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path, ManualClock(T0))  # Friday 2026-03-27 12:00 UTC
    yield server
    await server.stop(grace=0.5)


async def test_limits_set_list_show_delete(oma_at_t0: OmaServer) -> None:
    server = oma_at_t0
    target = target_of(server)
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel, "vma-berlin")
        job = await seed_job(server.app, enrolled.appliance_id)
    made = await run_omactl(
        target,
        "limits",
        "set",
        "--appliance",
        "vma-berlin",
        "--window",
        "mon-fri 08:00-18:00 100MiB",
        "--window",
        "sat,sun 0:00-0:00 1GiB",
        "--tz",
        "Europe/Berlin",
    )
    assert made.code == 0, made
    assert "Set bandwidth limit" in made.out and f"appliance {enrolled.appliance_id}" in made.out
    assert "100.0 MiB/s" in made.out and "mon,tue,wed,thu,fri 08:00-18:00 100.0 MiB/s" in made.out
    job_limit = await run_omactl(target, "--json", "limits", "set", "--job", job.id, "--rate", "20MiB")
    assert json.loads(job_limit.out)["current_bytes_per_second"] == str(20 * MIB)

    listed = json.loads((await run_omactl(target, "--json", "limits", "list", "--appliance", "vma-berlin")).out)
    [limit] = listed
    assert limit["spec"]["time_zone"] == "Europe/Berlin"
    assert limit["next_change_at"] == "2026-03-27T17:00:00Z"  # 18:00 in Berlin
    assert [w["days"] for w in limit["spec"]["windows"]] == [
        ["WEEKDAY_MONDAY", "WEEKDAY_TUESDAY", "WEEKDAY_WEDNESDAY", "WEEKDAY_THURSDAY", "WEEKDAY_FRIDAY"],
        ["WEEKDAY_SATURDAY", "WEEKDAY_SUNDAY"],
    ]
    table = await run_omactl(target, "limits", "list")
    assert limit["id"] in table.out and f"job {job.id}" in table.out and "20.0 MiB/s" in table.out
    shown = await run_omactl(target, "limits", "show", limit["id"])
    assert "sat,sun 00:00-00:00 1.0 GiB/s" in shown.out and "Europe/Berlin" in shown.out

    bad = await run_omactl(target, "limits", "set", "--appliance", "vma-berlin", "--tz", "Mars/Base")
    assert_one_error_line(bad, "INVALID_ARGUMENT", "spec.time_zone", "TIME_ZONE_UNKNOWN")
    usage = await run_omactl(target, "limits", "set", "--rate", "10MiB")
    assert usage.code == 2 and "--appliance APPLIANCE or --job JOB" in usage.err
    syntax = await run_omactl(target, "limits", "set", "--job", job.id, "--window", "weekdays 9-17 10MiB")
    assert syntax.code == 2 and "'[DAYS ]HH:MM-HH:MM RATE'" in syntax.err

    deleted = await run_omactl(target, "limits", "delete", limit["id"])
    assert deleted.code == 0 and "Deleted bandwidth limit" in deleted.out
    assert [
        x["spec"]["target"]["id"] for x in json.loads((await run_omactl(target, "--json", "limits", "list")).out)
    ] == [job.id]
    gone = await run_omactl(target, "limits", "show", limit["id"])
    assert_one_error_line(gone, "NOT_FOUND", "BANDWIDTH_LIMIT_NOT_FOUND")


def test_rates_and_windows_parse() -> None:
    assert parse_rate("100MiB") == 100 * MIB and parse_rate("1.5GiB") == 3 * 2**29 and parse_rate("512k") == 2**19
    assert parse_rate("unlimited") == 0 and parse_rate("65536") == 65536 and parse_rate("10MiB/s") == 10 * MIB
    window = parse_window("fri-mon 22:00-6:00 5MiB")  # a day range across the week's end
    assert list(window.days) == [5, 6, 7, 1] and (window.start, window.end) == ("22:00", "06:00")
    assert window.bytes_per_second == 5 * MIB
    assert list(parse_window("09:00-17:00 unlimited").days) == []
    assert list(parse_window("Mon,WED-fri 09:00-17:00 1MiB").days) == [
        bandwidth_pb2.WEEKDAY_MONDAY,
        bandwidth_pb2.WEEKDAY_WEDNESDAY,
        bandwidth_pb2.WEEKDAY_THURSDAY,
        bandwidth_pb2.WEEKDAY_FRIDAY,
    ]
    for bad in ("100 parsecs", "-5MiB", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)
    for bad in ("funday 08:00-09:00 1MiB", "08:00 1MiB", "mon-fri 08:00-18:00"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_window(bad)
