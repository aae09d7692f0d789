"""Group failover in boot order and group cleanup in reverse, through the real API: CloudStack simulator over HTTP,
real nbd-server, scripted appliances on the stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from oma.v1 import failover_pb2, machine_group_pb2
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import inventory
from tests.failover.helpers import (
    VM_CLEANUP,
    VM_LIVE,
    VM_READY,
    VM_TEST,
    Replicated,
    answer_power,
    get_job,
    get_vm,
    map_network,
    play_replication,
    replicate,
    restart_oma,
    sim_of,
    start_oma,
    world,
)
from tests.groups.helpers import (
    LIVE_FAILOVER,
    RUN_CANCELLED,
    RUN_CANCELLING,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_NOT_STARTED,
    RUN_PENDING,
    RUN_RUNNING,
    RUN_SKIPPED,
    TEST_FAILOVER,
    create_group,
    get_run,
    groups_stub,
)
from vma_client_stubs.errors import error_details_of

FAILOVER_CANCELLED = failover_pb2.FAILOVER_JOB_STATUS_CANCELLED

pytestmark = pytest.mark.nbd


async def database_then_web(
    channel: grpc.aio.Channel, sim: CloudStackSimulator, tmp_path: Path
) -> tuple[Replicated, Replicated, machine_group_pb2.MachineGroup]:
    """Two replicated VMs, the network mapped, and the group "shop": db-01 boots first, web-01 after it."""
    db = await replicate(channel, tmp_path, inventory(name="db-01"))
    web = await replicate(channel, tmp_path, inventory(name="web-01"))
    await map_network(channel, sim)
    return db, web, await create_group(channel, "shop", {db.vm_id: 0, web.vm_id: 1})


async def test_a_group_fails_over_in_boot_order_and_cleans_up_in_reverse(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        names = ("db-01", "app-01", "app-02")
        replicated = [await replicate(channel, tmp_path, inventory(name=n)) for n in names]
        db, app1, app2 = (r.vm_id for r in replicated)
        before = world(sim)
        await map_network(channel, sim)
        group = await create_group(channel, "shop", {db: 0, app1: 1, app2: 1})
        stub = groups_stub(channel)

        hold = sim.state.faults.hold_job("deployVirtualMachine")  # the database VM's deploy waits in CloudStack
        start = machine_group_pb2.StartGroupFailoverRequest(group_id=group.id, kind=TEST_FAILOVER)
        started = await stub.StartGroupFailover(start)
        assert started.run.group_name == "shop" and started.run.current_boot_order == 0
        assert [m.vm_context_id for m in started.run.members] == [db, app1, app2]
        await asyncio.wait_for(hold.reached.wait(), 30)
        running = await get_run(channel, started.run.id)
        assert running.status == RUN_RUNNING and running.current_boot_order == 0
        assert [(m.vm_context_id, m.status) for m in running.members] == [
            (db, RUN_RUNNING),
            (app1, RUN_PENDING),
            (app2, RUN_PENDING),
        ]
        assert running.members[0].failover_job_id and not running.members[1].failover_job_id
        # while it runs, the group cannot change, go or run twice
        for call, request in (
            (stub.StartGroupFailover, start),
            (stub.UpdateMachineGroup, machine_group_pb2.UpdateMachineGroupRequest(id=group.id, spec=group.spec)),
            (stub.DeleteMachineGroup, machine_group_pb2.DeleteMachineGroupRequest(id=group.id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)  # type: ignore[operator]
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_details_of(err.value).reason == "GROUP_RUN_ACTIVE"
        hold.release.set()
        await oma.app.group_runs.wait(started.run.id, 120)
        run = await get_run(channel, started.run.id)
        assert run.status == RUN_COMPLETED, run
        assert not run.HasField("current_boot_order") and run.HasField("finished_at")
        assert [m.status for m in run.members] == [RUN_COMPLETED] * 3
        assert all("runs in CloudStack" in m.message for m in run.members)
        jobs = {m.vm_context_id: await get_job(channel, m.failover_job_id) for m in run.members}
        # boot order: the app tier's failovers began only once the database VM ran (its job completed)
        db_done = jobs[db].finished_at.ToDatetime()
        assert all(jobs[vm].created_at.ToDatetime() >= db_done for vm in (app1, app2))
        for vm_id in (db, app1, app2):
            assert (await get_vm(channel, vm_id)).status == VM_TEST
        test_vms = [sim.state.vms[vid] for vid in world(sim).vms]
        assert sorted(vm["name"].split("-test-")[0] for vm in test_vms) == sorted(names)
        assert all(vm["state"] == "Running" for vm in test_vms)
        got = (await stub.GetMachineGroup(machine_group_pb2.GetMachineGroupRequest(id=group.id))).group
        assert got.last_run_id == run.id
        # no run in progress: the group may change again
        await stub.UpdateMachineGroup(
            machine_group_pb2.UpdateMachineGroupRequest(id=group.id, spec=got.spec, request_id="same-spec")
        )

        cleanup = (
            await stub.CleanupGroupFailover(machine_group_pb2.CleanupGroupFailoverRequest(group_id=group.id))
        ).run
        assert cleanup.current_boot_order == 1  # the reverse order: the app tier first
        await oma.app.group_runs.wait(cleanup.id, 120)
        cleaned = await get_run(channel, cleanup.id)
        assert cleaned.status == RUN_COMPLETED, cleaned
        cleanup_jobs = {m.vm_context_id: await get_job(channel, m.failover_job_id) for m in cleaned.members}
        apps_done = max(cleanup_jobs[vm].finished_at.ToDatetime() for vm in (app1, app2))
        assert cleanup_jobs[db].created_at.ToDatetime() >= apps_done
        for vm_id in (db, app1, app2):
            assert (await get_vm(channel, vm_id)).status == VM_READY
        assert world(sim).vms == before.vms
        runs = (await stub.ListGroupRuns(machine_group_pb2.ListGroupRunsRequest(group_id=group.id))).runs
        assert [r.id for r in runs] == [cleanup.id, run.id]  # newest first
        for r in replicated:
            await r.stream.close()


async def test_a_failed_boot_order_stops_the_run_and_a_restart_resumes_it(tmp_path: Path) -> None:
    server = await start_oma(tmp_path)
    sim = sim_of(server)
    async with oma_channel(server) as channel:
        replicated = [await replicate(channel, tmp_path, inventory(name=n)) for n in ("db-01", "app-01")]
        db, app = (r.vm_id for r in replicated)
        await map_network(channel, sim)
        group = await create_group(channel, "shop", {db: 0, app: 1})
        sim.faults.fail_command("startVirtualMachine", errortext="simulated start failure", in_job=True, times=1)
        started = await groups_stub(channel).StartGroupFailover(
            machine_group_pb2.StartGroupFailoverRequest(group_id=group.id, kind=TEST_FAILOVER)
        )
        await server.app.group_runs.wait(started.run.id, 120)
        run = await get_run(channel, started.run.id)
        assert run.status == RUN_FAILED
        first, second = run.members
        assert (first.vm_context_id, first.status) == (db, RUN_FAILED) and "simulated start failure" in first.message
        assert (second.vm_context_id, second.status, second.failover_job_id) == (app, RUN_NOT_STARTED, "")
        assert "db-01" in run.error_message and "CleanupGroupFailover" in run.error_message
        assert (await get_vm(channel, db)).status == VM_CLEANUP
        assert (await get_vm(channel, app)).status == VM_READY  # never touched

        # the cleanup stops on its first member's job: the OMA restarts with the run in progress
        cleanup = (
            await groups_stub(channel).CleanupGroupFailover(
                machine_group_pb2.CleanupGroupFailoverRequest(group_id=group.id)
            )
        ).run
    for r in replicated:
        await r.stream.close()
    server = await restart_oma(server)
    try:
        async with oma_channel(server) as channel:
            await server.app.group_runs.wait(cleanup.id, 120)
            cleaned = await get_run(channel, cleanup.id)
            assert cleaned.status == RUN_COMPLETED, cleaned
            by_vm = {m.vm_context_id: m for m in cleaned.members}
            assert by_vm[app].status == RUN_SKIPPED and "nothing to clean up" in by_vm[app].message
            assert by_vm[db].status == RUN_COMPLETED
            assert (await get_vm(channel, db)).status == VM_READY
            jobs = (await server.app.failover_jobs.list_jobs(100, "", db)).jobs
            assert [j.kind.value for j in jobs].count("cleanup") == 1  # the restart did not start a second one
    finally:
        await server.stop(grace=0.2)


async def test_a_group_live_failover_powers_each_tier_off_only_when_the_one_before_runs(
    oma: OmaServer, tmp_path: Path
) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        db, web, group = await database_then_web(channel, sim, tmp_path)
        uuids = {r.vm_id: (await get_vm(channel, r.vm_id)).vm_uuid for r in (db, web)}

        async def appliance(r: Replicated) -> None:
            """The VMA of one VM: powers its source off when told, then runs the final sync."""
            await answer_power(r.stream, "power_off", uuids[r.vm_id])
            await play_replication(r.stream, tmp_path, "final", r.sources, timeout=60)

        appliances = [asyncio.create_task(appliance(r)) for r in (db, web)]
        started = await groups_stub(channel).StartGroupFailover(
            machine_group_pb2.StartGroupFailoverRequest(group_id=group.id, kind=LIVE_FAILOVER)
        )
        await oma.app.group_runs.wait(started.run.id, 120)
        await asyncio.gather(*appliances)
        run = await get_run(channel, started.run.id)
        assert run.status == RUN_COMPLETED, run
        jobs = {m.vm_context_id: await get_job(channel, m.failover_job_id) for m in run.members}
        # the web tier's source was powered off (its failover began) only once the database VM ran in CloudStack
        assert jobs[web.vm_id].created_at.ToDatetime() >= jobs[db.vm_id].finished_at.ToDatetime()
        for r in (db, web):
            assert [s.name for s in jobs[r.vm_id].steps][:3] == ["validate", "power_off_source", "final_sync"]
            assert (await get_vm(channel, r.vm_id)).status == VM_LIVE
            assert sim.state.vms[jobs[r.vm_id].target_vm_id]["state"] == "Running"
        # a group cleanup has nothing to do after a live failover (RollbackFailover undoes one VM by VM)
        cleanup = (
            await groups_stub(channel).CleanupGroupFailover(
                machine_group_pb2.CleanupGroupFailoverRequest(group_id=group.id)
            )
        ).run
        await oma.app.group_runs.wait(cleanup.id, 30)
        skipped = await get_run(channel, cleanup.id)
        assert skipped.status == RUN_COMPLETED and [m.status for m in skipped.members] == [RUN_SKIPPED] * 2
        assert all("failed_over_live" in m.message for m in skipped.members)
        for r in (db, web):
            await r.stream.close()


async def test_a_cancelled_group_run_starts_nothing_more_and_cancels_what_runs(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        db, web, group = await database_then_web(channel, sim, tmp_path)
        stub = groups_stub(channel)
        hold = sim.state.faults.hold_job("deployVirtualMachine")  # the database VM's deploy waits in CloudStack
        started = await stub.StartGroupFailover(
            machine_group_pb2.StartGroupFailoverRequest(group_id=group.id, kind=TEST_FAILOVER)
        )
        await asyncio.wait_for(hold.reached.wait(), 30)
        asked = (await stub.CancelGroupRun(machine_group_pb2.CancelGroupRunRequest(id=started.run.id))).run
        assert asked.status == RUN_CANCELLING
        again = (await stub.CancelGroupRun(machine_group_pb2.CancelGroupRunRequest(id=started.run.id))).run
        assert again.status == RUN_CANCELLING  # a repeat changes nothing
        hold.release.set()  # the deploy, which cannot stop half-way, ends; then the job stops
        await oma.app.group_runs.wait(started.run.id, 60)
        run = await get_run(channel, started.run.id)
        assert run.status == RUN_CANCELLED and run.error_message.startswith("cancelled"), run
        first, second = run.members
        assert first.vm_context_id == db.vm_id and first.status == RUN_CANCELLED, first
        assert (await get_job(channel, first.failover_job_id)).status == FAILOVER_CANCELLED
        assert (second.status, second.failover_job_id) == (RUN_NOT_STARTED, "")
        assert (await get_vm(channel, web.vm_id)).status == VM_READY  # never touched
        ended = (await stub.CancelGroupRun(machine_group_pb2.CancelGroupRunRequest(id=run.id))).run
        assert ended.status == RUN_CANCELLED  # a run that ended is returned as it is
        # the group is free again: its cleanup removes what the cancelled failover left
        cleanup = (
            await stub.CleanupGroupFailover(machine_group_pb2.CleanupGroupFailoverRequest(group_id=group.id))
        ).run
        await oma.app.group_runs.wait(cleanup.id, 60)
        assert (await get_run(channel, cleanup.id)).status == RUN_COMPLETED
        assert (await get_vm(channel, db.vm_id)).status == VM_READY
        for r in (db, web):
            await r.stream.close()
