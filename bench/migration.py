"""`python -m bench.migration`: a warm migration of many VMs through an OMA VM that holds few data disks (issue 20).

Real parts in one process, as the tests run them: the OMA server (SQLite, the CloudStack simulator over HTTP seeded
with a KVM hypervisor-capabilities row of `--slots` data volumes per VM, a real nbd-server), the reference VMA agent
(its "vCenter" a directory of raw images) over a real gRPC stream, every step driven through the public API:

1. N VMs of D disks discovered and registered (DiscoverVms), a default network mapping;
2. initial replication of every VM at once; 3. guest writes, incremental replication of every VM at once;
4. live failover of every VM at once (power off, final sync — ahead of the queue — snapshots, deploy, attach, start);
5. every replica compared byte for byte with its source disk; every target VM Running in CloudStack.

A replication job that fails is retried (RetryReplicationJob, as an operator would, up to 2 times) and counted
(`jobs_failed`, `jobs_retried`, the reasons printed): on this 2-core machine the jobs that fail do so when nbd-server
refuses or resets the appliance's connection while the OMA restarts it for another export (oma_server/nbd).

While it runs, the number of replicas attached to the OMA VM is sampled from CloudStack every 10 ms (`peak_attached`:
it must never pass the slots). Queue waits come from each job's log (`queue` entries). The peer is the same
migration with a slot for every disk (`--peer-slots`, default N x D: nobody queues), run in the same invocation:
`ratio_to_unbounded` = total time with the limit / total time without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from loguru import logger

from bench._common import machine_info, percentile, print_table, write_json
from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import JobLog
from oma_server.demo import same_bytes
from oma_server.ports import free_port
from oma_server.server import OmaServer
from oma_server.settings import Settings
from oma_server.storage.volumes import VOLUME_NAME_PREFIX
from vma_client_stubs.agent.agent import Agent
from vma_client_stubs.agent.vcenter import FakeVCenter
from vma_client_stubs.connection import aio_channel

MIB = 1 << 20
LIVE = failover_pb2.FAILOVER_JOB_KIND_LIVE
#: how often a failed replication job is retried before the VM is left out of the cutover
RETRIES = 2


class MigrationFailed(Exception):
    pass


class Run:
    """One migration: the OMA, the agent, the VMs, and what was measured."""

    def __init__(self, root: Path, *, vms: int, disks: int, disk_mib: int, slots: int, changed_percent: float) -> None:
        self.root = root
        self.n_vms, self.n_disks, self.disk_mib, self.slots = vms, disks, disk_mib, slots
        self.changed_percent = changed_percent
        seed = {
            "hypervisor_capabilities": [
                {"hypervisor": "KVM", "hypervisorversion": "default", "maxdatavolumeslimit": slots}
            ]
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "seed.json").write_text(json.dumps(seed))
        self.settings = Settings(
            listen="127.0.0.1:0",
            data_dir=root / "oma",
            nbd_listen=f"127.0.0.1:{free_port()}",
            appliance_listen="127.0.0.1:0",
            allow_credential_hello=True,  # its VMAs hello with their enrollment credential
            cloudstack_sim_seed=root / "seed.json",
            progress_flush_interval_s=0.2,
            heartbeat_interval_s=5.0,
            shutdown_grace_s=1.0,
        )
        self.server = OmaServer(App(self.settings))
        self.vcenter = FakeVCenter(root / "vcenter")
        self.peak_attached = 0
        self.phases: dict[str, float] = {}
        self.failures: list[str] = []
        self.retried = 0

    @property
    def app(self) -> App:
        return self.server.app

    def attached_now(self) -> int:
        sim = self.app.simulator
        assert sim is not None
        return sum(
            1
            for v in sim.state.volumes.values()
            if v.get("virtualmachineid") == sim.oma_vm_id and v["name"].startswith(VOLUME_NAME_PREFIX)
        )

    async def sample(self) -> None:
        while True:
            self.peak_attached = max(self.peak_attached, self.attached_now())
            await asyncio.sleep(0.01)

    async def replicate_all(self, channel: grpc.aio.Channel, vm_ids: list[str], phase: str) -> list[str]:
        stub = replication_pb2_grpc.ReplicationServiceStub(channel)
        started = time.monotonic()
        jobs = [
            (await stub.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=vm))).job.id
            for vm in vm_ids
        ]
        done = []
        for job_id in jobs:
            done.append(await self.retried_until_done(stub, job_id, phase))
        self.phases[phase] = time.monotonic() - started
        return jobs + [j for j in done if j not in jobs]

    async def retried_until_done(self, stub: Any, job_id: str, phase: str) -> str:
        """Wait for the job; a failed one is retried (RetryReplicationJob, as an operator would) up to RETRIES times;
        each failure is recorded. Returns the id of the last job."""
        for attempt in range(RETRIES + 1):
            job = await self.wait_final(job_id)
            assert self.app.workflow is not None
            await self.app.workflow.settled(job_id)
            if job.status.value == "completed":
                return job_id
            self.failures.append(f"{phase} job {job_id} {job.status.value}: {job.error_message}")
            if attempt < RETRIES:
                self.retried += 1
                reply = await stub.RetryReplicationJob(replication_pb2.RetryReplicationJobRequest(id=job_id))
                job_id = reply.job.id
        return job_id

    async def wait_final(self, job_id: str, timeout: float = 600) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.app.jobs.get(job_id)
            if job.final:
                return job
            if time.monotonic() > deadline:
                raise MigrationFailed(f"job {job_id} still {job.status.value} ({job.current_operation})")
            await asyncio.sleep(0.05)

    async def cut_over(self, channel: grpc.aio.Channel, vm_ids: list[str]) -> list[str]:
        stub = failover_pb2_grpc.FailoverServiceStub(channel)
        started = time.monotonic()
        jobs = []
        for vm in vm_ids:
            try:
                reply = await stub.StartFailover(failover_pb2.StartFailoverRequest(vm_context_id=vm, kind=LIVE))
            except grpc.aio.AioRpcError as exc:
                self.failures.append(f"live failover of {vm} refused: {exc.details()}")
                continue
            jobs.append(reply.job.id)
        assert self.app.failover is not None
        for job_id in jobs:
            job = await self.app.failover.wait(job_id, 600)
            if job.status.value != "completed":
                self.failures.append(f"live failover {job_id} {job.status.value}: {job.error_message}")
        self.phases["cutover"] = time.monotonic() - started
        return jobs

    def verify(self, vms: list[vm_context_pb2.VmContext]) -> int:
        """Every replica byte-identical to its source disk; returns how many were checked."""
        sim = self.app.simulator
        assert sim is not None
        checked = 0
        for vm in vms:
            for disk in vm.disks:
                row = next(
                    v for v in sim.state.volumes.values() if v["name"] == f"{VOLUME_NAME_PREFIX}{disk.volume_id}"
                )
                if not same_bytes(self.vcenter.disk_path(vm.vm_uuid, disk.key), sim.state.volume_file(row["id"])):
                    self.failures.append(f"disk {disk.key} of {vm.name} differs from its replica")
                checked += 1
        return checked

    def queue_waits(self, job_ids: list[str]) -> list[float]:
        """Seconds each job waited for slots, from its job log (0 for a job that never queued)."""
        rows = list(JobLog.select().where(JobLog.job_id.in_(job_ids), JobLog.step == "queue").order_by(JobLog.id))
        first: dict[str, Any] = {}
        waits = dict.fromkeys(job_ids, 0.0)
        for row in rows:
            if row.job_id not in first:
                first[row.job_id] = row.started_at
            elif "free after" in row.message:
                waits[row.job_id] = (row.started_at - first[row.job_id]).total_seconds()
        return list(waits.values())

    async def connected(self, channel: grpc.aio.Channel, appliance_id: str, timeout: float = 30) -> None:
        stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
        deadline = time.monotonic() + timeout
        while (
            await stub.GetAppliance(appliance_pb2.GetApplianceRequest(id=appliance_id))
        ).appliance.connection_state != appliance_pb2.CONNECTION_STATE_CONNECTED:
            if time.monotonic() > deadline:
                raise MigrationFailed("the agent did not connect")
            await asyncio.sleep(0.05)

    async def run(self) -> dict[str, Any]:
        await self.server.start()
        sampler = asyncio.create_task(self.sample())
        channel = aio_channel(self.server.local_endpoint())
        agent: Agent | None = None
        try:
            enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
                appliance_pb2.EnrollApplianceRequest(name="bench-vma")
            )
            for i in range(self.n_vms):
                self.vcenter.create_vm(f"vm-{i:03d}", [self.disk_mib * MIB] * self.n_disks, seed=i)
            agent = Agent(
                oma=self.server.local_endpoint(),
                appliance_id=enrolled.appliance.id,
                credential=enrolled.credential,
                vcenter=self.vcenter,
                state_dir=self.root / "agent",
                report_interval_s=0.5,
                fsync=False,
            )
            await agent.start()
            await self.connected(channel, enrolled.appliance.id)
            vms_stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
            found = await vms_stub.DiscoverVms(
                vm_context_pb2.DiscoverVmsRequest(appliance_id=enrolled.appliance.id, name_filter="vm-", register=True)
            )
            vm_ids = sorted(v.id for v in found.vm_contexts)
            if len(vm_ids) != self.n_vms:
                raise MigrationFailed(f"discovered {len(vm_ids)} VMs, expected {self.n_vms}")
            sim = self.app.simulator
            assert sim is not None
            await failover_pb2_grpc.NetworkMappingServiceStub(channel).CreateNetworkMapping(
                failover_pb2.CreateNetworkMappingRequest(
                    mapping=failover_pb2.NetworkMapping(
                        source_network="VM Network",
                        target_network_id=sim.state.find_by_name(sim.state.networks, "guest-net-1"),
                    )
                )
            )
            total_started = time.monotonic()
            initial = await self.replicate_all(channel, vm_ids, "initial")
            vms = [(await vms_stub.GetVmContext(vm_context_pb2.GetVmContextRequest(id=v))).vm_context for v in vm_ids]
            for vm in vms:
                self.vcenter.guest_write(vm.vm_uuid, self.changed_percent, seed=7)
            incremental = await self.replicate_all(channel, vm_ids, "incremental")
            cutover = await self.cut_over(channel, vm_ids)
            total = time.monotonic() - total_started
            vms = [(await vms_stub.GetVmContext(vm_context_pb2.GetVmContextRequest(id=v))).vm_context for v in vm_ids]
            live = sum(1 for vm in vms if vm.status == vm_context_pb2.VM_CONTEXT_STATUS_FAILED_OVER_LIVE)
            running = sum(
                1 for row in sim.state.vms.values() if row["id"] != sim.oma_vm_id and row["state"] == "Running"
            )
            checked = self.verify(vms)
            final_syncs = [
                str(row.params.get("final_sync_job_id", ""))
                for row in [await self.app.failover_jobs.get(j) for j in cutover]
            ]
            waits = await self.app.db.run(self.queue_waits, initial + incremental + final_syncs)
            assert self.app.attachments is not None
            return {
                "vms": self.n_vms,
                "disks_per_vm": self.n_disks,
                "disk_mib": self.disk_mib,
                "slots": self.slots,
                "oma_capacity": self.app.attachments.pool.capacity,
                "peak_attached": self.peak_attached,
                "pool_peak": self.app.attachments.pool.peak,
                "initial_s": round(self.phases["initial"], 2),
                "incremental_s": round(self.phases["incremental"], 2),
                "cutover_s": round(self.phases["cutover"], 2),
                "total_s": round(total, 2),
                "jobs_that_waited": sum(1 for w in waits if w > 0),
                "jobs_failed": len(self.failures),
                "jobs_retried": self.retried,
                "queue_wait_p50_s": round(percentile(waits, 50), 2),
                "queue_wait_p99_s": round(percentile(waits, 99), 2),
                "queue_wait_max_s": round(max(waits, default=0.0), 2),
                "failed_over_live": live,
                "target_vms_running": running,
                "replicas_checked": checked,
                "nbd_server_restarts": self.app.nbd.restarts,
                "attached_at_end": self.attached_now(),
                "failures": self.failures,
            }
        finally:
            sampler.cancel()
            if agent is not None:
                await agent.stop()
            await channel.close()
            await self.server.stop(grace=0.5)


async def migrate(root: Path, *, vms: int, disks: int, disk_mib: int, slots: int, changed_percent: float = 5) -> dict:
    return await Run(root, vms=vms, disks=disks, disk_mib=disk_mib, slots=slots, changed_percent=changed_percent).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migration", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--disks", type=int, default=2, help="disks per VM")
    parser.add_argument("--disk-mib", type=int, default=4)
    parser.add_argument("--slots", type=int, default=14, help="data volumes the OMA VM may hold")
    parser.add_argument("--peer-slots", type=int, default=0, help="slots of the peer run (default: one per disk)")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    peer_slots = args.peer_slots or args.vms * args.disks
    with tempfile.TemporaryDirectory(prefix="oma-bench-migration-") as tmp:
        limited = asyncio.run(
            migrate(Path(tmp) / "limited", vms=args.vms, disks=args.disks, disk_mib=args.disk_mib, slots=args.slots)
        )
        peer = None
        if not args.skip_peer:
            peer = asyncio.run(
                migrate(Path(tmp) / "peer", vms=args.vms, disks=args.disks, disk_mib=args.disk_mib, slots=peer_slots)
            )
    rows = [(k, limited[k], peer[k] if peer else "-") for k in limited if k != "failures"]
    result: dict[str, Any] = {"machine": machine_info(), "limited": limited, "peer": peer}
    if peer:
        result["ratio_to_unbounded"] = round(limited["total_s"] / peer["total_s"], 2)
        rows.append(("ratio_to_unbounded", result["ratio_to_unbounded"], ""))
    print_table(rows, ["figure", f"{args.slots} slots", f"{peer_slots} slots (peer)"], title="bench.migration")
    for failure in limited["failures"] + (peer["failures"] if peer else []):
        print(f"FAILURE: {failure}")
    if args.json:
        write_json(args.json, result)
    ok = limited["failed_over_live"] == args.vms and limited["peak_attached"] <= args.slots
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
