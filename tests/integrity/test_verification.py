"""Target-side verification through the real API: the CloudStack simulator, the supervised nbdkit, nbdcopy writing
the data and the VMA side played message by message (RawStream). After each sync the OMA reads the replica back —
every block after an initial, only the changed blocks after an incremental — and records the digest, visible in
GetVmContext and the job log."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from oma.v1 import job_pb2, job_pb2_grpc, vm_context_pb2, vm_context_pb2_grpc
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Volume
from oma_server.integrity.blocks import BLOCK_SIZE
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import RawStream, enroll, inventory, nbdcopy
from tests.integrity.test_blocks import imageio_checksum
from tests.omactl.conftest import run_omactl, target_of
from tests.test_replication_workflow import completed_for, oma, register, start, started_for  # noqa: F401
from vma.v1 import stream_pb2

pytestmark = pytest.mark.nbd
MIB = 1 << 20


def disk_done(
    job_id: str, seq: int, disk_id: str, change_id: str, copied: list[tuple[int, int]] | None
) -> stream_pb2.JobEvent:
    done = stream_pb2.DiskCompleted(disk_id=disk_id, change_id=change_id)
    if copied is not None:
        done.copied.SetInParent()
        done.copied.extents.extend(stream_pb2.ByteExtent(offset=o, length=n) for o, n in copied)
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, disk_completed=done)


async def vm_disks(channel: grpc.aio.Channel, vm_id: str) -> list[vm_context_pb2.Disk]:
    reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
        vm_context_pb2.GetVmContextRequest(id=vm_id)
    )
    return list(reply.vm_context.disks)


async def verify_notes(channel: grpc.aio.Channel, job_id: str) -> list[str]:
    entries = (
        await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
            job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000)
        )
    ).entries
    steps = [e for e in entries if e.step == "verify"]
    # each read-back is a step: started, finished, completed
    assert all(e.status == job_pb2.JOB_LOG_STATUS_COMPLETED and e.HasField("finished_at") for e in steps), steps
    return [e.message for e in steps]


def poke(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


async def test_initial_verifies_every_block_and_an_incremental_only_the_changed_ones(
    oma: OmaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = oma.app
    sim = app.simulator
    assert sim is not None and app.workflow is not None
    vm_inventory = inventory(disk_mib=(16, 5))  # 8 blocks; 3 blocks, the last one 1 MiB
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_id = await register(channel, enrolled, vm_inventory)
        job = await start(channel, vm_id)
        stream = RawStream(channel)
        await stream.hello(enrolled)
        command = (await stream.recv_until("command", timeout=20)).command.start_replication
        sources: dict[str, Path] = {}
        seq = 1
        await stream.send(event=started_for(job.id, seq))
        for i, target in enumerate(command.disks):
            size = vm_inventory.disks[i].capacity_bytes
            data = bytearray(os.urandom(size))
            data[BLOCK_SIZE : 2 * BLOCK_SIZE] = bytes(BLOCK_SIZE)  # a zero block
            sources[target.disk_id] = tmp_path / f"src-{i}.raw"
            sources[target.disk_id].write_bytes(bytes(data))
            await nbdcopy(sources[target.disk_id], target.nbd_uri)
            seq += 1
            # an initial is read back whole whatever the appliance says it copied
            await stream.send(event=disk_done(job.id, seq, target.disk_id, f"cid-{i}-1", [(0, 4096)]))
        seq += 1
        await stream.send(event=completed_for(job.id, seq))
        await stream.recv_until("ack", job_id=job.id, sequence=seq)
        await app.workflow.settled(job.id)

        disks = await vm_disks(channel, vm_id)
        for disk, blocks in zip(disks, (8, 3), strict=True):
            v = disk.verification
            assert disk.HasField("verification")
            assert v.digest == imageio_checksum(sources[disk.id].read_bytes())
            assert (v.algorithm, v.block_size, v.change_id, v.job_id) == (
                "sha256",
                BLOCK_SIZE,
                disk.last_change_id,
                job.id,
            )
            assert (v.blocks_read, v.block_count) == (blocks, blocks)
            assert v.source_blocks_compared == 0  # this appliance sends no block hashes
            assert v.HasField("verified_at")
        notes = await verify_notes(channel, job.id)
        assert len(notes) == 2 and all("read back 8 of 8" in n or "read back 3 of 3" in n for n in notes), notes
        first_digests = {d.id: d.verification.digest for d in disks}

        # incremental: disk 0 changes in blocks 1 and 5 (reported); disk 1 comes from a VMA that reports no extents
        job2 = await start(channel, vm_id)
        command2 = (await stream.recv_until("command", timeout=20)).command.start_replication
        assert command2.job_id == job2.id
        seq = 1
        await stream.send(event=started_for(job2.id, seq))
        disk0, disk1 = (t.disk_id for t in command2.disks)
        changed = [(BLOCK_SIZE + 10, 100), (5 * BLOCK_SIZE + 4096, 8192)]
        src0 = bytearray(sources[disk0].read_bytes())
        for offset, length in changed:
            src0[offset : offset + length] = os.urandom(length)
        sources[disk0].write_bytes(bytes(src0))
        for target in command2.disks:
            await nbdcopy(sources[target.disk_id], target.nbd_uri)
        volumes = {d.id: await app.db.run(Volume.get_by_id, d.volume_id) for d in disks}
        replica0 = sim.state.volume_file(volumes[disk0].cloudstack_id)
        # after the copy, the storage flips a byte in an unchanged block (3) and in a changed one (5)
        poke(replica0, 3 * BLOCK_SIZE + 77, b"\xff")
        poke(replica0, 5 * BLOCK_SIZE + 4096, bytes([src0[5 * BLOCK_SIZE + 4096] ^ 1]))
        seq += 1
        await stream.send(event=disk_done(job2.id, seq, disk0, "cid-0-2", changed))
        seq += 1
        await stream.send(event=disk_done(job2.id, seq, disk1, "cid-1-2", None))
        seq += 1
        await stream.send(event=completed_for(job2.id, seq))
        await stream.recv_until("ack", job_id=job2.id, sequence=seq)
        await app.workflow.settled(job2.id)

        after = {d.id: d for d in await vm_disks(channel, vm_id)}
        v0 = after[disk0].verification
        assert (v0.change_id, v0.job_id, v0.blocks_read, v0.block_count) == ("cid-0-2", job2.id, 2, 8)
        # only blocks 1 and 5 were read: block 5's flip is in the digest, block 3's is not (its hash is the map's)
        seen = bytearray(src0)
        seen[5 * BLOCK_SIZE + 4096] ^= 1
        assert v0.digest == imageio_checksum(bytes(seen)) != imageio_checksum(bytes(src0))
        v1 = after[disk1].verification
        assert (v1.change_id, v1.blocks_read, v1.block_count) == ("cid-1-2", 3, 3)
        assert v1.digest == first_digests[disk1]  # unchanged data, read back whole
        notes2 = await verify_notes(channel, job2.id)
        assert any("read back 2 of 8" in n for n in notes2), notes2
        assert any("read back 3 of 3" in n and "did not say which extents" in n for n in notes2), notes2
        # the maps are versioned per change id: both change ids of each disk are kept
        rows = await app.db.run(lambda: [(r.disk_id, r.change_id, r.status) for r in BlockMap.select()])
        expected = [(d, f"cid-{i}-{n}", "verified") for i, d in enumerate((disk0, disk1)) for n in (1, 2)]
        assert sorted(rows) == sorted(expected)
        # the operator sees the same: omactl vms show has the digest, the verified change id and what was read
        shown = await run_omactl(target_of(oma), "vms", "show", vm_id)
        assert shown.code == 0, shown
        line0 = next(line for line in shown.out.splitlines() if line.startswith(disk0) and "sha256:" in line)
        assert f"sha256:{v0.digest}" in line0 and "cid-0-2" in line0 and "2 of 8 (2 MiB)" in line0, line0
        assert line0.rstrip().endswith("yes")
        await stream.close()
