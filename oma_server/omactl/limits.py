"""omactl limits set|list|show|delete: copy-rate limits of appliances and replication jobs, with weekly windows.

    omactl limits set --appliance vma-1 --window 'mon-fri 08:00-18:00 100MiB' --tz Europe/Berlin
    omactl limits set --job JOB --rate 20MiB

Rates are per second in binary units (`100MiB`, `1.5GiB`, `512KiB`, plain bytes) or `unlimited`. A window is
`[DAYS ]HH:MM-HH:MM RATE`, DAYS a list of days and day ranges (`mon-fri`, `sat,sun`, `mon,wed-fri`; none: every day).
The parsing is ours: a few lines for a syntax of our own, where a size library would add a dependency for one regex.
"""

from __future__ import annotations

import argparse
import re

from oma.v1 import bandwidth_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import field_time

_UNIT = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
_RATE = re.compile(r"\A(\d+(?:\.\d+)?)\s*([a-z]*?)(?:/s)?\Z")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"\A(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s+(?P<rate>\S+)\Z")
APPLIANCE = bandwidth_pb2.BANDWIDTH_TARGET_KIND_APPLIANCE
JOB = bandwidth_pb2.BANDWIDTH_TARGET_KIND_REPLICATION_JOB


def parse_rate(text: str) -> int:
    """'100MiB' (per second) → bytes per second; 'unlimited' → 0."""
    value = text.strip().lower()
    if value in ("unlimited", "0", "none"):
        return 0
    match = _RATE.match(value)
    if match is None or match.group(2) not in _UNIT:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: give 100MiB, 1.5GiB, 512KiB, bytes, or unlimited")
    return round(float(match.group(1)) * _UNIT[match.group(2)])


def _day_list(text: str) -> list[int]:
    days: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise argparse.ArgumentTypeError(f"invalid days {text!r}: give mon-fri, sat,sun, mon,wed-fri ...")
        start, end = _DAYS.index(first), _DAYS.index(last or first)
        span = range(start, end + 1) if start <= end else [*range(start, 7), *range(0, end + 1)]
        days.extend(i + 1 for i in span if i + 1 not in days)
    return days


def parse_window(text: str) -> bandwidth_pb2.BandwidthWindow:
    """'mon-fri 08:00-18:00 100MiB' → a window (its days as Weekday values)."""
    match = _WINDOW.match(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid window {text!r}: give '[DAYS ]HH:MM-HH:MM RATE', for example 'mon-fri 08:00-18:00 100MiB'"
        )
    days = _day_list(match.group("days")) if match.group("days") else []
    return bandwidth_pb2.BandwidthWindow(
        days=days,  # type: ignore[arg-type]
        start=match.group("start").zfill(5),
        end=match.group("end").zfill(5),
        bytes_per_second=parse_rate(match.group("rate")),
    )


def _limit_rate(value: int) -> str:
    return render.rate(value) if value else "unlimited"


def window_text(window: bandwidth_pb2.BandwidthWindow) -> str:
    days = ",".join(_DAYS[d - 1] for d in window.days) if window.days else "daily"
    return f"{days} {window.start}-{window.end} {_limit_rate(window.bytes_per_second)}"


def _target(limit: bandwidth_pb2.BandwidthLimit) -> str:
    kind = "job" if limit.spec.target.kind == JOB else "appliance"
    return f"{kind} {limit.spec.target.id}"


def _row(limit: bandwidth_pb2.BandwidthLimit) -> list[object]:
    return [
        limit.id,
        _target(limit),
        _limit_rate(limit.current_bytes_per_second),
        field_time(limit, "next_change_at"),
        _limit_rate(limit.spec.bytes_per_second),
        "; ".join(window_text(w) for w in limit.spec.windows) or render.NONE,
        limit.spec.time_zone or "UTC",
    ]


def _show(ctx: Context, limit: bandwidth_pb2.BandwidthLimit, verb: str = "") -> int:
    return ctx.out.record(
        limit,
        [
            ("id", limit.id),
            ("target", _target(limit)),
            ("rate now", _limit_rate(limit.current_bytes_per_second)),
            ("next change", field_time(limit, "next_change_at")),
            ("outside windows", _limit_rate(limit.spec.bytes_per_second)),
            ("windows", "; ".join(window_text(w) for w in limit.spec.windows) or render.NONE),
            ("time zone", limit.spec.time_zone or "UTC"),
            ("updated", field_time(limit, "updated_at")),
        ],
        f"{verb} bandwidth limit {limit.id} of {_target(limit)}." if verb else "",
    )


def cmd_set(ctx: Context, args: argparse.Namespace) -> int:
    if bool(args.appliance) == bool(args.job):
        raise CliError("give --appliance APPLIANCE or --job JOB (one of them)", exit_code=2)
    if args.appliance:
        target = bandwidth_pb2.BandwidthTarget(kind=APPLIANCE, id=resolve.appliance_id(ctx, args.appliance))
    else:
        target = bandwidth_pb2.BandwidthTarget(kind=JOB, id=args.job)
    spec = bandwidth_pb2.BandwidthLimitSpec(
        target=target, bytes_per_second=args.rate, windows=args.window or [], time_zone=args.tz or ""
    )
    reply = ctx.client.call(
        ctx.client.bandwidth, "SetBandwidthLimit", bandwidth_pb2.SetBandwidthLimitRequest(spec=spec)
    )
    return _show(ctx, reply.limit, "Set")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    target_id = resolve.optional(resolve.appliance_id, ctx, args.appliance) or args.job or ""
    request = bandwidth_pb2.ListBandwidthLimitsRequest(target_id=target_id)
    items = list(ctx.client.paged(ctx.client.bandwidth, "ListBandwidthLimits", request, lambda r: list(r.limits)))
    headers = ["ID", "TARGET", "RATE NOW", "NEXT CHANGE", "OUTSIDE WINDOWS", "WINDOWS", "ZONE"]
    return ctx.out.listing(items, headers, _row, "Bandwidth limits")


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    request = bandwidth_pb2.GetBandwidthLimitRequest(id=args.id)
    return _show(ctx, ctx.client.call(ctx.client.bandwidth, "GetBandwidthLimit", request).limit)


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    request = bandwidth_pb2.DeleteBandwidthLimitRequest(id=args.id)
    ctx.client.call(ctx.client.bandwidth, "DeleteBandwidthLimit", request)
    if not ctx.out.as_json:
        ctx.out.line(f"Deleted bandwidth limit {args.id}: its target copies without it within a second.")
    return 0


def register(commands: Commands) -> None:
    group = commands.group("limits", "copy-rate limits of appliances and jobs, with weekly windows")
    setter = commands.leaf(group, "set", "set (or replace) the limit of an appliance or a job", cmd_set)
    setter.add_argument("--appliance", metavar="APPLIANCE", help="appliance id or name: all its copies together")
    setter.add_argument("--job", metavar="JOB", help="replication job id: its disks together, until it ends")
    setter.add_argument(
        "--rate", metavar="RATE", type=parse_rate, default=0, help="rate outside windows: 100MiB, unlimited (default)"
    )
    setter.add_argument(
        "--window",
        metavar="WINDOW",
        type=parse_window,
        action="append",
        help="'[DAYS ]HH:MM-HH:MM RATE', e.g. 'mon-fri 08:00-18:00 100MiB' (repeat; the first that holds wins)",
    )
    setter.add_argument("--tz", metavar="ZONE", help="IANA time zone of the windows, e.g. Europe/Berlin (default UTC)")
    listing = commands.leaf(group, "list", "list limits with the rate in force now and its next change", cmd_list)
    listing.add_argument("--appliance", metavar="APPLIANCE", help="only the limit of this appliance (id or name)")
    listing.add_argument("--job", metavar="JOB", help="only the limit of this job")
    for name, text, handler in (("show", "show one limit", cmd_show), ("delete", "delete a limit", cmd_delete)):
        leaf = commands.leaf(group, name, text, handler)
        leaf.add_argument("id", metavar="ID", help="limit id (omactl limits list)")
