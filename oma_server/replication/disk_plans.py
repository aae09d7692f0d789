"""What each disk of a new replication job copies: full or incremental, from which change id, why a full copy was
chosen, and which blocks an incremental recopies to repair a replica found different (by a sync's read-back
against the source's hashes, or by VerifyVmContext at rest)."""

from __future__ import annotations

from oma_server.db.integrity_models import BlockMap
from oma_server.integrity.at_rest import mismatched_ranges
from oma_server.integrity.blocks import BLOCK_SIZE, BlockRange, block_extents, blocks_of, count_of, describe
from oma_server.joblog import note
from oma_server.replication.state_machine import DiskState
from oma_server.vm_contexts.service import VmView

#: the Hello capability of an appliance that copies DiskTarget.repair_extents on top of the changed areas
REPAIR_CAPABILITY = "repair-extents"


def plan_disks(view: VmView, kind: str, *, repair_blocks: bool = False) -> list[DiskState]:
    """Per disk: full or incremental, the change id to start from, and why a full copy was chosen.

    A replica a verification found different at rest is repaired: with `repair_blocks` (the appliance recopies
    extents it is given, capability "repair-extents") its incremental also copies exactly the mismatching blocks;
    otherwise the disk is copied whole."""
    plan = []
    for d in view.disks:
        disk = d.disk
        reason = ""
        repair: tuple[tuple[int, int], ...] = ()
        found = _found_at_rest(d.verification, disk.last_change_id)
        if kind == "initial":
            reason = "initial replication"
        elif not disk.last_change_id:
            reason = "no previous change id for this disk"
        elif disk.replicated_capacity_bytes and disk.replicated_capacity_bytes != disk.capacity_bytes:
            reason = f"disk resized from {disk.replicated_capacity_bytes} to {disk.capacity_bytes} bytes"
        elif found is not None and repair_blocks:
            repair = tuple(block_extents(found[1], disk.capacity_bytes))
        elif found is not None:
            reason = found[0]
        full = bool(reason)
        plan.append(
            DiskState(
                disk_id=disk.id,
                disk_key=disk.key,
                bytes_total=disk.capacity_bytes if full else 0,
                mode="full" if full else "incremental",
                previous_change_id="" if full else disk.last_change_id,
                full_copy_reason="" if kind == "initial" else reason,
                repair_extents=repair,
            )
        )
    return plan


def _found_at_rest(verified: BlockMap | None, change_id: str) -> tuple[str, list[BlockRange]] | None:
    """What an on-demand verification found different at rest in a disk's replica at `change_id` (integrity/
    at_rest.py) and the mismatching block ranges, None when it found nothing."""
    ranges = mismatched_ranges(verified if verified is not None and verified.change_id == change_id else None)
    if not ranges:
        return None
    assert verified is not None
    found = (
        f"verification job {verified.check_job_id} found the replica different at rest in block(s) {describe(ranges)}"
    )
    return found, ranges


def plan_notes(job_id: str, disks: list[DiskState]) -> None:
    """The job log says why a disk is copied whole, or which blocks an incremental recopies to repair its replica."""
    for d in disks:
        if d.full_copy_reason:
            note(job_id, "plan", f"disk {d.disk_key}: full copy ({d.full_copy_reason})")
        elif d.repair_extents:
            ranges = blocks_of(d.repair_extents, max(o + n for o, n in d.repair_extents))
            note(
                job_id,
                "repair",
                f"disk {d.disk_key}: incremental, recopying block(s) {describe(ranges)} "
                f"({count_of(ranges)} of {BLOCK_SIZE // 2**20} MiB each) that a verification found different at rest",
            )
