"""omactl schedules create|list|show|pause|resume|delete (replication schedules with an RPO target), and how a VM's
RPO reads in the VM views and the live view."""

from __future__ import annotations

import argparse

from oma.v1 import schedule_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.groups import group_id
from oma_server.omactl.render import enum_label, field_time, seconds_text
from oma_server.omactl.tokens import ttl_seconds

VM_CONTEXT = schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT
GROUP = schedule_pb2.SCHEDULE_TARGET_KIND_MACHINE_GROUP


def _duration(text: str) -> int:
    """45s, 30m, 12h, 2d (or plain seconds)."""
    seconds = ttl_seconds(text)
    if text == "never":
        raise argparse.ArgumentTypeError("give a duration such as 45s, 30m, 12h or 2d")
    return seconds


# ---- RPO (vms list/show, watch) ----------------------------------------------------------------------------------
def rpo_status(rpo: schedule_pb2.VmRpo) -> str:
    return enum_label(schedule_pb2.RpoStatus, rpo.status, "RPO_STATUS")


def rpo_short(rpo: schedule_pb2.VmRpo) -> str:
    """'met 12m00s/2h00m', 'breached 3h01m/1h30m', 'breached none/2h00m' or '-' (no schedule)."""
    if rpo.status in (schedule_pb2.RPO_STATUS_UNSPECIFIED, schedule_pb2.RPO_STATUS_NO_TARGET):
        return render.NONE
    current = seconds_text(rpo.current_seconds) if rpo.HasField("recovery_point") else "none"
    return f"{rpo_status(rpo)} {current}/{seconds_text(rpo.target_seconds)}"


def next_sync(rpo: schedule_pb2.VmRpo) -> str:
    if rpo.schedule_paused:
        return "paused"
    return field_time(rpo, "next_sync_at")


def rpo_fields(rpo: schedule_pb2.VmRpo) -> list[tuple[str, object]]:
    return [
        ("rpo", rpo_short(rpo) if rpo.status != schedule_pb2.RPO_STATUS_NO_TARGET else "no target (no schedule)"),
        ("rpo reason", rpo.reason or render.NONE),
        ("recovery point", field_time(rpo, "recovery_point")),
        ("schedule", rpo.schedule_id or render.NONE),
        ("next sync", next_sync(rpo) if rpo.schedule_id else render.NONE),
    ]


def rpo_line(rpo: schedule_pb2.VmRpo) -> str:
    line = f"vm {rpo.vm_context_id} rpo {rpo_short(rpo)}"
    if rpo.schedule_id:
        line += f" next sync {next_sync(rpo)}"
    return f"{line} - {rpo.reason}" if rpo.reason else line


# ---- schedules ---------------------------------------------------------------------------------------------------
def _timing(s: schedule_pb2.Schedule) -> str:
    if s.spec.cron:
        return f"cron '{s.spec.cron}'" + (f" {s.spec.time_zone}" if s.spec.time_zone else " UTC")
    return f"every {seconds_text(s.spec.interval_seconds)}"


def _target(s: schedule_pb2.Schedule) -> str:
    return f"group {s.spec.target.id}" if s.spec.target.kind == GROUP else s.spec.target.id


def _row(s: schedule_pb2.Schedule) -> list[object]:
    return [
        s.id,
        s.spec.name or render.NONE,
        _target(s),
        _timing(s),
        seconds_text(s.spec.rpo_target_seconds),
        "paused" if s.paused else field_time(s, "next_run_at"),
        s.last_outcome or render.NONE,
    ]


def _show(ctx: Context, s: schedule_pb2.Schedule, verb: str = "") -> int:
    return ctx.out.record(
        s,
        [
            ("id", s.id),
            ("name", s.spec.name or render.NONE),
            ("group" if s.spec.target.kind == GROUP else "vm", s.spec.target.id),
            ("timing", _timing(s)),
            ("jitter", seconds_text(s.spec.jitter_seconds) if s.spec.jitter_seconds else render.NONE),
            ("rpo target", seconds_text(s.spec.rpo_target_seconds)),
            ("state", "paused" if s.paused else "active"),
            ("next slot", field_time(s, "next_slot_at")),
            ("next run", field_time(s, "next_run_at")),
            ("last run", field_time(s, "last_run_at")),
            ("last job", s.last_job_id or render.NONE),
            ("last outcome", s.last_outcome or render.NONE),
        ],
        f"{verb} schedule {s.id} for {'machine group' if s.spec.target.kind == GROUP else 'VM'} {s.spec.target.id}."
        if verb
        else "",
    )


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    if bool(args.every) == bool(args.cron):
        raise CliError("give --every DURATION or --cron EXPR (one of them)", exit_code=2)
    if bool(args.vm) == bool(args.group):
        raise CliError("give a VM or --group GROUP (one of them)", exit_code=2)
    if args.group:
        target = schedule_pb2.ScheduleTarget(kind=GROUP, id=group_id(ctx, args.group))
    else:
        target = schedule_pb2.ScheduleTarget(kind=VM_CONTEXT, id=resolve.vm_id(ctx, args.vm))
    spec = schedule_pb2.ScheduleSpec(
        name=args.name or "",
        target=target,
        interval_seconds=args.every or 0,
        cron=args.cron or "",
        time_zone=args.tz or "",
        jitter_seconds=args.jitter or 0,
        rpo_target_seconds=args.rpo,
    )
    request = schedule_pb2.CreateScheduleRequest(spec=spec, request_id=args.request_id or "")
    reply = ctx.client.call(ctx.client.schedules, "CreateSchedule", request)
    return _show(ctx, reply.schedule, "Created")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    request = schedule_pb2.ListSchedulesRequest(target_id=resolve.optional(resolve.vm_id, ctx, args.vm))
    items = list(ctx.client.paged(ctx.client.schedules, "ListSchedules", request, lambda r: list(r.schedules)))
    headers = ["ID", "NAME", "VM", "TIMING", "RPO TARGET", "NEXT RUN", "LAST OUTCOME"]
    return ctx.out.listing(items, headers, _row, "Replication schedules")


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(ctx.client.schedules, "GetSchedule", schedule_pb2.GetScheduleRequest(id=args.id))
    return _show(ctx, reply.schedule)


def cmd_pause(ctx: Context, args: argparse.Namespace) -> int:
    if args.schedules_command == "pause":
        reply = ctx.client.call(ctx.client.schedules, "PauseSchedule", schedule_pb2.PauseScheduleRequest(id=args.id))
        return _show(ctx, reply.schedule, "Paused")
    reply = ctx.client.call(ctx.client.schedules, "ResumeSchedule", schedule_pb2.ResumeScheduleRequest(id=args.id))
    return _show(ctx, reply.schedule, "Resumed")


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client.call(ctx.client.schedules, "DeleteSchedule", schedule_pb2.DeleteScheduleRequest(id=args.id))
    if not ctx.out.as_json:
        ctx.out.line(f"Deleted schedule {args.id} (a sync it started runs on).")
    return 0


def register(commands: Commands) -> None:
    group = commands.group("schedules", "replication schedules: syncs started by the OMA towards an RPO target")
    create = commands.leaf(
        group, "create", "schedule a VM's or a machine group's syncs (an interval or a cron expression)", cmd_create
    )
    create.add_argument("vm", metavar="VM", nargs="?", help="VM context id or name (or give --group)")
    create.add_argument("--group", metavar="GROUP", help="a machine group (id or name): each slot syncs every member")
    create.add_argument("--every", metavar="DURATION", type=_duration, help="a sync every 15m, 4h, 1d, ...")
    create.add_argument("--cron", metavar="EXPR", help="five-field cron expression, e.g. '0 */4 * * *'")
    create.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron, e.g. Europe/Berlin (default UTC)")
    create.add_argument("--jitter", metavar="DURATION", type=_duration, help="start up to this long after a slot")
    create.add_argument(
        "--rpo",
        metavar="DURATION",
        type=_duration,
        required=True,
        help="RPO target: the age a VM's last verified sync may reach (e.g. 2h)",
    )
    create.add_argument("--name", metavar="NAME", help="a name for the schedule")
    create.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same schedule")
    listing = commands.leaf(group, "list", "list schedules with their next run and last outcome", cmd_list)
    listing.add_argument("--vm", metavar="VM", help="only the schedule of this VM (id or name)")
    for name, text, handler in (
        ("show", "show one schedule", cmd_show),
        ("pause", "pause a schedule (a sync it started runs on)", cmd_pause),
        ("resume", "resume a schedule from its next slot after now", cmd_pause),
        ("delete", "delete a schedule", cmd_delete),
    ):
        leaf = commands.leaf(group, name, text, handler)
        leaf.add_argument("id", metavar="ID", help="schedule id (omactl schedules list)")
