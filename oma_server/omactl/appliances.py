"""omactl appliances list|show|enroll|revoke."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from oma.v1 import appliance_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import enum_label, field_time, status_text


def _status(appliance: appliance_pb2.Appliance) -> str:
    return enum_label(appliance_pb2.ApplianceStatus, appliance.status, "APPLIANCE_STATUS")


def _connection(appliance: appliance_pb2.Appliance) -> str:
    return enum_label(appliance_pb2.ConnectionState, appliance.connection_state, "CONNECTION_STATE")


def show_appliance(ctx: Context, appliance: appliance_pb2.Appliance) -> None:
    ctx.out.fields(
        [
            ("id", appliance.id),
            ("name", appliance.name),
            ("status", status_text(_status(appliance))),
            ("connection", status_text(_connection(appliance))),
            ("agent version", appliance.agent_version or render.NONE),
            ("capabilities", ", ".join(appliance.capabilities) or render.NONE),
            ("last seen", field_time(appliance, "last_seen_at")),
            ("created", field_time(appliance, "created_at")),
            ("connected to", appliance.connected_to or render.NONE),
            ("session", appliance.session_id or render.NONE),
        ]
    )


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    request = appliance_pb2.ListAppliancesRequest()
    items = list(ctx.client.paged(ctx.client.appliances, "ListAppliances", request, lambda r: list(r.appliances)))
    headers = ["ID", "NAME", "STATUS", "CONNECTION", "VERSION", "LAST SEEN", "CREATED"]
    return ctx.out.listing(items, headers, _row, "Appliances")


def _row(a: appliance_pb2.Appliance) -> list[object]:
    return [
        a.id,
        a.name,
        status_text(_status(a)),
        status_text(_connection(a)),
        a.agent_version or render.NONE,
        field_time(a, "last_seen_at"),
        field_time(a, "created_at"),
    ]


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    appliance_id = resolve.appliance_id(ctx, args.appliance)
    reply = ctx.client.call(ctx.client.appliances, "GetAppliance", appliance_pb2.GetApplianceRequest(id=appliance_id))
    if ctx.out.as_json:
        ctx.out.message(reply.appliance)
    else:
        show_appliance(ctx, reply.appliance)
    return 0


def write_secret(path: Path, secret: str) -> None:
    """The credential in a file only its owner can read (0600 from its creation: never readable by others, not even
    for an instant; an existing file is truncated and made 0600 too)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CliError(f"cannot write --credential-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(secret + "\n")


def cmd_enroll(ctx: Context, args: argparse.Namespace) -> int:
    if args.credential_file is not None and args.credential_file.is_dir():
        raise CliError(f"--credential-file {args.credential_file} is a directory; give a file name", exit_code=2)
    reply = ctx.client.call(
        ctx.client.appliances, "EnrollAppliance", appliance_pb2.EnrollApplianceRequest(name=args.name)
    )
    if args.credential_file is not None:
        write_secret(args.credential_file, reply.credential)
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    if ctx.out.quiet:
        ctx.out.ids([reply.appliance.id])
        return 0
    appliance = reply.appliance
    ctx.out.line(f"Enrolled appliance {appliance.name} (id {appliance.id}).")
    if args.credential_file is None:
        ctx.out.line(f"Credential: {reply.credential}")
        ctx.out.line(
            "This credential is shown once: store it in a file only the appliance's user can read (or enroll with "
            "--credential-file F, which writes it with mode 0600), then start the appliance with --credential-file "
            "F. The OMA keeps only its hash; if it is lost, revoke the appliance and enroll it again."
        )
        return 0
    ctx.out.line(
        f"Credential written to {args.credential_file} (mode 0600); it is not shown again. Start the appliance:"
    )
    ctx.out.line(
        f"  vma-agent run --oma {ctx.client.server} --appliance-id {appliance.id} "
        f"--credential-file {args.credential_file} --vcenter-dir DIR --state-dir DIR"
    )
    return 0


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> int:
    appliance_id = resolve.appliance_id(ctx, args.appliance)
    request = appliance_pb2.RevokeApplianceRequest(id=appliance_id)
    reply = ctx.client.call(ctx.client.appliances, "RevokeAppliance", request)
    if ctx.out.as_json:
        ctx.out.message(reply.appliance)
        return 0
    ctx.out.line(
        f"Revoked appliance {reply.appliance.name} (id {reply.appliance.id}): its stream is closed and it can no "
        "longer connect."
    )
    return 0


def register(commands: Commands) -> None:
    group = commands.group("appliances", "VMware Migration Appliances (VMAs): enroll, inspect, revoke")
    commands.leaf(group, "list", "list appliances", cmd_list)
    show = commands.leaf(group, "show", "show one appliance", cmd_show)
    show.add_argument("appliance", metavar="APPLIANCE", help="appliance id or name")
    enroll = commands.leaf(
        group, "enroll", "enroll an appliance: its one-time credential is printed, or written to a file", cmd_enroll
    )
    enroll.add_argument("name", metavar="NAME", help="unique name: 1-63 letters, digits, '.', '_' or '-'")
    enroll.add_argument(
        "--credential-file",
        metavar="F",
        type=Path,
        help="write the credential to F with mode 0600 (what 'vma-agent run --credential-file F' reads) "
        "instead of printing it",
    )
    revoke = commands.leaf(group, "revoke", "revoke an appliance's credential and close its stream", cmd_revoke)
    revoke.add_argument("appliance", metavar="APPLIANCE", help="appliance id or name")
