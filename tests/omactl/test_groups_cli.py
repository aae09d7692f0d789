"""omactl groups as a real process against a real OMA: create with boot orders (VMs by name), list, show, rename,
a group schedule, a group test failover followed to its end (--watch), its runs, the cleanup, and delete."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from oma_server.omactl.groups import member_of
from oma_server.server import OmaServer
from tests.factories import inventory
from tests.failover.helpers import VM_READY, VM_TEST, get_vm, map_network, replicate, sim_of
from tests.omactl.conftest import Target, assert_one_error_line, run_omactl

pytestmark = pytest.mark.nbd


async def test_groups_create_show_failover_watch_cleanup_and_delete(
    oma: OmaServer, address: Target, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    db = await replicate(channel, tmp_path, inventory(name="db-01"))
    web = await replicate(channel, tmp_path, inventory(name="web-01"))
    await map_network(channel, sim_of(oma))

    made = await run_omactl(address, "groups", "create", "shop", "--vm", "db-01:0", "--vm", "web-01:1")
    assert made.code == 0, made
    assert "Created machine group shop" in made.out and "Members (lower boot orders boot first)" in made.out
    shown = json.loads((await run_omactl(address, "--json", "groups", "show", "shop")).out)
    assert [(m["vm_context_id"], m.get("boot_order", 0)) for m in shown["spec"]["members"]] == [
        (db.vm_id, 0),
        (web.vm_id, 1),
    ]
    group_id = shown["id"]
    listed = await run_omactl(address, "groups", "list")
    assert "shop" in listed.out and group_id in listed.out
    renamed = await run_omactl(address, "groups", "update", "shop", "--name", "shop-eu")
    assert renamed.code == 0 and "Updated machine group shop-eu" in renamed.out
    kept = json.loads((await run_omactl(address, "--json", "groups", "show", group_id)).out)
    assert len(kept["spec"]["members"]) == 2  # a rename keeps the members

    scheduled = await run_omactl(address, "schedules", "create", "--group", "shop-eu", "--every", "1h", "--rpo", "2h")
    assert scheduled.code == 0, scheduled
    assert f"for machine group {group_id}" in scheduled.out
    both = await run_omactl(
        address, "schedules", "create", "db-01", "--group", "shop-eu", "--every", "1h", "--rpo", "2h"
    )
    assert_one_error_line(both, "give a VM or --group GROUP", code=2)
    conflict = await run_omactl(address, "schedules", "create", "db-01", "--every", "1h", "--rpo", "2h")
    assert_one_error_line(conflict, "FAILED_PRECONDITION", "SCHEDULE_CONFLICT")

    failover = await run_omactl(address, "groups", "failover", "shop-eu", "--watch", timeout=120)
    assert failover.code == 0, failover
    assert "boot order 0: db-01" in failover.err and "boot order 1: web-01" in failover.err
    assert "Group test failover of shop-eu: completed." in failover.out
    assert (await get_vm(channel, db.vm_id)).status == VM_TEST and (await get_vm(channel, web.vm_id)).status == VM_TEST
    runs = await run_omactl(address, "groups", "runs", "shop-eu")
    assert runs.code == 0 and "test failover" in runs.out and "2/2" in runs.out

    cleanup = await run_omactl(address, "--json", "groups", "cleanup", "shop-eu")
    run_id = json.loads(cleanup.out)["id"]
    followed = await run_omactl(address, "groups", "run", run_id, "--watch", timeout=120)
    assert followed.code == 0 and "completed" in followed.out, followed
    assert (await get_vm(channel, db.vm_id)).status == VM_READY

    refused = await run_omactl(address, "groups", "delete", "shop-eu")
    assert_one_error_line(refused, "FAILED_PRECONDITION", "delete the schedule first")
    missing = await run_omactl(address, "groups", "show", "no-such-group")
    assert_one_error_line(missing, "NOT_FOUND", "omactl groups list")
    for r in (db, web):
        await r.stream.close()


def test_a_member_is_a_vm_with_an_optional_boot_order() -> None:
    assert member_of("db-01:0") == ("db-01", 0)
    assert member_of("web-01:12") == ("web-01", 12)
    assert member_of("web-01") == ("web-01", 0)
    assert member_of("odd:name") == ("odd:name", 0)  # a suffix that is not a number is part of the name
