"""One OMA of several `oma-server` processes on one PostgreSQL, with a real cloud and the reference agent: the world
of the multi-process tests (tests/cluster/test_agent_moves.py).

Every process has its own data directory and ports and the same CA (copied from the first before the others start:
clients and appliances trust one certificate), the admin token of the shared database, and the one
`oma-cloudstack-sim` (one cloud, one OMA VM for all). The processes' fallback polling is 60 s, so a command that
reaches the agent through another process came through LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.cloudstack.sim_seed import DEFAULT_SEED
from oma_server.security.ca import CA_CERT_FILE, CA_KEY_FILE
from oma_server.security.tokens import ADMIN_TOKEN_FILE
from tests.clients import ca_file
from tests.conftest import VENV_BIN
from tests.harness import consistency
from tests.harness.oma_process import OmaProcess
from tests.harness.operator import Operator
from tests.harness.victims import AgentProcess, CloudStackProcess

DISKS_MIB = (24, 8)
COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
OMA_FLAGS = ("--progress-flush-interval", "0.1", "--heartbeat-interval", "2", "--cluster-poll-interval", "60")


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> float:
    """Seconds until `check()` is true (fails after `timeout`)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@dataclass
class Deployment:
    root: Path
    database_url: str
    cloud: CloudStackProcess
    processes: list[OmaProcess] = field(default_factory=list)
    agent: AgentProcess | None = None
    appliance_id: str = ""
    vm_id: str = ""

    def add_process(self, *flags: str) -> OmaProcess:
        """Start one more `oma-server` process of this OMA."""
        oma = OmaProcess(
            self.root / f"oma-{len(self.processes)}",
            self.database_url,
            "--cloudstack", self.cloud.url, "--device-root", str(self.cloud.device_root),
            "--sys-root", str(self.cloud.sys_root), *OMA_FLAGS, *flags,
            env=self.cloud.oma_environment(),
        )  # fmt: skip
        if self.processes:
            first = self.processes[0].data_dir
            tls = oma.data_dir / "tls"
            tls.mkdir(parents=True, mode=0o700)
            for name in (CA_CERT_FILE, CA_KEY_FILE):
                shutil.copy2(first / "tls" / name, tls / name)
            shutil.copy2(first / ADMIN_TOKEN_FILE, oma.data_dir / ADMIN_TOKEN_FILE)
        oma.start()
        self.processes.append(oma)
        return oma

    async def start_agent(self, streams_to: list[OmaProcess], rate_mib: int = 8) -> None:
        """A VM of two disks in the agent's fake vCenter, the agent enrolled and dialing `streams_to` in turn,
        copying at `rate_mib` MiB/s at most."""
        vcenter = self.root / "vcenter"
        sizes = [a for mib in DISKS_MIB for a in ("--disk-mib", str(mib))]
        create = [str(VENV_BIN / "vma-agent"), "create-vm", "--vcenter-dir", str(vcenter), "--name", "moving"]
        await asyncio.to_thread(subprocess.run, [*create, "--seed", "18", *sizes], check=True, capture_output=True)
        async with self.processes[0].channel() as channel:
            enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
                appliance_pb2.EnrollApplianceRequest(name="vma-moving")
            )
        self.appliance_id = enrolled.appliance.id
        credential = self.root / "vma-credential"
        credential.write_text(enrolled.credential)
        credential.chmod(0o600)
        agent_ca = self.root / "oma-ca.crt"
        shutil.copyfile(ca_file(self.processes[0].data_dir), agent_ca)
        self.agent = AgentProcess(
            ",".join(p.address for p in streams_to), self.appliance_id, credential, vcenter, self.root / "vma",
            self.root / "vma-agent.log", "--report-interval", "0.1", "--max-rate-mib", str(rate_mib),
            "--ca", str(agent_ca),
        )  # fmt: skip
        self.agent.start()
        await until("the agent streams to its first OMA address", lambda: self.streams_to(streams_to[0]), 30)

    async def streams_to(self, oma: OmaProcess) -> bool:
        """Whether the appliance's stream is recorded as held by `oma` (read through a live process)."""
        async with self.live().channel() as channel:
            request = appliance_pb2.GetApplianceRequest(id=self.appliance_id)
            found = (await appliance_pb2_grpc.ApplianceServiceStub(channel).GetAppliance(request)).appliance
        assert oma.proc is not None
        return found.connection_state == appliance_pb2.CONNECTION_STATE_CONNECTED and (
            found.connected_to == f"{socket.gethostname()}:{oma.proc.pid}"
        )

    def live(self) -> OmaProcess:
        return next(p for p in self.processes if p.proc is not None and p.proc.poll() is None)

    async def discover(self, on: OmaProcess) -> None:
        """Discovery (a command to the appliance, wherever its stream is) through `on`: the VM registered."""
        async with on.channel() as channel:
            found = await vm_context_pb2_grpc.VmContextServiceStub(channel).DiscoverVms(
                vm_context_pb2.DiscoverVmsRequest(appliance_id=self.appliance_id, name_filter="moving", register=True)
            )
        self.vm_id = found.vm_contexts[0].id

    async def discover_and_replicate(self, on: OmaProcess) -> str:
        """Discovery and an initial replication started on `on`; the job id."""
        await self.discover(on)
        async with on.channel() as channel:
            request = replication_pb2.StartReplicationRequest(vm_context_id=self.vm_id)
            return str((await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(request)).job.id)

    async def job(self, job_id: str) -> replication_pb2.ReplicationJob:
        async with self.live().channel() as channel:
            request = replication_pb2.GetReplicationJobRequest(id=job_id)
            return (await replication_pb2_grpc.ReplicationServiceStub(channel).GetReplicationJob(request)).job

    async def jobs(self) -> list[replication_pb2.ReplicationJob]:
        """The VM's replication jobs, newest first."""
        async with self.live().channel() as channel:
            request = replication_pb2.ListReplicationJobsRequest(vm_context_id=self.vm_id)
            return list((await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(request)).jobs)

    async def log_of(self, job_id: str, step: str) -> list[str]:
        """The job-log messages of one step of a job."""
        async with self.live().channel() as channel:
            request = job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=200)
            entries = (await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(request)).entries
        return [e.message for e in entries if e.step == step]

    async def vm(self) -> vm_context_pb2.VmContext:
        async with self.live().channel() as channel:
            request = vm_context_pb2.GetVmContextRequest(id=self.vm_id)
            return (await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(request)).vm_context

    async def consistent(self, home: OmaProcess) -> list[str]:
        """What differs from a consistent end (consistency.py: every replica byte-identical to its source, no job
        open, nothing left attached or exported), looked at through `home`, the process that attached the replicas."""
        operator = Operator(home.endpoint(), self.vm_id, deadline=time.monotonic() + 120)
        async with operator:
            world = consistency.World(
                operator, "moving", self.root / "vcenter", self.cloud.url, self.cloud.keys, self.cloud.state_dir,
                self.cloud.oma_vm_id, home.nbd_port,
            )  # fmt: skip
            return await consistency.settled(world, within_s=60)

    def stop(self) -> None:
        for proc in (self.agent, *self.processes, self.cloud):
            if proc is not None:
                proc.stop()


class KillMissed(AssertionError):
    """The harness, not the OMA: the kill came after the moment it was meant for."""


# ---- the scenarios (tests/cluster/test_agent_moves.py runs each once; tests/cluster/soak.py many times, seeded) ----
async def completed_and_verified(world: Deployment, job_id: str, home: OmaProcess, *, initial: bool = True) -> None:
    """The job completes, the world ends consistent (seen through `home`), and every replica was read back after
    this job (the whole disk after an initial copy)."""

    async def completed() -> bool:
        return (await world.job(job_id)).status == COMPLETED

    await until("the job completes", completed, 120)
    problems = await world.consistent(home)
    assert problems == [], problems
    disks = (await world.vm()).disks
    assert all(d.verification.job_id == job_id for d in disks), [d.verification for d in disks]
    assert not initial or all(d.verification.blocks_read == d.verification.block_count > 0 for d in disks)


async def stream_holder_killed(world: Deployment, share: float = 0.25) -> None:
    """Three processes; the replication is started on the first, the agent streams to the second, which is
    SIGKILLed once `share` of the copy is done: the stream moves to the third and the job completes there."""
    home = await asyncio.to_thread(world.add_process)
    holder = await asyncio.to_thread(world.add_process)
    survivor = await asyncio.to_thread(world.add_process)
    await world.start_agent([holder, survivor])
    job_id = await world.discover_and_replicate(on=home)  # discovery and the start reach the agent via `holder`

    async def copied() -> bool:
        seen = await world.job(job_id)
        return seen.bytes_total > 0 and seen.bytes_done >= seen.bytes_total * share

    await until(f"{share:.0%} of the copy is done", copied)
    seen = await world.job(job_id)
    if seen.bytes_done >= seen.bytes_total:
        raise KillMissed(f"the copy ended before the kill at {share:.0%}")
    await asyncio.to_thread(holder.kill)
    # The database frees a dead holder's lock as its connection closes; the agent dials its next address at once.
    await until("the agent streams to the survivor", lambda: world.streams_to(survivor), 15)
    await completed_and_verified(world, job_id, home)


async def home_process_killed(world: Deployment, share: float = 0.25) -> None:
    """Two processes; the replication is started on the first, which attaches and exports the replicas; the agent
    streams to the second. The first is SIGKILLed with its nbdkit (a host that dies) once `share` of the copy is
    done: the second's janitor takes the replicas over, serves their exports and names the new address to the
    agent, whose copies reconnect there and resume; the job completes, read back and released by the second."""
    home = await asyncio.to_thread(world.add_process)
    survivor = await asyncio.to_thread(world.add_process, "--janitor-interval", "0.5")
    await world.start_agent([survivor])
    job_id = await world.discover_and_replicate(on=home)

    async def copied() -> bool:
        seen = await world.job(job_id)
        return seen.bytes_total > 0 and seen.bytes_done >= seen.bytes_total * share

    await until(f"{share:.0%} of the copy is done", copied)
    await asyncio.to_thread(home.kill)
    at_kill = await world.job(job_id)
    copying = {d.disk_id for d in at_kill.disks if not d.completed}
    if not copying:
        raise KillMissed(f"the copy ended before the kill at {share:.0%}")
    await completed_and_verified(world, job_id, survivor)
    assert await world.log_of(job_id, "take_over"), "the survivor did not record taking the replicas over"
    # Copies moved to the survivor's NBD server: only disks still copying at the kill (one whose completion was on
    # its way at that instant needed no move), those done before keep their address.
    moved = {d.disk_id for d in (await world.job(job_id)).disks if f":{survivor.nbd_port}/" in d.nbd_uri}
    assert moved and moved <= copying, (moved, copying)
    assert len(await world.log_of(job_id, "release_volumes")) == 1, await world.log_of(job_id, "release_volumes")


async def scheduler_leader_killed(world: Deployment) -> None:
    """Two processes; the first (started first: it leads the scheduler) runs a schedule of the VM every 3 s. Once a
    scheduled sync has completed, the leader is SIGKILLed: the second takes the lead at its next tick and the
    schedule's next syncs start there and complete."""
    fast = ("--schedule-min-interval", "3", "--scheduler-tick", "0.5", "--janitor-interval", "0.5")
    leader = await asyncio.to_thread(world.add_process, *fast)
    follower = await asyncio.to_thread(world.add_process, *fast)
    await world.start_agent([follower], rate_mib=64)
    await world.discover(follower)
    async with follower.channel() as channel:
        spec = schedule_pb2.ScheduleSpec(
            target=schedule_pb2.ScheduleTarget(kind=schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT, id=world.vm_id),
            interval_seconds=3,
            rpo_target_seconds=3600,
        )
        schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
        schedule = (await schedules.CreateSchedule(schedule_pb2.CreateScheduleRequest(spec=spec))).schedule

    async def one_completed() -> bool:
        return any(j.status == COMPLETED for j in await world.jobs())

    await until("a scheduled sync completes under the first leader", one_completed, 90)
    await asyncio.to_thread(leader.kill)
    before = {j.id for j in await world.jobs()}

    async def a_new_one_completed() -> bool:
        return any(j.status == COMPLETED and j.id not in before for j in await world.jobs())

    await until("a sync the new leader started completes", a_new_one_completed, 60)
    async with follower.channel() as channel:  # no next sync: the world can settle
        request = schedule_pb2.PauseScheduleRequest(id=schedule.id)
        await schedule_pb2_grpc.ScheduleServiceStub(channel).PauseSchedule(request)
    problems = await world.consistent(follower)
    assert problems == [], problems


async def provisioning_process_killed(world: Deployment) -> None:
    """Two processes; the replication is started on the first, which is SIGKILLed once provisioning has begun (the
    cloud's async jobs take a second each): the second's janitor provisions it and the job completes."""
    starter = await asyncio.to_thread(world.add_process)
    taker = await asyncio.to_thread(world.add_process, "--janitor-interval", "0.5")
    await world.start_agent([taker])
    job_id = await world.discover_and_replicate(on=starter)

    async def provisioning_begun() -> bool:
        return bool(await world.log_of(job_id, "create_volume"))

    await until("provisioning has begun in the starting process", provisioning_begun, 30)
    await asyncio.to_thread(starter.kill)
    await completed_and_verified(world, job_id, taker)


async def process_started_mid_copy(world: Deployment) -> None:
    """One process replicates; a second starts while the copy runs: its start-up reconciliation leaves the first
    one's attached replicas alone (it neither detaches them nor counts their slots), and the job completes."""
    home = await asyncio.to_thread(world.add_process)
    await world.start_agent([home], rate_mib=2)  # a copy of ~10 s: the second process is up long before its end
    job_id = await world.discover_and_replicate(on=home)

    async def copying() -> bool:
        seen = await world.job(job_id)
        return seen.bytes_total > 0 and seen.bytes_done > 0

    await until("the copy has begun", copying)
    late = await asyncio.to_thread(world.add_process)
    seen = await world.job(job_id)
    if seen.bytes_done >= seen.bytes_total:
        raise KillMissed("the copy ended before the second process had started")
    await completed_and_verified(world, job_id, home)
    # The replicas were read back and released once, by the process that attached them.
    assert len(await world.log_of(job_id, "release_volumes")) == 1, await world.log_of(job_id, "release_volumes")
    # The late process counts no slot for the first one's job: its own next sync, released, frees every slot.
    async with late.channel() as channel:
        request = replication_pb2.StartReplicationRequest(vm_context_id=world.vm_id)
        again = (await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(request)).job.id
    await completed_and_verified(world, again, late, initial=False)
    released = await world.log_of(again, "release_volumes")
    free = [re.search(r"(\d+) of (\d+) slots free", m) for m in released]
    assert free and free[-1] is not None and free[-1].group(1) == free[-1].group(2), released


def slow_cloud_seed(path: Path, job_delay_s: float = 1.0) -> Path:
    """A simulator seed whose async jobs take `job_delay_s` (so a kill lands inside provisioning)."""
    path.write_text(json.dumps({**DEFAULT_SEED, "job_delay_s": job_delay_s}))
    return path


async def deployment(root: Path, database_url: str, seed: Path | None = None) -> Deployment:
    cloud = CloudStackProcess(root / "cloudstack", root / "cloudstack.log", seed)
    await asyncio.to_thread(cloud.start)
    return Deployment(root, database_url, cloud)
