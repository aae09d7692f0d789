"""Test failover → cleanup → incremental, and live failover (power off + final sync) → rollback, through the real
API: CloudStack simulator over HTTP, real nbd-server, a scripted appliance on the stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import failover_pb2, job_pb2, job_pb2_grpc, replication_pb2, replication_pb2_grpc, vm_context_pb2
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.db.models import Volume
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import live_exports
from tests.failover.helpers import (
    LIVE,
    VM_LIVE,
    VM_READY,
    VM_TEST,
    Replicated,
    World,
    answer_power,
    cleanup,
    failover_stub,
    get_vm,
    map_network,
    play_replication,
    read_prefix,
    replicate,
    sim_of,
    start_failover,
    start_oma,
    wait_job,
    world,
)
from vma.v1 import stream_pb2

pytestmark = pytest.mark.nbd
STEP_DONE = (failover_pb2.STEP_STATUS_COMPLETED, failover_pb2.STEP_STATUS_SKIPPED)


async def watch_until_final(channel: grpc.aio.Channel, job_id: str) -> list[job_pb2.JobUpdate]:
    updates = []
    call = job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job_id))
    async for reply in call:
        updates.append(reply.update)
        if reply.update.failover_job.status in (
            failover_pb2.FAILOVER_JOB_STATUS_COMPLETED,
            failover_pb2.FAILOVER_JOB_STATUS_FAILED,
        ):
            call.cancel()
            break
    return updates


async def test_test_failover_then_cleanup_then_incremental(tmp_path: Path, database_url: str) -> None:
    """Runs on SQLite and on PostgreSQL."""
    hook_out = tmp_path / "hook.json"
    oma = await start_oma(
        tmp_path,
        database_url,
        driver_injection_command=f"env | grep ^OMA_ > /dev/null && "
        f'python3 -c \'import os,json; json.dump(dict(os.environ), open("{hook_out}", "w"))\'',
    )
    sim = sim_of(oma)
    try:
        async with oma_channel(oma) as channel:
            r = await replicate(channel, tmp_path)
            await r.stream.close()
            before = world(sim)
            # replicated and idle: the replicas are off the OMA VM, nothing is exported
            assert not before.attached_to_oma and not before.snapshots and not before.vms
            assert len(before.volumes) == 3 and live_exports(oma.app) == []  # 2 replicas and the OMA's root
            net_id = await map_network(channel, sim, static_ip="10.1.1.50", keep_mac=True)

            ready = await failover_stub(channel).CheckFailoverReadiness(
                failover_pb2.CheckFailoverReadinessRequest(
                    vm_context_id=r.vm_id, kind=failover_pb2.FAILOVER_JOB_KIND_TEST
                )
            )
            assert ready.ready, ready
            assert {c.name for c in ready.checks} >= {
                "replication_completed",
                "no_active_job",
                "disks_replicated",
                "networks_mapped",
                "service_offering",
                "template_exists",
                "zone_exists",
                "volumes_exist",
            }

            job = await start_failover(channel, r.vm_id)
            watcher = asyncio.create_task(watch_until_final(channel, job.id))
            assert job.target_vm_name.startswith("web-01-test-")
            done = await wait_job(oma, channel, job.id)
            assert done.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED, done
            assert all(s.status in STEP_DONE and s.attempts == 1 for s in done.steps), done.steps
            assert [s.name for s in done.steps][:3] == ["validate", "snapshot_volumes", "detach_from_oma"]
            assert (await get_vm(channel, r.vm_id)).status == VM_TEST

            # the watch saw the job run and complete
            updates = await asyncio.wait_for(watcher, 10)
            assert updates[0].kind == job_pb2.UPDATE_KIND_SNAPSHOT
            assert updates[-1].failover_job.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED
            assert [u.revision for u in updates] == sorted(u.revision for u in updates)

            # CloudStack: one test VM, running, from our volumes (OS disk as ROOT), template root gone, 2 snapshots
            after = world(sim)
            assert after.vms == {done.target_vm_id}
            assert after.volumes == before.volumes
            assert len(after.snapshots) == 2 and set(done.snapshot_ids) == after.snapshots
            vm_row = sim.state.vms[done.target_vm_id]
            assert vm_row["state"] == "Running" and vm_row["name"] == done.target_vm_name
            assert vm_row["nic"][0]["networkid"] == net_id
            assert vm_row["nic"][0]["ipaddress"] == "10.1.1.50"
            assert vm_row["nic"][0]["macaddress"] == "00:50:56:aa:bb:cc"
            vm_ctx = await get_vm(channel, r.vm_id)
            volumes = [await oma.app.db.run(Volume.get_by_id, d.volume_id) for d in vm_ctx.disks]
            attached = sim.state.volumes_of(done.target_vm_id)
            assert [v["id"] for v in attached] == [v.cloudstack_id for v in volumes]
            assert attached[0]["type"] == "ROOT" and attached[0]["deviceid"] == 0
            assert live_exports(oma.app) == []
            # byte check: the test VM's volumes hold exactly what the appliance replicated
            for disk, volume in zip(vm_ctx.disks, volumes, strict=True):
                src = r.sources[disk.id].read_bytes()
                backing = sim.state.volume_file(volume.cloudstack_id)
                assert await asyncio.to_thread(read_prefix, backing, len(src)) == src
            # the driver-injection hook ran with the volumes' device info
            env = json.loads(hook_out.read_text())
            devices = json.loads(env["OMA_FAILOVER_VOLUMES"])
            assert [d["role"] for d in devices] == ["root", "data"] and devices[0]["device_id"] == 0
            assert env["OMA_TARGET_VM_ID"] == done.target_vm_id

            # replication is refused while failed over
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
                    replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
                )
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            # cleanup: one call, back to exactly the world before the failover
            undo = await cleanup(channel, r.vm_id)
            assert undo.kind == failover_pb2.FAILOVER_JOB_KIND_CLEANUP
            undone = await wait_job(oma, channel, undo.id)
            assert undone.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED, undone
            assert [s.name for s in undone.steps] == [
                "stop_vm",
                "detach_from_vm",
                "destroy_vm",
                "revert_volumes",
                "delete_snapshots",
                "release_volumes",
            ]
            final = world(sim)
            assert final == before
            assert live_exports(oma.app) == []  # the next replication attaches and exports again
            assert (await get_vm(channel, r.vm_id)).status == VM_READY

            # the next incremental starts from the stored change ids
            stream = type(r.stream)(channel)
            await stream.hello(r.enrolled)
            inc = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
                replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
            )
            assert inc.job.kind == replication_pb2.REPLICATION_JOB_KIND_INCREMENTAL
            assert [d.previous_change_id for d in inc.job.disks] == r.change_ids
            await play_replication(stream, tmp_path, "2", r.sources, job_id=inc.job.id)
            assert (await get_vm(channel, r.vm_id)).status == VM_READY
            await stream.close()
    finally:
        await oma.stop(grace=0.2)


async def live_failover_powered_off(
    channel: grpc.aio.Channel, sim: CloudStackSimulator, tmp_path: Path
) -> tuple[Replicated, World, vm_context_pb2.VmContext, failover_pb2.FailoverJob]:
    """A replicated VM whose live failover has begun and whose source the appliance powered off: the final sync's
    start command comes next. Returns the replication, the world before, the VM and the failover job."""
    r = await replicate(channel, tmp_path)
    before = world(sim)
    await map_network(channel, sim, vm_id=r.vm_id)
    vm = await get_vm(channel, r.vm_id)
    job = await start_failover(channel, r.vm_id, LIVE)
    await answer_power(r.stream, "power_off", vm.vm_uuid)
    return r, before, vm, job


async def rollback_powering_on(
    oma: OmaServer, channel: grpc.aio.Channel, r: Replicated, vm_uuid: str
) -> failover_pb2.FailoverJob:
    """RollbackFailover with power_on_source, the appliance answering the power-on; the completed rollback job."""
    rb = (
        await failover_stub(channel).RollbackFailover(
            failover_pb2.RollbackFailoverRequest(vm_context_id=r.vm_id, power_on_source=True)
        )
    ).job
    await answer_power(r.stream, "power_on", vm_uuid)
    undone = await wait_job(oma, channel, rb.id)
    assert undone.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED, undone
    return undone


async def test_live_failover_with_final_sync_then_rollback(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r, before, vm, job = await live_failover_powered_off(channel, sim, tmp_path)
        assert job.target_vm_name == "web-01"
        # the final sync: the appliance copies the changed blocks (new bytes on disk 0) and completes
        src0 = r.sources[vm.disks[0].id]
        data = bytearray(src0.read_bytes())
        data[4096:8192] = b"\x5a" * 4096
        src0.write_bytes(bytes(data))
        final_job_id, final_cids = await play_replication(r.stream, tmp_path, "final", r.sources)
        done = await wait_job(oma, channel, job.id)
        assert done.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED, done
        assert [s.name for s in done.steps][:3] == ["validate", "power_off_source", "final_sync"]
        final_job = (
            await replication_pb2_grpc.ReplicationServiceStub(channel).GetReplicationJob(
                replication_pb2.GetReplicationJobRequest(id=final_job_id)
            )
        ).job
        assert final_job.kind == replication_pb2.REPLICATION_JOB_KIND_FINAL
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_LIVE
        assert [d.last_change_id for d in vm.disks] == final_cids
        # the final sync's replicas were read back before anything was deployed on them
        assert [d.verification.change_id for d in vm.disks] == final_cids
        log = await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
            job_pb2.ListJobLogEntriesRequest(job_id=job.id, page_size=1000)
        )
        assert any(e.step == "final_sync" and "completed and verified" in e.message for e in log.entries)
        target = sim.state.vms[done.target_vm_id]
        assert target["name"] == "web-01" and target["state"] == "Running"
        volume0 = await oma.app.db.run(Volume.get_by_id, vm.disks[0].volume_id)
        backing = sim.state.volume_file(volume0.cloudstack_id)
        # the final sync's bytes are what the VM boots from
        assert await asyncio.to_thread(read_prefix, backing, len(data)) == bytes(data)

        # rollback with power-on of the source
        undone = await rollback_powering_on(oma, channel, r, vm.vm_uuid)
        assert undone.steps[-1].name == "power_on_source"
        assert undone.steps[-1].status == failover_pb2.STEP_STATUS_COMPLETED
        assert world(sim) == before
        assert (await get_vm(channel, r.vm_id)).status == VM_READY
        assert live_exports(oma.app) == []
        listed = (
            await failover_stub(channel).ListFailoverJobs(failover_pb2.ListFailoverJobsRequest(vm_context_id=r.vm_id))
        ).jobs
        assert [j.id for j in listed] == [undone.id, job.id]
        await r.stream.close()


async def test_a_final_sync_that_failed_midway_leaves_the_vm_failed_after_rollback(
    oma: OmaServer, tmp_path: Path
) -> None:
    """The appliance began the final sync and then failed it: the replicas hold some blocks of a newer snapshot, so
    after the rollback the VM is `failed` (replicate again), not ready_for_failover. Found by the workflow kill
    harness: the job's `replicas_dirty` was only set when the VM context was failed, which a final sync — not the
    VM's active job — never makes it."""
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r, before, vm, job = await live_failover_powered_off(channel, sim, tmp_path)
        start = (await r.stream.recv_until("command", timeout=20)).command.start_replication
        await r.stream.send(event=stream_pb2.JobEvent(job_id=start.job_id, sequence=1, started=stream_pb2.JobStarted()))
        await r.stream.send(
            event=stream_pb2.JobEvent(
                job_id=start.job_id,
                sequence=2,
                failed=stream_pb2.JobFailed(
                    error_class=jobs_pb2.ERROR_CLASS_TARGET_WRITE_FAILED, detail="write failed after 3 MiB"
                ),
            )
        )
        failed = await wait_job(oma, channel, job.id)
        assert failed.status == failover_pb2.FAILOVER_JOB_STATUS_FAILED, failed
        assert failed.error.reason == "FINAL_SYNC_FAILED"

        await rollback_powering_on(oma, channel, r, vm.vm_uuid)
        assert world(sim) == before
        assert (await get_vm(channel, r.vm_id)).status == vm_context_pb2.VM_CONTEXT_STATUS_FAILED

        # an incremental from the last recorded change ids repairs the replicas
        inc = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
        )
        assert [d.previous_change_id for d in inc.job.disks] == r.change_ids
        await play_replication(r.stream, tmp_path, "2", r.sources, job_id=inc.job.id)
        assert (await get_vm(channel, r.vm_id)).status == VM_READY
        await r.stream.close()
