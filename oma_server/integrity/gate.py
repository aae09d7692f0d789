"""The verification gate: a replica may be failed over only once the OMA has read it back at the disk's current
change id and recorded its block-hash map (`verifier.py`). Readiness checks it for test and live failover alike,
and a live failover checks it again after its final sync, before anything is deployed on the replicas.

Functions here run inside a database transaction (on a DB thread).
"""

from __future__ import annotations

from dataclasses import dataclass

from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Disk
from oma_server.integrity.blocks import BlockRange
from oma_server.integrity.blocks import describe as describe_ranges


@dataclass(frozen=True)
class UnverifiedDisk:
    key: int
    disk_id: str
    change_id: str
    #: "pending" (synced, not read back: running, failed or cut short), "missing" (no map at this change id) or
    #: "mismatch" (an on-demand verification at rest found blocks that differ from the map: `ranges`) or "differs"
    #: (the read-back of its sync found blocks that differ from the source's hashes the appliance sent: `ranges`)
    state: str
    ranges: tuple[BlockRange, ...] = ()


def unverified_disks(vm_context_id: str) -> list[UnverifiedDisk]:
    """The VM's disks whose replica has no verified map at the disk's current change id (disks without a change id
    are left to the `disks_replicated` check)."""
    out = []
    for disk in Disk.select().where(Disk.vm_context == vm_context_id).order_by(Disk.unit_number, Disk.key):
        if not disk.last_change_id:
            continue
        row = BlockMap.get_or_none((BlockMap.disk == disk.id) & (BlockMap.change_id == disk.last_change_id))
        if row is None or row.status != "verified":
            state = "missing" if row is None else "pending"
            out.append(UnverifiedDisk(disk.key, disk.id, disk.last_change_id, state))
        elif row.check_outcome == "mismatch":
            ranges = tuple((int(f), int(n)) for f, n in row.check_mismatched or [])
            state = "differs" if row.check_job_id == row.job_id else "mismatch"
            out.append(UnverifiedDisk(disk.key, disk.id, disk.last_change_id, state, ranges))
    return out


def _what(d: UnverifiedDisk) -> str:
    if d.state == "mismatch":
        return f"was found at rest to differ from its map in block(s) {describe_ranges(d.ranges)} (VerifyVmContext)"
    if d.state == "differs":
        return (
            f"differs from the source in block(s) {describe_ranges(d.ranges)} (its sync's read-back against the "
            "appliance's block hashes)"
        )
    return "was synced but not read back" if d.state == "pending" else "has no block-hash map"


def describe(unverified: list[UnverifiedDisk]) -> str:
    """One sentence naming each unverified disk and what to do."""
    parts = [f"disk {d.key} at change id {d.change_id} {_what(d)}" for d in unverified]
    repair = " (it recopies the blocks that differ)" if any(d.ranges for d in unverified) else ""
    return (
        "; ".join(parts) + ": the replica is not proven identical to the source; run an incremental replication "
        f"(its read-back verifies the replica){repair} and let it complete"
    )
