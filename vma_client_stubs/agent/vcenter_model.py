"""The fake vCenter's objects (VMs, disks, NICs, snapshots, CBT state) and errors: plain data, no files."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vma_client_stubs.agent.extents import Extent


class VCenterError(Exception):
    """Base of the fake vCenter's errors."""


class VmNotFound(VCenterError):
    """No VM with that uuid or name."""


class DiskNotFound(VCenterError):
    """The VM has no disk with that key."""


class SnapshotNotFound(VCenterError):
    """The VM has no snapshot with that id."""


class ChangeIdInvalid(VCenterError):
    """The change id is unknown to the disk's CBT (reset, resized, never issued or malformed): copy the disk fully."""


class VmPoweredOff(VCenterError):
    """The guest of a powered-off VM cannot write."""


@dataclass
class Nic:
    label: str
    network_name: str
    mac_address: str
    adapter_type: str = "vmxnet3"


@dataclass
class Disk:
    key: int
    label: str
    capacity_bytes: int
    datastore_path: str
    unit_number: int
    cbt_enabled: bool = True
    file: str = ""


@dataclass
class VirtualMachine:
    vcenter: str
    datacenter: str
    uuid: str
    moref: str
    name: str
    num_cpus: int
    memory_mib: int
    guest_os: str
    firmware: str  # "bios" | "efi"
    nics: list[Nic] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    power_state: str = "on"  # "on" | "off" | "suspended"

    def disk(self, key: int) -> Disk:
        for disk in self.disks:
            if disk.key == key:
                return disk
        raise DiskNotFound(f"VM {self.name} ({self.uuid}) has no disk with key {key}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VirtualMachine:
        data = dict(raw)
        data["nics"] = [Nic(**n) for n in raw.get("nics", [])]
        data["disks"] = [Disk(**d) for d in raw.get("disks", [])]
        return cls(**data)


@dataclass
class SnapshotDisk:
    key: int
    path: Path
    capacity_bytes: int
    change_id: str


@dataclass
class Snapshot:
    id: str
    vm_uuid: str
    created_at: float
    disks: dict[int, SnapshotDisk]
    description: str = ""

    def disk(self, key: int) -> SnapshotDisk:
        try:
            return self.disks[key]
        except KeyError:
            raise DiskNotFound(f"snapshot {self.id} of VM {self.vm_uuid} has no disk with key {key}") from None


@dataclass
class CbtState:
    cbt_id: str
    epoch: int = 0
    changes: dict[int, list[Extent]] = field(default_factory=dict)  # epoch → merged extents written in it
    issued: dict[int, float] = field(default_factory=dict)  # epoch → when its change id was taken

    def change_id(self, epoch: int) -> str:
        return f"{self.cbt_id}/{epoch}"

    def to_json(self) -> dict[str, Any]:
        return {
            "cbt_id": self.cbt_id,
            "epoch": self.epoch,
            "changes": {str(e): [list(x) for x in v] for e, v in self.changes.items()},
            "issued": {str(e): t for e, t in self.issued.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CbtState:
        return cls(
            cbt_id=raw["cbt_id"],
            epoch=int(raw["epoch"]),
            changes={int(e): [(int(o), int(n)) for o, n in v] for e, v in raw.get("changes", {}).items()},
            issued={int(e): float(t) for e, t in raw.get("issued", {}).items()},
        )


def new_cbt_id(rng: random.Random | None = None) -> str:
    """A VMware-like CBT id: `52 xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx`."""
    raw = (rng or random.SystemRandom()).randbytes(15)
    hexes = ["52", *(f"{b:02x}" for b in raw)]
    return " ".join(hexes[:8]) + "-" + " ".join(hexes[8:])
