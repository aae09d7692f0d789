"""The VM context agrees with its job history after every kind of sync (issue #21).

One VM, driven through the public API by the reference agent (its "vCenter" a directory with changed block
tracking) over the in-process OMA's real NBD exports and the CloudStack simulator: initial replication, incremental,
test failover and its cleanup, a live failover with its final sync, rollback (source powered on), and a second live
failover with its final sync. After every step the VM context is held against the job history (JobService.ListJobs):

- last_completed_job_id is the newest completed replication job of the VM (a final sync included);
- each disk's change id is the one that job recorded for it, and its change-id history is one record per completed
  replication job, oldest first, never rewritten, with times inside its job and never going backwards;
- the VM's updated_at and the jobs' finished_at never go backwards, and no job is left open;
- `omactl vms show` and `omactl preflight` (real processes) name the same last completed job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from oma.v1 import (
    cloud_pb2,
    cloud_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.server import OmaServer
from tests.agent.helpers import make_agent, wait_connected
from tests.factories import enroll
from tests.failover.helpers import LIVE, TEST, VM_LIVE, VM_READY, VM_TEST
from tests.omactl.conftest import run_omactl, target_of
from vma_client_stubs.agent.vcenter import FakeVCenter

pytestmark = [pytest.mark.nbd, pytest.mark.slow]
MIB = 1 << 20
R = replication_pb2
F = failover_pb2
KIND = {
    R.REPLICATION_JOB_KIND_INITIAL: "initial",
    R.REPLICATION_JOB_KIND_INCREMENTAL: "incremental",
    R.REPLICATION_JOB_KIND_FINAL: "final",
}


def when(message: object, name: str) -> datetime:
    return getattr(message, name).ToDatetime()  # type: ignore[no-any-return]


@dataclass
class Seen:
    """What the previous check saw: nothing of it may be rewritten or go backwards."""

    vm_updated_at: datetime | None = None
    history: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # disk id → (change id, job id)
    completed: list[str] = field(default_factory=list)  # completed replication jobs, oldest first


async def finish(channel: grpc.aio.Channel, job_id: str) -> job_pb2.JobUpdate:
    """WatchJob to its end (it ends OK after the job's final state); the last update."""
    last = None
    async for reply in job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job_id)):
        last = reply.update
    assert last is not None
    return last


async def replicate(channel: grpc.aio.Channel, vm_id: str, kind: int) -> R.ReplicationJob:
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    job = (await stub.StartReplication(R.StartReplicationRequest(vm_context_id=vm_id, kind=kind))).job  # type: ignore[arg-type]
    done = (await finish(channel, job.id)).replication_job
    assert done.status == R.REPLICATION_JOB_STATUS_COMPLETED, done
    return done


async def failover_job(channel: grpc.aio.Channel, started: F.FailoverJob) -> F.FailoverJob:
    done = (await finish(channel, started.id)).failover_job
    assert done.status == F.FAILOVER_JOB_STATUS_COMPLETED, done
    return done


async def check_history(
    server: OmaServer, channel: grpc.aio.Channel, vm_id: str, seen: Seen, status: int, newest_kind: str
) -> None:
    vm = (
        await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
            vm_context_pb2.GetVmContextRequest(id=vm_id)
        )
    ).vm_context
    jobs = (
        await job_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_pb2.ListJobsRequest(vm_context_id=vm_id, page_size=1000)
        )
    ).jobs
    assert vm.status == status, vm_context_pb2.VmContextStatus.Name(vm.status)
    assert vm.active_job_id == ""
    open_jobs = (
        await job_pb2_grpc.JobServiceStub(channel).ListJobs(
            job_pb2.ListJobsRequest(vm_context_id=vm_id, open_only=True)
        )
    ).jobs
    assert list(open_jobs) == []

    replications = [j.replication_job for j in jobs if j.WhichOneof("job") == "replication_job"]
    listed = (
        await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
            R.ListReplicationJobsRequest(vm_context_id=vm_id, page_size=1000)
        )
    ).jobs
    assert [j.id for j in replications] == [j.id for j in listed]  # one view of jobs: the same jobs, same order
    completed = [j for j in replications if j.status == R.REPLICATION_JOB_STATUS_COMPLETED]
    assert completed, "no completed replication job"
    newest = completed[0]  # newest first
    assert KIND[newest.kind] == newest_kind
    oldest_first = list(reversed(completed))
    finished = [when(j, "finished_at") for j in oldest_first]
    assert finished == sorted(finished), "a newer replication job finished before an older one"
    assert [j.id for j in oldest_first][: len(seen.completed)] == seen.completed
    seen.completed = [j.id for j in oldest_first]

    # last_completed_job_id is the newest completed replication job (a final sync included)
    assert vm.last_completed_job_id == newest.id, (vm.last_completed_job_id, newest.id, newest_kind)

    # each disk's change id is the one that job recorded; the history: one record per completed job, oldest first
    recorded = {d.disk_id: d.new_change_id for d in newest.disks}
    by_id = {j.id: j for j in completed}
    assert set(recorded) == {d.id for d in vm.disks}
    for disk in vm.disks:
        assert disk.last_change_id and disk.last_change_id == recorded[disk.id], (disk.key, disk.last_change_id)
        history = [(r.change_id, r.job_id) for r in disk.change_id_history]
        assert [job for _, job in history] == seen.completed, f"disk {disk.key}: history {history}"
        assert history[-1] == (disk.last_change_id, newest.id)
        for record in disk.change_id_history:
            job = by_id[record.job_id]
            assert record.change_id == {d.disk_id: d.new_change_id for d in job.disks}[disk.id]
            assert when(job, "started_at") <= when(record, "recorded_at") <= when(job, "finished_at"), record
        times = [when(r, "recorded_at") for r in disk.change_id_history]
        assert times == sorted(times), f"disk {disk.key}: change ids recorded back in time"
        assert history[: len(seen.history.get(disk.id, []))] == seen.history.get(disk.id, []), "history rewritten"
        seen.history[disk.id] = history

    # the VM's own time moves forward and is not older than what it reports as its last completed job
    updated = when(vm, "updated_at")
    assert updated >= when(newest, "finished_at")
    if seen.vm_updated_at is not None:
        assert updated >= seen.vm_updated_at, "the VM context's updated_at went backwards"
    seen.vm_updated_at = updated

    # the operator's two views of it, from real omactl processes, agree
    address = target_of(server)
    shown = await run_omactl(address, "--json", "vms", "show", vm_id)
    assert shown.code == 0, shown
    assert json.loads(shown.out)["last_completed_job_id"] == newest.id
    for kind in ("test", "live"):
        preflight = await run_omactl(address, "--json", "preflight", vm_id, "--kind", kind)
        assert preflight.code in (0, 1), preflight
        checks = {c["name"]: c for c in json.loads(preflight.out)["checks"]}
        replication = checks["replication_completed"]
        assert replication.get("passed") is True, replication
        assert f"last replication job {newest.id} ({newest_kind}) completed" in replication["reason"], replication


async def test_vm_context_agrees_with_the_job_history_after_every_kind_of_sync(
    oma_server: OmaServer, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    vcenter = FakeVCenter(tmp_path / "vcenter")
    source = vcenter.create_vm("history-01", [8 * MIB, 4 * MIB], seed=21)
    enrolled = await enroll(channel)
    vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
    failover = failover_pb2_grpc.FailoverServiceStub(channel)
    seen = Seen()
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent"):
        await wait_connected(channel, enrolled.appliance_id)
        found = await vms.DiscoverVms(
            vm_context_pb2.DiscoverVmsRequest(
                appliance_id=enrolled.appliance_id, name_filter="history-01", register=True, timeout_seconds=30
            )
        )
        [vm] = found.vm_contexts
        networks = await cloud_pb2_grpc.CloudServiceStub(channel).ListNetworks(cloud_pb2.ListNetworksRequest())
        [network] = [n for n in networks.networks if n.name == "guest-net-1"]
        await failover_pb2_grpc.NetworkMappingServiceStub(channel).CreateNetworkMapping(
            F.CreateNetworkMappingRequest(
                mapping=F.NetworkMapping(vm_context_id=vm.id, source_network="VM Network", target_network_id=network.id)
            )
        )

        await replicate(channel, vm.id, R.REPLICATION_JOB_KIND_INITIAL)
        await check_history(oma_server, channel, vm.id, seen, VM_READY, "initial")

        vcenter.guest_write(source.uuid, 5, seed=1)
        await replicate(channel, vm.id, R.REPLICATION_JOB_KIND_INCREMENTAL)
        await check_history(oma_server, channel, vm.id, seen, VM_READY, "incremental")

        # a test failover and its cleanup copy nothing: the last completed job stays the incremental
        await failover_job(
            channel, (await failover.StartFailover(F.StartFailoverRequest(vm_context_id=vm.id, kind=TEST))).job
        )
        await check_history(oma_server, channel, vm.id, seen, VM_TEST, "incremental")
        await failover_job(channel, (await failover.CleanupFailover(F.CleanupFailoverRequest(vm_context_id=vm.id))).job)
        await check_history(oma_server, channel, vm.id, seen, VM_READY, "incremental")

        # a live failover: power-off, the final sync (the VM's last completed job now), the VM in CloudStack
        vcenter.guest_write(source.uuid, 5, seed=2)
        live = await failover_job(
            channel, (await failover.StartFailover(F.StartFailoverRequest(vm_context_id=vm.id, kind=LIVE))).job
        )
        assert vcenter.get_vm(source.uuid).power_state == "off"
        await check_history(oma_server, channel, vm.id, seen, VM_LIVE, "final")
        assert seen.completed[-1] != live.id

        # rollback with the source powered on: the replicas are as the final sync left them
        rollback = await failover.RollbackFailover(F.RollbackFailoverRequest(vm_context_id=vm.id, power_on_source=True))
        await failover_job(channel, rollback.job)
        assert vcenter.get_vm(source.uuid).power_state == "on"
        await check_history(oma_server, channel, vm.id, seen, VM_READY, "final")

        # the second live failover and its final sync: the report of the issue
        vcenter.guest_write(source.uuid, 5, seed=3)
        await failover_job(
            channel, (await failover.StartFailover(F.StartFailoverRequest(vm_context_id=vm.id, kind=LIVE))).job
        )
        await check_history(oma_server, channel, vm.id, seen, VM_LIVE, "final")
        assert len(seen.completed) == 4  # initial, incremental, two final syncs
