"""omactl failover live --at / --final-sync-deadline / --on-deadline-missed, and the scheduled job in omactl jobs
list/show and jobs cancel, as a real process against a real OMA."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from oma_server.server import OmaServer
from tests.failover.helpers import get_vm, map_network, replicate, sim_of
from tests.omactl.conftest import Target, assert_one_error_line, run_omactl

pytestmark = pytest.mark.nbd


async def test_a_cutover_scheduled_shown_and_cancelled_with_omactl(
    oma: OmaServer, channel: grpc.aio.Channel, address: Target, tmp_path: Path
) -> None:
    r = await replicate(channel, tmp_path)
    await map_network(channel, sim_of(oma), vm_id=r.vm_id)
    made = await run_omactl(
        address, "failover", "live", "web-01", "--at", "+2h", "--final-sync-deadline", "+1h", "--on-deadline-missed",
        "cancel",
    )  # fmt: skip
    assert made.code == 0, made
    assert "Scheduled live failover job" in made.out and "(if missed: cancel)" in made.out, made.out
    assert "omactl jobs cancel" in made.out
    [job] = json.loads((await run_omactl(address, "--json", "failover", "list", "--vm", "web-01")).out)
    assert (
        job["status"] == "FAILOVER_JOB_STATUS_SCHEDULED"
        and job["on_deadline_missed"] == "DEADLINE_MISSED_ACTION_CANCEL"
    )
    listed = await run_omactl(address, "jobs", "list", "--open")
    assert job["id"] in listed.out and "scheduled" in listed.out and "starts " in listed.out, listed.out
    shown = await run_omactl(address, "jobs", "show", job["id"])
    assert "start at" in shown.out and "final sync deadline" in shown.out and "(if missed: cancel)" in shown.out

    past = await run_omactl(address, "failover", "live", "web-01", "--at", "2020-01-01T00:00:00Z")
    assert_one_error_line(past, "start_at", "in the past")
    naive = await run_omactl(address, "failover", "live", "web-01", "--at", "2030-01-01T00:00:00")
    assert_one_error_line(naive, "--at", "no time zone")
    again = await run_omactl(address, "failover", "live", "web-01", "--at", "+3h")
    assert_one_error_line(again, job["id"])  # one scheduled cutover per VM

    cancelled = await run_omactl(address, "jobs", "cancel", job["id"])
    assert cancelled.code == 0, cancelled
    assert "cancelled" in cancelled.out and "nothing was changed" in cancelled.out, cancelled.out
    vm = await get_vm(channel, r.vm_id)
    assert not vm.active_job_id
    await r.stream.close()
