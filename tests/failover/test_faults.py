"""Faults at every step (deploy, attach, start, snapshot, revert, OMA restart mid-step): the system ends in a state
one call recovers from, and the simulator holds exactly the expected volumes, snapshots and VMs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from oma.v1 import failover_pb2, job_pb2, job_pb2_grpc
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.cloudstack.helpers import job_pending
from tests.factories import live_exports
from tests.failover.helpers import (
    COMPLETED,
    FAILED,
    VM_CLEANUP,
    VM_READY,
    VM_TEST,
    World,
    cleanup,
    get_job,
    get_vm,
    map_network,
    replicate,
    restart_oma,
    sim_of,
    start_failover,
    start_oma,
    wait_job,
    world,
)
from tests.waiting import until

pytestmark = pytest.mark.nbd


async def cleanup_restores(oma: OmaServer, channel: grpc.aio.Channel, vm_id: str, before: World) -> None:
    undo = await cleanup(channel, vm_id)
    undone = await wait_job(oma, channel, undo.id)
    assert undone.status == COMPLETED, undone
    assert world(sim_of(oma)) == before
    assert (await get_vm(channel, vm_id)).status == VM_READY
    assert len(live_exports(oma.app)) == len(before.attached_to_oma)


@pytest.mark.parametrize(
    ("command", "in_job", "step"),
    [
        ("createSnapshot", True, "snapshot_volumes"),
        ("deployVirtualMachine", False, "deploy_vm"),
        ("deployVirtualMachine", True, "deploy_vm"),
        ("attachVolume", True, "attach_volumes"),
        ("startVirtualMachine", True, "start_vm"),
    ],
)
async def test_failed_step_is_named_and_one_cleanup_restores(
    oma: OmaServer, tmp_path: Path, command: str, in_job: bool, step: str
) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        before = world(sim)
        await map_network(channel, sim)
        sim.faults.fail_command(command, errortext=f"simulated {command} failure", in_job=in_job, times=1)
        job = await start_failover(channel, r.vm_id)
        failed = await wait_job(oma, channel, job.id)
        assert failed.status == FAILED, failed
        assert failed.error.reason == f"{step.upper()}_FAILED"
        assert command in failed.error.message and "CleanupFailover" in failed.error.message
        failed_steps = [s for s in failed.steps if s.status == failover_pb2.STEP_STATUS_FAILED]
        assert [s.name for s in failed_steps] == [step] and failed_steps[0].error == failed.error.message
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP
        # the job log names the CloudStack failure
        entries = (
            await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                job_pb2.ListJobLogEntriesRequest(job_id=job.id, page_size=1000)
            )
        ).entries
        assert any(e.status == job_pb2.JOB_LOG_STATUS_FAILED and command in e.message for e in entries)
        # a second failover is refused until the cleanup
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start_failover(channel, r.vm_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await cleanup_restores(oma, channel, r.vm_id, before)
        await r.stream.close()


async def test_revert_failure_fails_cleanup_and_a_second_cleanup_finishes(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        before = world(sim)
        await map_network(channel, sim)
        done = await wait_job(oma, channel, (await start_failover(channel, r.vm_id)).id)
        assert done.status == COMPLETED
        sim.faults.fail_command("revertSnapshot", errortext="simulated revert failure", in_job=True, times=1)
        undo = await cleanup(channel, r.vm_id)
        failed = await wait_job(oma, channel, undo.id)
        assert failed.status == FAILED and failed.error.reason == "REVERT_VOLUMES_FAILED", failed
        assert "run CleanupFailover again" in failed.error.message
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP
        # the test VM is gone, the snapshots remain for the next attempt
        assert world(sim).vms == set() and len(world(sim).snapshots) == 2
        await cleanup_restores(oma, channel, r.vm_id, before)
        await r.stream.close()


async def wait_step(channel: grpc.aio.Channel, job_id: str, step: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await get_job(channel, job_id)).current_step != step:
        assert loop.time() < deadline, f"job never reached {step}"
        await asyncio.sleep(0.05)


async def test_oma_restart_mid_deploy_and_mid_cleanup_resumes(tmp_path: Path) -> None:
    oma = await start_oma(tmp_path)
    try:
        sim = sim_of(oma)
        async with oma_channel(oma) as channel:
            r = await replicate(channel, tmp_path)
            before = world(sim)
            await map_network(channel, sim)
            await r.stream.close()
            # Slower than any restart takes: the restart lands inside the deploy, whose answer is lost.
            sim.faults.slow_job("deployVirtualMachine", 30.0)
            job = await start_failover(channel, r.vm_id)
            await wait_step(channel, job.id, "deploy_vm")
            await until(lambda: job_pending(sim, "DeployVMCmdByAdmin"), "the simulator's deploy job")
        oma = await restart_oma(oma)
        sim = sim_of(oma)
        async with oma_channel(oma) as channel:
            done = await wait_job(oma, channel, job.id)
            assert done.status == COMPLETED, done
            deploy = next(s for s in done.steps if s.name == "deploy_vm")
            assert deploy.attempts == 2
            entries = (
                await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                    job_pb2.ListJobLogEntriesRequest(job_id=job.id, page_size=1000)
                )
            ).entries
            deploy_entries = [e for e in entries if e.step == "deploy_vm"]
            assert any("interrupted by an OMA restart" in e.message for e in deploy_entries), deploy_entries
            assert deploy_entries[-1].status == job_pb2.JOB_LOG_STATUS_COMPLETED
            assert not [e for e in entries if e.status == job_pb2.JOB_LOG_STATUS_RUNNING]
            assert world(sim).vms == {done.target_vm_id}  # adopted by name, not deployed twice
            assert (await get_vm(channel, r.vm_id)).status == VM_TEST

            sim.faults.slow_job("revertSnapshot", 30.0)
            undo = await cleanup(channel, r.vm_id)
            await wait_step(channel, undo.id, "revert_volumes")
            await until(lambda: job_pending(sim, "RevertSnapshotCmd"), "the simulator's revert job")
        oma = await restart_oma(oma)
        async with oma_channel(oma) as channel:
            undone = await wait_job(oma, channel, undo.id)
            assert undone.status == COMPLETED, undone
            assert world(sim_of(oma)) == before
            assert (await get_vm(channel, r.vm_id)).status == VM_READY
            assert live_exports(oma.app) == [] and not before.attached_to_oma
    finally:
        await oma.stop(grace=0.2)


async def test_a_cloudstack_outage_inside_a_step_is_waited_out(oma: OmaServer, tmp_path: Path) -> None:
    """Connections to CloudStack drop twice while the test VM is deployed: the step (declared with the engine's
    OUTAGE retry) tries again and the failover completes, with one test VM and the retries in the job log."""
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim)
        sim.faults.drop_connection("deployVirtualMachine", times=2)
        job = await start_failover(channel, r.vm_id)
        done = await wait_job(oma, channel, job.id, timeout=90)
        assert done.status == COMPLETED, done
        assert len(world(sim).vms) == 1
        entries = (
            await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                job_pb2.ListJobLogEntriesRequest(job_id=job.id, page_size=1000)
            )
        ).entries
        retries = [e for e in entries if e.step == "deploy_vm" and "trying again" in e.message]
        assert len(retries) == 2, [e.message for e in entries]
        await r.stream.close()


def test_every_step_of_every_kind_is_declared_once(oma: OmaServer) -> None:
    from oma_server.failover.state_machine import STEPS

    assert oma.app.failover is not None
    declared = oma.app.failover.steps.declared
    for kind, names in STEPS.items():
        missing = [n for n in names if n not in declared]
        assert missing == [], f"{kind}: steps without a declaration {missing}"
        assert all(declared[n].hint for n in names)
