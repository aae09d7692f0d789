"""A VM's recovery point and how it stands against its RPO target.

The recovery point is when the appliance began the VM's last completed sync whose replicas were all read back and
verified (oma_server/integrity): the moment the source's snapshot was taken, so the RPO is the data an operator
would lose failing over now. A completed sync whose read-back has not run yet, or failed, does not count: it is not
known to be on the replicas. The target comes from the schedule that targets the VM.

Functions without `async` run on a database thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import GroupMember, JobDisk, ReplicationJob, Schedule
from oma_server.schedules.store import TARGET_GROUP, TARGET_VM, schedule_reaching

NO_TARGET = "no_target"
MET = "met"
BREACHED = "breached"
#: completed jobs looked at per VM for the newest verified one
JOBS_LOOKED_AT = 20


@dataclass(frozen=True)
class RecoveryPoint:
    at: datetime
    job_id: str


@dataclass(frozen=True)
class RpoView:
    vm_context_id: str
    status: str  # NO_TARGET | MET | BREACHED
    reason: str
    target_s: int
    recovery_point: RecoveryPoint | None
    current_s: int
    schedule_id: str
    next_sync_at: datetime | None
    schedule_paused: bool

    @property
    def key(self) -> tuple[object, ...]:
        """What a watcher is told about when it changes (the age alone grows every second: not a change)."""
        point = self.recovery_point.job_id if self.recovery_point else ""
        return (self.status, point, self.schedule_id, self.next_sync_at, self.schedule_paused, self.target_s)


def recovery_point(vm_id: str) -> RecoveryPoint | None:
    jobs = (
        ReplicationJob.select(ReplicationJob.id, ReplicationJob.started_at, ReplicationJob.created_at)
        .where((ReplicationJob.vm_context == vm_id) & (ReplicationJob.status == "completed"))
        .order_by(ReplicationJob.finished_at.desc())
        .limit(JOBS_LOOKED_AT)
    )
    for job in jobs:
        disks = JobDisk.select().where(JobDisk.job == job.id).count()
        verified = BlockMap.select().where((BlockMap.job_id == job.id) & (BlockMap.status == "verified")).count()
        if disks and verified >= disks:
            return RecoveryPoint(job.started_at or job.created_at, job.id)
    return None


def schedule_of(vm_id: str) -> Schedule | None:
    """The schedule that syncs the VM: its own or its machine group's."""
    return schedule_reaching(vm_id)


def duration(seconds: float) -> str:
    """1h 05m, 12m 30s, 45s: an operator's reading of an age."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def assess(vm_id: str, schedule: Schedule | None, point: RecoveryPoint | None, now: datetime) -> RpoView:
    age = max(0, int((now - point.at).total_seconds())) if point else 0
    if schedule is None:
        reason = "no schedule targets this VM" + (f"; last verified sync {duration(age)} ago" if point else "")
        return RpoView(vm_id, NO_TARGET, reason, 0, point, age, "", None, False)
    target = int(schedule.rpo_target_seconds)
    if point is not None and age <= target:
        status = MET
        reason = f"last verified sync {duration(age)} ago (job {point.job_id}), within the target of {duration(target)}"
    else:
        status = BREACHED
        what = (
            f"last verified sync {duration(age)} ago (job {point.job_id}), over the target of {duration(target)}"
            if point
            else f"no completed and verified sync yet (target {duration(target)})"
        )
        why = "the schedule is paused" if schedule.paused else f"last slot: {schedule.last_outcome}"
        reason = f"{what}; {why}" if schedule.paused or schedule.last_outcome else what
    next_at = None if schedule.paused else schedule.next_run_at
    return RpoView(vm_id, status, reason, target, point, age, schedule.id, next_at, bool(schedule.paused))


def rpo_of(vm_ids: list[str], now: datetime) -> dict[str, RpoView]:
    """The RPO of each VM (on a database thread); a group member's target is its group schedule's."""
    schedules = {
        s.target_id: s
        for s in Schedule.select().where((Schedule.target_kind == TARGET_VM) & (Schedule.target_id.in_(vm_ids)))
    }
    groups = {m.vm_context_id: m.group_id for m in GroupMember.select().where(GroupMember.vm_context.in_(vm_ids))}
    if groups:
        by_group = {
            s.target_id: s
            for s in Schedule.select().where(
                (Schedule.target_kind == TARGET_GROUP) & (Schedule.target_id.in_(set(groups.values())))
            )
        }
        for vm_id, group_id in groups.items():
            if vm_id not in schedules and group_id in by_group:
                schedules[vm_id] = by_group[group_id]
    return {vm_id: assess(vm_id, schedules.get(vm_id), recovery_point(vm_id), now) for vm_id in vm_ids}


def scheduled_vms() -> list[str]:
    """Every VM a schedule syncs: targets of VM schedules and members of scheduled groups."""
    own = [s.target_id for s in Schedule.select(Schedule.target_id).where(Schedule.target_kind == TARGET_VM)]
    scheduled_groups = Schedule.select(Schedule.target_id).where(Schedule.target_kind == TARGET_GROUP)
    members = GroupMember.select(GroupMember.vm_context).where(GroupMember.group.in_(scheduled_groups))
    return own + [m.vm_context_id for m in members]
