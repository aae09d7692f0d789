"""Test data made through the real services (no hand-written rows where a service exists)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from oma.common.v1 import inventory_pb2, jobs_pb2
from oma.v1 import appliance_pb2, appliance_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from oma_server.app import App
from oma_server.db.models import Disk, VmContext
from oma_server.replication.state_machine import DiskState, JobState
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm
from vma.v1 import stream_pb2


@dataclass
class Enrolled:
    appliance_id: str
    credential: str


async def enroll(channel: grpc.aio.Channel, name: str | None = None) -> Enrolled:
    stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
    reply = await stub.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name=name or f"vma-{uuid.uuid4().hex[:8]}"))
    return Enrolled(reply.appliance.id, reply.credential)


async def seed_job(app: App, appliance_id: str, n_disks: int = 2, disk_bytes: int = 1 << 20) -> JobState:
    """A VM context with disks and a replication job handed to its appliance (waiting_for_vma + start command)."""

    def make_vm() -> list[Disk]:
        vm = VmContext.create(
            appliance=appliance_id, vcenter="vc.test", vm_uuid=str(uuid.uuid4()), name=f"vm-{uuid.uuid4().hex[:6]}"
        )
        return [
            Disk.create(vm_context=vm.id, key=2000 + i, capacity_bytes=disk_bytes, unit_number=i)
            for i in range(n_disks)
        ]

    disks = await app.db.tx(make_vm)

    def bind_vm(job: JobState) -> None:  # as the replication workflow does
        transition_vm(job.vm_context_id, VmStatus.REPLICATING, active_job_id=job.id)

    job = await app.jobs.create(
        vm_context_id=disks[0].vm_context_id,
        appliance_id=appliance_id,
        kind="initial",
        disks=[
            DiskState(disk_id=d.id, disk_key=d.key, bytes_total=disk_bytes, mode="full", nbd_uri=f"nbd://x/{d.id}")
            for d in disks
        ],
        in_tx=bind_vm,
    )
    return await app.replication.dispatch(job.id, "vm-uuid", {d.id: disk_bytes for d in disks})


class RawStream:
    """A VMA's side of Connect driven message by message (to test the server's protocol exactly)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._out: asyncio.Queue[gateway_pb2.ConnectRequest | None] = asyncio.Queue()
        self.call = gateway_pb2_grpc.VmaGatewayServiceStub(channel).Connect(self._requests())

    async def _requests(self) -> AsyncIterator[gateway_pb2.ConnectRequest]:
        while (item := await self._out.get()) is not None:
            yield item

    async def send(self, **message: object) -> None:
        await self._out.put(gateway_pb2.ConnectRequest(**message))  # type: ignore[arg-type]

    async def hello(self, enrolled: Enrolled, **extra: object) -> stream_pb2.Welcome:
        await self.send(
            hello=stream_pb2.Hello(
                appliance_id=enrolled.appliance_id, credential=enrolled.credential, agent_version="test", **extra
            )
        )
        first = await self.recv()
        assert first.WhichOneof("message") == "welcome", first
        return first.welcome

    async def recv(self, timeout: float = 5.0) -> gateway_pb2.ConnectResponse:
        return await asyncio.wait_for(self.call.read(), timeout)

    async def recv_until(self, kind: str, timeout: float = 5.0, **match: object) -> gateway_pb2.ConnectResponse:
        """Read until a message of `kind` whose fields equal `match` (skipping others)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - loop.time()))
            if msg == grpc.aio.EOF:
                raise AssertionError(f"stream ended while waiting for {kind} {match}")
            if msg.WhichOneof("message") == kind:
                inner = getattr(msg, kind)
                if all(getattr(inner, k) == v for k, v in match.items()):
                    return msg

    async def close(self) -> None:
        await self._out.put(None)
        self.call.cancel()


def progress(
    job: JobState, seq: int, done: int, total: int | None = None, **extra: object
) -> stream_pb2.ProgressReport:
    total = total if total is not None else sum(d.bytes_total for d in job.disks)
    per_disk = done // max(1, len(job.disks))
    fields: dict[str, object] = {"phase": jobs_pb2.COPY_PHASE_COPYING, "current_operation": f"copying {done}/{total}"}
    fields.update(extra)
    return stream_pb2.ProgressReport(
        job_id=job.id,
        sequence=seq,
        bytes_done=done,
        bytes_total=total,
        throughput_bytes_per_second=1000,
        disks=[
            stream_pb2.DiskProgress(
                disk_id=d.disk_id, bytes_done=per_disk, bytes_total=d.bytes_total, resume_token=str(seq)
            )
            for d in job.disks
        ],
        **fields,  # type: ignore[arg-type]
    )


def disk_done(job: JobState, seq: int, index: int, change_id: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(
        job_id=job.id,
        sequence=seq,
        disk_completed=stream_pb2.DiskCompleted(disk_id=job.disks[index].disk_id, change_id=change_id),
    )


def completed(job: JobState, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job.id, sequence=seq, completed=stream_pb2.JobCompleted())


def started(job: JobState, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job.id, sequence=seq, started=stream_pb2.JobStarted())


MIB = 1 << 20


def inventory(disk_mib: tuple[int, ...] = (4, 2), name: str = "web-01") -> inventory_pb2.VirtualMachine:
    return inventory_pb2.VirtualMachine(
        vcenter="vc.lab",
        datacenter="dc1",
        uuid=str(uuid.uuid4()),
        moref="vm-42",
        name=name,
        num_cpus=2,
        memory_mib=2048,
        guest_os="ubuntu64Guest",
        firmware=inventory_pb2.FIRMWARE_BIOS,
        nics=[inventory_pb2.Nic(label="nic1", network_name="VM Network", mac_address="00:50:56:aa:bb:cc")],
        disks=[
            inventory_pb2.VirtualDisk(
                key=2000 + i, label=f"Hard disk {i + 1}", capacity_bytes=mib * MIB, unit_number=i, cbt_enabled=True
            )
            for i, mib in enumerate(disk_mib)
        ],
    )


async def nbdcopy(src: Path, uri: str, deadline_s: float = 30.0) -> None:
    """Copy `src` into an NBD export with the real nbdcopy, as an appliance does: a connection refused or reset while
    the OMA changes its exports (nbd-server restarts to apply each change) is tried again until `deadline_s`, like
    the reference agent's copier (vma_client_stubs/agent/copier.py)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    pause = 0.1
    while True:
        proc = await asyncio.create_subprocess_exec("nbdcopy", str(src), uri, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode == 0:
            return
        text = err.decode()
        assert "nbd_connect_uri" in text and loop.time() < deadline, f"nbdcopy into {uri} failed: {text}"
        await asyncio.sleep(pause)  # a backoff between real attempts, not a synchronisation
        pause = min(pause * 2, 2.0)


def live_exports(app: App) -> list[str]:
    """Exports nbd-server can serve now: the ones whose device exists. A retired export stays in nbd-server's
    configuration, dormant, while its replica is detached (oma_server/storage/exports.py)."""
    return sorted(e.name for e in app.nbd.list_exports() if Path(e.device_path).exists())


async def job_on_stream(channel: grpc.aio.Channel, app: App) -> tuple[Enrolled, JobState, RawStream]:
    """An enrolled appliance, a job handed to it (waiting for the appliance) and its stream, past the Welcome."""
    enrolled = await enroll(channel)
    job = await seed_job(app, enrolled.appliance_id)
    stream = RawStream(channel)
    await stream.hello(enrolled)
    return enrolled, job, stream
