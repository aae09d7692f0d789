"""Shared by the failover tests: an OMA on the simulator, a VM replicated to ready_for_failover by a scripted
appliance (RawStream + nbdcopy into the real nbd-server), and short-hands for the failover RPCs."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from oma.common.v1 import inventory_pb2
from oma.v1 import (
    failover_pb2,
    failover_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.server import OmaServer
from tests.conftest import make_settings
from tests.factories import Enrolled, RawStream, enroll, inventory, nbdcopy
from vma.v1 import stream_pb2

MIB = 1 << 20
TEST = failover_pb2.FAILOVER_JOB_KIND_TEST
LIVE = failover_pb2.FAILOVER_JOB_KIND_LIVE
COMPLETED = failover_pb2.FAILOVER_JOB_STATUS_COMPLETED
FAILED = failover_pb2.FAILOVER_JOB_STATUS_FAILED
VM_READY = vm_context_pb2.VM_CONTEXT_STATUS_READY_FOR_FAILOVER
VM_TEST = vm_context_pb2.VM_CONTEXT_STATUS_FAILED_OVER_TEST
VM_LIVE = vm_context_pb2.VM_CONTEXT_STATUS_FAILED_OVER_LIVE
VM_CLEANUP = vm_context_pb2.VM_CONTEXT_STATUS_CLEANUP_REQUIRED


async def start_oma(tmp_path: Path, database_url: str = "", **overrides: object) -> OmaServer:
    server = OmaServer(App(make_settings(tmp_path, database_url, **overrides)))
    await server.start()
    return server


async def restart_oma(server: OmaServer) -> OmaServer:
    """Stop the OMA (and its in-process simulator) and start it again on the same data: a crash-free restart."""
    settings = server.app.settings
    await server.stop(grace=0.2)
    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings))
    await restarted.start()
    return restarted


def sim_of(server: OmaServer) -> CloudStackSimulator:
    sim = server.app.simulator
    assert sim is not None
    return sim


@dataclass
class World:
    """What the simulator holds, for exact assertions."""

    volumes: set[str]
    snapshots: set[str]
    vms: set[str]
    attached_to_oma: set[str] = field(default_factory=set)


def world(sim: CloudStackSimulator) -> World:
    state = sim.state
    return World(
        volumes=set(state.volumes),
        snapshots=set(state.snapshots),
        vms={vid for vid in state.vms if vid != sim.oma_vm_id},
        attached_to_oma={v for v, row in state.volumes.items() if row.get("virtualmachineid") == sim.oma_vm_id}
        - {v for v, row in state.volumes.items() if row.get("type") == "ROOT"},
    )


def read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


@dataclass
class Replicated:
    vm_id: str
    enrolled: Enrolled
    stream: RawStream
    sources: dict[str, Path]  # disk id → the bytes the appliance copied
    change_ids: list[str]
    seq: dict[str, int] = field(default_factory=dict)


async def play_replication(
    stream: RawStream,
    tmp_path: Path,
    tag: str,
    sources: dict[str, Path] | None = None,
    timeout: float = 20,
    job_id: str = "",
) -> tuple[str, list[str]]:
    """Act as the appliance for the next StartReplication command (of `job_id` if given; commands left unanswered
    by an earlier session are sent again and skipped here): copy every disk, report completion."""
    while True:
        command = (await stream.recv_until("command", timeout=timeout)).command
        start = command.start_replication
        if command.WhichOneof("kind") == "start_replication" and (not job_id or start.job_id == job_id):
            break
    job_id = start.job_id
    seq = 1
    await stream.send(event=stream_pb2.JobEvent(job_id=job_id, sequence=seq, started=stream_pb2.JobStarted()))
    change_ids = []
    for i, target in enumerate(start.disks):
        if sources is not None and target.disk_id not in sources:
            size = target.capacity_bytes
            path = tmp_path / f"src-{target.disk_id}.raw"
            data = bytearray(os.urandom(size // 2)) + bytearray(size - size // 2)
            data[:8] = i.to_bytes(8, "little")
            path.write_bytes(bytes(data))
            sources[target.disk_id] = path
        if sources is not None:
            await nbdcopy(sources[target.disk_id], target.nbd_uri)
        seq += 1
        cid = f"cid-{i}-{tag}"
        change_ids.append(cid)
        await stream.send(
            event=stream_pb2.JobEvent(
                job_id=job_id,
                sequence=seq,
                disk_completed=stream_pb2.DiskCompleted(disk_id=target.disk_id, change_id=cid),
            )
        )
    seq += 1
    await stream.send(event=stream_pb2.JobEvent(job_id=job_id, sequence=seq, completed=stream_pb2.JobCompleted()))
    await stream.recv_until("ack", timeout=timeout, job_id=job_id, sequence=seq)
    return job_id, change_ids


async def replicate(
    channel: grpc.aio.Channel, tmp_path: Path, vm: inventory_pb2.VirtualMachine | None = None
) -> Replicated:
    """Register a VM and replicate it (initial) to ready_for_failover; the appliance stream stays open."""
    enrolled = await enroll(channel)
    reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=vm or inventory())
    )
    vm_id = reply.vm_context.id
    await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
        replication_pb2.StartReplicationRequest(vm_context_id=vm_id)
    )
    stream = RawStream(channel)
    await stream.hello(enrolled)
    sources: dict[str, Path] = {}
    _, change_ids = await play_replication(stream, tmp_path, "1", sources)
    assert (await get_vm(channel, vm_id)).status == VM_READY
    await replicas_released(channel, vm_id)
    return Replicated(vm_id, enrolled, stream, sources, change_ids)


async def replicas_released(channel: grpc.aio.Channel, vm_id: str, timeout: float = 20) -> None:
    """Wait until the VM's replicas have left the OMA VM (they do once their replication job is over)."""
    stub = storage_pb2_grpc.VolumeServiceStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        volumes = (await stub.ListVolumes(storage_pb2.ListVolumesRequest(vm_context_id=vm_id))).volumes
        if volumes and all(v.state == storage_pb2.VOLUME_STATE_DETACHED for v in volumes):
            return
        assert loop.time() < deadline, f"replicas still attached: {[v.state for v in volumes]}"
        await asyncio.sleep(0.05)


async def get_vm(channel: grpc.aio.Channel, vm_id: str) -> vm_context_pb2.VmContext:
    stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
    return (await stub.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id))).vm_context


def failover_stub(channel: grpc.aio.Channel) -> failover_pb2_grpc.FailoverServiceStub:
    return failover_pb2_grpc.FailoverServiceStub(channel)


async def map_network(channel: grpc.aio.Channel, sim: CloudStackSimulator, vm_id: str = "", **kw: object) -> str:
    """Map "VM Network" to the simulator's guest-net-1; returns the CloudStack network id."""
    net_id = sim.state.find_by_name(sim.state.networks, "guest-net-1")
    await failover_pb2_grpc.NetworkMappingServiceStub(channel).CreateNetworkMapping(
        failover_pb2.CreateNetworkMappingRequest(
            mapping=failover_pb2.NetworkMapping(
                vm_context_id=vm_id,
                source_network="VM Network",
                target_network_id=net_id,
                **kw,  # type: ignore[arg-type]
            )
        )
    )
    return net_id


async def start_failover(channel: grpc.aio.Channel, vm_id: str, kind: int = TEST) -> failover_pb2.FailoverJob:
    reply = await failover_stub(channel).StartFailover(
        failover_pb2.StartFailoverRequest(vm_context_id=vm_id, kind=kind)  # type: ignore[arg-type]
    )
    return reply.job


async def cleanup(channel: grpc.aio.Channel, vm_id: str) -> failover_pb2.FailoverJob:
    return (await failover_stub(channel).CleanupFailover(failover_pb2.CleanupFailoverRequest(vm_context_id=vm_id))).job


async def get_job(channel: grpc.aio.Channel, job_id: str) -> failover_pb2.FailoverJob:
    return (await failover_stub(channel).GetFailoverJob(failover_pb2.GetFailoverJobRequest(id=job_id))).job


async def wait_job(
    server: OmaServer, channel: grpc.aio.Channel, job_id: str, timeout: float = 30
) -> failover_pb2.FailoverJob:
    assert server.app.failover is not None
    await server.app.failover.wait(job_id, timeout)
    return await get_job(channel, job_id)


async def answer_power(stream: object, kind: str, vm_uuid: str) -> None:
    command = (await stream.recv_until("command", timeout=20)).command  # type: ignore[attr-defined]
    assert command.WhichOneof("kind") == kind, command
    assert getattr(command, kind).vm_uuid == vm_uuid
    state = inventory_pb2.POWER_STATE_POWERED_OFF if kind == "power_off" else inventory_pb2.POWER_STATE_POWERED_ON
    await stream.send(  # type: ignore[attr-defined]
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id,
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            power=stream_pb2.PowerResult(power_state=state),
        )
    )
