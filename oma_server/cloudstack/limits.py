"""What the cloud allows, read from the cloud: the largest volume it creates, and how many data volumes a VM holds.

Volume size. A volume of a custom-size offering must lie within `custom.diskoffering.size.min` and
`custom.diskoffering.size.max` (GB, default 1 and 1024; VolumeApiServiceImpl checks them at createVolume and
resizeVolume), and any volume within `storage.max.volume.size` (GB, default 2000). listCapabilities shows the custom
range to every account (`customdiskofferingminsize` / `customdiskofferingmaxsize`); listConfigurations shows all
three settings to a root admin. The custom range is read from listCapabilities; `storage.max.volume.size` from
listConfigurations when the account may read it.

Data volumes per VM. VolumeApiServiceImpl.getMaxDataVolumesSupported takes the hypervisor-capabilities row of the
VM's host hypervisor and version, else that hypervisor's `default` row (`maxdatavolumeslimit`; KVM: 32 since
4.6). listHypervisorCapabilities and listHosts are admin commands: an account that may not call them learns the
limit when an attach is refused ("already has the maximum number of data disks (N)"), see `limit_from_refusal`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackAuthError, CloudStackError, CloudStackUnknownCommand
from oma_server.cloudstack.models import bytes_to_gib_ceil

CUSTOM_MIN = "custom.diskoffering.size.min"
CUSTOM_MAX = "custom.diskoffering.size.max"
MAX_VOLUME = "storage.max.volume.size"
#: how long limits read from the cloud are reused before they are read again
CACHE_TTL_S = 60.0
_DATA_DISK_LIMIT = re.compile(r"maximum number of data disks \((\d+)\)", re.IGNORECASE)
#: refusals that mean "this account may not read that", not "CloudStack is broken"
_NOT_READABLE = (CloudStackUnknownCommand, CloudStackAuthError)


@dataclass(frozen=True)
class VolumeSizeLimits:
    custom_min_gib: int
    custom_max_gib: int
    #: storage.max.volume.size; None when the account may not read global settings
    max_volume_gib: int | None = None

    @property
    def max_gib(self) -> int:
        return min(self.custom_max_gib, self.max_volume_gib or self.custom_max_gib)

    def problem(self, size_bytes: int) -> str:
        """Why a replica of `size_bytes` cannot be created here, and what to change; empty when it can."""
        gib = bytes_to_gib_ceil(size_bytes)
        if gib > self.custom_max_gib:
            return (
                f"it needs a {gib} GB volume and this CloudStack's {CUSTOM_MAX} is {self.custom_max_gib} GB: raise "
                f"it to at least {gib} (updateConfiguration name={CUSTOM_MAX} value={gib})"
                + (
                    f" and keep {MAX_VOLUME} ({self.max_volume_gib} GB) at least as large"
                    if self.max_volume_gib
                    else ""
                )
            )
        if self.max_volume_gib is not None and gib > self.max_volume_gib:
            return (
                f"it needs a {gib} GB volume and this CloudStack's {MAX_VOLUME} is {self.max_volume_gib} GB: raise "
                f"it to at least {gib} (updateConfiguration name={MAX_VOLUME} value={gib})"
            )
        return ""


@dataclass(frozen=True)
class DataVolumeLimit:
    """How many data volumes a VM may hold, and where the number comes from."""

    vm_id: str
    #: None when the cloud did not say (the account may not read hypervisor capabilities)
    limit: int | None
    hypervisor: str = ""
    hypervisor_version: str = ""
    source: str = ""


def limit_from_refusal(error: CloudStackError) -> int | None:
    """The limit named in CloudStack's refusal of an attach ("... maximum number of data disks (14) attached")."""
    match = _DATA_DISK_LIMIT.search(error.errortext or "")
    return int(match.group(1)) if match else None


def sizes_from_api(capability: dict[str, Any], configurations: list[dict[str, Any]] | None) -> VolumeSizeLimits:
    """The size limits from listCapabilities' `capability` and (when readable) listConfigurations rows."""
    settings = {str(r.get("name")): r.get("value") for r in configurations or []}
    max_volume = settings.get(MAX_VOLUME)
    return VolumeSizeLimits(
        custom_min_gib=int(capability["customdiskofferingminsize"]),
        custom_max_gib=int(capability["customdiskofferingmaxsize"]),
        max_volume_gib=int(max_volume) if max_volume not in (None, "") else None,
    )


def data_volumes_from_api(
    vm: dict[str, Any], host: dict[str, Any] | None, capabilities: list[dict[str, Any]]
) -> DataVolumeLimit:
    """The capability row CloudStack uses for the VM: its host's hypervisor and version, else the `default` row."""
    hypervisor = str(vm.get("hypervisor", ""))
    version = str((host or {}).get("hypervisorversion") or "")
    rows = [r for r in capabilities if str(r.get("hypervisor", "")).lower() == hypervisor.lower()]
    exact = [r for r in rows if version and r.get("hypervisorversion") == version]
    default = [r for r in rows if r.get("hypervisorversion") == "default"]
    if not (exact or default):
        return DataVolumeLimit(
            str(vm["id"]), None, hypervisor, version, f"no hypervisor-capabilities row for {hypervisor}"
        )
    row = (exact or default)[0]
    return DataVolumeLimit(
        str(vm["id"]),
        int(row["maxdatavolumeslimit"]),
        hypervisor,
        str(row.get("hypervisorversion", "")),
        f"listHypervisorCapabilities {hypervisor} {row.get('hypervisorversion')}",
    )


class CloudLimits:
    """Reads the limits above from the cloud, each kept for CACHE_TTL_S."""

    def __init__(self, cloudstack: CloudStackClient, ttl_s: float = CACHE_TTL_S) -> None:
        self.cs = cloudstack
        self.ttl_s = ttl_s
        self._sizes: tuple[float, VolumeSizeLimits] | None = None

    async def volume_sizes(self) -> VolumeSizeLimits:
        now = time.monotonic()
        if self._sizes is not None and now - self._sizes[0] < self.ttl_s:
            return self._sizes[1]
        capability = (await self.cs.request("listCapabilities")).get("capability", {})
        sizes = sizes_from_api(capability, await self._settings(MAX_VOLUME))
        self._sizes = (now, sizes)
        return sizes

    async def _settings(self, name: str) -> list[dict[str, Any]] | None:
        """listConfigurations rows named exactly `name`; None when the account may not read settings."""
        try:
            # listConfigurations matches `name` as a substring: keep the exact one
            rows = await self.cs.request("listConfigurations", fetch_list=True, name=name)
        except _NOT_READABLE as exc:
            logger.info("CloudStack setting {n} is not readable with these keys ({e})", n=name, e=exc.reason)
            return None
        return [r for r in rows or [] if r.get("name") == name]

    async def data_volumes(self, vm_id: str) -> DataVolumeLimit:
        """The data-volume limit of a VM, found the way CloudStack finds it."""
        vms = await self.cs.request("listVirtualMachines", fetch_list=True, id=vm_id)
        if not vms:
            return DataVolumeLimit(vm_id, None, source=f"VM {vm_id} is not listed")
        vm = vms[0]
        try:
            hosts = await self.cs.request("listHosts", fetch_list=True, id=vm["hostid"]) if vm.get("hostid") else []
            rows = await self.cs.request("listHypervisorCapabilities", fetch_list=True, hypervisor=vm.get("hypervisor"))
        except _NOT_READABLE as exc:
            return DataVolumeLimit(
                vm_id,
                None,
                str(vm.get("hypervisor", "")),
                source=f"hypervisor capabilities not readable ({exc.reason})",
            )
        return data_volumes_from_api(vm, hosts[0] if hosts else None, rows or [])
