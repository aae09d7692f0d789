"""Planning one disk of a job: a full or an incremental copy (and why), and where an interrupted copy resumes."""

from __future__ import annotations

import asyncio
from typing import Any

from oma.common.v1 import jobs_pb2
from vma_client_stubs.agent.copier import InvalidResumeToken, Plan, ResumePoint
from vma_client_stubs.agent.extents import Extent, allocated_extents
from vma_client_stubs.agent.runs import DiskRun, JobFailure
from vma_client_stubs.agent.vcenter import ChangeIdInvalid, DiskNotFound, FakeVCenter, Snapshot


async def plan_disk(vcenter: FakeVCenter, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
    """Fill `disk`'s plan from the snapshot: no previous change id → full copy into a fresh volume; previous change
    id invalid or capacity different from the OMA's → full copy, holes zeroed, reason logged; otherwise the changed
    extents and the repair extents the OMA named (blocks it found different on the replica). Then its resume point,
    from the token the OMA acknowledged."""
    target = disk.target
    log = log.bind(disk_id=target.disk_id)
    try:
        sdisk = snapshot.disk(target.disk_key)
    except DiskNotFound as exc:
        raise JobFailure("INVALID_COMMAND", f"disk {target.disk_id}: {exc}", target.disk_id) from exc
    disk.key = target.disk_key
    disk.snapshot_path = sdisk.path
    disk.capacity = sdisk.capacity_bytes
    changed, reason = await _changed_areas(vcenter, disk, snapshot, sdisk.capacity_bytes)
    if changed is not None:
        repair = _repair_extents(disk, sdisk.capacity_bytes)
        if repair:
            log.info(
                "disk {disk}: recopying {n} range(s), {mib:.1f} MiB, the OMA found different on the replica",
                disk=target.disk_id,
                n=len(repair),
                mib=sum(n for _, n in repair) / 2**20,
            )
        disk.plan = Plan.incremental([*changed, *repair])
        disk.mode = jobs_pb2.COPY_MODE_INCREMENTAL
        disk.fresh_target = False
    else:
        allocated = await asyncio.to_thread(allocated_extents, sdisk.path)
        # Only a volume the OMA created for this job is known to be all zeros; anything else gets zeros written.
        disk.fresh_target = target.target_is_new
        disk.plan = Plan.full(allocated, sdisk.capacity_bytes, fresh_target=disk.fresh_target)
        disk.mode = jobs_pb2.COPY_MODE_FULL
        if target.previous_change_id:
            log.warning("disk {disk}: full copy: {reason}", disk=target.disk_id, reason=reason)
        else:
            log.info("disk {disk}: full copy ({reason})", disk=target.disk_id, reason=reason)
    disk.record.mode = "incremental" if changed is not None else "full"
    disk.record.full_copy_reason = reason
    disk.record.bytes_total = disk.plan.total_bytes
    if disk.record.completed:
        disk.phase = jobs_pb2.COPY_PHASE_DONE
        return
    disk.phase = jobs_pb2.COPY_PHASE_QUERYING_CHANGES
    if disk.record.acked_token:
        _resume_point(disk, log)


async def _changed_areas(
    vcenter: FakeVCenter, disk: DiskRun, snapshot: Snapshot, capacity: int
) -> tuple[list[Extent] | None, str]:
    """(the extents changed since the previous change id, "") or (None, why the disk is copied whole)."""
    target = disk.target
    if not target.previous_change_id:
        return None, "no previous change id (initial copy)"
    if target.capacity_bytes and target.capacity_bytes != capacity:
        return None, f"disk resized from {target.capacity_bytes} to {capacity} bytes"
    try:
        changed = await asyncio.to_thread(
            vcenter.query_changed_areas, snapshot, target.disk_key, target.previous_change_id
        )
    except ChangeIdInvalid as exc:
        return None, f"previous change id invalid: {exc}"
    return changed, ""


def _repair_extents(disk: DiskRun, capacity: int) -> list[Extent]:
    """The byte ranges the OMA asks an incremental to copy too (DiskTarget.repair_extents), within the disk."""
    out = []
    for e in disk.target.repair_extents.extents:
        end = min(e.offset + e.length, capacity)
        if e.offset < end:
            out.append((e.offset, end - e.offset))
    return out


def _resume_point(disk: DiskRun, log: Any) -> None:
    assert disk.plan is not None
    try:
        point = ResumePoint.decode(disk.record.acked_token)
        point.check(disk.plan)
        disk.resume_from = point.done
        log.info(
            "disk {disk}: resuming at {done} of {total} bytes (acknowledged by the OMA)",
            disk=disk.target.disk_id,
            done=point.done,
            total=disk.plan.total_bytes,
        )
    except InvalidResumeToken as exc:
        log.warning(
            "disk {disk}: ignoring resume token ({err}); copying from the start", disk=disk.target.disk_id, err=exc
        )
        disk.record.acked_token = ""
