"""OMA-side set-up for agent tests, made through the real job store and replication service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import grpc

from oma.v1 import appliance_pb2, appliance_pb2_grpc
from oma_server.app import App
from oma_server.db.models import Disk, ReplicationJob, VmContext
from oma_server.replication.state_machine import DiskState, JobState
from oma_server.server import OmaServer
from tests.agent.nbd import NbdServer
from tests.clients import endpoint
from tests.factories import Enrolled
from tests.waiting import until
from vma_client_stubs.agent.agent import Agent
from vma_client_stubs.agent.vcenter import FakeVCenter, VirtualMachine


async def register_vm(app: App, appliance_id: str, vm: VirtualMachine) -> list[Disk]:
    """The VM context and its disks as the OMA would record them from discovery."""

    def make() -> list[Disk]:
        ctx = VmContext.create(
            appliance=appliance_id, vcenter=vm.vcenter, vm_uuid=vm.uuid, name=vm.name, moref=vm.moref
        )
        return [
            Disk.create(vm_context=ctx.id, key=d.key, capacity_bytes=d.capacity_bytes, unit_number=d.unit_number)
            for d in vm.disks
        ]

    return await app.db.tx(make)


def add_exports(nbd: NbdServer, disks: Iterable[Disk]) -> None:
    for disk in disks:
        nbd.add(disk.id, disk.capacity_bytes)


async def start_job(
    app: App,
    appliance_id: str,
    vm: VirtualMachine,
    disks: list[Disk],
    nbd: NbdServer,
    *,
    kind: str = "initial",
) -> JobState:
    """A replication job with real NBD targets, dispatched to the appliance; incremental runs send each disk's last
    recorded change id."""
    fresh = await app.db.run(lambda: {d.id: Disk.get_by_id(d.id) for d in disks})
    job = await app.jobs.create(
        vm_context_id=disks[0].vm_context_id,
        appliance_id=appliance_id,
        kind=kind,
        disks=[
            DiskState(
                disk_id=d.id,
                disk_key=d.key,
                bytes_total=d.capacity_bytes,
                mode="full" if kind == "initial" else "incremental",
                previous_change_id="" if kind == "initial" else fresh[d.id].last_change_id,
                nbd_uri=nbd.uri(d.id),
            )
            for d in disks
        ],
    )
    return await app.replication.dispatch(job.id, vm.uuid, {d.id: d.capacity_bytes for d in disks})


async def wait_status(
    app: App, job_id: str, statuses: set[str], timeout: float = 20.0, min_bytes: int = 0
) -> ReplicationJob:
    """Wait until the job's stored status is one of `statuses` (and at least `min_bytes` are done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await app.db.run(ReplicationJob.get_by_id, job_id)
        if row.status in statuses and row.bytes_done >= min_bytes:
            return row
        if loop.time() > deadline:
            raise AssertionError(f"job {job_id} is {row.status} ({row.current_operation}), expected {statuses}")
        await asyncio.sleep(0.05)


def same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 22)
            y = fb.read(1 << 22)
            if x != y:
                return False
            if not x:
                return True


def make_agent(oma_server: OmaServer, enrolled: Enrolled, vcenter: FakeVCenter, state: Path, **kw: object) -> Agent:
    """An in-process agent of `enrolled` against the test OMA (fast reports, no fsync)."""
    return Agent(
        oma=endpoint(oma_server),
        appliance_id=enrolled.appliance_id,
        credential=enrolled.credential,
        vcenter=vcenter,
        state_dir=state,
        report_interval_s=0.1,
        fsync=False,
        **kw,  # type: ignore[arg-type]
    )


async def wait_connected(channel: grpc.aio.Channel, appliance_id: str) -> None:
    """Until the OMA shows the appliance's stream connected (GetAppliance)."""
    appliances = appliance_pb2_grpc.ApplianceServiceStub(channel)

    async def connected() -> bool:
        reply = await appliances.GetAppliance(appliance_pb2.GetApplianceRequest(id=appliance_id))
        return reply.appliance.connection_state == appliance_pb2.CONNECTION_STATE_CONNECTED

    await until(connected, "the agent's stream")
