"""Registering VM contexts from a VMA's discovery, and reading them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import ChangeIdRecord, Disk, VmContext, Volume, utcnow
from oma_server.errors import InvalidArgument, NotFound, Unavailable
from oma_server.integrity.maps import latest_verified
from oma_server.outbox import CommandOutbox
from oma_server.pagination import fetch_page
from oma_server.protocol.commands import Discover
from oma_server.protocol.inventory import DiscoveredVm


@dataclass(frozen=True)
class DiskView:
    disk: Disk
    change_ids: list[ChangeIdRecord]
    volume: Volume | None
    export_name: str
    verification: BlockMap | None = None  # the latest verified block-hash map (without its hashes)


@dataclass(frozen=True)
class VmView:
    vm: VmContext
    disks: list[DiskView]


@dataclass(frozen=True)
class VmPage:
    vms: list[VmView]
    next_page_token: str


def vm_not_found(vm_context_id: str) -> NotFound:
    return NotFound(
        f"VM context {vm_context_id} does not exist; list them with ListVmContexts",
        reason="VM_CONTEXT_NOT_FOUND",
        vm_context_id=vm_context_id,
    )


def validate_discovered(vm: DiscoveredVm) -> None:
    problems = []
    if not vm.uuid:
        problems.append("uuid is empty")
    if not vm.vcenter:
        problems.append("vcenter is empty")
    if not vm.name:
        problems.append("name is empty")
    if not vm.disks:
        problems.append("the VM has no disks")
    keys = [d.key for d in vm.disks]
    if len(set(keys)) != len(keys):
        problems.append(f"disk keys repeat: {keys}")
    for d in vm.disks:
        if d.capacity_bytes == 0:
            problems.append(f"disk {d.key} has capacity 0")
    if problems:
        raise InvalidArgument(
            f"discovered VM {vm.name or vm.uuid or '?'} is not usable: {'; '.join(problems)}",
            reason="VM_INVENTORY_INVALID",
            vm_uuid=vm.uuid,
        )


def load_view(vm_id: str) -> VmView | None:
    from oma_server.db.models import NbdExport

    vm = VmContext.get_or_none(VmContext.id == vm_id)
    if vm is None:
        return None
    views = []
    for disk in Disk.select().where(Disk.vm_context == vm_id).order_by(Disk.unit_number, Disk.key):
        volume = (
            Volume.select()
            .where((Volume.disk == disk.id) & (Volume.state.not_in(["deleted"])))
            .order_by(Volume.created_at.desc())
            .first()
        )
        export = (
            NbdExport.select().where((NbdExport.volume == volume.id) & (NbdExport.state == "active")).first()
            if volume
            else None
        )
        history = list(ChangeIdRecord.select().where(ChangeIdRecord.disk == disk.id).order_by(ChangeIdRecord.id))
        views.append(DiskView(disk, history, volume, export.name if export else "", latest_verified(disk.id)))
    return VmView(vm, views)


class VmContextService:
    def __init__(self, db: Database, outbox: CommandOutbox) -> None:
        self.db = db
        self.outbox = outbox

    async def register(self, appliance_id: str, discovered: DiscoveredVm) -> tuple[VmView, bool]:
        """Create or refresh the VM context of a discovered VM (idempotent by vCenter + VM uuid)."""
        if not appliance_id:
            raise InvalidArgument("appliance_id is required", reason="APPLIANCE_ID_MISSING")
        validate_discovered(discovered)

        vm_id, created = await self.db.tx(_upsert, appliance_id, discovered)
        view = await self.db.run(load_view, vm_id)
        assert view is not None
        return view, created

    async def discover(
        self, appliance_id: str, name_filter: str, register: bool, timeout_s: float, connected: bool
    ) -> tuple[list[DiscoveredVm], list[VmView]]:
        if not connected:
            raise Unavailable(
                f"appliance {appliance_id} is not connected; discovery needs its stream up",
                reason="APPLIANCE_DISCONNECTED",
                appliance_id=appliance_id,
            )
        command = await self.outbox.enqueue(appliance_id, Discover(name_filter=name_filter))
        result = await self.outbox.wait_result(command.command_id, timeout_s)
        if not result.succeeded:
            raise Unavailable(
                f"appliance {appliance_id} could not discover VMs: {result.detail or 'no detail'}",
                reason="DISCOVERY_FAILED",
            )
        found = list(result.discovered)
        views = [(await self.register(appliance_id, vm))[0] for vm in found] if register else []
        return found, views

    async def get(self, vm_id: str) -> VmView:
        if not vm_id:
            raise InvalidArgument("vm_context_id is required", reason="VM_CONTEXT_ID_MISSING")
        view = await self.db.run(load_view, vm_id)
        if view is None:
            raise vm_not_found(vm_id)
        return view

    async def require(self, vm_id: str) -> None:
        """NOT_FOUND for a VM context filter that names no VM context (an empty list would hide the typo)."""
        if vm_id and await self.db.run(VmContext.get_or_none, VmContext.id == vm_id) is None:
            raise vm_not_found(vm_id)

    async def list_vms(self, page_size: int, page_token: str, appliance_id: str = "", status: str = "") -> VmPage:
        def query() -> VmPage:
            q = VmContext.select(VmContext.id).order_by(VmContext.created_at, VmContext.id)
            if appliance_id:
                q = q.where(VmContext.appliance == appliance_id)
            if status:
                q = q.where(VmContext.status == status)
            rows, token = fetch_page(q, page_size, page_token)
            return VmPage([v for v in (load_view(r.id) for r in rows) if v is not None], token)

        return await self.db.run(query)


def _upsert(appliance_id: str, discovered: DiscoveredVm) -> tuple[str, bool]:
    """The VM context of a discovered VM and its disks, created or refreshed; (its id, whether it was created)."""
    from oma_server.db.models import Appliance

    if Appliance.get_or_none(Appliance.id == appliance_id) is None:
        raise NotFound(f"appliance {appliance_id} does not exist", reason="APPLIANCE_NOT_FOUND")
    fields = _vm_fields(appliance_id, discovered)
    vm = VmContext.get_or_none((VmContext.vcenter == discovered.vcenter) & (VmContext.vm_uuid == discovered.uuid))
    created = vm is None
    if vm is None:
        vm = VmContext.create(vcenter=discovered.vcenter, vm_uuid=discovered.uuid, **fields)
    else:
        VmContext.update(**fields).where(VmContext.id == vm.id).execute()
    for d in discovered.disks:
        disk = Disk.get_or_none((Disk.vm_context == vm.id) & (Disk.key == d.key))
        disk_fields = {
            "label": d.label,
            "capacity_bytes": d.capacity_bytes,
            "datastore_path": d.datastore_path,
            "cbt_enabled": d.cbt_enabled,
            "unit_number": d.unit_number,
        }
        if disk is None:
            Disk.create(vm_context=vm.id, key=d.key, **disk_fields)
        else:
            if disk.capacity_bytes != d.capacity_bytes:
                logger.bind(vm_context_id=vm.id, disk_id=disk.id).info(
                    "disk {key} resized at the source: {old} → {new} bytes",
                    key=d.key,
                    old=disk.capacity_bytes,
                    new=d.capacity_bytes,
                )
            Disk.update(**disk_fields).where(Disk.id == disk.id).execute()
    return vm.id, created


def _vm_fields(appliance_id: str, discovered: DiscoveredVm) -> dict[str, Any]:
    return {
        "appliance": appliance_id,
        "datacenter": discovered.datacenter,
        "moref": discovered.moref,
        "name": discovered.name,
        "num_cpus": max(1, discovered.num_cpus),
        "memory_mib": max(1, discovered.memory_mib),
        "guest_os": discovered.guest_os,
        "firmware": discovered.firmware or "bios",
        "nics": [
            {
                "label": n.label,
                "network_name": n.network_name,
                "mac_address": n.mac_address.lower(),
                "adapter_type": n.adapter_type,
            }
            for n in discovered.nics
        ],
        "updated_at": utcnow(),
    }
