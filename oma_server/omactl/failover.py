"""omactl preflight, failover test|live|cleanup|list, rollback and network-map list|create|update|delete."""

from __future__ import annotations

import argparse
import ipaddress
import re
from datetime import UTC, datetime, timedelta

from google.protobuf import field_mask_pb2

from oma.v1 import failover_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.hints import for_omactl
from oma_server.omactl.jobs import show_failover_job
from oma_server.omactl.labels import error_text, failover_kind, failover_status
from oma_server.omactl.render import field_time, status_text

KINDS = {
    "test": failover_pb2.FAILOVER_JOB_KIND_TEST,
    "live": failover_pb2.FAILOVER_JOB_KIND_LIVE,
}
ON_DEADLINE_MISSED = {
    "wait": failover_pb2.DEADLINE_MISSED_ACTION_WAIT,
    "cancel": failover_pb2.DEADLINE_MISSED_ACTION_CANCEL,
}
_RELATIVE = re.compile(r"\A\+(\d+)([smhd])\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, base: datetime, option: str) -> datetime:
    """ISO 8601 with a zone (2026-12-05T02:00:00Z, ...+01:00) or `+30m`/`+2h`/`+1d`/`+90s` after `base` (aware)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return base + timedelta(seconds=int(relative.group(1)) * _UNIT[relative.group(2)])
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a time: give ISO 8601 with a zone (2026-12-05T02:00:00Z) or +30m"
        ) from None
    if value.tzinfo is None:
        raise CliError(f"{option} {text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
    return value.astimezone(UTC)


def _timing(args: argparse.Namespace, request: failover_pb2.StartFailoverRequest) -> None:
    """--at, --final-sync-deadline (relative: after --at when given, else after now), --on-deadline-missed."""
    now = datetime.now(UTC)
    start_at = parse_when(args.at, now, "--at") if getattr(args, "at", None) else None
    if start_at is not None:
        request.start_at.FromDatetime(start_at)
    if getattr(args, "final_sync_deadline", None):
        request.final_sync_deadline.FromDatetime(
            parse_when(args.final_sync_deadline, start_at or now, "--final-sync-deadline")
        )
    if getattr(args, "on_deadline_missed", None):
        request.on_deadline_missed = ON_DEADLINE_MISSED[args.on_deadline_missed]


def timing_text(job: failover_pb2.FailoverJob) -> str:
    """`at 2026-12-05T03:00:00+01:00, final sync by ... (if missed: cancel)`; empty for a job started at once."""
    parts = [f"at {field_time(job, 'start_at')}"] if job.HasField("start_at") else []
    if job.HasField("final_sync_deadline"):
        action = "cancel" if job.on_deadline_missed == failover_pb2.DEADLINE_MISSED_ACTION_CANCEL else "wait"
        parts.append(f"final sync by {field_time(job, 'final_sync_deadline')} (if missed: {action})")
    return ", ".join(parts)


# ---- preflight ----------------------------------------------------------------------------------------------------
def cmd_preflight(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    request = failover_pb2.CheckFailoverReadinessRequest(vm_context_id=vm_id, kind=KINDS[args.kind])
    reply = ctx.client.call(ctx.client.failover, "CheckFailoverReadiness", request)
    if ctx.out.as_json:
        ctx.out.message(reply)
    else:
        ctx.out.table(
            ["CHECK", "RESULT", "REASON"],
            (
                [
                    c.name,
                    status_text("pass" if c.passed else "FAIL"),
                    for_omactl(c.reason, "", {"vm_context_id": args.vm}),
                ]
                for c in reply.checks
            ),
            title=f"Readiness of VM {args.vm} for {args.kind} failover",
        )
        failed = sum(1 for c in reply.checks if not c.passed)
        if reply.ready:
            ctx.out.line(f"Ready for {args.kind} failover.")
        else:
            ctx.out.line(f"Not ready for {args.kind} failover: {failed} of {len(reply.checks)} checks failed.")
    return 0 if reply.ready else 1


# ---- failover jobs ------------------------------------------------------------------------------------------------
def started(ctx: Context, args: argparse.Namespace, job: failover_pb2.FailoverJob, what: str) -> int:
    """The answer to a command that started a job: its id (and how to follow it), or the job followed to its end."""
    if args.watch:
        from oma_server.omactl.watch import follow_job

        if not ctx.out.as_json and not ctx.out.quiet:
            ctx.out.line(f"Started {what} job {job.id} for VM {job.vm_context_id}")
        return follow_job(ctx, job.id)
    if ctx.out.as_json:
        ctx.out.message(job)
    elif ctx.out.quiet:
        ctx.out.ids([job.id])
    elif job.status == failover_pb2.FAILOVER_JOB_STATUS_SCHEDULED:
        ctx.out.line(f"Scheduled {what} job {job.id} for VM {job.vm_context_id} {timing_text(job)}")
        ctx.out.line(f"Cancel it until it starts with: omactl jobs cancel {job.id}")
    else:
        ctx.out.line(f"Started {what} job {job.id} for VM {job.vm_context_id} ({failover_status(job)})")
        ctx.out.line(f"Follow it with: omactl watch {job.id}")
    return 0


def cmd_failover(ctx: Context, args: argparse.Namespace) -> int:
    kind = args.failover_command
    request = failover_pb2.StartFailoverRequest(
        vm_context_id=resolve.vm_id(ctx, args.vm),
        kind=KINDS[kind],
        service_offering_id=args.offering or "",
        request_id=args.request_id or "",
    )
    _timing(args, request)
    job = ctx.client.call(ctx.client.failover, "StartFailover", request).job
    return started(ctx, args, job, f"{kind} failover")


def cmd_cleanup(ctx: Context, args: argparse.Namespace) -> int:
    request = failover_pb2.CleanupFailoverRequest(vm_context_id=resolve.vm_id(ctx, args.vm))
    job = ctx.client.call(ctx.client.failover, "CleanupFailover", request).job
    return started(ctx, args, job, "cleanup")


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    request = failover_pb2.RollbackFailoverRequest(vm_context_id=vm_id, power_on_source=args.power_on_source)
    job = ctx.client.call(ctx.client.failover, "RollbackFailover", request).job
    if not args.power_on_source and not ctx.out.as_json and not ctx.out.quiet:
        ctx.out.note(
            f"omactl: the source VM stays powered off after this rollback; power it on with "
            f"'omactl vms power-on {args.vm}' (or roll back with --power-on-source)"
        )
    return started(ctx, args, job, "rollback")


def cmd_failover_list(ctx: Context, args: argparse.Namespace) -> int:
    request = failover_pb2.ListFailoverJobsRequest(vm_context_id=resolve.optional(resolve.vm_id, ctx, args.vm))
    items = list(ctx.client.paged(ctx.client.failover, "ListFailoverJobs", request, lambda r: list(r.jobs)))
    if ctx.out.as_json:
        ctx.out.messages(items)
        return 0
    ctx.out.table(
        ["ID", "VM", "KIND", "STATUS", "STEP", "TARGET VM", "CREATED", "FINISHED", "ERROR"],
        (
            [
                j.id,
                j.vm_context_id,
                failover_kind(j),
                status_text(failover_status(j)),
                j.current_step or render.NONE,
                j.target_vm_name or render.NONE,
                field_time(j, "created_at"),
                field_time(j, "finished_at"),
                error_text(j.error),
            ]
            for j in items
        ),
        title="Failover jobs",
    )
    return 0


def cmd_failover_show(ctx: Context, args: argparse.Namespace) -> int:
    job = ctx.client.call(ctx.client.failover, "GetFailoverJob", failover_pb2.GetFailoverJobRequest(id=args.job_id))
    if ctx.out.as_json:
        ctx.out.message(job.job)
    else:
        show_failover_job(ctx, job.job)
    return 0


# ---- network mappings ---------------------------------------------------------------------------------------------
def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {text!r}") from None


def _mapping_rows(mappings: list[failover_pb2.NetworkMapping]) -> list[list[object]]:
    return [
        [
            m.id,
            m.vm_context_id or "(every VM)",
            m.source_network,
            m.target_network_id,
            m.static_ip or "dhcp",
            "yes" if m.keep_mac else "no",
            field_time(m, "created_at"),
        ]
        for m in mappings
    ]


_MAPPING_HEADERS = ["ID", "VM", "VMWARE NETWORK", "CLOUDSTACK NETWORK", "IP", "KEEP MAC", "CREATED"]


def _show_mapping(ctx: Context, mapping: failover_pb2.NetworkMapping, verb: str) -> None:
    if ctx.out.as_json:
        ctx.out.message(mapping)
        return
    ctx.out.line(f"{verb} network mapping {mapping.id}:")
    ctx.out.table(_MAPPING_HEADERS, _mapping_rows([mapping]))


def cmd_map_list(ctx: Context, args: argparse.Namespace) -> int:
    request = failover_pb2.ListNetworkMappingsRequest(vm_context_id=resolve.optional(resolve.vm_id, ctx, args.vm))
    mappings = list(ctx.client.paged(ctx.client.network_maps, "ListNetworkMappings", request, lambda r: r.mappings))
    if ctx.out.as_json:
        ctx.out.messages(mappings)
        return 0
    ctx.out.table(_MAPPING_HEADERS, _mapping_rows(mappings), title="Network mappings")
    return 0


def cmd_map_create(ctx: Context, args: argparse.Namespace) -> int:
    mapping = failover_pb2.NetworkMapping(
        vm_context_id=resolve.optional(resolve.vm_id, ctx, args.vm),
        source_network=args.source,
        target_network_id=resolve.network_id(ctx, args.target),
        static_ip=args.ip or "",
        keep_mac=args.keep_mac,
    )
    request = failover_pb2.CreateNetworkMappingRequest(mapping=mapping)
    created = ctx.client.call(ctx.client.network_maps, "CreateNetworkMapping", request).mapping
    _show_mapping(ctx, created, "Created")
    return 0


def cmd_map_update(ctx: Context, args: argparse.Namespace) -> int:
    if args.target is None and args.ip is None and args.keep_mac is None:
        raise CliError("nothing to change: give --target, --ip/--dhcp or --keep-mac/--no-keep-mac", exit_code=2)
    # Only the fields named change (the update mask); the mapping's other fields keep their value on the server.
    mapping = failover_pb2.NetworkMapping(id=args.id)
    paths = []
    if args.target is not None:
        mapping.target_network_id = resolve.network_id(ctx, args.target)
        paths.append("target_network_id")
    if args.ip is not None:
        mapping.static_ip = args.ip
        paths.append("static_ip")
    if args.keep_mac is not None:
        mapping.keep_mac = args.keep_mac
        paths.append("keep_mac")
    request = failover_pb2.UpdateNetworkMappingRequest(
        mapping=mapping, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    updated = ctx.client.call(ctx.client.network_maps, "UpdateNetworkMapping", request).mapping
    _show_mapping(ctx, updated, "Updated")
    return 0


def cmd_map_delete(ctx: Context, args: argparse.Namespace) -> int:
    request = failover_pb2.DeleteNetworkMappingRequest(id=args.id)
    ctx.client.call(ctx.client.network_maps, "DeleteNetworkMapping", request)
    if ctx.out.as_json:
        ctx.out.json({"id": args.id, "deleted": True})
    else:
        ctx.out.line(f"Deleted network mapping {args.id}.")
    return 0


def register(commands: Commands) -> None:
    _register_failover(commands)
    _register_network_map(commands)


def _register_timing(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--at",
        metavar="TIME",
        help="schedule the cutover: ISO 8601 with a zone (2026-12-05T02:00:00Z) or +30m/+2h/+1d; cancel it until "
        "then with 'omactl jobs cancel JOB'",
    )
    start.add_argument(
        "--final-sync-deadline",
        metavar="TIME",
        help="by when the final sync must have completed (ISO 8601 with a zone, or +2h after --at / now)",
    )
    start.add_argument(
        "--on-deadline-missed",
        choices=sorted(ON_DEADLINE_MISSED),
        help="wait: go on and warn (default); cancel: cancel, roll back and power the source on, and alert",
    )


def _register_failover(commands: Commands) -> None:
    """preflight, failover test|live|cleanup|list|show, rollback."""
    preflight = commands.leaf(
        commands.root, "preflight", "readiness checks of a VM for failover (exit 1 when not ready)", cmd_preflight
    )
    preflight.add_argument("vm", metavar="VM", help="VM context id or name")
    preflight.add_argument("--kind", choices=sorted(KINDS), default="test", help="failover to check for (default test)")

    group = commands.group("failover", "test and live failover into CloudStack, and their cleanup")
    for kind, text in (
        ("test", "start a test failover: a test VM from snapshots, the source keeps running"),
        ("live", "start a live failover: power the source off, final sync, the VM runs in CloudStack"),
    ):
        start = commands.leaf(group, kind, text, cmd_failover)
        start.add_argument("vm", metavar="VM", help="VM context id or name")
        start.add_argument("--offering", metavar="ID", help="CloudStack service offering (default: smallest that fits)")
        start.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same job")
        start.add_argument("--watch", action="store_true", help="follow the job until it ends")
        if kind == "live":
            _register_timing(start)
    cleanup = commands.leaf(
        group, "cleanup", "remove a test (or failed) failover; back to ready_for_failover", cmd_cleanup
    )
    cleanup.add_argument("vm", metavar="VM", help="VM context id or name")
    cleanup.add_argument("--watch", action="store_true", help="follow the job until it ends")
    listing = commands.leaf(group, "list", "list failover, cleanup and rollback jobs", cmd_failover_list)
    listing.add_argument("--vm", metavar="VM", help="only jobs of this VM context (id or name)")
    show = commands.leaf(group, "show", "show one failover job with its steps", cmd_failover_show)
    show.add_argument("job_id", metavar="JOB_ID")

    rollback = commands.leaf(
        commands.root, "rollback", "roll back a live failover: destroy the target VM, revert the volumes", cmd_rollback
    )
    rollback.add_argument("vm", metavar="VM", help="VM context id or name")
    rollback.add_argument(
        "--power-on-source",
        action="store_true",
        help="power the source VM back on via the VMA (without it the source stays off)",
    )
    rollback.add_argument("--watch", action="store_true", help="follow the job until it ends")


def _register_network_map(commands: Commands) -> None:
    group = commands.group("network-map", "mappings from VMware networks to CloudStack networks")
    listing = commands.leaf(group, "list", "list mappings (defaults for every VM included)", cmd_map_list)
    listing.add_argument("--vm", metavar="VM", help="only mappings of this VM context (id or name)")
    create = commands.leaf(group, "create", "map a VMware network to a CloudStack network", cmd_map_create)
    create.add_argument("--source", metavar="NET", required=True, help="VMware network (port group) name")
    create.add_argument(
        "--target",
        metavar="NETWORK",
        required=True,
        help="CloudStack network id, or its name when unique (see 'omactl cloud networks')",
    )
    create.add_argument("--vm", metavar="VM", help="only for this VM context, id or name (default: every VM)")
    create.add_argument("--ip", metavar="IP", type=_ip, help="static IP for the NIC (default DHCP)")
    create.add_argument("--keep-mac", action="store_true", help="keep the VMware MAC address")
    update = commands.leaf(group, "update", "change a mapping's target, IP or MAC handling", cmd_map_update)
    update.add_argument("id", metavar="ID", help="mapping id")
    update.add_argument("--target", metavar="NETWORK", help="new CloudStack network (id or unique name)")
    ip = update.add_mutually_exclusive_group()
    ip.add_argument("--ip", metavar="IP", type=_ip, help="new static IP")
    ip.add_argument("--dhcp", dest="ip", action="store_const", const="", help="drop the static IP (use DHCP)")
    mac = update.add_mutually_exclusive_group()
    mac.add_argument("--keep-mac", dest="keep_mac", action="store_true", default=None, help="keep the VMware MAC")
    mac.add_argument(
        "--no-keep-mac", dest="keep_mac", action="store_false", default=None, help="let CloudStack assign a MAC"
    )
    delete = commands.leaf(group, "delete", "delete a mapping", cmd_map_delete)
    delete.add_argument("id", metavar="ID", help="mapping id")
