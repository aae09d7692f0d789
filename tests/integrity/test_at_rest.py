"""VerifyVmContext through the real API (issue #15): the replicas at rest re-read on demand as a job of the failover
engine. A healthy VM passes (time and outcome in GetVmContext and the job log); a byte flipped on a replica's
backing file at rest is found (the disk and its block range), failover is refused naming it, the next incremental
copies that disk whole and verifies it, and failover is allowed again; an OMA restart mid-verification resumes it;
it is refused while another job runs."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import (
    failover_pb2,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.db.models import Volume
from oma_server.failover import at_rest as at_rest_steps
from oma_server.integrity.blocks import BLOCK_SIZE
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import enroll, inventory
from tests.failover.helpers import (
    COMPLETED,
    FAILED,
    TEST,
    VM_READY,
    failover_stub,
    get_vm,
    map_network,
    play_replication,
    replicas_released,
    replicate,
    sim_of,
    start_oma,
    wait_job,
)
from tests.omactl.conftest import run_omactl, target_of

pytestmark = pytest.mark.nbd
VERIFY = failover_pb2.FAILOVER_JOB_KIND_VERIFY


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path)
    yield server
    await server.stop(grace=0.2)


def vms_stub(channel: grpc.aio.Channel) -> vm_context_pb2_grpc.VmContextServiceStub:
    return vm_context_pb2_grpc.VmContextServiceStub(channel)


async def verify(channel: grpc.aio.Channel, vm_id: str) -> failover_pb2.FailoverJob:
    reply = await vms_stub(channel).VerifyVmContext(vm_context_pb2.VerifyVmContextRequest(vm_context_id=vm_id))
    assert reply.job.kind == VERIFY
    return reply.job


async def log_of(channel: grpc.aio.Channel, job_id: str) -> list[job_pb2.JobLogEntry]:
    reply = await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
        job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000)
    )
    return list(reply.entries)


async def gate(channel: grpc.aio.Channel, vm_id: str) -> failover_pb2.ReadinessCheck:
    reply = await failover_stub(channel).CheckFailoverReadiness(
        failover_pb2.CheckFailoverReadinessRequest(vm_context_id=vm_id, kind=TEST)
    )
    return next(c for c in reply.checks if c.name == "replicas_verified")


async def replica_file(oma: OmaServer, volume_id: str) -> Path:
    volume = await oma.app.db.run(Volume.get_by_id, volume_id)
    return sim_of(oma).state.volume_file(volume.cloudstack_id)


def flip(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x40]), offset)
    finally:
        os.close(fd)


async def test_a_healthy_vm_passes_and_the_time_is_shown(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        before = await get_vm(channel, r.vm_id)
        job = await verify(channel, r.vm_id)
        assert (await get_vm(channel, r.vm_id)).active_job_id == job.id  # the VM is claimed: no sync meanwhile
        done = await wait_job(oma, channel, job.id)
        assert done.status == COMPLETED, done.error
        assert [s.name for s in done.steps] == ["attach_replicas", "read_back", "release_replicas", "report"]
        read_back = next(s for s in done.steps if s.name == "read_back")
        assert "every block matches" in read_back.message and "block(s) read" in read_back.message
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_READY and not vm.active_job_id
        for disk, old in zip(vm.disks, before.disks, strict=True):
            v = disk.verification
            assert (v.check_outcome, v.check_job_id, v.check_digest) == ("passed", job.id, v.digest)
            assert v.HasField("checked_at") and not v.mismatched
            assert v.verified_at == old.verification.verified_at  # the sync's verification is kept beside it
        entries = [e for e in await log_of(channel, job.id) if e.step == "read_back" and "passed, digest" in e.message]
        assert len(entries) == len(vm.disks), entries
        await replicas_released(channel, r.vm_id)  # back at rest
        assert (await gate(channel, r.vm_id)).passed
        await r.stream.close()


async def test_a_byte_flipped_at_rest_is_found_refuses_failover_and_the_next_sync_repairs_it(
    oma: OmaServer, tmp_path: Path
) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path, inventory(disk_mib=(8, 16)))
        await map_network(channel, sim_of(oma), vm_id=r.vm_id)
        vm = await get_vm(channel, r.vm_id)
        bad, good = vm.disks[1], vm.disks[0]  # 8 blocks, 4 blocks
        flip(await replica_file(oma, bad.volume_id), 3 * BLOCK_SIZE + 12345)  # the storage rots block 3

        job = await verify(channel, r.vm_id)
        done = await wait_job(oma, channel, job.id)
        assert done.status == FAILED
        assert done.error.reason == "REPLICA_MISMATCH"
        assert f"disk {bad.key}: block(s) 3" in done.error.message and f"disk {good.key}" not in done.error.message
        assert next(s for s in done.steps if s.name == "release_replicas").status == failover_pb2.STEP_STATUS_COMPLETED
        await replicas_released(channel, r.vm_id)
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_READY and not vm.active_job_id  # nothing to clean up: the VM is as before
        found = {d.id: d.verification for d in vm.disks}
        assert found[bad.id].check_outcome == "mismatch"
        assert [(m.first, m.count) for m in found[bad.id].mismatched] == [(3, 1)]
        assert found[bad.id].check_digest != found[bad.id].digest
        assert found[good.id].check_outcome == "passed"
        entries = await log_of(channel, job.id)
        assert any(e.step == "repair" and f"disk {bad.key}" in e.message and "whole" in e.message for e in entries)

        # the gate refuses failover, naming the disk and its range
        check = await gate(channel, r.vm_id)
        assert not check.passed and f"disk {bad.key}" in check.reason and "block(s) 3" in check.reason
        assert f"disk {good.key}" not in check.reason
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await failover_stub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=TEST)
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # the next incremental copies the bad disk whole (only it), and its read-back verifies it again
        sync = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
        )
        modes = {d.disk_id: (d.mode, d.full_copy_reason) for d in sync.job.disks}
        assert modes[bad.id][0] == jobs_pb2.COPY_MODE_FULL and "different at rest" in modes[bad.id][1], modes
        assert modes[good.id][0] == jobs_pb2.COPY_MODE_INCREMENTAL, modes
        await play_replication(r.stream, tmp_path, "2", r.sources)
        await replicas_released(channel, r.vm_id)
        assert (await gate(channel, r.vm_id)).passed
        again = await wait_job(oma, channel, (await verify(channel, r.vm_id)).id)
        assert again.status == COMPLETED, again.error
        await r.stream.close()


async def test_a_verification_cut_by_a_restart_resumes_and_ends(
    oma: OmaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = threading.Event()  # the first read of the first OMA hangs until it is stopped
    reading = threading.Event()
    real = at_rest_steps.ReplicaReader

    class Hanging(real):  # type: ignore[misc, valid-type]
        def hashes(self, ranges, on_progress=None):  # type: ignore[no-untyped-def]
            reading.set()
            held.wait(30)
            raise OSError("the OMA stopped under this read")

    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await r.stream.close()
        monkeypatch.setattr(at_rest_steps, "ReplicaReader", Hanging)
        job = await verify(channel, r.vm_id)
        assert await asyncio.to_thread(reading.wait, 20)
    settings = oma.app.settings
    await oma.stop(grace=0.2)  # cancels the job's task at its read_back step
    monkeypatch.setattr(at_rest_steps, "ReplicaReader", real)
    held.set()
    settings.listen = "127.0.0.1:0"
    restarted = OmaServer(App(settings))
    await restarted.start()
    try:
        async with oma_channel(restarted) as channel:
            done = await wait_job(restarted, channel, job.id)
            assert done.status == COMPLETED, done.error
            assert next(s for s in done.steps if s.name == "read_back").attempts == 2
            entries = await log_of(channel, job.id)
            assert any("OMA restarted; resuming" in e.message for e in entries), [e.message for e in entries]
            vm = await get_vm(channel, r.vm_id)
            assert vm.status == VM_READY and not vm.active_job_id
            assert all(d.verification.check_outcome == "passed" for d in vm.disks)
            await replicas_released(channel, r.vm_id)
    finally:
        await restarted.stop(grace=0.2)


async def test_refused_while_a_job_runs_and_unless_the_vm_rests(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        sync = await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await verify(channel, r.vm_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert sync.job.id in (refused.value.details() or "")
        await play_replication(r.stream, tmp_path, "2", r.sources)
        await replicas_released(channel, r.vm_id)

        job = await verify(channel, r.vm_id)
        with pytest.raises(grpc.aio.AioRpcError) as busy:  # a second verification, or a sync, waits for it
            await verify(channel, r.vm_id)
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and job.id in (busy.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as no_sync:
            await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
                replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
            )
        assert no_sync.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await wait_job(oma, channel, job.id)).status == COMPLETED
        await r.stream.close()

    async with oma_channel(oma) as channel:  # a VM never replicated has nothing at rest to verify
        enrolled = await enroll(channel)
        reply = await vms_stub(channel).RegisterVmContext(
            vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
        )
        with pytest.raises(grpc.aio.AioRpcError) as fresh:
            await verify(channel, reply.vm_context.id)
        assert fresh.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ready_for_failover" in (fresh.value.details() or "")


async def test_omactl_vms_verify_watches_the_job_and_show_has_the_outcome(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path, inventory(disk_mib=(8, 16)))
        vm = await get_vm(channel, r.vm_id)
        target = target_of(oma)
        passed = await run_omactl(target, "vms", "verify", r.vm_id, "--watch")
        assert passed.code == 0, passed
        assert "verification at rest" in passed.out and "completed" in passed.out.lower(), passed.out
        shown = await run_omactl(target, "vms", "show", r.vm_id)
        assert shown.code == 0, shown
        rows = [line for line in shown.out.splitlines() if "sha256:" in line]
        assert len(rows) == 2 and all("passed" in line for line in rows), rows

        flip(await replica_file(oma, vm.disks[1].volume_id), 5 * BLOCK_SIZE + 1)
        found = await run_omactl(target, "vms", "verify", r.vm_id, "--watch")
        assert found.code != 0, found
        assert "REPLICA_MISMATCH" in found.out + found.err, found
        await replicas_released(channel, r.vm_id)
        shown = await run_omactl(target, "vms", "show", r.vm_id)
        row = next(line for line in shown.out.splitlines() if line.startswith(vm.disks[1].id) and "sha256:" in line)
        assert "MISMATCH in block(s) 5" in row and "copies this disk whole" in row, row
        await r.stream.close()


async def test_a_cancel_during_the_read_releases_the_replicas_and_the_vm(
    oma: OmaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held, reading = threading.Event(), threading.Event()

    class Hanging(at_rest_steps.ReplicaReader):  # type: ignore[misc, name-defined]
        def hashes(self, ranges, on_progress=None):  # type: ignore[no-untyped-def]
            reading.set()
            held.wait(30)
            raise OSError("cancelled under this read")

    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        monkeypatch.setattr(at_rest_steps, "ReplicaReader", Hanging)
        job = await verify(channel, r.vm_id)
        assert await asyncio.to_thread(reading.wait, 20)
        await job_pb2_grpc.JobServiceStub(channel).CancelJob(job_pb2.CancelJobRequest(id=job.id))
        held.set()
        done = await wait_job(oma, channel, job.id)
        assert done.status == failover_pb2.FAILOVER_JOB_STATUS_CANCELLED
        assert "replicas are released" in done.outcome
        vm = await get_vm(channel, r.vm_id)
        assert vm.status == VM_READY and not vm.active_job_id
        assert all(not d.verification.check_outcome for d in vm.disks)  # nothing recorded
        await replicas_released(channel, r.vm_id)
        await r.stream.close()
