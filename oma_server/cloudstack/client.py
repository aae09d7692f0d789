"""The CloudStack adapter the workflows call: typed, async, with deadlines and retries.

`CloudStackClient` is CloudStack's resources as typed calls (zones and offerings, volumes, snapshots, VMs) on top of
`transport.CloudStackTransport`, which signs and sends each command, types its failures, retries what is safe to
retry and awaits async jobs (its docstring states the rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.errors import (
    CloudStackNotFound,
)
from oma_server.cloudstack.models import (
    DiskOffering,
    Network,
    NicSpec,
    ServiceOffering,
    Snapshot,
    Template,
    VirtualMachine,
    Volume,
    Zone,
    bytes_to_gib_ceil,
)
from oma_server.cloudstack.transport import CloudStackTransport
from oma_server.errors import FailedPrecondition, InvalidArgument

_READ_ONLY_PREFIXES = ("list", "query", "get")
NetworkArg = NicSpec | tuple[str] | tuple[str, str | None] | tuple[str, str | None, str | None] | str


def _nic_spec(entry: NetworkArg) -> NicSpec:
    if isinstance(entry, NicSpec):
        return entry
    if isinstance(entry, str):
        return NicSpec(entry)
    network_id, *rest = entry
    ip = rest[0] if rest else None
    mac = rest[1] if len(rest) > 1 else None
    return NicSpec(network_id, ip, mac)


class CloudStackClient(CloudStackTransport):
    """Async CloudStack adapter. Use `async with open_client(settings) as cs:` or call `close()`."""

    def __init__(self, settings: CloudStackSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(settings, session=session)
        self._zone_id: str | None = None
        self._custom_offering: DiskOffering | None = None

    # ---- catalogue ---------------------------------------------------------------------------------
    async def list_zones(self, name: str | None = None) -> list[Zone]:
        return [Zone.from_api(z) for z in await self._list("listZones", name=name)]

    async def zone_id(self) -> str:
        """The zone to work in: settings.zone (an id or a name), or the only zone there is."""
        if self._zone_id is not None:
            return self._zone_id
        zones = await self.list_zones()
        wanted = self.settings.zone
        if wanted:
            match = [z for z in zones if wanted in (z.id, z.name)]
            if not match:
                raise CloudStackNotFound(f"CloudStack zone {wanted!r} does not exist", command="listZones")
            self._zone_id = match[0].id
        elif len(zones) == 1:
            self._zone_id = zones[0].id
        else:
            raise FailedPrecondition(
                f"CloudStack has {len(zones)} zones; set OMA_CLOUDSTACK_ZONE to choose one",
                reason="CLOUDSTACK_ZONE_AMBIGUOUS",
            )
        return self._zone_id

    async def list_service_offerings(self, name: str | None = None) -> list[ServiceOffering]:
        rows = await self._list("listServiceOfferings", name=name)
        return [ServiceOffering.from_api(r) for r in rows]

    async def list_disk_offerings(self, name: str | None = None) -> list[DiskOffering]:
        return [DiskOffering.from_api(r) for r in await self._list("listDiskOfferings", name=name)]

    async def list_networks(self, zone_id: str | None = None, name: str | None = None) -> list[Network]:
        rows = await self._list("listNetworks", zoneid=zone_id, name=name)
        return [Network.from_api(r) for r in rows]

    async def list_templates(
        self, template_filter: str = "executable", zone_id: str | None = None, name: str | None = None
    ) -> list[Template]:
        rows = await self._list("listTemplates", templatefilter=template_filter, zoneid=zone_id, name=name)
        return [Template.from_api(r) for r in rows]

    async def custom_disk_offering(self) -> DiskOffering:
        """The disk offering volumes of any size are created with (the first custom-size one)."""
        if self._custom_offering is None:
            offerings = [o for o in await self.list_disk_offerings() if o.is_customized]
            if not offerings:
                raise FailedPrecondition(
                    "CloudStack has no custom-size disk offering; create one (customized=true) so volumes can "
                    "match the source disks",
                    reason="CLOUDSTACK_NO_CUSTOM_DISK_OFFERING",
                )
            self._custom_offering = offerings[0]
        return self._custom_offering

    # ---- volumes -----------------------------------------------------------------------------------
    async def create_volume(
        self,
        name: str,
        size_bytes: int,
        disk_offering_id: str | None = None,
        zone_id: str | None = None,
    ) -> Volume:
        """A DATADISK of at least `size_bytes`. CloudStack sizes volumes in whole GiB, so the size is rounded
        up to the next GiB (the volume may be up to 1 GiB - 1 byte larger than asked)."""
        if size_bytes <= 0:
            raise InvalidArgument(f"volume size must be positive, not {size_bytes}", reason="INVALID_VOLUME_SIZE")
        zone = zone_id or await self.zone_id()
        params: dict[str, Any] = {"name": name, "zoneid": zone}
        if disk_offering_id is None:
            offering = await self.custom_disk_offering()
        else:
            found = await self._list("listDiskOfferings", id=disk_offering_id)
            if not found:
                raise CloudStackNotFound(f"disk offering {disk_offering_id} does not exist", command="createVolume")
            offering = DiskOffering.from_api(found[0])
        params["diskofferingid"] = offering.id
        if offering.is_customized:
            params["size"] = bytes_to_gib_ceil(size_bytes)
        elif offering.disk_size_bytes < size_bytes:
            raise InvalidArgument(
                f"disk offering {offering.name} is {offering.disk_size_bytes} bytes, smaller than {size_bytes}",
                reason="CLOUDSTACK_OFFERING_TOO_SMALL",
                disk_offering_id=offering.id,
            )
        result = await self._run_async("createVolume", **params)
        return Volume.from_api(self._item(result, "volume", "createVolume"))

    async def get_volume(self, volume_id: str) -> Volume:
        rows = await self._list("listVolumes", id=volume_id)
        if not rows:
            raise CloudStackNotFound(
                f"CloudStack volume {volume_id} does not exist", command="listVolumes", volume_id=volume_id
            )
        return Volume.from_api(rows[0])

    async def list_volumes(self, **filters: Any) -> list[Volume]:
        """Volumes matching CloudStack listVolumes filters (virtualmachineid/vm_id, type, name, zoneid...)."""
        return [Volume.from_api(r) for r in await self._list("listVolumes", **filters)]

    async def resize_volume(self, volume_id: str, size_bytes: int, *, shrink_ok: bool = False) -> Volume:
        """Resize to at least `size_bytes` (rounded up to whole GiB)."""
        result = await self._run_async(
            "resizeVolume", id=volume_id, size=bytes_to_gib_ceil(size_bytes), shrinkok=shrink_ok or None
        )
        return Volume.from_api(self._item(result, "volume", "resizeVolume"))

    async def delete_volume(self, volume_id: str) -> None:
        await self.request("deleteVolume", id=volume_id)

    async def attach_volume(self, volume_id: str, vm_id: str, device_id: int | None = None) -> Volume:
        """Attach to a VM; device_id 0 attaches as the ROOT disk of a stopped VM without one."""
        result = await self._run_async("attachVolume", id=volume_id, virtualmachineid=vm_id, deviceid=device_id)
        return Volume.from_api(self._item(result, "volume", "attachVolume"))

    @property
    def oma_vm_id(self) -> str:
        """The OMA's own VM in CloudStack (OMA_CLOUDSTACK_OMA_VM_ID)."""
        if not self.settings.oma_vm_id:
            raise FailedPrecondition(
                "the OMA's own CloudStack VM id is not configured (set OMA_CLOUDSTACK_OMA_VM_ID)",
                reason="CLOUDSTACK_OMA_VM_UNKNOWN",
            )
        return self.settings.oma_vm_id

    async def attach_volume_to_oma(self, volume_id: str) -> Volume:
        return await self.attach_volume(volume_id, self.oma_vm_id)

    async def detach_volume(self, volume_id: str) -> Volume:
        result = await self._run_async("detachVolume", id=volume_id)
        return Volume.from_api(self._item(result, "volume", "detachVolume"))

    # ---- snapshots ---------------------------------------------------------------------------------
    async def create_volume_snapshot(self, volume_id: str, name: str | None = None) -> Snapshot:
        result = await self._run_async("createSnapshot", volumeid=volume_id, name=name)
        return Snapshot.from_api(self._item(result, "snapshot", "createSnapshot"))

    async def list_snapshots(self, volume_id: str | None = None, snapshot_id: str | None = None) -> list[Snapshot]:
        rows = await self._list("listSnapshots", volumeid=volume_id, id=snapshot_id)
        return [Snapshot.from_api(r) for r in rows]

    async def revert_snapshot(self, snapshot_id: str) -> Snapshot:
        """Restore the volume to the snapshot. CloudStack requires the volume detached or its VM stopped."""
        result = await self._run_async("revertSnapshot", id=snapshot_id)
        return Snapshot.from_api(self._item(result, "snapshot", "revertSnapshot"))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._run_async("deleteSnapshot", id=snapshot_id)

    # ---- virtual machines --------------------------------------------------------------------------
    async def deploy_vm(
        self,
        name: str,
        service_offering_id: str,
        template_id: str,
        zone_id: str,
        networks: Sequence[NetworkArg],
        start: bool = False,
        root_disk_size: int | None = None,
        display_name: str | None = None,
    ) -> VirtualMachine:
        """Deploy a VM; `networks` are (network_id, ip=None, mac=None) in NIC order (the first is default);
        root_disk_size in bytes (rounded up to GiB)."""
        nics = [_nic_spec(n) for n in networks]
        if not nics:
            raise InvalidArgument("a VM needs at least one network", reason="CLOUDSTACK_NO_NETWORK")
        ip_to_network = []
        for nic in nics:
            entry = {"networkid": nic.network_id}
            if nic.ip:
                entry["ip"] = nic.ip
            if nic.mac:
                entry["mac"] = nic.mac
            ip_to_network.append(entry)
        result = await self._run_async(
            "deployVirtualMachine",
            name=name,
            displayname=display_name or name,
            serviceofferingid=service_offering_id,
            templateid=template_id,
            zoneid=zone_id,
            iptonetworklist=ip_to_network,
            startvm=start,
            rootdisksize=bytes_to_gib_ceil(root_disk_size) if root_disk_size else None,
        )
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "deployVirtualMachine"))

    async def start_vm(self, vm_id: str) -> VirtualMachine:
        result = await self._run_async("startVirtualMachine", id=vm_id)
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "startVirtualMachine"))

    async def stop_vm(self, vm_id: str, forced: bool = False) -> VirtualMachine:
        result = await self._run_async("stopVirtualMachine", id=vm_id, forced=forced or None)
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "stopVirtualMachine"))

    async def destroy_vm(self, vm_id: str, expunge: bool = True) -> None:
        """Destroy (and by default expunge: the ROOT volume goes, data disks are detached and kept). A VM that is
        already gone counts as destroyed.

        The job result is not read: with expunge, 4.18.1 to 4.20.1 answer `{"null": {...}}` and later releases
        `{"virtualmachine": {...}}`, both without id, name or state (docs/cloudstack.md); the job's success is
        the answer."""
        try:
            await self._run_async("destroyVirtualMachine", id=vm_id, expunge=expunge)
        except CloudStackNotFound:
            self._log.bind(vm_id=vm_id).info("CloudStack VM {} is already gone; counted as destroyed", vm_id)

    async def _vm_with_volumes(self, raw: dict[str, Any]) -> VirtualMachine:
        volumes = tuple(await self.list_volumes(virtualmachineid=raw["id"]))
        return VirtualMachine.from_api(raw, volumes)

    async def get_vm(self, vm_id: str, with_volumes: bool = True) -> VirtualMachine:
        rows = await self._list("listVirtualMachines", id=vm_id)
        if not rows:
            raise CloudStackNotFound(
                f"CloudStack VM {vm_id} does not exist", command="listVirtualMachines", vm_id=vm_id
            )
        return await self._vm_with_volumes(rows[0]) if with_volumes else VirtualMachine.from_api(rows[0])

    async def list_vms(self, with_volumes: bool = False, **filters: Any) -> list[VirtualMachine]:
        rows = await self._list("listVirtualMachines", **filters)
        if not with_volumes:
            return [VirtualMachine.from_api(r) for r in rows]
        return [await self._vm_with_volumes(r) for r in rows]
