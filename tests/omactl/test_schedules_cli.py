"""omactl schedules and the RPO in omactl's VM views and live view, as a real process against a real OMA on a
ManualClock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma_server.clock import ManualClock
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import enroll
from tests.omactl.conftest import assert_one_error_line, run_omactl, spawn_omactl, target_of
from tests.schedules.helpers import T0, Api, start_oma, step


@pytest.fixture
async def scheduled_oma(tmp_path: Path) -> AsyncIterator[tuple[OmaServer, ManualClock]]:
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock)
    yield server, clock
    await server.stop(grace=0.5)


async def test_schedules_create_list_show_pause_resume_delete_and_the_rpo_views(
    scheduled_oma: tuple[OmaServer, ManualClock],
) -> None:
    server, clock = scheduled_oma
    target = target_of(server)
    async with oma_channel(server) as channel:
        vm_id = await Api(channel).register(await enroll(channel), "crm-01")
    made = await run_omactl(
        target, "schedules", "create", "crm-01", "--every", "1h", "--rpo", "2h", "--jitter", "1m", "--name", "crm"
    )
    assert made.code == 0, made
    assert "Created schedule" in made.out and vm_id in made.out and "every 1h00m" in made.out
    listed = json.loads((await run_omactl(target, "--json", "schedules", "list", "--vm", "crm-01")).out)
    [schedule] = listed
    assert schedule["spec"]["interval_seconds"] == 3600 and schedule["spec"]["jitter_seconds"] == 60
    table = await run_omactl(target, "schedules", "list")
    assert schedule["id"] in table.out and "every 1h00m" in table.out and "2h00m" in table.out

    vms = await run_omactl(target, "vms", "list")
    assert "RPO" in vms.out and "breached none/2h00m" in vms.out
    shown = await run_omactl(target, "vms", "show", "crm-01")
    assert "breached none/2h00m" in shown.out and "no completed and verified sync yet" in shown.out
    assert schedule["id"] in shown.out

    watcher = await spawn_omactl(target, "watch", "--vm", "crm-01")
    assert watcher.stdout is not None
    line = (await asyncio.wait_for(watcher.stdout.readline(), 10)).decode()
    assert f"vm {vm_id} rpo breached none/2h00m next sync" in line
    watcher.terminate()
    await watcher.wait()

    paused = await run_omactl(target, "schedules", "pause", schedule["id"])
    assert paused.code == 0 and "Paused schedule" in paused.out and "paused" in paused.out
    await step(server, clock, 2 * 3600)
    async with oma_channel(server) as channel:
        assert await Api(channel).jobs(vm_id) == []  # paused through two slots
    assert "paused" in (await run_omactl(target, "vms", "show", "crm-01")).out
    resumed = await run_omactl(target, "--json", "schedules", "resume", schedule["id"])
    assert resumed.code == 0 and json.loads(resumed.out)["paused"] is False
    shown = await run_omactl(target, "schedules", "show", schedule["id"])
    assert "active" in shown.out and "crm" in shown.out

    async with oma_channel(server) as channel:
        await Api(channel).register(await enroll(channel), "erp-01")
    cron = await run_omactl(
        target, "schedules", "create", "erp-01", "--cron", "0 9 * * *", "--tz", "Europe/Berlin", "--rpo", "2d"
    )
    assert cron.code == 0 and "cron '0 9 * * *' Europe/Berlin" in cron.out, cron
    [berlin] = json.loads((await run_omactl(target, "--json", "schedules", "list", "--vm", "erp-01")).out)
    assert berlin["next_slot_at"] == "2026-03-28T08:00:00Z"  # 09:00 CET
    bad = await run_omactl(target, "schedules", "create", "crm-01", "--cron", "0 25 * * *", "--rpo", "1d")
    assert_one_error_line(bad, "INVALID_ARGUMENT", "spec.cron", "CRON_INVALID")
    usage = await run_omactl(target, "schedules", "create", "crm-01", "--rpo", "1d")
    assert usage.code == 2 and "--every DURATION or --cron EXPR" in usage.err

    deleted = await run_omactl(target, "schedules", "delete", schedule["id"])
    assert deleted.code == 0 and "Deleted schedule" in deleted.out
    assert [s["id"] for s in json.loads((await run_omactl(target, "--json", "schedules", "list")).out)] == [
        berlin["id"]
    ]
    gone = await run_omactl(target, "schedules", "show", schedule["id"])
    assert_one_error_line(gone, "NOT_FOUND", "SCHEDULE_NOT_FOUND")


async def test_vms_delete_needs_yes_and_deletes(scheduled_oma: tuple[OmaServer, ManualClock]) -> None:
    server, _ = scheduled_oma
    target = target_of(server)
    async with oma_channel(server) as channel:
        vm_id = await Api(channel).register(await enroll(channel), "retired-01")
    unsure = await run_omactl(target, "vms", "delete", "retired-01")
    assert_one_error_line(unsure, "--yes", code=2)
    assert vm_id in (await run_omactl(target, "vms", "list")).out
    done = await run_omactl(target, "vms", "delete", "retired-01", "--yes")
    assert done.code == 0, done
    assert f"Deleted VM context {vm_id}" in done.out and f"omactl jobs log {vm_id}" in done.out
    log = await run_omactl(target, "jobs", "log", vm_id)
    assert "delete_vm_context" in log.out
    again = await run_omactl(target, "vms", "show", vm_id)
    assert_one_error_line(again, "NOT_FOUND", "VM_CONTEXT_NOT_FOUND")
