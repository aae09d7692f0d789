"""The replication workflow through the real API: CloudStack simulator over HTTP, real nbd-server, real NBD clients.

The VMA side is played message by message (RawStream) with nbdcopy writing the data, so these tests pin down what
the OMA does; the reference agent's own end-to-end tests live in tests/agent.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import inventory_pb2
from oma.v1 import (
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import Volume
from oma_server.server import OmaServer
from oma_server.storage.volumes import VOLUME_NAME_PREFIX
from tests.clients import oma_channel
from tests.cloudstack.helpers import job_pending
from tests.conftest import make_settings
from tests.factories import Enrolled, RawStream, enroll, inventory, live_exports, nbdcopy
from tests.waiting import until
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
MIB = 1 << 20


async def register(channel: grpc.aio.Channel, enrolled: Enrolled, vm: inventory_pb2.VirtualMachine) -> str:
    reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=vm)
    )
    return reply.vm_context.id


async def start(channel: grpc.aio.Channel, vm_id: str, **kw: object) -> replication_pb2.ReplicationJob:
    reply = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
        replication_pb2.StartReplicationRequest(vm_context_id=vm_id, **kw)  # type: ignore[arg-type]
    )
    return reply.job


async def get_job(channel: grpc.aio.Channel, job_id: str) -> replication_pb2.ReplicationJob:
    return (
        await replication_pb2_grpc.ReplicationServiceStub(channel).GetReplicationJob(
            replication_pb2.GetReplicationJobRequest(id=job_id)
        )
    ).job


def replicas(sim) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """The simulator's volumes that are OMA replicas (not the OMA VM's own root disk)."""
    return {k: v for k, v in sim.state.volumes.items() if v["name"].startswith(VOLUME_NAME_PREFIX)}


def read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def make_source(path: Path, size: int, seed: int) -> Path:
    data = bytearray(os.urandom(size // 2)) + bytearray(size - size // 2)  # half data, half zeros
    data[:8] = seed.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
async def oma(tmp_path: Path) -> OmaServer:
    server = OmaServer(App(make_settings(tmp_path)))
    await server.start()
    yield server  # type: ignore[misc]
    await server.stop(grace=0.2)


async def test_initial_then_incremental_replication(oma: OmaServer, tmp_path: Path) -> None:
    app = oma.app
    sim = app.simulator
    assert sim is not None
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_id = await register(channel, enrolled, inventory())
        job = await start(channel, vm_id)
        assert job.kind == replication_pb2.REPLICATION_JOB_KIND_INITIAL
        stream = RawStream(channel)
        await stream.hello(enrolled)
        command = (await stream.recv_until("command", timeout=20)).command.start_replication
        assert command.job_id == job.id and len(command.disks) == 2
        assert all(d.nbd_uri.startswith("nbd://") and not d.previous_change_id for d in command.disks)
        assert all(d.target_is_new for d in command.disks)  # fresh volumes: zero blocks may be skipped

        # the OMA provisioned one CloudStack volume per disk, attached to itself, and exported it
        vm = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                vm_context_pb2.GetVmContextRequest(id=vm_id)
            )
        ).vm_context
        assert vm.status == vm_context_pb2.VM_CONTEXT_STATUS_REPLICATING
        attached = [v for v in replicas(sim).values() if v.get("virtualmachineid") == sim.oma_vm_id]
        assert len(attached) == 2
        exports = (
            await storage_pb2_grpc.NbdExportServiceStub(channel).ListNbdExports(storage_pb2.ListNbdExportsRequest())
        ).nbd_exports
        assert sorted(e.uri for e in exports) == sorted(d.nbd_uri for d in command.disks)
        assert all(e.state == storage_pb2.NBD_EXPORT_STATE_ACTIVE for e in exports)

        # play the appliance: copy each disk through its export, report completion with change ids
        sources = {}
        seq = 1
        await stream.send(event=started_for(job.id, seq))
        for i, target in enumerate(command.disks):
            size = inventory().disks[i].capacity_bytes
            sources[target.disk_id] = make_source(tmp_path / f"src-{i}.raw", size, seed=i)
            await nbdcopy(sources[target.disk_id], target.nbd_uri)
            seq += 1
            await stream.send(event=disk_done_for(job.id, seq, target.disk_id, f"cid-{i}-1"))
        seq += 1
        await stream.send(event=completed_for(job.id, seq))
        await stream.recv_until("ack", job_id=job.id, sequence=seq)
        done = await get_job(channel, job.id)
        assert done.status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
        vm = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                vm_context_pb2.GetVmContextRequest(id=vm_id)
            )
        ).vm_context
        assert vm.status == vm_context_pb2.VM_CONTEXT_STATUS_READY_FOR_FAILOVER
        assert [d.last_change_id for d in vm.disks] == ["cid-0-1", "cid-1-1"]
        # the CloudStack volumes hold exactly the source bytes (then zeros up to the GiB-rounded size)
        for disk in vm.disks:
            volume = await app.db.run(Volume.get_by_id, disk.volume_id)
            backing = sim.state.volume_file(volume.cloudstack_id)
            src = sources[disk.id].read_bytes()
            assert read_prefix(backing, len(src)) == src

        # the replicas leave the OMA VM once the job is over: exports removed, volumes detached (kept for next time)
        await app.workflow.settled(job.id)  # type: ignore[union-attr]
        assert not [v for v in replicas(sim).values() if v.get("virtualmachineid")]
        assert live_exports(app) == []
        rows = await app.db.run(lambda: list(Volume.select()))
        assert len(rows) == 2 and all(r.state == "detached" and not r.device_path for r in rows)
        assert app.attachments is not None and app.attachments.pool.in_use == 0
        log = (
            await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                job_pb2.ListJobLogEntriesRequest(job_id=job.id, page_size=1000)
            )
        ).entries
        assert any(e.step == "release_volumes" and "2 replica(s) detached" in e.message for e in log)

        # incremental: same volumes and exports, previous change ids sent
        restarts = app.nbd.restarts
        job2 = await start(channel, vm_id, request_id="inc-1")
        assert job2.kind == replication_pb2.REPLICATION_JOB_KIND_INCREMENTAL
        again = await start(channel, vm_id, request_id="inc-1")
        assert again.id == job2.id  # idempotent by request_id
        command2 = (await stream.recv_until("command", timeout=20)).command.start_replication
        assert command2.job_id == job2.id
        assert [d.previous_change_id for d in command2.disks] == ["cid-0-1", "cid-1-1"]
        assert not any(d.target_is_new for d in command2.disks)
        # the export names derive from the volume ids: the same targets as the first run, attached and served again
        assert sorted(d.nbd_uri for d in command2.disks) == sorted(d.nbd_uri for d in command.disks)
        assert len(live_exports(app)) == 2
        assert app.nbd.restarts == restarts  # the dormant exports serve again: nbd-server was not restarted
        assert len(replicas(sim)) == 2  # no new volumes
        assert len([v for v in replicas(sim).values() if v.get("virtualmachineid") == sim.oma_vm_id]) == 2

        # a second start while one is active is refused, naming the active job
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start(channel, vm_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert job2.id in (err.value.details() or "")
        assert error_info_of(err.value).reason == "JOB_ALREADY_ACTIVE"  # type: ignore[union-attr]

        # cancel: the appliance is told; the volumes stay (detached, for the next run), the exports go
        await replication_pb2_grpc.ReplicationServiceStub(channel).CancelReplicationJob(
            replication_pb2.CancelReplicationJobRequest(id=job2.id)
        )
        cancel = (await stream.recv_until("command")).command
        assert cancel.cancel_job.job_id == job2.id
        await stream.send(event=stream_pb2.JobEvent(job_id=job2.id, sequence=1, cancelled=stream_pb2.JobCancelled()))
        await stream.recv_until("ack", job_id=job2.id, sequence=1)
        assert (await get_job(channel, job2.id)).status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLED
        await app.workflow.settled(job2.id)  # type: ignore[union-attr]
        exports_after = (
            await storage_pb2_grpc.NbdExportServiceStub(channel).ListNbdExports(storage_pb2.ListNbdExportsRequest())
        ).nbd_exports
        assert len(exports_after) == 2 and all(e.state == storage_pb2.NBD_EXPORT_STATE_REMOVED for e in exports_after)
        assert live_exports(app) == [] and len(replicas(sim)) == 2
        assert not [v for v in replicas(sim).values() if v.get("virtualmachineid")]
        await stream.close()


def started_for(job_id: str, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, started=stream_pb2.JobStarted())


def disk_done_for(job_id: str, seq: int, disk_id: str, change_id: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(
        job_id=job_id, sequence=seq, disk_completed=stream_pb2.DiskCompleted(disk_id=disk_id, change_id=change_id)
    )


def completed_for(job_id: str, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, completed=stream_pb2.JobCompleted())


async def test_attach_failure_fails_cleanly_and_leaks_nothing(oma: OmaServer) -> None:
    app = oma.app
    sim = app.simulator
    assert sim is not None
    sim.faults.fail_command("attachVolume", errorcode=530, errortext="Failed to attach volume", times=20)
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_id = await register(channel, enrolled, inventory())
        job = await start(channel, vm_id)
        await app.workflow.wait(job.id)  # type: ignore[union-attr]
        failed = await get_job(channel, job.id)
        assert failed.status == replication_pb2.REPLICATION_JOB_STATUS_FAILED
        assert "attach" in failed.error.message.lower()
        # every CloudStack volume is recorded (reused by the next run), none is attached, no export exists
        rows = await app.db.run(lambda: list(Volume.select()))
        assert sorted(r.cloudstack_id for r in rows) == sorted(replicas(sim))
        assert not [v for v in replicas(sim).values() if v.get("virtualmachineid")]
        assert live_exports(app) == []
        vm = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                vm_context_pb2.GetVmContextRequest(id=vm_id)
            )
        ).vm_context
        assert vm.status == vm_context_pb2.VM_CONTEXT_STATUS_DISCOVERED  # nothing was copied
        # the retry reuses the recorded volumes
        sim.faults.clear()
        retry = (
            await replication_pb2_grpc.ReplicationServiceStub(channel).RetryReplicationJob(
                replication_pb2.RetryReplicationJobRequest(id=job.id)
            )
        ).job
        await app.workflow.wait(retry.id)  # type: ignore[union-attr]
        assert (await get_job(channel, retry.id)).status == replication_pb2.REPLICATION_JOB_STATUS_WAITING_FOR_VMA
        assert len(replicas(sim)) == 2
        (queued,) = await app.outbox.open_commands(enrolled.appliance_id)
        sent = stream_pb2.Command.FromString(queued.encoded).start_replication  # exactly what the appliance gets
        # the volumes were created by the failed run: they may hold data, so the copy must not skip zero blocks
        assert sent.disks and not any(d.target_is_new for d in sent.disks)


async def test_device_that_never_appears_is_a_clear_failure(oma: OmaServer) -> None:
    app = oma.app
    assert app.simulator is not None and app.volumes is not None
    app.volumes.device_wait_s = 0.5
    app.simulator.faults.attach_without_device(times=5)
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_id = await register(channel, enrolled, inventory(disk_mib=(2,)))
        job = await start(channel, vm_id)
        await app.workflow.wait(job.id)  # type: ignore[union-attr]
        failed = await get_job(channel, job.id)
        assert failed.status == replication_pb2.REPLICATION_JOB_STATUS_FAILED
        assert failed.error.reason == "DEVICE_NOT_FOUND"
        # the message names what was looked for (CloudStack's serial under each bus prefix) and what was found
        (volume,) = [v for v in replicas(app.simulator).values()]
        serial = volume["id"].replace("-", "")[:20]
        message = failed.error.message
        assert f"virtio-{serial}" in message and f"scsi-0QEMU_QEMU_HARDDISK_{serial}" in message
        assert f"scsi-{serial}" in message and "no disk link is there at all" in message


async def test_oma_restart_during_provisioning_continues(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    server = OmaServer(App(settings))
    await server.start()
    sim = server.app.simulator
    assert sim is not None
    sim.faults.slow_job("attachVolume", 30.0)  # slower than any restart takes: the restart lands inside it
    async with oma_channel(server) as channel:
        enrolled = await enroll(channel)
        vm_id = await register(channel, enrolled, inventory())
        job = await start(channel, vm_id)
        await until(lambda: job_pending(sim, "AttachVolumeCmd"), "the simulator's attach job")
    await server.stop(grace=0.2)

    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings))
    await restarted.start()
    try:
        await restarted.app.workflow.wait(job.id)  # type: ignore[union-attr]
        async with oma_channel(restarted) as channel:
            resumed = await get_job(channel, job.id)
            assert resumed.status == replication_pb2.REPLICATION_JOB_STATUS_WAITING_FOR_VMA, resumed
            sim2 = restarted.app.simulator
            assert sim2 is not None
            rows = await restarted.app.db.run(lambda: list(Volume.select().where(Volume.state != "deleted")))
            assert sorted(r.cloudstack_id for r in rows) == sorted(replicas(sim2))  # nothing orphaned
            assert len(rows) == 2 and all(r.state == "attached_to_oma" for r in rows)
            assert len(live_exports(restarted.app)) == 2
    finally:
        await restarted.stop(grace=0.2)


async def test_register_validates_inventory(oma: OmaServer) -> None:
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        bad = inventory()
        bad.disks[1].key = bad.disks[0].key
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(channel, enrolled, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "disk keys repeat" in (err.value.details() or "")
        vm = inventory()
        first = await register(channel, enrolled, vm)
        assert await register(channel, enrolled, vm) == first  # idempotent by vCenter + uuid


async def test_two_vms_replicate_at_once_through_one_appliance(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_ids = [await register(channel, enrolled, inventory(disk_mib=(2,), name=f"vm-{i}")) for i in range(2)]
        jobs = {(await start(channel, vm_id)).id for vm_id in vm_ids}
        stream = RawStream(channel)
        await stream.hello(enrolled)
        commands = [(await stream.recv_until("command", timeout=20)).command.start_replication for _ in jobs]
        assert {c.job_id for c in commands} == jobs
        for n, command in enumerate(commands):
            (target,) = command.disks
            source = make_source(tmp_path / f"two-{n}.raw", 2 * MIB, seed=n)
            await nbdcopy(source, target.nbd_uri)
            await stream.send(event=started_for(command.job_id, 1))
            await stream.send(event=disk_done_for(command.job_id, 2, target.disk_id, f"cid-{n}"))
            await stream.send(event=completed_for(command.job_id, 3))
        for command in commands:
            await stream.recv_until("ack", job_id=command.job_id, sequence=3)
            assert (await get_job(channel, command.job_id)).status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
        await stream.close()
