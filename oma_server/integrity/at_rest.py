"""Verifying replicas at rest, on demand (VerifyVmContext): what is compared with what, and where the outcome goes.

Each disk's replica is read whole (the reader of the read-back, `reader.py`) and every block's hash compared with
the disk's verified block-hash map at its current change id — the map its last sync's read-back recorded. The
outcome is kept on that map (`block_map.check_*`): `passed`, or `mismatch` with the block ranges that differ. A
mismatch makes the disk unverified for the gate (gate.py: failover refused, naming the disk and its ranges) and its
next sync recopies the mismatching blocks on top of its changed areas (or the disk whole, from an appliance that
cannot: replication/disk_plans.py); that sync's read-back records a new map: the repair.

Functions here other than `mismatches` run inside a database transaction (on a DB thread).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Disk
from oma_server.errors import FailedPrecondition
from oma_server.integrity import gate
from oma_server.integrity.blocks import HASH_SIZE, BlockRange, block_count, describe, index_ranges

PASSED = "passed"
MISMATCH = "mismatch"


@dataclass(frozen=True)
class RestTarget:
    """One disk to verify: its verified map at its current change id."""

    disk_id: str
    key: int
    map_id: int
    change_id: str
    capacity_bytes: int
    hashes: bytes
    digest: str

    @property
    def blocks(self) -> int:
        return block_count(self.capacity_bytes)


class ReplicaMismatch(FailedPrecondition):
    default_reason = "REPLICA_MISMATCH"


def targets_of(vm_context_id: str) -> list[RestTarget]:
    """Every disk of the VM with its verified map at its current change id; FAILED_PRECONDITION
    (REPLICA_NOT_VERIFIED) naming the disks that have none to compare with."""
    unverified = [d for d in gate.unverified_disks(vm_context_id) if not d.ranges]  # a map to compare with
    if unverified:
        raise FailedPrecondition(
            "nothing to compare the replicas with: " + gate.describe(unverified) + ", then verify again",
            reason="REPLICA_NOT_VERIFIED",
            vm_context_id=vm_context_id,
            disk_ids=",".join(d.disk_id for d in unverified),
        )
    out = []
    for disk in Disk.select().where(Disk.vm_context == vm_context_id).order_by(Disk.unit_number, Disk.key):
        row = BlockMap.get_or_none((BlockMap.disk == disk.id) & (BlockMap.change_id == disk.last_change_id))
        if row is None or row.hashes is None:
            continue  # never replicated: the disks_replicated readiness check speaks for it
        out.append(
            RestTarget(disk.id, disk.key, row.id, row.change_id, row.capacity_bytes, bytes(row.hashes), row.digest)
        )
    if not out:
        raise FailedPrecondition(
            "the VM has no replicated disk to verify; replicate it first",
            reason="REPLICA_NOT_VERIFIED",
            vm_context_id=vm_context_id,
        )
    return out


def mismatches(expected: bytes | Mapping[int, bytes], read: Mapping[int, bytes]) -> list[BlockRange]:
    """The block ranges whose hash read differs from the expected one — a map's hashes in disk order, or the source's
    hashes by block (only the blocks it has are compared) — sorted and merged."""

    def want(index: int) -> bytes | None:
        if isinstance(expected, Mapping):
            return expected.get(index)
        return expected[index * HASH_SIZE : (index + 1) * HASH_SIZE]

    return index_ranges(i for i, value in read.items() if (w := want(i)) is not None and value != w)


def record_check(map_id: int, job_id: str, at: datetime, digest: str, mismatched: Sequence[BlockRange]) -> None:
    BlockMap.update(
        check_job_id=job_id,
        checked_at=at,
        check_outcome=MISMATCH if mismatched else PASSED,
        check_digest=digest,
        check_mismatched=[list(r) for r in mismatched] if mismatched else None,
    ).where(BlockMap.id == map_id).execute()


def mismatched_ranges(row: BlockMap | None) -> list[BlockRange]:
    """The ranges a map's last check found different (none unless its outcome is a mismatch)."""
    if row is None or row.check_outcome != MISMATCH or not row.check_mismatched:
        return []
    return [(int(f), int(n)) for f, n in row.check_mismatched]


def mismatch_text(key: int, ranges: Sequence[BlockRange]) -> str:
    return f"disk {key}: block(s) {describe(ranges)}"
