"""The verification gate: a replica may be failed over only once the OMA has read it back at the disk's current
change id and recorded its block-hash map (`verifier.py`). Readiness checks it for test and live failover alike,
and a live failover checks it again after its final sync, before anything is deployed on the replicas.

Functions here run inside a database transaction (on a DB thread).
"""

from __future__ import annotations

from dataclasses import dataclass

from oma_server.db.models import BlockMap, Disk


@dataclass(frozen=True)
class UnverifiedDisk:
    key: int
    disk_id: str
    change_id: str
    #: "pending" (synced, not read back: running, failed or cut short) or "missing" (no map at this change id)
    state: str


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
    return out


def describe(unverified: list[UnverifiedDisk]) -> str:
    """One sentence naming each unverified disk and what to do."""
    parts = [
        f"disk {d.key} at change id {d.change_id} "
        + ("was synced but not read back" if d.state == "pending" else "has no block-hash map")
        for d in unverified
    ]
    return (
        "; ".join(parts) + ": the replica is not proven identical to the source; run an incremental replication "
        "(its read-back verifies the replica) and let it complete"
    )
