"""The workflow kill -9 harness (tests/harness/workflow_kills.py) at a size that fits `make test`: a few seeds whose
plans kill each victim (oma-server, vma-agent, the CloudStack simulator) and one a second time on SQLite, and
oma-server on PostgreSQL.

`python -m tests.harness.workflow_kills --runs 50` (or `OMA_WORKFLOW_KILL_RUNS=50 pytest ...`) is the soak; its
figure is in the README.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.harness import consistency
from tests.harness.operator import Operator
from tests.harness.workflow_kills import VICTIMS, Plan, Run, Soak, seeds_covering, soak
from tests.pg import PostgresServer
from vma_client_stubs.agent.vcenter import FakeVCenter

RUNS = int(os.environ.get("OMA_WORKFLOW_KILL_RUNS", "3"))


def report(result: Soak) -> str:
    lines = []
    for outcome in result.failures:
        lines.append(f"{outcome.plan.describe()} (logs in {outcome.kept}):")
        lines += [f"    {p}" for p in outcome.problems]
    return "\n".join(lines)


@pytest.mark.slow
def test_seeded_kills_of_every_victim_end_consistent_sqlite(tmp_path: Path) -> None:
    seeds = seeds_covering(max(RUNS, len(VICTIMS)))
    result = asyncio.run(soak(seeds, tmp_path))
    assert result.failures == [], report(result)
    # The seeds do kill what they say (a harness that kills nothing proves nothing): every victim, one run twice.
    kills = result.kills_by()
    assert all(kills[victim] for victim in VICTIMS), kills
    assert any(len(o.kills) == 2 for o in result.outcomes), [o.kills for o in result.outcomes]


@pytest.mark.slow
@pytest.mark.postgres
def test_seeded_kills_end_consistent_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    seeds = seeds_covering(max(1, RUNS // 3), first=1000, victims=("oma-server",))
    result = asyncio.run(soak(seeds, tmp_path, postgres.url()))
    assert result.failures == [], report(result)
    assert all(o.kills for o in result.outcomes)


@pytest.mark.slow
def test_the_consistency_check_names_what_a_kill_could_leave(tmp_path: Path) -> None:
    """The end check can fail: after an initial replication it finds nothing, then it names an orphan CloudStack
    volume, a replica that no longer matches its source and a VMware snapshot left on the source, each of them."""
    root = tmp_path / "world"
    root.mkdir()
    asyncio.run(_tamper_and_check(Run(Plan.from_seed(0).without_kills(), root, "")))


async def _tamper_and_check(run: Run) -> None:
    await asyncio.to_thread(run.start_world)
    try:
        await run.enroll_and_discover()
        assert run.oma is not None
        async with Operator(run.oma.endpoint(), run.vm_id, time.monotonic() + 120) as operator:
            await operator.run_phase("initial")
            world = run.world(operator)
            assert await consistency.settled(world) == []
            stray, left = await asyncio.to_thread(_leave_leftovers, run)
            problems = await consistency.check(world)
        text = "\n".join(problems)
        assert f"orphan CloudStack volume(s): {stray}" in text, text
        assert "differs from its source at byte" in text, text
        assert f"VMware snapshot(s) left on the source VM: ['{left}']" in text, text
    finally:
        await asyncio.to_thread(run.stop_world)


def _leave_leftovers(run: Run) -> tuple[str, str]:
    """A volume CloudStack has and the OMA does not record, a VMware snapshot left on the source, and a source
    changed behind its replica's back; returns (the volume id, the snapshot id)."""
    assert run.cloudstack is not None
    api = consistency.cloudstack_api(run.cloudstack.url, *run.cloudstack.keys)
    offering = next(o for o in api.listDiskOfferings(fetch_list=True) if o["iscustomized"])
    zone = run.cloudstack.oma_environment()["OMA_CLOUDSTACK_ZONE"]
    stray = api.createVolume(name="stray", zoneid=zone, diskofferingid=offering["id"], size=1)
    vcenter = FakeVCenter(run.vcenter)
    vm = vcenter.find_vm(run.vm_name)
    left = vcenter.create_snapshot(vm.uuid, "left behind")
    with open(vcenter.disk_path(vm.uuid, vm.disks[0].key), "r+b") as source:
        source.write(b"\xa5" * 4096)
    return str(stray["id"]), left.id
