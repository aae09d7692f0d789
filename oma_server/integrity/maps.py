"""Block-hash maps as the OMA stores them (`block_map`), one per disk and change id.

Functions here run inside a database transaction (on a DB thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from oma_server.db.integrity_models import BlockMap, SourceHashRun, SourcePieceHash
from oma_server.db.models import Disk, ReplicationJob, Volume
from oma_server.errors import MessageRejected
from oma_server.integrity.blocks import ALGORITHM, BLOCK_SIZE, HASH_SIZE, Extent, block_count, block_span, zero_hash

#: (first block, count, count x HASH_SIZE bytes, or b"" for all-zero blocks)
HashRun = tuple[int, int, bytes]
#: (offset, length, hash) of a piece of a block copied in part
PieceHash = tuple[int, int, bytes]


def record_sync(job_id: str, disk_id: str, change_id: str, extents: Sequence[Extent] | None) -> None:
    """A disk's sync to `change_id` finished: its map is pending until the replica is read back. `extents` are the
    byte ranges the sync covered, None when unknown (the whole disk is then read)."""
    disk = Disk.get_by_id(disk_id)
    fields = {
        "job_id": job_id,
        "status": "pending",
        "algorithm": ALGORITHM,
        "block_size": BLOCK_SIZE,
        "capacity_bytes": disk.capacity_bytes,
        "extents": None if extents is None else [list(e) for e in extents],
        "hashes": None,
        "digest": "",
        "blocks_read": 0,
        "source_compared": 0,
        "verified_at": None,
        "check_job_id": "",
        "checked_at": None,
        "check_outcome": "",
        "check_digest": "",
        "check_mismatched": None,
    }
    existing = BlockMap.get_or_none((BlockMap.disk == disk_id) & (BlockMap.change_id == change_id))
    if existing is None:
        BlockMap.create(disk=disk_id, change_id=change_id, **fields)
    else:
        BlockMap.update(**fields).where(BlockMap.id == existing.id).execute()


def pending_of_job(job_id: str) -> list[tuple[BlockMap, str]]:
    """The job's pending maps, each with the device path of its disk's replica ("" when not attached)."""
    out = []
    for row in BlockMap.select().where((BlockMap.job_id == job_id) & (BlockMap.status == "pending")):
        volume = (
            Volume.select()
            .where((Volume.disk == row.disk_id) & (Volume.state.not_in(["deleted"])))
            .order_by(Volume.created_at.desc())
            .first()
        )
        out.append((row, volume.device_path if volume is not None else ""))
    return out


def previous_verified(row: BlockMap) -> BlockMap | None:
    """The disk's newest verified map made the same way (capacity, block size, hash) other than `row`."""
    return (
        BlockMap.select()
        .where(
            (BlockMap.disk == row.disk_id)
            & (BlockMap.id != row.id)
            & (BlockMap.status == "verified")
            & (BlockMap.capacity_bytes == row.capacity_bytes)
            & (BlockMap.block_size == row.block_size)
            & (BlockMap.algorithm == row.algorithm)
        )
        .order_by(BlockMap.verified_at.desc(), BlockMap.id.desc())
        .first()
    )


def save_verified(map_id: int, hashes: bytes, digest: str, blocks_read: int, compared: int, at: datetime) -> None:
    BlockMap.update(
        status="verified",
        hashes=hashes,
        digest=digest,
        blocks_read=blocks_read,
        source_compared=compared,
        verified_at=at,
    ).where(BlockMap.id == map_id).execute()


def latest_verified(disk_id: str) -> BlockMap | None:
    return (
        BlockMap.select(
            BlockMap.id,
            BlockMap.disk,
            BlockMap.change_id,
            BlockMap.job_id,
            BlockMap.status,
            BlockMap.algorithm,
            BlockMap.block_size,
            BlockMap.capacity_bytes,
            BlockMap.digest,
            BlockMap.blocks_read,
            BlockMap.source_compared,
            BlockMap.verified_at,
            BlockMap.check_job_id,
            BlockMap.checked_at,
            BlockMap.check_outcome,
            BlockMap.check_digest,
            BlockMap.check_mismatched,
        )
        .where((BlockMap.disk == disk_id) & (BlockMap.status == "verified"))
        .order_by(BlockMap.verified_at.desc(), BlockMap.id.desc())
        .first()
    )


def unread_on_oma_vm() -> dict[str, list[str]]:
    """Completed jobs whose read-back a stop cut short while their replicas are still on the OMA VM: job id → the
    ids of its disks with a pending map there. A start reads them back before it lets them go (`verify_job`)."""
    rows = (
        BlockMap.select(BlockMap.job_id, BlockMap.disk)
        .join(ReplicationJob, on=(ReplicationJob.id == BlockMap.job_id))
        .switch(BlockMap)
        .join(Volume, on=(Volume.disk == BlockMap.disk))
        .where(
            (BlockMap.status == "pending")
            & (ReplicationJob.status == "completed")
            & (Volume.state == "attached_to_oma")
        )
    )
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.job_id, []).append(row.disk_id)
    return out


def record_source_hashes(
    job_id: str, disk_id: str, runs: Sequence[HashRun], pieces: Sequence[PieceHash], sequence: int
) -> None:
    """The source's hashes the appliance sent for a disk of a job: block runs replace what is stored for those
    blocks, pieces what is stored within their span (a resend after a cut is the same; a re-run of the disk's copy
    may send them again). Anything beyond the disk's capacity refuses the whole event."""
    capacity = Disk.get_by_id(disk_id).capacity_bytes
    blocks = block_count(capacity)
    end_block = runs[-1][0] + runs[-1][1] if runs else 0
    end_byte = pieces[-1][0] + pieces[-1][1] if pieces else 0
    if end_block > blocks or end_byte > capacity:
        raise MessageRejected(
            "INVALID_MESSAGE",
            f"block_hashes for disk {disk_id} reach past its end ({blocks} block(s) of {BLOCK_SIZE} bytes, "
            f"{capacity} bytes); nothing was applied",
            job_id,
            sequence,
        )
    for first, count, hashes in runs:
        SourceHashRun.delete().where(
            (SourceHashRun.job == job_id)
            & (SourceHashRun.disk == disk_id)
            & (SourceHashRun.first_block < first + count)
            & (SourceHashRun.first_block + SourceHashRun.count > first)
        ).execute()
        SourceHashRun.create(job=job_id, disk=disk_id, first_block=first, count=count, hashes=hashes or None)
    if pieces:
        SourcePieceHash.delete().where(
            (SourcePieceHash.job == job_id)
            & (SourcePieceHash.disk == disk_id)
            & (SourcePieceHash.offset >= pieces[0][0])
            & (SourcePieceHash.offset < end_byte)
        ).execute()
        rows = [{"job": job_id, "disk": disk_id, "offset": o, "length": n, "hash": h} for o, n, h in pieces]
        for start in range(0, len(rows), 1000):  # within every database's limit of bound parameters
            SourcePieceHash.insert_many(rows[start : start + 1000]).execute()


def source_pieces(job_id: str, disk_id: str) -> dict[int, list[PieceHash]]:
    """Block index → the source's hashes of the pieces of it the appliance copied in part in this job."""
    out: dict[int, list[PieceHash]] = {}
    query = SourcePieceHash.select().where((SourcePieceHash.job == job_id) & (SourcePieceHash.disk == disk_id))
    for row in query.order_by(SourcePieceHash.offset):
        out.setdefault(row.offset // BLOCK_SIZE, []).append((row.offset, row.length, bytes(row.hash)))
    return out


def source_hashes(job_id: str, disk_id: str, capacity: int) -> dict[int, bytes]:
    """Block index → the source's hash the appliance sent in this job (none: it sent no hashes for the disk)."""
    out: dict[int, bytes] = {}
    query = SourceHashRun.select().where((SourceHashRun.job == job_id) & (SourceHashRun.disk == disk_id))
    for run in query.order_by(SourceHashRun.first_block):
        values = bytes(run.hashes) if run.hashes is not None else b""
        for i in range(run.count):
            index = run.first_block + i
            if values:
                out[index] = values[i * HASH_SIZE : (i + 1) * HASH_SIZE]
            else:
                out[index] = zero_hash(block_span(index, capacity)[1])
    return out


def found_different_from_source(job_id: str) -> bool:
    """Whether the read-back of the job's sync found a replica different from the source's hashes (the sync's own
    check on a map it recorded)."""
    return (
        BlockMap.select()
        .where((BlockMap.job_id == job_id) & (BlockMap.check_job_id == job_id) & (BlockMap.check_outcome == "mismatch"))
        .exists()
    )
