"""omactl appliances list|show|enroll|revoke."""

from __future__ import annotations

import argparse

from oma.v1 import appliance_pb2
from oma_server.omactl import render
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
    if ctx.out.as_json:
        ctx.out.messages(items)
        return 0
    ctx.out.table(
        ["ID", "NAME", "STATUS", "CONNECTION", "VERSION", "LAST SEEN", "CREATED"],
        (
            [
                a.id,
                a.name,
                status_text(_status(a)),
                status_text(_connection(a)),
                a.agent_version or render.NONE,
                field_time(a, "last_seen_at"),
                field_time(a, "created_at"),
            ]
            for a in items
        ),
        title="Appliances",
    )
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(ctx.client.appliances, "GetAppliance", appliance_pb2.GetApplianceRequest(id=args.id))
    if ctx.out.as_json:
        ctx.out.message(reply.appliance)
    else:
        show_appliance(ctx, reply.appliance)
    return 0


def cmd_enroll(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(
        ctx.client.appliances, "EnrollAppliance", appliance_pb2.EnrollApplianceRequest(name=args.name)
    )
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    ctx.out.line(f"Enrolled appliance {reply.appliance.name} (id {reply.appliance.id}).")
    ctx.out.line(f"Credential: {reply.credential}")
    ctx.out.line(
        "This credential is shown once: configure it on the appliance now. The OMA keeps only its hash; "
        "if it is lost, revoke the appliance and enroll it again."
    )
    return 0


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(ctx.client.appliances, "RevokeAppliance", appliance_pb2.RevokeApplianceRequest(id=args.id))
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
    show.add_argument("id", metavar="ID", help="appliance id")
    enroll = commands.leaf(group, "enroll", "enroll an appliance and print its one-time credential", cmd_enroll)
    enroll.add_argument("name", metavar="NAME", help="unique name: 1-63 letters, digits, '.', '_' or '-'")
    revoke = commands.leaf(group, "revoke", "revoke an appliance's credential and close its stream", cmd_revoke)
    revoke.add_argument("id", metavar="ID", help="appliance id")
