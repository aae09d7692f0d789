"""omactl exports list|show and omactl volumes list|show."""

from __future__ import annotations

import argparse

from oma.v1 import storage_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import enum_choices, enum_label, enum_parse, field_time, size, status_text

EXPORT_PREFIX = "NBD_EXPORT_STATE"
VOLUME_PREFIX = "VOLUME_STATE"


def _export_state(export: storage_pb2.NbdExport) -> str:
    return enum_label(storage_pb2.NbdExportState, export.state, EXPORT_PREFIX)


def _volume_state(volume: storage_pb2.Volume) -> str:
    return enum_label(storage_pb2.VolumeState, volume.state, VOLUME_PREFIX)


def cmd_exports_list(ctx: Context, args: argparse.Namespace) -> int:
    request = storage_pb2.ListNbdExportsRequest()
    if args.state:
        request.state = enum_parse(storage_pb2.NbdExportState, EXPORT_PREFIX, args.state)  # type: ignore[assignment]
    items = list(ctx.client.paged(ctx.client.exports, "ListNbdExports", request, lambda r: list(r.nbd_exports)))
    if ctx.out.as_json:
        ctx.out.messages(items)
        return 0
    ctx.out.table(
        ["NAME", "STATE", "VOLUME", "DISK", "URI", "DEVICE", "CREATED"],
        (
            [
                e.name,
                status_text(_export_state(e)),
                e.volume_id,
                e.disk_id,
                e.uri or render.NONE,
                e.device_path or render.NONE,
                field_time(e, "created_at"),
            ]
            for e in items
        ),
        title="NBD exports",
    )
    return 0


def cmd_exports_show(ctx: Context, args: argparse.Namespace) -> int:
    export = ctx.client.call(ctx.client.exports, "GetNbdExport", storage_pb2.GetNbdExportRequest(name=args.name))
    export = export.nbd_export
    if ctx.out.as_json:
        ctx.out.message(export)
        return 0
    ctx.out.fields(
        [
            ("name", export.name),
            ("state", status_text(_export_state(export))),
            ("volume", export.volume_id or render.NONE),
            ("disk", export.disk_id or render.NONE),
            ("device", export.device_path or render.NONE),
            ("address", export.address or render.NONE),
            ("uri", export.uri or render.NONE),
            ("created", field_time(export, "created_at")),
        ]
    )
    return 0


def cmd_volumes_list(ctx: Context, args: argparse.Namespace) -> int:
    request = storage_pb2.ListVolumesRequest(vm_context_id=resolve.optional(resolve.vm_id, ctx, args.vm))
    if args.state:
        request.state = enum_parse(storage_pb2.VolumeState, VOLUME_PREFIX, args.state)  # type: ignore[assignment]
    items = list(ctx.client.paged(ctx.client.volumes, "ListVolumes", request, lambda r: list(r.volumes)))
    if ctx.out.as_json:
        ctx.out.messages(items)
        return 0
    ctx.out.table(
        ["ID", "NAME", "CLOUDSTACK ID", "DISK", "SIZE", "STATE", "ATTACHED TO", "DEVICE", "UPDATED"],
        (
            [
                v.id,
                v.name or render.NONE,
                v.cloudstack_id or render.NONE,
                v.disk_id,
                size(v.size_bytes),
                status_text(_volume_state(v)),
                v.attached_vm_id or render.NONE,
                v.device_path or render.NONE,
                field_time(v, "updated_at"),
            ]
            for v in items
        ),
        title="Volumes",
    )
    return 0


def cmd_volumes_show(ctx: Context, args: argparse.Namespace) -> int:
    volume = ctx.client.call(ctx.client.volumes, "GetVolume", storage_pb2.GetVolumeRequest(id=args.id)).volume
    if ctx.out.as_json:
        ctx.out.message(volume)
        return 0
    ctx.out.fields(
        [
            ("id", volume.id),
            ("name", volume.name or render.NONE),
            ("cloudstack id", volume.cloudstack_id or render.NONE),
            ("disk", volume.disk_id or render.NONE),
            ("size", f"{size(volume.size_bytes)} ({volume.size_bytes} bytes)"),
            ("state", status_text(_volume_state(volume))),
            ("attached to", volume.attached_vm_id or render.NONE),
            ("device id", volume.device_id if volume.attached_vm_id else render.NONE),
            ("device path", volume.device_path or render.NONE),
            ("created", field_time(volume, "created_at")),
            ("updated", field_time(volume, "updated_at")),
        ]
    )
    return 0


def register(commands: Commands) -> None:
    group = commands.group("exports", "NBD exports the appliances write into")
    listing = commands.leaf(group, "list", "list NBD exports", cmd_exports_list)
    listing.add_argument(
        "--state",
        metavar="S",
        choices=enum_choices(storage_pb2.NbdExportState, EXPORT_PREFIX),
        help="only exports in this state: %(choices)s",
    )
    show = commands.leaf(group, "show", "show one NBD export", cmd_exports_show)
    show.add_argument("name", metavar="NAME", help="export name")

    group = commands.group("volumes", "CloudStack volumes holding the replicas")
    listing = commands.leaf(group, "list", "list volumes", cmd_volumes_list)
    listing.add_argument("--vm", metavar="VM", help="only volumes of this VM context's disks (id or name)")
    listing.add_argument(
        "--state",
        metavar="S",
        choices=enum_choices(storage_pb2.VolumeState, VOLUME_PREFIX),
        help="only volumes in this state: %(choices)s",
    )
    show = commands.leaf(group, "show", "show one volume", cmd_volumes_show)
    show.add_argument("id", metavar="ID", help="OMA volume id")
