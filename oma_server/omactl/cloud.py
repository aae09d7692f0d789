"""omactl cloud zones|networks|offerings|disk-offerings|templates: what the OMA's CloudStack account can use."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from oma.v1 import cloud_pb2
from oma_server.omactl import render
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import size


def _mib(value: int) -> str:
    return size(value * 1024 * 1024) if value else render.NONE


def _show(
    ctx: Context,
    method: str,
    request: Message,
    items: Callable[[Any], Any],
    headers: Sequence[str],
    row: Callable[[Any], list[object]],
    title: str,
) -> int:
    found = list(ctx.client.paged(ctx.client.cloud, method, request, items))
    if ctx.out.as_json:
        ctx.out.messages(found)
    elif ctx.out.quiet:
        ctx.out.ids(item.id for item in found)
    else:
        ctx.out.table(headers, (row(item) for item in found), title=title)
    return 0


def cmd_zones(ctx: Context, args: argparse.Namespace) -> int:
    return _show(
        ctx,
        "ListZones",
        cloud_pb2.ListZonesRequest(),
        lambda r: r.zones,
        ["ID", "NAME", "NETWORK TYPE", "STATE", "OMA ZONE"],
        lambda z: [
            z.id,
            z.name,
            z.network_type or render.NONE,
            z.allocation_state or render.NONE,
            "yes" if z.oma_zone else "",
        ],
        "CloudStack zones",
    )


def cmd_networks(ctx: Context, args: argparse.Namespace) -> int:
    return _show(
        ctx,
        "ListNetworks",
        cloud_pb2.ListNetworksRequest(zone_id=args.zone or ""),
        lambda r: r.networks,
        ["ID", "NAME", "TYPE", "CIDR", "GATEWAY", "STATE"],
        lambda n: [
            n.id,
            n.name,
            n.type or render.NONE,
            n.cidr or render.NONE,
            n.gateway or render.NONE,
            n.state or render.NONE,
        ],
        "CloudStack networks (targets of omactl network-map create --target ID|NAME)",
    )


def cmd_offerings(ctx: Context, args: argparse.Namespace) -> int:
    return _show(
        ctx,
        "ListServiceOfferings",
        cloud_pb2.ListServiceOfferingsRequest(),
        lambda r: r.service_offerings,
        ["ID", "NAME", "CPUS", "MEMORY", "CPU MHZ", "CUSTOMIZED"],
        lambda o: [
            o.id,
            o.name,
            o.cpu_count or render.NONE,
            _mib(o.memory_mib),
            o.cpu_speed_mhz or render.NONE,
            "yes" if o.customized else "no",
        ],
        "CloudStack service offerings (omactl failover ... --offering ID)",
    )


def cmd_disk_offerings(ctx: Context, args: argparse.Namespace) -> int:
    return _show(
        ctx,
        "ListDiskOfferings",
        cloud_pb2.ListDiskOfferingsRequest(),
        lambda r: r.disk_offerings,
        ["ID", "NAME", "SIZE", "CUSTOMIZED", "STORAGE"],
        lambda o: [
            o.id,
            o.name,
            size(o.disk_size_bytes) if o.disk_size_bytes else render.NONE,
            "yes" if o.customized else "no",
            o.storage_type or render.NONE,
        ],
        "CloudStack disk offerings",
    )


def cmd_templates(ctx: Context, args: argparse.Namespace) -> int:
    return _show(
        ctx,
        "ListTemplates",
        cloud_pb2.ListTemplatesRequest(zone_id=args.zone or ""),
        lambda r: r.templates,
        ["ID", "NAME", "READY", "SIZE", "FORMAT", "HYPERVISOR", "FAILOVER DEFAULT"],
        lambda t: [
            t.id,
            t.name,
            "yes" if t.ready else "no",
            size(t.size_bytes) if t.size_bytes else render.NONE,
            t.format or render.NONE,
            t.hypervisor or render.NONE,
            "yes" if t.failover_default else "",
        ],
        "CloudStack templates",
    )


def register(commands: Commands) -> None:
    group = commands.group("cloud", "what the OMA's CloudStack account can use (cached for 30 s)")
    commands.leaf(group, "zones", "list CloudStack zones (the OMA's own is marked)", cmd_zones)
    networks = commands.leaf(group, "networks", "list guest networks with CIDR and type", cmd_networks)
    networks.add_argument("--zone", metavar="ID", help="zone (default: the OMA's)")
    commands.leaf(group, "offerings", "list service offerings (CPUs and memory of failed-over VMs)", cmd_offerings)
    commands.leaf(group, "disk-offerings", "list disk offerings", cmd_disk_offerings)
    templates = commands.leaf(
        group, "templates", "list templates (failed-over VMs are deployed from one)", cmd_templates
    )
    templates.add_argument("--zone", metavar="ID", help="zone (default: the OMA's)")
