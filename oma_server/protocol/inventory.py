"""A VMware VM as an appliance discovered it (domain values; `oma_server.wire` turns the wire form into these)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiscoveredNic:
    label: str
    network_name: str
    mac_address: str
    adapter_type: str


@dataclass(frozen=True, slots=True)
class DiscoveredDisk:
    key: int
    label: str
    capacity_bytes: int
    datastore_path: str
    cbt_enabled: bool
    current_change_id: str
    unit_number: int


@dataclass(frozen=True, slots=True)
class DiscoveredVm:
    vcenter: str
    datacenter: str
    uuid: str
    moref: str
    name: str
    num_cpus: int
    memory_mib: int
    guest_os: str
    firmware: str  # "bios" | "efi" | "" (not reported)
    power_state: str  # "powered_on" | "powered_off" | "suspended" | ""
    nics: tuple[DiscoveredNic, ...]
    disks: tuple[DiscoveredDisk, ...]
