"""Cancelling jobs of every kind through JobService.CancelJob, and source power jobs, through the real API: the
CloudStack simulator over HTTP, the real NBD server, a scripted appliance on the stream.

A live failover cancelled while it powers the source off (a step that cannot be stopped half-way) stops after that
step; one cancelled during its final sync (a wait) stops at once and cancels the sync; cleanup is never cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import inventory_pb2
from oma.v1 import failover_pb2, job_pb2, job_pb2_grpc, replication_pb2, replication_pb2_grpc, vm_context_pb2
from oma.v1 import vm_context_pb2_grpc as vm_grpc
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.failover.helpers import (
    LIVE,
    TEST,
    VM_CLEANUP,
    VM_READY,
    answer_power,
    cleanup,
    failover_stub,
    get_job,
    get_vm,
    map_network,
    replicate,
    sim_of,
    start_failover,
    wait_job,
    world,
)
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
CANCELLED = failover_pb2.FAILOVER_JOB_STATUS_CANCELLED
COMPLETED = failover_pb2.FAILOVER_JOB_STATUS_COMPLETED


def jobs(channel: grpc.aio.Channel) -> job_pb2_grpc.JobServiceStub:
    return job_pb2_grpc.JobServiceStub(channel)


async def cancel(channel: grpc.aio.Channel, job_id: str) -> job_pb2.Job:
    return (await jobs(channel).CancelJob(job_pb2.CancelJobRequest(id=job_id))).job


async def log_of(channel: grpc.aio.Channel, job_id: str) -> list[job_pb2.JobLogEntry]:
    return list((await jobs(channel).ListJobLogEntries(job_pb2.ListJobLogEntriesRequest(job_id=job_id))).entries)


async def refused(call: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    info = error_info_of(raised.value)
    return raised.value.code(), info.reason if info else "", raised.value.details() or ""


async def test_live_failover_cancelled_while_powering_off_stops_after_that_step(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        vm = await get_vm(channel, r.vm_id)
        job = await start_failover(channel, r.vm_id, LIVE)
        command = (await r.stream.recv_until("command", timeout=20)).command
        assert command.WhichOneof("kind") == "power_off"

        requested = (await cancel(channel, job.id)).failover_job  # the power command cannot be recalled
        assert requested.status == failover_pb2.FAILOVER_JOB_STATUS_RUNNING and requested.cancel_requested
        assert requested.current_step == "power_off_source"
        again = (await cancel(channel, job.id)).failover_job  # a repeat returns the job as it is
        assert again.id == job.id and again.cancel_requested

        await r.stream.send(
            command_result=stream_pb2.CommandResult(
                command_id=command.command_id,
                outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
                power=stream_pb2.PowerResult(power_state=inventory_pb2.POWER_STATE_POWERED_OFF),
            )
        )
        done = await wait_job(oma, channel, job.id)
        assert done.status == CANCELLED, done
        steps = {s.name: s.status for s in done.steps}
        assert steps["power_off_source"] == failover_pb2.STEP_STATUS_COMPLETED
        assert steps["final_sync"] == failover_pb2.STEP_STATUS_PENDING  # never began
        assert "source VM is powered off" in done.outcome and "RollbackFailover" in done.outcome
        assert not done.cancel_requested  # it ended: nothing is pending any more
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP
        listed = await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
            replication_pb2.ListReplicationJobsRequest(vm_context_id=r.vm_id)
        )
        assert [j.kind for j in listed.jobs] == [replication_pb2.REPLICATION_JOB_KIND_INITIAL]  # no final sync
        notes = [e.message for e in await log_of(channel, job.id) if e.step == "cancel"]
        assert any("stops when step power_off_source ends" in n for n in notes), notes
        assert any("source VM is powered off" in n for n in notes), notes

        # an undo is never cancelled; a finished job cannot be
        rollback = (
            await failover_stub(channel).RollbackFailover(
                failover_pb2.RollbackFailoverRequest(vm_context_id=r.vm_id, power_on_source=True)
            )
        ).job
        code, reason, details = await refused(jobs(channel).CancelJob(job_pb2.CancelJobRequest(id=rollback.id)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANCEL_NOT_SAFE") and "let it finish" in details
        await answer_power(r.stream, "power_on", vm.vm_uuid)
        undone = await wait_job(oma, channel, rollback.id)
        assert undone.status == COMPLETED, undone
        assert undone.outcome == "rolled back; the source VM was powered on"
        assert (await get_vm(channel, r.vm_id)).status == VM_READY
        repeat = (await cancel(channel, job.id)).failover_job  # a cancelled job is returned as it is
        assert repeat.status == CANCELLED and repeat.revision == done.revision
        await r.stream.close()


async def test_live_failover_cancelled_during_its_final_sync_stops_at_once(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        vm = await get_vm(channel, r.vm_id)
        job = await start_failover(channel, r.vm_id, LIVE)
        await answer_power(r.stream, "power_off", vm.vm_uuid)
        start = (await r.stream.recv_until("command", timeout=20)).command.start_replication
        sync_id = start.job_id
        await r.stream.send(event=stream_pb2.JobEvent(job_id=sync_id, sequence=1, started=stream_pb2.JobStarted()))
        await r.stream.recv_until("ack", timeout=20, job_id=sync_id, sequence=1)

        stopped = (await cancel(channel, job.id)).failover_job
        assert stopped.status == CANCELLED, stopped
        assert {s.name: s.status for s in stopped.steps}["final_sync"] == failover_pb2.STEP_STATUS_CANCELLED
        assert "replicate again" in stopped.outcome and "source VM is powered off" in stopped.outcome
        # the sync is cancelled through the appliance like any replication job
        cancel_command = (await r.stream.recv_until("command", timeout=20)).command
        assert cancel_command.cancel_job.job_id == sync_id
        await r.stream.send(
            event=stream_pb2.JobEvent(job_id=sync_id, sequence=2, cancelled=stream_pb2.JobCancelled(detail="stop"))
        )
        await r.stream.recv_until("ack", timeout=20, job_id=sync_id, sequence=2)
        sync = (await jobs(channel).GetJob(job_pb2.GetJobRequest(id=sync_id))).job.replication_job
        assert sync.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLED
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP

        rollback = (
            await failover_stub(channel).RollbackFailover(failover_pb2.RollbackFailoverRequest(vm_context_id=r.vm_id))
        ).job
        undone = await wait_job(oma, channel, rollback.id)
        assert undone.status == COMPLETED, undone
        assert "left powered off" in undone.outcome and "replicate again" in undone.outcome
        vm_after = await get_vm(channel, r.vm_id)
        assert vm_after.status == vm_context_pb2.VM_CONTEXT_STATUS_FAILED  # the replicas are between two change ids
        await r.stream.close()


async def until_step(channel: grpc.aio.Channel, job_id: str, step: str) -> None:
    """Until the job's current step is `step` (read through the API)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (await get_job(channel, job_id)).current_step != step:
        assert loop.time() < deadline, f"job {job_id} never reached step {step}"
        await asyncio.sleep(0.02)


async def test_test_failover_cancelled_while_deploying_stops_after_the_deploy(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        before = world(sim)
        hold = sim.state.faults.hold_job("deployVirtualMachine")
        job = await start_failover(channel, r.vm_id, TEST)
        await asyncio.wait_for(hold.reached.wait(), 20)  # CloudStack is deploying the test VM now
        requested = (await cancel(channel, job.id)).failover_job
        assert requested.status == failover_pb2.FAILOVER_JOB_STATUS_RUNNING and requested.cancel_requested
        assert requested.current_step == "deploy_vm"
        hold.release.set()
        done = await wait_job(oma, channel, job.id)
        assert done.status == CANCELLED, done
        steps = {s.name: s.status for s in done.steps}
        assert steps["deploy_vm"] == failover_pb2.STEP_STATUS_COMPLETED  # its VM is recorded: cleanup finds it
        assert steps["attach_volumes"] == failover_pb2.STEP_STATUS_PENDING
        assert done.target_vm_id in sim.state.vms
        assert "run CleanupFailover" in done.outcome
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP
        cleaned = await wait_job(oma, channel, (await cleanup(channel, r.vm_id)).id)
        assert cleaned.status == COMPLETED, cleaned
        assert world(sim) == before and (await get_vm(channel, r.vm_id)).status == VM_READY
        await r.stream.close()


async def test_test_failover_cancelled_while_snapshotting_stops_at_once(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        before = world(sim)
        hold = sim.state.faults.hold_job("createSnapshot")
        job = await start_failover(channel, r.vm_id, TEST)
        await asyncio.wait_for(hold.reached.wait(), 20)  # a snapshot is being taken
        stopped = (await cancel(channel, job.id)).failover_job
        assert stopped.status == CANCELLED, stopped  # a wait is stopped at once
        assert {s.name: s.status for s in stopped.steps}["snapshot_volumes"] == failover_pb2.STEP_STATUS_CANCELLED
        entries = await log_of(channel, job.id)
        snapshot_entry = next(e for e in entries if e.step == "snapshot_volumes")
        assert snapshot_entry.status == job_pb2.JOB_LOG_STATUS_FAILED and "cancelled" in snapshot_entry.message
        assert (await get_vm(channel, r.vm_id)).status == VM_CLEANUP
        hold.release.set()  # CloudStack finishes the snapshot anyway; cleanup finds it by its name and deletes it
        cleaned = await wait_job(oma, channel, (await cleanup(channel, r.vm_id)).id)
        assert cleaned.status == COMPLETED, cleaned
        assert world(sim) == before and (await get_vm(channel, r.vm_id)).status == VM_READY
        code, reason, _ = await refused(jobs(channel).CancelJob(job_pb2.CancelJobRequest(id=cleaned.id)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANCEL_NOT_SAFE")
        await r.stream.close()


async def test_source_power_jobs(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        vm = await get_vm(channel, r.vm_id)
        vms = vm_grpc.VmContextServiceStub(channel)

        off = (await vms.PowerOffSourceVm(vm_context_pb2.PowerOffSourceVmRequest(vm_context_id=r.vm_id))).job
        assert off.kind == failover_pb2.FAILOVER_JOB_KIND_POWER_OFF_SOURCE
        assert [s.name for s in off.steps] == ["power_off_source"]
        await answer_power(r.stream, "power_off", vm.vm_uuid)
        done = await wait_job(oma, channel, off.id)
        assert done.status == COMPLETED and done.outcome == "the source VM is powered off", done
        log = await log_of(channel, off.id)
        power = [e for e in log if e.step == "power_off"]
        assert power and power[0].status == job_pb2.JOB_LOG_STATUS_COMPLETED and vm.vm_uuid in power[0].message
        assert (await get_vm(channel, r.vm_id)).status == VM_READY  # a power job leaves the VM context alone
        code, reason, details = await refused(jobs(channel).CancelJob(job_pb2.CancelJobRequest(id=off.id)))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_CANCELLABLE") and "completed" in details

        # idempotent with request_id; found by GetJob and ListJobs like any job
        request = vm_context_pb2.PowerOnSourceVmRequest(vm_context_id=r.vm_id, request_id="power-on-1")
        on = (await vms.PowerOnSourceVm(request)).job
        assert (await vms.PowerOnSourceVm(request)).job.id == on.id
        await answer_power(r.stream, "power_on", vm.vm_uuid)
        assert (await wait_job(oma, channel, on.id)).outcome == "the source VM is powered on"
        found = (await jobs(channel).GetJob(job_pb2.GetJobRequest(id=on.id))).job
        assert found.failover_job.kind == failover_pb2.FAILOVER_JOB_KIND_POWER_ON_SOURCE
        listed = (await jobs(channel).ListJobs(job_pb2.ListJobsRequest(vm_context_id=r.vm_id))).jobs
        ids = [j.failover_job.id or j.replication_job.id for j in listed]
        assert ids[:2] == [on.id, off.id] and listed[-1].WhichOneof("job") == "replication_job"

        # an appliance that is not connected cannot be asked
        await r.stream.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while oma.app.hub.connected(r.enrolled.appliance_id):
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        code, reason, details = await refused(
            vms.PowerOffSourceVm(vm_context_pb2.PowerOffSourceVmRequest(vm_context_id=r.vm_id))
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "APPLIANCE_DISCONNECTED") and "reconnect" in details
        code, reason, _ = await refused(
            vms.PowerOnSourceVm(vm_context_pb2.PowerOnSourceVmRequest(vm_context_id="no-such-vm"))
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VM_CONTEXT_NOT_FOUND")


async def test_one_view_of_jobs(oma: OmaServer, tmp_path: Path) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        failover = await wait_job(oma, channel, (await start_failover(channel, r.vm_id, TEST)).id)
        listed = (await jobs(channel).ListJobs(job_pb2.ListJobsRequest(vm_context_id=r.vm_id))).jobs
        kinds = [j.WhichOneof("job") for j in listed]
        assert kinds == ["failover_job", "replication_job"]
        replication_id = listed[1].replication_job.id

        # a page at a time, newest first, every kind
        first = await jobs(channel).ListJobs(job_pb2.ListJobsRequest(page_size=1))
        second = await jobs(channel).ListJobs(job_pb2.ListJobsRequest(page_size=1, page_token=first.next_page_token))
        assert first.jobs[0].failover_job.id == failover.id and second.jobs[0].replication_job.id == replication_id
        assert second.next_page_token == ""
        open_only = await jobs(channel).ListJobs(job_pb2.ListJobsRequest(open_only=True))
        assert list(open_only.jobs) == []

        # the wrong kind's Get names what the id is
        code, reason, details = await refused(
            replication_pb2_grpc.ReplicationServiceStub(channel).GetReplicationJob(
                replication_pb2.GetReplicationJobRequest(id=failover.id)
            )
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
        assert f"job {failover.id} is a test job, not a replication job" in details and "GetJob" in details
        code, _, details = await refused(
            failover_stub(channel).GetFailoverJob(failover_pb2.GetFailoverJobRequest(id=replication_id))
        )
        assert code == grpc.StatusCode.NOT_FOUND and "is a replication job, not a failover job" in details
        assert (await get_job(channel, failover.id)).id == failover.id
        code, reason, details = await refused(jobs(channel).GetJob(job_pb2.GetJobRequest(id="no-such-job")))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND") and "ListJobs" in details

        # listing the jobs of a VM that does not exist is NOT_FOUND, not an empty list
        for call in (
            jobs(channel).ListJobs(job_pb2.ListJobsRequest(vm_context_id="no-such-vm")),
            replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
                replication_pb2.ListReplicationJobsRequest(vm_context_id="no-such-vm")
            ),
            failover_stub(channel).ListFailoverJobs(failover_pb2.ListFailoverJobsRequest(vm_context_id="no-such-vm")),
        ):
            code, reason, details = await refused(call)
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "VM_CONTEXT_NOT_FOUND") and "no-such-vm" in details
        await r.stream.close()
