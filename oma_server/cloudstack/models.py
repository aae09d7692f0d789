"""Typed views of the CloudStack resources the OMA uses. Sizes are bytes; ids are CloudStack uuids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

GIB = 1024**3


def bytes_to_gib_ceil(size_bytes: int) -> int:
    """CloudStack sizes volumes in whole GiB: round a byte size up (1 byte over a GiB costs a whole GiB)."""
    if size_bytes <= 0:
        raise ValueError("size must be positive")
    return -(-size_bytes // GIB)


class VolumeType(StrEnum):
    ROOT = "ROOT"
    DATADISK = "DATADISK"


class VolumeState(StrEnum):
    """CloudStack Volume.State values the simulator uses (CloudStack has more, e.g. Migrating)."""

    ALLOCATED = "Allocated"
    CREATING = "Creating"
    READY = "Ready"
    RESIZING = "Resizing"
    DESTROY = "Destroy"
    EXPUNGED = "Expunged"


class VmState(StrEnum):
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DESTROYED = "Destroyed"
    EXPUNGING = "Expunging"
    ERROR = "Error"


class JobStatus(IntEnum):
    PENDING = 0
    SUCCEEDED = 1
    FAILED = 2


def _int(raw: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = raw.get(key)
    if value is None or value == "":
        return default
    return int(value)


def _bool(raw: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True)
class Zone:
    id: str
    name: str
    allocation_state: str | None = None
    network_type: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Zone:
        return cls(
            id=raw["id"],
            name=raw["name"],
            allocation_state=_str(raw, "allocationstate"),
            network_type=_str(raw, "networktype"),
        )


@dataclass(frozen=True)
class ServiceOffering:
    id: str
    name: str
    cpu_number: int | None
    cpu_speed_mhz: int | None
    memory_mib: int | None
    is_customized: bool = False

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> ServiceOffering:
        return cls(
            id=raw["id"],
            name=raw["name"],
            cpu_number=_int(raw, "cpunumber"),
            cpu_speed_mhz=_int(raw, "cpuspeed"),
            memory_mib=_int(raw, "memory"),
            is_customized=_bool(raw, "iscustomized"),
        )


@dataclass(frozen=True)
class DiskOffering:
    id: str
    name: str
    #: fixed size of the offering; 0 for a custom-size offering
    disk_size_bytes: int
    is_customized: bool
    storage_type: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> DiskOffering:
        return cls(
            id=raw["id"],
            name=raw["name"],
            disk_size_bytes=(_int(raw, "disksize", 0) or 0) * GIB,
            is_customized=_bool(raw, "iscustomized"),
            storage_type=_str(raw, "storagetype"),
        )


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    zone_id: str | None
    state: str | None
    type: str | None
    cidr: str | None = None
    gateway: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Network:
        return cls(
            id=raw["id"],
            name=raw["name"],
            zone_id=_str(raw, "zoneid"),
            state=_str(raw, "state"),
            type=_str(raw, "type"),
            cidr=_str(raw, "cidr"),
            gateway=_str(raw, "gateway"),
        )


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    zone_id: str | None
    is_ready: bool
    size_bytes: int | None
    os_type: str | None = None
    hypervisor: str | None = None
    format: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Template:
        return cls(
            id=raw["id"],
            name=raw["name"],
            zone_id=_str(raw, "zoneid"),
            is_ready=_bool(raw, "isready"),
            size_bytes=_int(raw, "size"),
            os_type=_str(raw, "ostypename"),
            hypervisor=_str(raw, "hypervisor"),
            format=_str(raw, "format"),
        )


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    size_bytes: int
    state: str
    type: VolumeType
    zone_id: str | None = None
    virtual_machine_id: str | None = None
    device_id: int | None = None
    disk_offering_id: str | None = None
    created: str | None = None

    @property
    def attached(self) -> bool:
        return self.virtual_machine_id is not None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Volume:
        return cls(
            id=raw["id"],
            name=raw["name"],
            size_bytes=_int(raw, "size", 0) or 0,
            state=str(raw["state"]),
            type=VolumeType(str(raw.get("type", "DATADISK")).upper()),
            zone_id=_str(raw, "zoneid"),
            virtual_machine_id=_str(raw, "virtualmachineid"),
            device_id=_int(raw, "deviceid"),
            disk_offering_id=_str(raw, "diskofferingid"),
            created=_str(raw, "created"),
        )


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    volume_id: str
    state: str
    created: str | None = None
    volume_type: str | None = None
    virtual_size_bytes: int | None = None
    physical_size_bytes: int | None = None
    revertable: bool = False

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=raw["id"],
            name=raw["name"],
            volume_id=raw["volumeid"],
            state=str(raw["state"]),
            created=_str(raw, "created"),
            volume_type=_str(raw, "volumetype"),
            virtual_size_bytes=_int(raw, "virtualsize"),
            physical_size_bytes=_int(raw, "physicalsize"),
            revertable=_bool(raw, "revertable"),
        )


@dataclass(frozen=True)
class Nic:
    id: str
    network_id: str
    ip_address: str | None
    mac_address: str | None
    is_default: bool
    network_name: str | None = None
    gateway: str | None = None
    netmask: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Nic:
        return cls(
            id=raw["id"],
            network_id=raw["networkid"],
            ip_address=_str(raw, "ipaddress"),
            mac_address=_str(raw, "macaddress"),
            is_default=_bool(raw, "isdefault"),
            network_name=_str(raw, "networkname"),
            gateway=_str(raw, "gateway"),
            netmask=_str(raw, "netmask"),
        )


@dataclass(frozen=True)
class NicSpec:
    """One NIC of a VM to deploy: the network, and optionally a fixed IP and MAC."""

    network_id: str
    ip: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class VirtualMachine:
    id: str
    name: str
    state: str
    zone_id: str | None
    service_offering_id: str | None
    template_id: str | None
    nics: tuple[Nic, ...] = ()
    #: filled by CloudStackClient.get_vm/list_vms(with_volumes=True); listVirtualMachines has no volumes
    volumes: tuple[Volume, ...] = ()
    cpu_number: int | None = None
    memory_mib: int | None = None
    instance_name: str | None = None
    created: str | None = None

    @property
    def root_volume(self) -> Volume | None:
        return next((v for v in self.volumes if v.type is VolumeType.ROOT), None)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any], volumes: tuple[Volume, ...] = ()) -> VirtualMachine:
        return cls(
            id=raw["id"],
            name=raw["name"],
            state=str(raw["state"]),
            zone_id=_str(raw, "zoneid"),
            service_offering_id=_str(raw, "serviceofferingid"),
            template_id=_str(raw, "templateid"),
            nics=tuple(Nic.from_api(n) for n in raw.get("nic", [])),
            volumes=volumes,
            cpu_number=_int(raw, "cpunumber"),
            memory_mib=_int(raw, "memory"),
            instance_name=_str(raw, "instancename"),
            created=_str(raw, "created"),
        )


@dataclass(frozen=True)
class AsyncJob:
    id: str
    status: JobStatus
    command: str | None = None
    result_code: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    instance_type: str | None = None
    instance_id: str | None = None

    @property
    def done(self) -> bool:
        return self.status is not JobStatus.PENDING

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> AsyncJob:
        result = raw.get("jobresult")
        return cls(
            id=raw["jobid"],
            status=JobStatus(int(raw["jobstatus"])),
            command=_str(raw, "cmd"),
            result_code=_int(raw, "jobresultcode"),
            result=result if isinstance(result, dict) else ({} if result is None else {"value": result}),
            instance_type=_str(raw, "jobinstancetype"),
            instance_id=_str(raw, "jobinstanceid"),
        )
