"""omactl vms list|show|discover|verify|power-on|power-off (VM contexts: the VMware VMs under migration)."""

from __future__ import annotations

import argparse
import time

from oma.common.v1 import inventory_pb2
from oma.v1 import vm_context_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.failover import started
from oma_server.omactl.render import enum_choices, enum_label, enum_parse, field_time, size, status_text
from oma_server.omactl.schedules import next_sync, rpo_fields, rpo_short

STATUS_PREFIX = "VM_CONTEXT_STATUS"


def vm_status(vm: vm_context_pb2.VmContext) -> str:
    return enum_label(vm_context_pb2.VmContextStatus, vm.status, STATUS_PREFIX)


def _memory(mib: int) -> str:
    return size(mib * 1024 * 1024) if mib else render.NONE


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    request = vm_context_pb2.ListVmContextsRequest(
        appliance_id=resolve.optional(resolve.appliance_id, ctx, args.appliance)
    )
    if args.status:
        request.status = enum_parse(vm_context_pb2.VmContextStatus, STATUS_PREFIX, args.status)  # type: ignore[assignment]
    items = list(ctx.client.paged(ctx.client.vms, "ListVmContexts", request, lambda r: list(r.vm_contexts)))
    headers = [
        "ID",
        "NAME",
        "APPLIANCE",
        "STATUS",
        "CPUS",
        "MEMORY",
        "DISKS",
        "ACTIVE JOB",
        "RPO",
        "NEXT SYNC",
        "UPDATED",
    ]
    return ctx.out.listing(items, headers, _row, "VM contexts")


def _row(vm: vm_context_pb2.VmContext) -> list[object]:
    return [
        vm.id,
        vm.name,
        vm.appliance_id,
        status_text(vm_status(vm)),
        vm.num_cpus or render.NONE,
        _memory(vm.memory_mib),
        f"{len(vm.disks)} ({size(sum(d.capacity_bytes for d in vm.disks))})" if vm.disks else "0",
        vm.active_job_id or render.NONE,
        rpo_short(vm.rpo),
        next_sync(vm.rpo) if vm.rpo.schedule_id else render.NONE,
        field_time(vm, "updated_at"),
    ]


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    reply = ctx.client.call(ctx.client.vms, "GetVmContext", vm_context_pb2.GetVmContextRequest(id=vm_id))
    vm = reply.vm_context
    if ctx.out.as_json:
        ctx.out.message(vm)
        return 0
    ctx.out.fields(
        [
            ("id", vm.id),
            ("name", vm.name),
            ("status", status_text(vm_status(vm))),
            ("appliance", vm.appliance_id),
            ("vcenter", vm.vcenter or render.NONE),
            ("datacenter", vm.datacenter or render.NONE),
            ("vm uuid", vm.vm_uuid or render.NONE),
            ("moref", vm.moref or render.NONE),
            ("cpus", vm.num_cpus or render.NONE),
            ("memory", _memory(vm.memory_mib)),
            ("guest os", vm.guest_os or render.NONE),
            ("firmware", enum_label(inventory_pb2.Firmware, vm.firmware, "FIRMWARE")),
            ("active job", vm.active_job_id or render.NONE),
            ("last completed job", vm.last_completed_job_id or render.NONE),
            *rpo_fields(vm.rpo),
            ("created", field_time(vm, "created_at")),
            ("updated", field_time(vm, "updated_at")),
        ]
    )
    ctx.out.line()
    ctx.out.table(
        ["DISK ID", "KEY", "UNIT", "LABEL", "CAPACITY", "CBT", "LAST CHANGE ID", "VOLUME", "EXPORT"],
        (
            [
                d.id,
                d.key,
                d.unit_number,
                d.label or render.NONE,
                size(d.capacity_bytes),
                "on" if d.cbt_enabled else "off",
                d.last_change_id or render.NONE,
                d.volume_id or render.NONE,
                d.export_name or render.NONE,
            ]
            for d in vm.disks
        ),
        title="Disks",
    )
    _verification_table(ctx, vm)
    ctx.out.line()
    ctx.out.table(
        ["NIC", "NETWORK", "MAC", "ADAPTER"],
        ([n.label, n.network_name, n.mac_address, n.adapter_type or render.NONE] for n in vm.nics),
        title="NICs",
    )
    return 0


def _verification_table(ctx: Context, vm: vm_context_pb2.VmContext) -> None:
    ctx.out.line()
    ctx.out.table(
        [
            "DISK ID",
            "KEY",
            "DIGEST",
            "VERIFIED CHANGE ID",
            "VERIFIED AT",
            "BLOCKS READ",
            "AGAINST THE SOURCE",
            "AT REST",
            "CURRENT",
        ],
        (_verification_row(d) for d in vm.disks),
        title="Replica verification (block-hash digests read back by the OMA)",
    )


def _verification_row(d: vm_context_pb2.Disk) -> list[object]:
    if not d.HasField("verification"):
        return [d.id, d.key, *[render.NONE] * 6, "no: never verified"]
    v = d.verification
    current = "yes" if v.change_id == d.last_change_id else "no: replicated since"
    return [
        d.id,
        d.key,
        f"{v.algorithm}:{v.digest}",
        v.change_id,
        field_time(v, "verified_at"),
        f"{v.blocks_read} of {v.block_count} ({v.block_size // 2**20} MiB)",
        f"{v.source_blocks_compared} block(s) compared" if v.source_blocks_compared else "no source hashes",
        _at_rest(v),
        current,
    ]


def _at_rest(v: vm_context_pb2.DiskVerification) -> str:
    """The last comparison of the replica with this map at rest (omactl vms verify), or with the source's hashes by
    the sync's own read-back when it found a difference."""
    if not v.check_outcome:
        return render.NONE
    when = f"{field_time(v, 'checked_at')}, job {v.check_job_id}"
    if v.check_outcome == "passed":
        return f"passed {when}"
    ranges = ", ".join(str(r.first) if r.count == 1 else f"{r.first}-{r.first + r.count - 1}" for r in v.mismatched)
    what = "DIFFERS FROM THE SOURCE" if v.check_job_id == v.job_id else "MISMATCH"
    return (
        f"{what} in block(s) {ranges} ({when}): the next sync recopies them, or copies this disk whole from an "
        "appliance without repair-extents"
    )


def _discover(ctx: Context, request: vm_context_pb2.DiscoverVmsRequest) -> vm_context_pb2.DiscoverVmsResponse:
    """DiscoverVms, asked again while the appliance is still connecting (it was just started) until the wait ends."""
    wait = request.timeout_seconds or 30
    timeout = max(ctx.client.timeout or 0.0, wait + 5.0)
    deadline = time.monotonic() + wait
    noted = False
    while True:
        try:
            return ctx.client.call(ctx.client.vms, "DiscoverVms", request, timeout=timeout)  # type: ignore[no-any-return]
        except CliError as error:
            if "(APPLIANCE_DISCONNECTED)" not in error.text or time.monotonic() > deadline:
                raise
            if not noted:
                ctx.out.note(f"omactl: appliance {request.appliance_id} is not connected yet; waiting up to {wait}s")
                noted = True
            time.sleep(0.5)  # a retry interval while the appliance dials in, not a synchronisation


def cmd_discover(ctx: Context, args: argparse.Namespace) -> int:
    request = vm_context_pb2.DiscoverVmsRequest(
        appliance_id=resolve.appliance_id(ctx, args.appliance),
        name_filter=args.name_filter or "",
        register=args.register,
    )
    if args.wait is not None:
        request.timeout_seconds = args.wait
    reply = _discover(ctx, request)
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    if ctx.out.quiet:
        found = [vm.id for vm in reply.vm_contexts] if args.register else [vm.uuid for vm in reply.virtual_machines]
        ctx.out.ids(found)
        return 0
    ctx.out.table(
        ["NAME", "UUID", "POWER", "CPUS", "MEMORY", "DISKS", "NICS", "GUEST OS"],
        (
            [
                vm.name,
                vm.uuid,
                enum_label(inventory_pb2.PowerState, vm.power_state, "POWER_STATE"),
                vm.num_cpus,
                _memory(vm.memory_mib),
                f"{len(vm.disks)} ({size(sum(d.capacity_bytes for d in vm.disks))})",
                len(vm.nics),
                vm.guest_os or render.NONE,
            ]
            for vm in reply.virtual_machines
        ),
        title="Discovered VMs",
    )
    if args.register:
        ctx.out.line()
        ctx.out.table(
            ["ID", "NAME", "STATUS"],
            ([vm.id, vm.name, status_text(vm_status(vm))] for vm in reply.vm_contexts),
            title="Registered VM contexts",
        )
    return 0


def cmd_power(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    on = args.vms_command == "power-on"
    kind = vm_context_pb2.PowerOnSourceVmRequest if on else vm_context_pb2.PowerOffSourceVmRequest
    request = kind(vm_context_id=vm_id, request_id=args.request_id or "")
    method = "PowerOnSourceVm" if on else "PowerOffSourceVm"
    job = ctx.client.call(ctx.client.vms, method, request).job
    return started(ctx, args, job, f"power {'on' if on else 'off'} of the source VM")


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    request = vm_context_pb2.VerifyVmContextRequest(
        vm_context_id=resolve.vm_id(ctx, args.vm), request_id=args.request_id or ""
    )
    job = ctx.client.call(ctx.client.vms, "VerifyVmContext", request).job
    return started(ctx, args, job, "verification at rest of the replicas")


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    if not args.yes:
        raise CliError(
            f"deleting VM context {vm_id} deletes its replica volumes in CloudStack; add --yes to go ahead",
            exit_code=2,
        )
    request = vm_context_pb2.DeleteVmContextRequest(id=vm_id, request_id=args.request_id or "")
    reply = ctx.client.call(ctx.client.vms, "DeleteVmContext", request)
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    volumes = ", ".join(reply.deleted_volume_ids) or "none"
    ctx.out.line(f"Deleted VM context {vm_id}: CloudStack volumes deleted: {volumes}.")
    ctx.out.line(f"The record of the deletion: omactl jobs log {vm_id}")
    return 0


def cmd_complete(ctx: Context, args: argparse.Namespace) -> int:
    vm_id = resolve.vm_id(ctx, args.vm)
    request = vm_context_pb2.CompleteMigrationRequest(vm_context_id=vm_id, request_id=args.request_id or "")
    reply = ctx.client.call(ctx.client.vms, "CompleteMigration", request)
    if ctx.out.as_json:
        ctx.out.message(reply)
        return 0
    kept = ", ".join(reply.kept_volume_ids) or "none"
    ctx.out.line(
        f"Migration of {reply.vm_context.name} ({vm_id}) completed: it runs in CloudStack as VM "
        f"{reply.target_vm_id or '-'} on volumes {kept} (kept)."
    )
    ctx.out.line(
        f"The appliance releases the source side (CBT off, snapshots deleted): command {reply.release_command_id}; "
        f"its answer in omactl jobs log {vm_id}"
    )
    return 0


def register(commands: Commands) -> None:
    group = commands.group("vms", "VM contexts: the VMware VMs under migration")
    listing = commands.leaf(group, "list", "list VM contexts", cmd_list)
    listing.add_argument("--appliance", metavar="APPLIANCE", help="only VMs of this appliance (id or name)")
    listing.add_argument(
        "--status",
        metavar="S",
        choices=enum_choices(vm_context_pb2.VmContextStatus, STATUS_PREFIX),
        help="only VMs in this status: %(choices)s",
    )
    show = commands.leaf(group, "show", "show one VM context with its disks and NICs", cmd_show)
    show.add_argument("vm", metavar="VM", help="VM context id or name")
    discover = commands.leaf(
        group, "discover", "ask an appliance which VMs it sees (optionally register them)", cmd_discover
    )
    discover.add_argument(
        "--appliance", metavar="APPLIANCE", required=True, help="appliance to ask, id or name (it must connect)"
    )
    discover.add_argument(
        "--name-filter", "--filter", metavar="TEXT", dest="name_filter", help="only VMs whose name contains TEXT"
    )
    discover.add_argument("--register", action="store_true", help="register every VM found as a VM context")
    discover.add_argument(
        "--wait",
        metavar="SECONDS",
        type=int,
        help="how long to wait for the appliance to connect and answer (default 30, max 300)",
    )
    delete = commands.leaf(
        group,
        "delete",
        "delete a VM context that will not be migrated: its replica volumes and exports, then its records",
        cmd_delete,
    )
    delete.add_argument("vm", metavar="VM", help="VM context id or name")
    delete.add_argument("--yes", action="store_true", help="yes, delete its replica volumes in CloudStack")
    delete.add_argument("--request-id", metavar="X", help="idempotency key")
    complete = commands.leaf(
        group,
        "complete",
        "close the migration of a VM that runs in CloudStack after a live failover (the source side is released)",
        cmd_complete,
    )
    complete.add_argument("vm", metavar="VM", help="VM context id or name")
    complete.add_argument("--request-id", metavar="X", help="idempotency key")
    _register_jobs(commands, group)


def _register_jobs(commands: Commands, group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The commands that start a job of the VM: verify, power-on, power-off."""
    verify = commands.leaf(
        group,
        "verify",
        "re-read every replica at rest and compare it with its block-hash map (a job; refused while a job runs)",
        cmd_verify,
    )
    verify.add_argument("vm", metavar="VM", help="VM context id or name")
    verify.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same job")
    verify.add_argument("--watch", action="store_true", help="follow the job until it ends")
    for name, text in (
        ("power-on", "power the source VM on through its appliance (a job; refused after a live failover)"),
        ("power-off", "power the source VM off through its appliance (guest shutdown, then hard off; a job)"),
    ):
        power = commands.leaf(group, name, text, cmd_power)
        power.add_argument("vm", metavar="VM", help="VM context id or name")
        power.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same job")
        power.add_argument("--watch", action="store_true", help="follow the job until it ends")
