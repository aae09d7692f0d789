"""The source's block hashes on the stream (vma.v1.BlockHashes) through the real API, the VMA side played message by
message (RawStream) over the supervised nbdkit and the CloudStack simulator: each event is checked whole before
anything of it is stored (a StreamError naming the field; nothing kept), and hashes that disagree with what reached
the replica are found by the read-back, which asks the appliance — here one with the "repair-extents" capability —
to recopy exactly those blocks in a repair sync it starts by itself."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from oma_server.db.integrity_models import SourceHashRun, SourcePieceHash
from oma_server.db.models import ReplicationJob
from oma_server.integrity.blocks import BLOCK_SIZE
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import RawStream, enroll, inventory, nbdcopy
from tests.integrity.test_at_rest import gate, log_of
from tests.integrity.test_verification import disk_done
from tests.test_replication_workflow import completed_for, oma, register, start, started_for  # noqa: F401
from tests.waiting import until
from vma.v1 import stream_pb2

pytestmark = pytest.mark.nbd
MIB = 1 << 20


def hashes_of(data: bytes) -> bytes:
    return b"".join(hashlib.sha256(data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(data), BLOCK_SIZE))


def block_hashes(
    job_id: str, seq: int, disk_id: str, *runs: stream_pb2.BlockHashRun, **kw: object
) -> stream_pb2.JobEvent:
    fields: dict[str, object] = {"algorithm": "sha256", "block_size": BLOCK_SIZE, **kw}
    event = stream_pb2.BlockHashes(disk_id=disk_id, runs=list(runs), **fields)  # type: ignore[arg-type]
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, block_hashes=event)


def run(first: int, count: int, hashes: bytes = b"") -> stream_pb2.BlockHashRun:
    return stream_pb2.BlockHashRun(first_block=first, count=count, hashes=hashes)


def piece(offset: int, length: int, value: bytes) -> stream_pb2.PieceHash:
    return stream_pb2.PieceHash(offset=offset, length=length, hash=value)


def with_pieces(job_id: str, seq: int, disk_id: str, *pieces: stream_pb2.PieceHash) -> stream_pb2.JobEvent:
    event = stream_pb2.BlockHashes(disk_id=disk_id, algorithm="sha256", block_size=BLOCK_SIZE, pieces=list(pieces))
    return stream_pb2.JobEvent(job_id=job_id, sequence=seq, block_hashes=event)


@dataclass
class RawJob:
    vm_id: str
    job_id: str
    stream: RawStream
    disks: list[stream_pb2.DiskTarget]


async def raw_job(channel: grpc.aio.Channel, disk_mib: tuple[int, ...], capabilities: tuple[str, ...] = ()) -> RawJob:
    """A VM registered, its replication started and its command received by an appliance played message by message."""
    enrolled = await enroll(channel)
    vm_id = await register(channel, enrolled, inventory(disk_mib=disk_mib))
    job = await start(channel, vm_id)
    stream = RawStream(channel)
    await stream.hello(enrolled, capabilities=list(capabilities))
    command = (await stream.recv_until("command", timeout=20)).command.start_replication
    return RawJob(vm_id, job.id, stream, list(command.disks))


async def test_block_hashes_are_checked_whole_and_a_refused_event_stores_nothing(
    oma: OmaServer,  # noqa: F811
) -> None:
    app = oma.app
    async with oma_channel(oma) as channel:
        raw = await raw_job(channel, (16,))  # 8 blocks
        job, stream, disk = raw.job_id, raw.stream, raw.disks[0].disk_id
        await stream.send(event=started_for(job, 1))
        await stream.recv_until("ack", job_id=job, sequence=1)
        h = os.urandom(32)
        bad = [
            (block_hashes(job, 2, disk, run(0, 1, h), algorithm="md5"), "sha256 over 2097152-byte blocks only"),
            (block_hashes(job, 2, disk, run(0, 1, h), block_size=4096), "over 4096-byte blocks"),
            (block_hashes(job, 2, disk), "has 0 block(s)"),
            (block_hashes(job, 2, disk, run(0, 0)), "runs[0].count is 0"),
            (block_hashes(job, 2, disk, run(0, 1, h[:31])), "runs[0].hashes has 31 bytes"),
            (block_hashes(job, 2, disk, run(0, 2), run(1, 1, h)), "runs[1] starts at block 1"),
            (block_hashes(job, 2, disk, run(0, 32_769)), "has 32769 block(s)"),
            (block_hashes(job, 2, disk, run(7, 2)), "reach past its end (8 block(s)"),
            (block_hashes(job, 2, "no-such-disk", run(0, 1, h)), "is not part of job"),
            (block_hashes(job, 2, "", run(0, 1, h)), "block_hashes.disk_id"),
            (with_pieces(job, 2, disk, piece(BLOCK_SIZE - 10, 20, h)), "pieces[0] (20 bytes at 2097142) must lie"),
            (with_pieces(job, 2, disk, piece(0, BLOCK_SIZE, h)), "shorter than it"),
            (with_pieces(job, 2, disk, piece(0, 0, h)), "pieces[0] (0 bytes"),
            (with_pieces(job, 2, disk, piece(0, 10, h[:31])), "pieces[0].hash has 31 bytes"),
            (with_pieces(job, 2, disk, piece(100, 10, h), piece(105, 10, h)), "pieces[1] starts at 105"),
            (with_pieces(job, 2, disk, piece(16 * MIB + 5, 10, h)), "reach past its end"),
        ]
        for event, text in bad:
            await stream.send(event=event)
            error = (await stream.recv_until("error", job_id=job, sequence=2)).error
            assert error.code == stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE, (text, error)
            assert text in error.message, (text, error.message)
        assert await app.db.run(lambda: SourceHashRun.select().count() + SourcePieceHash.select().count()) == 0
        # a valid one is stored and acked; sent again (a resend after a cut) it replaces, never doubles
        for seq in (2, 3):
            await stream.send(event=block_hashes(job, seq, disk, run(0, 2, h + h), run(5, 3)))
            await stream.recv_until("ack", job_id=job, sequence=seq)
        stored = await app.db.run(lambda: [(r.first_block, r.count, r.hashes) for r in SourceHashRun.select()])
        assert sorted((f, n, bytes(v) if v is not None else None) for f, n, v in stored) == [
            (0, 2, h + h),
            (5, 3, None),
        ]
        for seq in (4, 5):  # pieces too: the resend replaces them
            await stream.send(
                event=with_pieces(job, seq, disk, piece(2 * BLOCK_SIZE + 7, 9, h), piece(3 * BLOCK_SIZE, 1, h))
            )
            await stream.recv_until("ack", job_id=job, sequence=seq)
        kept = await app.db.run(lambda: sorted((r.offset, r.length, bytes(r.hash)) for r in SourcePieceHash.select()))
        assert kept == [(2 * BLOCK_SIZE + 7, 9, h), (3 * BLOCK_SIZE, 1, h)]
        await stream.close()


async def test_hashes_that_disagree_with_the_replica_start_a_repair_of_exactly_those_blocks(
    oma: OmaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = oma.app
    assert app.workflow is not None
    async with oma_channel(oma) as channel:
        raw = await raw_job(channel, (16,), ("copied-extents", "repair-extents"))
        vm_id, job, stream, target = raw.vm_id, raw.job_id, raw.stream, raw.disks[0]
        source = bytearray(os.urandom(16 * MIB))
        written = bytearray(source)
        written[5 * BLOCK_SIZE + 9] ^= 0x80  # what reached the target is not what the appliance read in block 5
        (tmp_path / "written.raw").write_bytes(bytes(written))
        await nbdcopy(tmp_path / "written.raw", target.nbd_uri)
        await stream.send(event=started_for(job, 1))
        await stream.send(event=block_hashes(job, 2, target.disk_id, run(0, 8, hashes_of(bytes(source)))))
        await stream.send(event=disk_done(job, 3, target.disk_id, "cid-1", [(0, 16 * MIB)]))
        await stream.send(event=completed_for(job, 4))
        await stream.recv_until("ack", job_id=job, sequence=4)

        # the read-back finds block 5, the gate refuses, and the OMA asks at once for block 5 again
        repair = (await stream.recv_until("command", timeout=20)).command.start_replication
        assert repair.job_id != job
        [again] = repair.disks
        assert again.previous_change_id == "cid-1"  # an incremental
        assert [(e.offset, e.length) for e in again.repair_extents.extents] == [(5 * BLOCK_SIZE, BLOCK_SIZE)]
        notes = [e.message for e in await log_of(channel, job) if e.step == "verify"]
        assert any("DIFFERS from the source in block(s) 5" in m and "8 of them compared" in m for m in notes), notes
        check = await gate(channel, vm_id)
        assert not check.passed and "differs from the source in block(s) 5" in check.reason, check.reason

        # the appliance recopies that block (the source unchanged meanwhile) and hashes it: verified
        (tmp_path / "source.raw").write_bytes(bytes(source))
        await nbdcopy(tmp_path / "source.raw", again.nbd_uri)
        await stream.send(event=started_for(repair.job_id, 1))
        block5 = hashes_of(bytes(source))[5 * 32 : 6 * 32]
        await stream.send(event=block_hashes(repair.job_id, 2, again.disk_id, run(5, 1, block5)))
        await stream.send(event=disk_done(repair.job_id, 3, again.disk_id, "cid-2", [(5 * BLOCK_SIZE, BLOCK_SIZE)]))
        await stream.send(event=completed_for(repair.job_id, 4))
        await stream.recv_until("ack", job_id=repair.job_id, sequence=4)
        await app.workflow.settled(repair.job_id)

        async def verified() -> bool:
            return (await gate(channel, vm_id)).passed

        await until(verified, "the repaired replica verified")
        notes = [e.message for e in await log_of(channel, repair.job_id) if e.step == "verify"]
        assert any("read back 1 of 8 block(s)" in m and "1 of them compared" in m for m in notes), notes
        await stream.close()


async def test_a_disk_is_read_back_as_soon_as_it_completes_while_the_others_still_copy(
    oma: OmaServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = oma.app
    assert app.workflow is not None
    async with oma_channel(oma) as channel:
        raw = await raw_job(channel, (8, 4))
        vm_id, job, stream, (first, second) = raw.vm_id, raw.job_id, raw.stream, raw.disks
        await stream.send(event=started_for(job, 1))
        sources = {}
        for i, target in enumerate((first, second)):
            sources[target.disk_id] = tmp_path / f"src-{i}.raw"
            sources[target.disk_id].write_bytes(os.urandom((8, 4)[i] * MIB))
        await nbdcopy(sources[first.disk_id], first.nbd_uri)
        data = sources[first.disk_id].read_bytes()
        await stream.send(event=block_hashes(job, 2, first.disk_id, run(0, 4, hashes_of(data))))
        await stream.send(event=disk_done(job, 3, first.disk_id, "cid-a", None))

        async def first_verified() -> bool:
            entries = [e for e in await log_of(channel, job) if e.step == "verify"]
            return any(" verified: " in e.message and e.HasField("finished_at") for e in entries)

        # the first disk's read-back ends while the job is still copying the second
        await until(first_verified, "the first disk's read-back during the job")
        running = (await app.db.run(ReplicationJob.get_by_id, job)).status
        assert running == "replicating", running
        await nbdcopy(sources[second.disk_id], second.nbd_uri)
        await stream.send(event=disk_done(job, 4, second.disk_id, "cid-b", None))
        await stream.send(event=completed_for(job, 5))
        await stream.recv_until("ack", job_id=job, sequence=5)
        await app.workflow.settled(job)
        verify = [e.message for e in await log_of(channel, job) if e.step == "verify"]
        assert len(verify) == 2, verify  # one read-back per disk: the early one is not repeated at the job's end
        assert all(" verified: " in m for m in verify), verify
        assert (await gate(channel, vm_id)).passed
        await stream.close()
