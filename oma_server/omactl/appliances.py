"""omactl appliances list|show|enroll|revoke."""

from __future__ import annotations

import argparse
import json
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
            ("certificate", appliance.certificate_serial or render.NONE),
            ("certificate expires", field_time(appliance, "certificate_expires_at")),
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


def write_secret(path: Path, secret: str, flag: str = "--credential-file") -> None:
    """A secret in a file only its owner can read (0600 from its creation: never readable by others, not even for an
    instant; an existing file is truncated and made 0600 too)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CliError(f"cannot write {flag} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(secret + "\n")


def _join_ticket(ctx: Context, reply: appliance_pb2.EnrollApplianceResponse, oma_address: str) -> str:
    """The join file's JSON (vma_client_stubs.identity.JoinTicket): where to join, the token and the CA's pin."""
    expires = reply.join_token_expires_at.ToDatetime().isoformat() + "Z" if reply.join_token else ""
    ticket = {
        "oma": oma_address or ctx.client.server,
        "appliance_id": reply.appliance.id,
        "join_token": reply.join_token,
        "ca_fingerprint": reply.ca_fingerprint,
        "expires_at": expires,
    }
    return json.dumps(ticket, indent=2)


def cmd_enroll(ctx: Context, args: argparse.Namespace) -> int:
    for flag, path in (("--credential-file", args.credential_file), ("--join-file", args.join_file)):
        if path is not None and path.is_dir():
            raise CliError(f"{flag} {path} is a directory; give a file name", exit_code=2)
    reply = ctx.client.call(
        ctx.client.appliances, "EnrollAppliance", appliance_pb2.EnrollApplianceRequest(name=args.name)
    )
    appliance = reply.appliance
    if args.join_file is not None and reply.join_token:
        write_secret(args.join_file, _join_ticket(ctx, reply, args.oma_address), "--join-file")
    if args.credential_file is not None and reply.credential:
        write_secret(args.credential_file, reply.credential)
    if ctx.out.as_json:
        shown = appliance_pb2.EnrollApplianceResponse()
        shown.CopyFrom(reply)
        if args.join_file is not None:  # written to the file: not echoed into logs and scripts' output
            shown.join_token = ""
        if args.credential_file is not None:
            shown.credential = ""
        ctx.out.message(shown)
        return 0
    if ctx.out.quiet:
        ctx.out.ids([appliance.id])
        return 0
    ctx.out.line(f"Enrolled appliance {appliance.name} (id {appliance.id}).")
    if reply.join_token:
        until = reply.join_token_expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
        if args.join_file is not None:
            ctx.out.line(
                f"Join file written to {args.join_file} (mode 0600; good once, until {until}). On the appliance:"
            )
            ctx.out.line(f"  vma-agent enroll --join-file {args.join_file} --identity-dir DIR")
            ctx.out.line("  vma-agent run --identity-dir DIR --vcenter-dir DIR --state-dir DIR")
        else:
            ctx.out.line(f"Join token: {reply.join_token} (good once, until {until})")
            ctx.out.line(f"OMA CA fingerprint: {reply.ca_fingerprint}")
            ctx.out.line(
                "The token is shown once. Enroll with --join-file F to get a file for `vma-agent enroll --join-file "
                "F`; the appliance verifies this OMA by the fingerprint before it sends the token."
            )
    if args.credential_file is not None and not reply.credential:
        ctx.out.line(
            "No credential was made: this OMA takes appliances by certificate only (a credential hello needs "
            "oma-server --allow-credential-hello). Use the join token."
        )
    elif reply.credential and args.credential_file is None:
        ctx.out.line(f"Credential: {reply.credential}")
        ctx.out.line("(deprecated: for a credential hello, `vma-agent run --credential-file`; prefer the join token)")
    elif reply.credential:
        ctx.out.line(f"Credential written to {args.credential_file} (mode 0600); it is not shown again. Or start:")
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
        group,
        "enroll",
        "enroll an appliance: its one-time join token is printed, or written to a join file",
        cmd_enroll,
    )
    enroll.add_argument("name", metavar="NAME", help="unique name: 1-63 letters, digits, '.', '_' or '-'")
    enroll.add_argument(
        "--credential-file",
        metavar="F",
        type=Path,
        help="deprecated: write the credential of a credential hello (an OMA with --allow-credential-hello) to F "
        "with mode 0600 (what 'vma-agent run --credential-file F' reads) instead of printing it",
    )
    enroll.add_argument(
        "--join-file",
        metavar="F",
        type=Path,
        help="write the join token, this OMA's address and its CA fingerprint to F with mode 0600 (what "
        "'vma-agent enroll --join-file F' reads) instead of printing them",
    )
    enroll.add_argument(
        "--oma-address",
        metavar="HOST:PORT",
        default="",
        help="the address the appliance reaches the OMA's operator port at, for the join file (default: the one "
        "omactl dials, which may be loopback on the OMA host)",
    )
    revoke = commands.leaf(group, "revoke", "revoke an appliance (its certificates) and close its stream", cmd_revoke)
    revoke.add_argument("appliance", metavar="APPLIANCE", help="appliance id or name")
