"""Schedules as operators manage them: create, read, list, replace the spec, delete, pause, resume.

A spec is checked whole before anything is stored (timing.check_timing names the field). Every change that moves
a schedule's slots computes its next slot from now, so a change never makes a schedule due at once; the scheduler
is told through `on_change` after the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from oma_server.change_hooks import ChangeHooks
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import GroupMember, MachineGroup, Schedule, VmContext
from oma_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oma_server.pagination import fetch_page
from oma_server.schedules.timing import Timing, check_timing, next_slot, run_time

#: target kinds a schedule can have: a VM, or a machine group (each slot syncs every member)
TARGET_VM = "vm_context"
TARGET_GROUP = "machine_group"
TARGET_KINDS = (TARGET_VM, TARGET_GROUP)


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    target_kind: str  # "" on an update: the schedule's own
    target_id: str
    interval_s: int
    cron: str
    time_zone: str
    jitter_s: int
    rpo_target_s: int


def timing_of(row: Schedule) -> Timing:
    return Timing(row.interval_seconds, row.cron, row.time_zone, row.jitter_seconds, row.anchor_at)


def schedule_not_found(schedule_id: str) -> NotFound:
    return NotFound(
        f"schedule {schedule_id} does not exist; list them with ListSchedules",
        reason="SCHEDULE_NOT_FOUND",
        schedule_id=schedule_id,
    )


def target_vms(row: Schedule) -> list[VmContext]:
    """The VMs a schedule syncs (on a database thread): its VM, or its group's members by boot order."""
    if row.target_kind == TARGET_GROUP:
        query = (
            VmContext.select()
            .join(GroupMember, on=GroupMember.vm_context == VmContext.id)
            .where(GroupMember.group == row.target_id)
            .order_by(GroupMember.boot_order, VmContext.name)
        )
        return list(query)
    vm = VmContext.get_or_none(VmContext.id == row.target_id)
    return [vm] if vm is not None else []  # a VM context that is gone: the schedule waits to be deleted


def schedule_reaching(vm_id: str) -> Schedule | None:
    """The schedule that syncs a VM: its own, or its group's (a VM follows at most one)."""
    own = Schedule.get_or_none((Schedule.target_kind == TARGET_VM) & (Schedule.target_id == vm_id))
    if own is not None:
        return own
    member = GroupMember.get_or_none(GroupMember.vm_context == vm_id)
    if member is None:
        return None
    return Schedule.get_or_none((Schedule.target_kind == TARGET_GROUP) & (Schedule.target_id == member.group_id))


def _check_target(kind: str, target_id: str) -> None:
    """The target exists, and no VM would follow two schedules (in the caller's transaction)."""
    if kind == TARGET_VM:
        if VmContext.get_or_none(VmContext.id == target_id) is None:
            raise NotFound(
                f"VM context {target_id} does not exist; list them with ListVmContexts",
                reason="VM_CONTEXT_NOT_FOUND",
                vm_context_id=target_id,
            )
        member = GroupMember.get_or_none(GroupMember.vm_context == target_id)
        group = Schedule.get_or_none(
            (Schedule.target_kind == TARGET_GROUP) & (Schedule.target_id == (member.group_id if member else ""))
        )
        if group is not None:
            raise FailedPrecondition(
                f"VM context {target_id} is synced by schedule {group.id} of its machine group; a VM follows one "
                "schedule — update that one, or take the VM out of the group",
                reason="SCHEDULE_CONFLICT",
                schedule_id=group.id,
            )
        return
    if MachineGroup.get_or_none(MachineGroup.id == target_id) is None:
        raise NotFound(
            f"machine group {target_id} does not exist; list them with ListMachineGroups",
            reason="GROUP_NOT_FOUND",
            group_id=target_id,
        )
    members = GroupMember.select(GroupMember.vm_context).where(GroupMember.group == target_id)
    own = Schedule.get_or_none((Schedule.target_kind == TARGET_VM) & Schedule.target_id.in_(members))
    if own is not None:
        raise FailedPrecondition(
            f"VM context {own.target_id} of machine group {target_id} has schedule {own.id} of its own; a VM follows "
            "one schedule — delete that one first",
            reason="SCHEDULE_CONFLICT",
            schedule_id=own.id,
        )


def plan_next(row: Schedule) -> None:
    """Set the row's next slot and run time: the first slot after `row.updated_at` (the time of the change)."""
    slot = next_slot(timing_of(row), row.updated_at)
    row.next_slot_at = slot
    row.next_run_at = run_time(row.id, timing_of(row), slot)


class ScheduleStore:
    def __init__(self, db: Database, clock: Clock, min_interval_s: float) -> None:
        self.db = db
        self.clock = clock
        self.min_interval_s = min_interval_s
        #: called after a committed change (the scheduler looks again)
        self.on_change = ChangeHooks()

    def _check(self, spec: ScheduleSpec, prefix: str = "spec.") -> Timing:
        now = self.clock.now()
        timing = Timing(spec.interval_s, spec.cron.strip(), spec.time_zone.strip(), spec.jitter_s, now)
        check_timing(timing, spec.rpo_target_s, self.min_interval_s, now, prefix)
        return timing

    async def create(self, spec: ScheduleSpec, request_id: str = "") -> Schedule:
        if spec.target_kind not in TARGET_KINDS:
            raise InvalidArgument(
                "spec.target.kind is required: SCHEDULE_TARGET_KIND_VM_CONTEXT or SCHEDULE_TARGET_KIND_MACHINE_GROUP",
                reason="SCHEDULE_TARGET_INVALID",
                field="spec.target.kind",
            )
        if not spec.target_id:
            raise InvalidArgument("spec.target.id is required", reason="FIELD_REQUIRED", field="spec.target.id")
        timing = self._check(spec)
        now = self.clock.now()

        def insert() -> Schedule:
            if request_id:
                earlier = Schedule.get_or_none(Schedule.request_id == request_id)
                if earlier is not None:
                    if (earlier.target_kind, earlier.target_id) != (spec.target_kind, spec.target_id):
                        raise AlreadyExists(
                            f"request_id {request_id!r} was used for another schedule; use a new request_id",
                            reason="REQUEST_ID_REUSED",
                        )
                    return earlier
            _check_target(spec.target_kind, spec.target_id)
            existing = Schedule.get_or_none(
                (Schedule.target_kind == spec.target_kind) & (Schedule.target_id == spec.target_id)
            )
            if existing is not None:
                what = "VM context" if spec.target_kind == TARGET_VM else "machine group"
                raise AlreadyExists(
                    f"{what} {spec.target_id} has schedule {existing.id} already; update or delete that one",
                    reason="SCHEDULE_EXISTS",
                    schedule_id=existing.id,
                )
            row = Schedule(
                name=spec.name,
                target_kind=spec.target_kind,
                target_id=spec.target_id,
                interval_seconds=timing.interval_s,
                cron=timing.cron,
                time_zone=timing.time_zone,
                jitter_seconds=timing.jitter_s,
                rpo_target_seconds=spec.rpo_target_s,
                anchor_at=now,
                request_id=request_id or None,
                created_at=now,
                updated_at=now,
            )
            plan_next(row)
            row.save(force_insert=True)
            return row

        row = await self.db.tx(insert)
        logger.bind(schedule_id=row.id, vm_context_id=row.target_id).info(
            "schedule created; next sync at {at}", at=row.next_run_at
        )
        self.on_change()
        return row

    async def get(self, schedule_id: str) -> Schedule:
        row = await self.db.run(Schedule.get_or_none, Schedule.id == schedule_id)
        if row is None:
            raise schedule_not_found(schedule_id)
        return row

    async def list_schedules(self, page_size: int, page_token: str, target_id: str = "") -> tuple[list[Schedule], str]:
        def query() -> tuple[list[Schedule], str]:
            q = Schedule.select().order_by(Schedule.created_at, Schedule.id)
            if target_id:
                q = q.where(Schedule.target_id == target_id)
            return fetch_page(q, page_size, page_token)

        return await self.db.run(query)

    async def _change(self, schedule_id: str, change: Callable[[Schedule], None]) -> Schedule:
        def apply() -> Schedule:
            row = Schedule.get_or_none(Schedule.id == schedule_id)
            if row is None:
                raise schedule_not_found(schedule_id)
            change(row)
            row.save()
            return row

        row = await self.db.tx(apply)
        self.on_change()
        return row

    async def update(self, schedule_id: str, spec: ScheduleSpec) -> Schedule:
        timing = self._check(spec)
        now = self.clock.now()

        def replace(row: Schedule) -> None:
            if spec.target_id and (spec.target_kind, spec.target_id) != (row.target_kind, row.target_id):
                raise InvalidArgument(
                    f"spec.target cannot change (schedule {row.id} targets {row.target_id}); create another schedule",
                    reason="SCHEDULE_TARGET_IMMUTABLE",
                    field="spec.target",
                )
            timing_changed = (row.interval_seconds, row.cron, row.time_zone) != (
                timing.interval_s,
                timing.cron,
                timing.time_zone,
            )
            row.name = spec.name
            row.interval_seconds, row.cron, row.time_zone = timing.interval_s, timing.cron, timing.time_zone
            row.jitter_seconds = timing.jitter_s
            row.rpo_target_seconds = spec.rpo_target_s
            if timing_changed:
                row.anchor_at = now
            row.updated_at = now
            if not row.paused:
                plan_next(row)

        return await self._change(schedule_id, replace)

    async def delete(self, schedule_id: str) -> None:
        def remove() -> None:
            if Schedule.delete().where(Schedule.id == schedule_id).execute() == 0:
                raise schedule_not_found(schedule_id)

        await self.db.tx(remove)
        logger.bind(schedule_id=schedule_id).info("schedule deleted")
        self.on_change()

    async def pause(self, schedule_id: str) -> Schedule:
        now = self.clock.now()

        def pause(row: Schedule) -> None:
            if not row.paused:
                row.paused = True
                row.next_slot_at = row.next_run_at = None
                row.updated_at = now

        return await self._change(schedule_id, pause)

    async def resume(self, schedule_id: str) -> Schedule:
        now = self.clock.now()

        def resume(row: Schedule) -> None:
            if row.paused:
                row.paused = False
                row.updated_at = now
                plan_next(row)

        return await self._change(schedule_id, resume)
