"""Machine groups as operators manage them: create, read, list, replace the spec, delete.

A spec is checked whole before anything is stored: its own fields first (name, members each once), then, in the
transaction, what it refers to (every VM context exists, none is in another group, no schedule conflict). A VM is
in at most one group, so a VM's group — and the schedule that reaches it through its group — is never ambiguous.

Functions without `async` run on a database thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import peewee as pw
from loguru import logger

from oma_server.change_hooks import ChangeHooks
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import GroupMember, GroupRun, MachineGroup, Schedule, VmContext
from oma_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oma_server.pagination import fetch_page
from oma_server.schedules.store import TARGET_GROUP, TARGET_VM

MAX_MEMBERS = 500


@dataclass(frozen=True)
class Member:
    vm_context_id: str
    boot_order: int


@dataclass(frozen=True)
class GroupSpec:
    name: str
    description: str
    members: tuple[Member, ...]


@dataclass(frozen=True)
class GroupView:
    """A group as the API shows it: members by boot order then VM name, its schedule and newest run."""

    group: MachineGroup
    members: tuple[Member, ...]
    schedule_id: str
    last_run_id: str


def group_not_found(group_id: str) -> NotFound:
    return NotFound(
        f"machine group {group_id} does not exist; list them with ListMachineGroups",
        reason="GROUP_NOT_FOUND",
        group_id=group_id,
    )


def check_spec(spec: GroupSpec) -> None:
    """The spec's own fields (INVALID_ARGUMENT naming the field); nothing is read."""
    if not spec.name.strip():
        raise InvalidArgument("spec.name is required", reason="FIELD_REQUIRED", field="spec.name")
    if len(spec.name) > 255:
        raise InvalidArgument("spec.name is longer than 255 characters", reason="FIELD_TOO_LONG", field="spec.name")
    if len(spec.description) > 1024:
        raise InvalidArgument(
            "spec.description is longer than 1024 characters", reason="FIELD_TOO_LONG", field="spec.description"
        )
    if len(spec.members) > MAX_MEMBERS:
        raise InvalidArgument(
            f"spec.members has {len(spec.members)} VMs; a group holds at most {MAX_MEMBERS}",
            reason="GROUP_TOO_LARGE",
            field="spec.members",
        )
    seen: set[str] = set()
    for i, member in enumerate(spec.members):
        field = f"spec.members[{i}].vm_context_id"
        if not member.vm_context_id:
            raise InvalidArgument(f"{field} is required", reason="FIELD_REQUIRED", field=field)
        if member.vm_context_id in seen:
            raise InvalidArgument(
                f"{field}: VM context {member.vm_context_id} is listed twice; list each VM once",
                reason="GROUP_MEMBER_DUPLICATE",
                field=field,
            )
        seen.add(member.vm_context_id)


def group_schedule(group_id: str) -> Schedule | None:
    return Schedule.get_or_none((Schedule.target_kind == TARGET_GROUP) & (Schedule.target_id == group_id))


def group_of(vm_id: str) -> MachineGroup | None:
    member = GroupMember.get_or_none(GroupMember.vm_context == vm_id)
    return member.group if member is not None else None


def members_of(group_id: str) -> list[Member]:
    rows = (
        GroupMember.select(GroupMember.vm_context, GroupMember.boot_order)
        .join(VmContext)
        .where(GroupMember.group == group_id)
        .order_by(GroupMember.boot_order, VmContext.name, VmContext.id)
        .tuples()
    )
    found: list[tuple[str, int]] = list(rows)  # type: ignore[arg-type]  # tuples(), not models
    return [Member(vm_id, boot_order) for vm_id, boot_order in found]


def active_run_of(group_id: str) -> GroupRun | None:
    return GroupRun.get_or_none((GroupRun.group_id == group_id) & GroupRun.status.in_(("running", "cancelling")))


def _check_members(group_id: str, spec: GroupSpec, scheduled: bool) -> None:
    """What the members refer to (in the caller's transaction)."""
    ids = [m.vm_context_id for m in spec.members]
    found = {vm.id for vm in VmContext.select(VmContext.id).where(VmContext.id.in_(ids))}
    for i, member in enumerate(spec.members):
        if member.vm_context_id not in found:
            raise NotFound(
                f"spec.members[{i}]: VM context {member.vm_context_id} does not exist; list them with ListVmContexts",
                reason="VM_CONTEXT_NOT_FOUND",
                vm_context_id=member.vm_context_id,
            )
    elsewhere = (
        GroupMember.select(GroupMember.vm_context, GroupMember.group, MachineGroup.name)
        .join(MachineGroup)
        .where(GroupMember.vm_context.in_(ids) & (GroupMember.group != group_id))
        .tuples()
        .first()
    )
    if elsewhere is not None:
        vm_id, other_id, other_name = elsewhere
        raise AlreadyExists(
            f"VM context {vm_id} is in machine group {other_name} ({other_id}) already; a VM is in at most one "
            "group — remove it there first",
            reason="VM_IN_ANOTHER_GROUP",
            vm_context_id=vm_id,
            group_id=other_id,
        )
    if scheduled:
        own = Schedule.select().where((Schedule.target_kind == TARGET_VM) & Schedule.target_id.in_(ids)).first()
        if own is not None:
            raise FailedPrecondition(
                f"VM context {own.target_id} has schedule {own.id} of its own and the group has one; a VM follows "
                "one schedule — delete one of them first",
                reason="SCHEDULE_CONFLICT",
                vm_context_id=own.target_id,
                schedule_id=own.id,
            )


def _write_members(group_id: str, members: tuple[Member, ...]) -> None:
    GroupMember.delete().where(GroupMember.group == group_id).execute()
    if members:
        GroupMember.insert_many(
            [{"group": group_id, "vm_context": m.vm_context_id, "boot_order": m.boot_order} for m in members]
        ).execute()


def view_of(row: MachineGroup) -> GroupView:
    schedule = group_schedule(row.id)
    last = GroupRun.select(GroupRun.id).where(GroupRun.group_id == row.id).order_by(GroupRun.created_at.desc()).first()
    return GroupView(row, tuple(members_of(row.id)), schedule.id if schedule else "", last.id if last else "")


class GroupStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        #: called after a committed change (the scheduler looks again: a group's members are its schedule's VMs)
        self.on_change = ChangeHooks()

    async def create(self, spec: GroupSpec) -> GroupView:
        """A new group (a retry with a request_id is answered by the API's idempotency layer)."""
        check_spec(spec)
        now = self.clock.now()

        def insert() -> GroupView:
            _check_name_free(spec.name, "")
            row = MachineGroup.create(
                name=spec.name,
                description=spec.description,
                created_at=now,
                updated_at=now,
            )
            _check_members(row.id, spec, scheduled=False)
            _write_members(row.id, spec.members)
            return view_of(row)

        view = await self.db.tx(insert)
        logger.bind(group_id=view.group.id).info(
            "machine group {name} created with {n} VMs", name=spec.name, n=len(spec.members)
        )
        self.on_change()
        return view

    async def get(self, group_id: str) -> GroupView:
        def read() -> GroupView:
            return view_of(_group(group_id))

        return await self.db.run(read)

    async def list_groups(self, page_size: int, page_token: str) -> tuple[list[GroupView], str]:
        def query() -> tuple[list[GroupView], str]:
            rows, token = fetch_page(MachineGroup.select().order_by(MachineGroup.name), page_size, page_token)
            return [view_of(r) for r in rows], token

        return await self.db.run(query)

    async def update(self, group_id: str, spec: GroupSpec) -> GroupView:
        check_spec(spec)
        now = self.clock.now()

        def replace() -> GroupView:
            row = _group(group_id)
            refuse_while_running(row)
            _check_name_free(spec.name, group_id)
            _check_members(group_id, spec, scheduled=group_schedule(group_id) is not None)
            row.name, row.description, row.updated_at = spec.name, spec.description, now
            row.save()
            _write_members(group_id, spec.members)
            return view_of(row)

        view = await self.db.tx(replace)
        logger.bind(group_id=group_id).info("machine group {name} updated", name=spec.name)
        self.on_change()
        return view

    async def delete(self, group_id: str) -> None:
        def remove() -> None:
            row = _group(group_id)
            refuse_while_running(row)
            schedule = group_schedule(group_id)
            if schedule is not None:
                raise FailedPrecondition(
                    f"schedule {schedule.id} targets machine group {row.name}; delete the schedule first",
                    reason="SCHEDULE_CONFLICT",
                    schedule_id=schedule.id,
                )
            GroupMember.delete().where(GroupMember.group == group_id).execute()
            row.delete_instance()

        await self.db.tx(remove)
        logger.bind(group_id=group_id).info("machine group deleted")
        self.on_change()


def _group(group_id: str) -> MachineGroup:
    row = MachineGroup.get_or_none(MachineGroup.id == group_id) if group_id else None
    if row is None:
        raise group_not_found(group_id)
    return row


def _check_name_free(name: str, group_id: str) -> None:
    taken = MachineGroup.get_or_none((MachineGroup.name == name) & (MachineGroup.id != group_id))
    if taken is not None:
        raise AlreadyExists(
            f"machine group name {name!r} is taken by group {taken.id}; choose another name",
            reason="GROUP_NAME_TAKEN",
            group_id=taken.id,
        )


def refuse_while_running(row: MachineGroup) -> None:
    """FAILED_PRECONDITION (GROUP_RUN_ACTIVE) while a run of the group is in progress (in a transaction)."""
    run = active_run_of(row.id)
    if run is not None:
        raise FailedPrecondition(
            f"machine group {row.name} has a {run.kind.replace('_', ' ')} in progress (run {run.id}); wait for it",
            reason="GROUP_RUN_ACTIVE",
            group_run_id=run.id,
        )


def group_exists(group_id: str) -> bool:
    return MachineGroup.select(pw.fn.COUNT(MachineGroup.id)).where(MachineGroup.id == group_id).scalar() > 0
