"""Replicas proven against the source and repaired block by block (issue #15): the reference agent, driven through
the public API over the OMA's real NBD exports and the CloudStack simulator, sends the source's block hashes taken
from the buffers it copies; the OMA's read-back compares, and a difference is repaired by recopying exactly the
blocks that differ.

- A byte of one replica flipped at rest: VerifyVmContext finds it (block 3 of that disk), failover is refused; the
  next sync is an incremental in which the bad disk also copies its block 3 (DiskTarget.repair_extents; the job log
  says so) — 2 MiB, where a whole-disk repair would copy 16 MiB — and nothing else, since the guest wrote nothing.
- A write that differs from what the agent read (a byte corrupted after hashing, once): the sync's own read-back
  finds the block different from the source, the gate refuses, a repair sync starts by itself, recopies that block
  only and verifies it; the replica is then the source, byte for byte.
- An agent that lies about a block's hash: found the same way; the repair's read-back finds it again and the OMA
  stops repairing, says so in the job log, and failover stays refused naming the disk and block.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
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
)
from oma_server.integrity.blocks import BLOCK_SIZE
from oma_server.server import OmaServer
from tests.agent.helpers import make_agent, wait_connected
from tests.clients import oma_channel
from tests.factories import enroll
from tests.failover.helpers import (
    COMPLETED,
    FAILED,
    TEST,
    VM_READY,
    failover_stub,
    get_vm,
    replicas_released,
    start_oma,
    wait_job,
)
from tests.integrity.test_at_rest import flip, gate, log_of, replica_file, verify, vms_stub
from tests.omactl.conftest import run_omactl, target_of
from tests.waiting import until
from vma_client_stubs.agent.source_hashes import SourceHasher
from vma_client_stubs.agent.vcenter import FakeVCenter, VirtualMachine

pytestmark = [pytest.mark.nbd, pytest.mark.slow]
MIB = 1 << 20
R = replication_pb2


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path)
    yield server
    await server.stop(grace=0.2)


async def sync(channel: grpc.aio.Channel, vm_id: str) -> R.ReplicationJob:
    """StartReplication, then WatchJob to its end; the job as it ended."""
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    job = (await stub.StartReplication(R.StartReplicationRequest(vm_context_id=vm_id))).job
    last = None
    async for reply in job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job.id)):
        last = reply.update
    assert last is not None
    done = last.replication_job
    assert done.status == R.REPLICATION_JOB_STATUS_COMPLETED, done
    return done


@dataclass
class Setup:
    channel: grpc.aio.Channel
    vcenter: FakeVCenter
    source: VirtualMachine
    vm_id: str


@contextlib.asynccontextmanager
async def replicated(oma: OmaServer, tmp_path: Path, name: str) -> AsyncIterator[Setup]:
    """A VM of two disks (8 and 16 MiB) discovered by the reference agent; the agent runs while the block is open."""
    vcenter = FakeVCenter(tmp_path / "vcenter")
    source = vcenter.create_vm(name, [8 * MIB, 16 * MIB], seed=15)
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        async with make_agent(oma, enrolled, vcenter, tmp_path / "agent"):
            await wait_connected(channel, enrolled.appliance_id)
            found = await vms_stub(channel).DiscoverVms(
                vm_context_pb2.DiscoverVmsRequest(
                    appliance_id=enrolled.appliance_id, name_filter=name, register=True, timeout_seconds=30
                )
            )
            [vm] = found.vm_contexts
            yield Setup(channel, vcenter, source, vm.id)


def same_as_source(setup: Setup, replica: Path, key: int, size: int) -> bool:
    return replica.read_bytes()[:size] == setup.vcenter.disk_path(setup.source.uuid, key).read_bytes()[:size]


async def logged(channel: grpc.aio.Channel, job_id: str, step: str, *texts: str) -> list[str]:
    """Wait until the job's log has an entry of `step` holding every one of `texts`; the job's log messages."""
    messages: list[str] = []

    async def found() -> bool:
        entries = await log_of(channel, job_id)
        messages[:] = [e.message for e in entries]
        return any(e.step == step and all(t in e.message for t in texts) for e in entries)

    await until(found, f"a {step} entry with {texts} in the log of job {job_id}")
    return messages


def corrupt_once(monkeypatch: pytest.MonkeyPatch, where: Callable[[SourceHasher, int], bool], at: int) -> list[int]:
    """The agent writes one byte of the 16 MiB disk other than it read and hashed it: byte `at` of the first data
    chunk (offset) `where` accepts. Returns the list that gets the block it was in."""
    add = SourceHasher.add
    corrupted: list[int] = []

    def corrupting_add(self: SourceHasher, offset: int, data: memoryview, *, zero: bool = False) -> None:
        add(self, offset, data, zero=zero)
        if not corrupted and not zero and self.capacity == 16 * MIB and where(self, offset):
            data[at] ^= 0x01
            corrupted.append((offset + at) // BLOCK_SIZE)

    monkeypatch.setattr(SourceHasher, "add", corrupting_add)
    return corrupted


async def repair_of(channel: grpc.aio.Channel, vm_id: str, job_id: str) -> R.ReplicationJob:
    """The repair sync the OMA started by itself after `job_id`, once it ended."""
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)

    async def started() -> bool:
        jobs = (await stub.ListReplicationJobs(R.ListReplicationJobsRequest(vm_context_id=vm_id))).jobs
        return any(j.retry_of == job_id and j.status == R.REPLICATION_JOB_STATUS_COMPLETED for j in jobs)

    await until(started, f"the repair sync after {job_id}")
    jobs = (await stub.ListReplicationJobs(R.ListReplicationJobsRequest(vm_context_id=vm_id))).jobs
    return next(j for j in jobs if j.retry_of == job_id)


async def test_a_byte_flipped_at_rest_is_repaired_by_recopying_only_its_block(oma: OmaServer, tmp_path: Path) -> None:
    async with replicated(oma, tmp_path, "repair-01") as setup:
        channel = setup.channel
        first = await sync(channel, setup.vm_id)
        await replicas_released(channel, setup.vm_id)
        entries = await log_of(channel, first.id)
        compared = [e.message for e in entries if e.step == "verify"]
        assert len(compared) == 2 and all("every one of them compared" not in m for m in compared), compared
        assert all(
            "4 of them compared with the appliance's source hashes" in m or "8 of them compared" in m for m in compared
        ), compared
        vm = await get_vm(channel, setup.vm_id)
        good, bad = vm.disks[0], vm.disks[1]  # 4 blocks, 8 blocks
        assert [d.verification.source_blocks_compared for d in vm.disks] == [4, 8]  # a full copy: every block
        shown = await run_omactl(target_of(oma), "vms", "show", setup.vm_id)
        assert shown.code == 0 and "8 block(s) compared" in shown.out, shown
        bad_replica = await replica_file(oma, bad.volume_id)
        flip(bad_replica, 3 * BLOCK_SIZE + 4321)  # the storage rots block 3

        check = await wait_job(oma, channel, (await verify(channel, setup.vm_id)).id)
        assert check.status == FAILED and check.error.reason == "REPLICA_MISMATCH", check.error
        assert f"disk {bad.key}: block(s) 3" in check.error.message
        assert not (await gate(channel, setup.vm_id)).passed

        repair = await sync(channel, setup.vm_id)
        disks = {d.disk_id: d for d in repair.disks}
        assert repair.kind == R.REPLICATION_JOB_KIND_INCREMENTAL
        assert disks[bad.id].mode == jobs_pb2.COPY_MODE_INCREMENTAL and not disks[bad.id].full_copy_reason
        # exactly the bad block: the guest wrote nothing, so CBT adds nothing, and the good disk copies nothing
        assert disks[bad.id].bytes_total == BLOCK_SIZE, disks[bad.id]
        assert disks[good.id].bytes_total == 0, disks[good.id]
        entries = await log_of(channel, repair.id)
        assert any(
            e.step == "repair" and f"disk {bad.key}: incremental, recopying block(s) 3 " in e.message for e in entries
        ), [e.message for e in entries]

        await replicas_released(channel, setup.vm_id)  # after the read-back
        entries = await log_of(channel, repair.id)
        read_back = [e.message for e in entries if e.step == "verify" and f"disk {bad.key}" in e.message]
        assert any(" verified: " in m and "read back 1 of 8 block(s)" in m for m in read_back), read_back
        assert (await gate(channel, setup.vm_id)).passed
        again = await wait_job(oma, channel, (await verify(channel, setup.vm_id)).id)
        assert again.status == COMPLETED, again.error
        assert (await get_vm(channel, setup.vm_id)).status == VM_READY
        assert same_as_source(setup, bad_replica, bad.key, 16 * MIB)

        shown = await run_omactl(target_of(oma), "--json", "jobs", "log", repair.id)
        assert shown.code == 0, shown
        assert "recopying block(s) 3" in json.dumps(json.loads(shown.out))


async def test_a_write_that_differs_from_the_source_is_found_by_the_read_back_and_repaired(
    oma: OmaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a byte of the 16 MiB disk's first data chunk past 2 MiB
    corrupted = corrupt_once(monkeypatch, lambda hasher, offset: offset >= 2 * MIB, at=100)
    async with replicated(oma, tmp_path, "repair-02") as setup:
        channel = setup.channel
        first = await sync(channel, setup.vm_id)
        assert corrupted, "the copy never wrote the corrupted block"
        block = corrupted[0]
        repair = await repair_of(channel, setup.vm_id, first.id)
        entries = await log_of(channel, first.id)
        vm = await get_vm(channel, setup.vm_id)
        bad = vm.disks[1]
        verify_bad = [e for e in entries if e.step == "verify" and f"disk {bad.key}" in e.message]
        assert any(f"DIFFERS from the source in block(s) {block}" in e.message for e in verify_bad), verify_bad
        await logged(channel, first.id, "repair", f"repair sync {repair.id} started", f"block(s) {block}")

        disks = {d.disk_id: d for d in repair.disks}
        assert disks[bad.id].mode == jobs_pb2.COPY_MODE_INCREMENTAL and disks[bad.id].bytes_total == BLOCK_SIZE
        assert disks[vm.disks[0].id].bytes_total == 0
        await replicas_released(channel, setup.vm_id)
        assert (await gate(channel, setup.vm_id)).passed
        assert same_as_source(setup, await replica_file(oma, bad.volume_id), bad.key, 16 * MIB)
        repaired = [e.message for e in await log_of(channel, repair.id) if e.step == "verify"]
        assert any("1 of them compared with the appliance's source hashes" in m for m in repaired), repaired


async def test_an_appliance_that_lies_about_a_block_is_found_and_failover_stays_refused(
    oma: OmaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = SourceHasher.runs

    def lying_runs(self: SourceHasher) -> list[tuple[int, int, bytes]]:
        out = []
        for first, count, hashes in runs(self):
            if self.capacity == 16 * MIB and first <= 6 < first + count and hashes:
                at = (6 - first) * 32
                hashes = hashes[:at] + bytes(32) + hashes[at + 32 :]  # block 6's hash is a lie
            out.append((first, count, hashes))
        return out

    monkeypatch.setattr(SourceHasher, "runs", lying_runs)
    async with replicated(oma, tmp_path, "repair-03") as setup:
        channel = setup.channel
        first = await sync(channel, setup.vm_id)
        repair = await repair_of(channel, setup.vm_id, first.id)
        await replicas_released(channel, setup.vm_id)
        vm = await get_vm(channel, setup.vm_id)
        bad = vm.disks[1]
        await logged(channel, repair.id, "repair", "no further automatic repair", f"disk {bad.key}: block(s) 6")
        jobs = (
            await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
                R.ListReplicationJobsRequest(vm_context_id=setup.vm_id)
            )
        ).jobs
        assert len(jobs) == 2  # the sync and one repair: no loop
        check = await gate(channel, setup.vm_id)
        assert (
            not check.passed
            and f"disk {bad.key}" in check.reason
            and "differs from the source in block(s) 6" in (check.reason)
        ), check.reason
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await failover_stub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id=setup.vm_id, kind=TEST)
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        shown = await vms_stub(channel).GetVmContext(vm_context_pb2.GetVmContextRequest(id=setup.vm_id))
        v = {d.id: d.verification for d in shown.vm_context.disks}[bad.id]
        assert v.check_outcome == "mismatch" and [(m.first, m.count) for m in v.mismatched] == [(6, 1)]
        assert v.check_job_id == repair.id
        # the replica itself is the source: it is the appliance's word that was wrong
        assert same_as_source(setup, await replica_file(oma, bad.volume_id), bad.key, 16 * MIB)


async def test_an_incremental_proves_every_block_it_read_and_a_bad_piece_is_repaired(
    oma: OmaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicated(oma, tmp_path, "repair-04") as setup:
        channel = setup.channel
        await sync(channel, setup.vm_id)
        await replicas_released(channel, setup.vm_id)
        setup.vcenter.guest_write(setup.source.uuid, 5, seed=4)
        # in the incremental: a piece of a block the guest changed in part
        corrupted = corrupt_once(monkeypatch, lambda hasher, offset: offset // BLOCK_SIZE in hasher._pieces_of, at=0)
        incremental = await sync(channel, setup.vm_id)
        assert corrupted, "no piece of a partly changed block was copied"
        repair = await repair_of(channel, setup.vm_id, incremental.id)
        vm = await get_vm(channel, setup.vm_id)
        bad = vm.disks[1]
        messages = await logged(channel, incremental.id, "verify", f"disk {bad.key}", "DIFFERS from the source")
        assert any(f"DIFFERS from the source in block(s) {corrupted[0]}" in m for m in messages), messages
        assert any("copied in part, by their pieces" in m for m in messages), messages
        await replicas_released(channel, setup.vm_id)
        assert (await gate(channel, setup.vm_id)).passed
        assert same_as_source(setup, await replica_file(oma, bad.volume_id), bad.key, 16 * MIB)
        good = vm.disks[0]
        assert same_as_source(setup, await replica_file(oma, good.volume_id), good.key, 8 * MIB)
        assert {d.disk_id: d.bytes_total for d in repair.disks}[bad.id] >= BLOCK_SIZE
        # the good disk's incremental: every block read back was compared, the partly changed ones by their pieces
        messages = await logged(channel, incremental.id, "verify", f"disk {good.key}: replica", " verified: ")
        [entry] = [m for m in messages if f"disk {good.key}: replica" in m and " verified: " in m]
        found = re.search(r"read back (\d+) of 4 block\(s\).*\((\d+) of them compared", entry)
        assert found and found[1] == found[2] and int(found[1]) > 0, entry
