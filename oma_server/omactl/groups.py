"""omactl groups create|list|show|update|delete|failover|cleanup|runs|run|cancel (machine groups and their runs).

Members are given as `--vm NAME_OR_ID[:BOOT_ORDER]` (boot order 0 when left out); `update` replaces the members
only when `--vm` is given, so a rename keeps them. `failover` and `cleanup --watch` follow the run: each member's
status line when it changes, until the run ends (exit status 1 when it failed). A run is read by polling GetGroupRun
— it has no watch stream of its own; each member's failover job can be followed with `omactl watch JOB`.
"""

from __future__ import annotations

import argparse
import time

from oma.v1 import machine_group_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import enum_label, field_time

KINDS = {
    "test": machine_group_pb2.GROUP_RUN_KIND_TEST_FAILOVER,
    "live": machine_group_pb2.GROUP_RUN_KIND_LIVE_FAILOVER,
}
FINAL = (
    machine_group_pb2.GROUP_RUN_STATUS_COMPLETED,
    machine_group_pb2.GROUP_RUN_STATUS_FAILED,
    machine_group_pb2.GROUP_RUN_STATUS_CANCELLED,
)
POLL_S = 0.5


def group_id(ctx: Context, text: str) -> str:
    """A group id from its id or its (unique) name."""
    client = ctx.client
    try:
        return str(
            client.call(client.groups, "GetMachineGroup", machine_group_pb2.GetMachineGroupRequest(id=text)).group.id
        )
    except CliError as error:
        if not error.text.startswith(("NOT_FOUND", "INVALID_ARGUMENT")):
            raise
    request = machine_group_pb2.ListMachineGroupsRequest()
    for group in client.paged(client.groups, "ListMachineGroups", request, lambda r: list(r.groups)):
        if group.spec.name == text:
            return str(group.id)
    raise CliError(f"NOT_FOUND: no machine group has the id or name {text!r}; list them with 'omactl groups list'")


def member_of(text: str) -> tuple[str, int]:
    """`VM[:ORDER]` → (VM, boot order); without a numeric suffix the boot order is 0."""
    vm, _, order = text.rpartition(":")
    return (vm, int(order)) if vm and order.isdigit() else (text, 0)


def _members(ctx: Context, texts: list[str]) -> list[machine_group_pb2.MachineGroupMember]:
    members = []
    for text in texts:
        vm, order = member_of(text)
        members.append(machine_group_pb2.MachineGroupMember(vm_context_id=resolve.vm_id(ctx, vm), boot_order=order))
    return members


def _status(value: int) -> str:
    return enum_label(machine_group_pb2.GroupRunStatus, value, "GROUP_RUN_STATUS")


def _kind(value: int) -> str:
    return enum_label(machine_group_pb2.GroupRunKind, value, "GROUP_RUN_KIND").replace("_", " ")


def _show_group(ctx: Context, group: machine_group_pb2.MachineGroup, verb: str = "") -> int:
    code = ctx.out.record(
        group,
        [
            ("id", group.id),
            ("name", group.spec.name),
            ("description", group.spec.description or render.NONE),
            ("vms", len(group.spec.members)),
            ("schedule", group.schedule_id or render.NONE),
            ("last run", group.last_run_id or render.NONE),
            ("created", field_time(group, "created_at")),
        ],
        f"{verb} machine group {group.spec.name} ({group.id})." if verb else "",
    )
    if not ctx.out.as_json and not ctx.out.quiet:
        rows = ([m.boot_order, m.vm_context_id] for m in group.spec.members)
        ctx.out.table(["BOOT ORDER", "VM"], rows, title="Members (lower boot orders boot first)")
    return code


def _show_run(ctx: Context, run: machine_group_pb2.GroupRun, headline: str = "") -> int:
    code = ctx.out.record(
        run,
        [
            ("id", run.id),
            ("group", f"{run.group_name} ({run.group_id})"),
            ("kind", _kind(run.kind)),
            ("status", _status(run.status)),
            ("boot order now", run.current_boot_order if run.HasField("current_boot_order") else render.NONE),
            ("error", run.error_message or render.NONE),
            ("started", field_time(run, "created_at")),
            ("finished", field_time(run, "finished_at")),
        ],
        headline,
    )
    if not ctx.out.as_json and not ctx.out.quiet:
        ctx.out.table(
            ["BOOT ORDER", "VM", "STATUS", "JOB", "MESSAGE"],
            (
                [
                    m.boot_order,
                    m.vm_name or m.vm_context_id,
                    _status(m.status),
                    m.failover_job_id or render.NONE,
                    m.message or render.NONE,
                ]
                for m in run.members
            ),
            title="Members",
        )
    return code


def _follow(ctx: Context, run: machine_group_pb2.GroupRun) -> int:
    """Poll the run until it ends, printing each member's change; exit status 1 when it failed."""
    seen: dict[str, tuple[int, str]] = {}
    while True:
        for m in run.members:
            state = (m.status, m.failover_job_id)
            if seen.get(m.vm_context_id) != state:
                seen[m.vm_context_id] = state
                job = f" job {m.failover_job_id}" if m.failover_job_id else ""
                ctx.out.note(f"  boot order {m.boot_order}: {m.vm_name or m.vm_context_id} {_status(m.status)}{job}")
        if run.status in FINAL:
            break
        time.sleep(POLL_S)
        request = machine_group_pb2.GetGroupRunRequest(id=run.id)
        run = ctx.client.call(ctx.client.groups, "GetGroupRun", request).run
    _show_run(ctx, run, f"Group {_kind(run.kind)} of {run.group_name}: {_status(run.status)}.")
    return 0 if run.status == machine_group_pb2.GROUP_RUN_STATUS_COMPLETED else 1


def _started(ctx: Context, args: argparse.Namespace, run: machine_group_pb2.GroupRun) -> int:
    if args.watch and not ctx.out.as_json:
        ctx.out.note(f"Started group {_kind(run.kind)} {run.id} of {run.group_name}")
        return _follow(ctx, run)
    code = _show_run(ctx, run, f"Started group {_kind(run.kind)} {run.id} of {run.group_name}.")
    if not ctx.out.as_json and not ctx.out.quiet:
        ctx.out.line(f"Follow it with: omactl groups run {run.id} --watch")
    return code


# ---- commands -----------------------------------------------------------------------------------------------------
def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    spec = machine_group_pb2.MachineGroupSpec(
        name=args.name, description=args.description or "", members=_members(ctx, args.vm or [])
    )
    request = machine_group_pb2.CreateMachineGroupRequest(spec=spec, request_id=args.request_id or "")
    return _show_group(ctx, ctx.client.call(ctx.client.groups, "CreateMachineGroup", request).group, "Created")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    request = machine_group_pb2.ListMachineGroupsRequest()
    items = list(ctx.client.paged(ctx.client.groups, "ListMachineGroups", request, lambda r: list(r.groups)))

    def row(g: machine_group_pb2.MachineGroup) -> list[object]:
        orders = sorted({m.boot_order for m in g.spec.members})
        return [
            g.id,
            g.spec.name,
            len(g.spec.members),
            len(orders),
            g.schedule_id or render.NONE,
            g.last_run_id or render.NONE,
        ]

    return ctx.out.listing(items, ["ID", "NAME", "VMS", "BOOT ORDERS", "SCHEDULE", "LAST RUN"], row, "Machine groups")


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    request = machine_group_pb2.GetMachineGroupRequest(id=group_id(ctx, args.group))
    return _show_group(ctx, ctx.client.call(ctx.client.groups, "GetMachineGroup", request).group)


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    gid = group_id(ctx, args.group)
    current = ctx.client.call(ctx.client.groups, "GetMachineGroup", machine_group_pb2.GetMachineGroupRequest(id=gid))
    spec = current.group.spec
    new = machine_group_pb2.MachineGroupSpec(
        name=args.name if args.name is not None else spec.name,
        description=args.description if args.description is not None else spec.description,
        members=_members(ctx, args.vm) if args.vm is not None else list(spec.members),
    )
    request = machine_group_pb2.UpdateMachineGroupRequest(id=gid, spec=new, request_id=args.request_id or "")
    return _show_group(ctx, ctx.client.call(ctx.client.groups, "UpdateMachineGroup", request).group, "Updated")


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    gid = group_id(ctx, args.group)
    ctx.client.call(ctx.client.groups, "DeleteMachineGroup", machine_group_pb2.DeleteMachineGroupRequest(id=gid))
    if not ctx.out.as_json:
        ctx.out.line(f"Deleted machine group {gid} (its VMs stay as they are).")
    return 0


def cmd_failover(ctx: Context, args: argparse.Namespace) -> int:
    request = machine_group_pb2.StartGroupFailoverRequest(
        group_id=group_id(ctx, args.group), kind=KINDS[args.kind], request_id=args.request_id or ""
    )
    return _started(ctx, args, ctx.client.call(ctx.client.groups, "StartGroupFailover", request).run)


def cmd_cleanup(ctx: Context, args: argparse.Namespace) -> int:
    request = machine_group_pb2.CleanupGroupFailoverRequest(
        group_id=group_id(ctx, args.group), request_id=args.request_id or ""
    )
    return _started(ctx, args, ctx.client.call(ctx.client.groups, "CleanupGroupFailover", request).run)


def cmd_runs(ctx: Context, args: argparse.Namespace) -> int:
    gid = group_id(ctx, args.group) if args.group else ""
    request = machine_group_pb2.ListGroupRunsRequest(group_id=gid)
    items = list(ctx.client.paged(ctx.client.groups, "ListGroupRuns", request, lambda r: list(r.runs)))

    def row(r: machine_group_pb2.GroupRun) -> list[object]:
        done = sum(1 for m in r.members if m.status == machine_group_pb2.GROUP_RUN_STATUS_COMPLETED)
        return [
            r.id,
            r.group_name,
            _kind(r.kind),
            _status(r.status),
            f"{done}/{len(r.members)}",
            field_time(r, "created_at"),
        ]

    return ctx.out.listing(items, ["ID", "GROUP", "KIND", "STATUS", "DONE", "STARTED"], row, "Group runs")


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    run = ctx.client.call(ctx.client.groups, "GetGroupRun", machine_group_pb2.GetGroupRunRequest(id=args.id)).run
    if args.watch and not ctx.out.as_json:
        return _follow(ctx, run)
    return _show_run(ctx, run)


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    request = machine_group_pb2.CancelGroupRunRequest(id=args.id, request_id=args.request_id or "")
    run = ctx.client.call(ctx.client.groups, "CancelGroupRun", request).run
    if args.watch and not ctx.out.as_json:
        return _follow(ctx, run)
    return _show_run(ctx, run, f"Cancel of group run {run.id} requested: {_status(run.status)}.")


def register(commands: Commands) -> None:
    group = commands.group(
        "groups", "machine groups: VMs failed over in a boot order, cleaned up and scheduled together"
    )
    vm_help = "a member: VM id or name, with its boot order after a colon (db-01:0, web-01:1); repeat for each VM"
    create = commands.leaf(group, "create", "create a machine group", cmd_create)
    create.add_argument("name", metavar="NAME", help="group name (unique)")
    create.add_argument("--vm", metavar="VM[:ORDER]", action="append", help=vm_help)
    create.add_argument("--description", metavar="TEXT", help="free text")
    create.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same group")
    commands.leaf(group, "list", "list machine groups", cmd_list)
    show = commands.leaf(group, "show", "show a group and its members", cmd_show)
    show.add_argument("group", metavar="GROUP", help="group id or name")
    update = commands.leaf(group, "update", "rename a group, or replace its members (with --vm)", cmd_update)
    update.add_argument("group", metavar="GROUP", help="group id or name")
    update.add_argument("--name", metavar="NAME", help="a new name")
    update.add_argument("--description", metavar="TEXT", help="a new description")
    update.add_argument("--vm", metavar="VM[:ORDER]", action="append", help=vm_help + " (replaces the members)")
    update.add_argument("--request-id", metavar="X", help="idempotency key")
    delete = commands.leaf(group, "delete", "delete a group (its VMs stay)", cmd_delete)
    delete.add_argument("group", metavar="GROUP", help="group id or name")
    failover = commands.leaf(group, "failover", "fail a group over in its boot order (test or live)", cmd_failover)
    failover.add_argument("group", metavar="GROUP", help="group id or name")
    failover.add_argument("--kind", choices=sorted(KINDS), default="test", help="test (default) or live")
    cleanup = commands.leaf(group, "cleanup", "clean a group's test failover up, in the reverse order", cmd_cleanup)
    cleanup.add_argument("group", metavar="GROUP", help="group id or name")
    for leaf in (failover, cleanup):
        leaf.add_argument("--watch", action="store_true", help="follow the run until it ends")
        leaf.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same run")
    runs = commands.leaf(group, "runs", "list group runs, newest first", cmd_runs)
    runs.add_argument("group", metavar="GROUP", nargs="?", help="only this group's runs (id or name)")
    run = commands.leaf(group, "run", "show one group run", cmd_run)
    run.add_argument("id", metavar="RUN", help="run id (omactl groups runs)")
    run.add_argument("--watch", action="store_true", help="follow the run until it ends")
    cancel = commands.leaf(
        group, "cancel", "cancel a group run (no member starts; running ones are cancelled)", cmd_cancel
    )
    cancel.add_argument("id", metavar="RUN", help="run id (omactl groups runs)")
    cancel.add_argument("--watch", action="store_true", help="follow the run until it ends")
    cancel.add_argument("--request-id", metavar="X", help="idempotency key")
