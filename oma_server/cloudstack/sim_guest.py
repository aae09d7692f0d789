"""What the OMA VM's guest sees of the volumes attached to it, laid out as a KVM guest has it.

Under `<state-dir>/guest/`:
- `dev/<name>`: the disk (a link to the volume's backing file stands in for the block node). Names are given the
  way the kernel gives them to hot-plugged disks: the lowest free one (vdb, vdc, ...; sdb, ... on virtio-scsi),
  so a re-attached volume may come back under another name — which is why the OMA goes by the by-id link.
- `dev/disk/by-id/virtio-<serial>` (virtio-blk) or `scsi-0QEMU_QEMU_HARDDISK_<serial>` (virtio-scsi) → `../../<name>`,
  the serial being CloudStack's `diskUuidToSerial` of the volume uuid (devices.disk_serial).
- `sys/block/<name>/size` (512-byte sectors) and, on virtio-blk only, `sys/block/<name>/serial`.
The OMA VM's own root disk holds the first name (vda / sda).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import string
from pathlib import Path
from typing import Any

from loguru import logger

from oma_server.cloudstack.devices import by_id_name, disk_serial
from oma_server.cloudstack.sim_state import SimulatorState

BUSES = {"virtio": ("vd", "virtio-"), "scsi": ("sd", "scsi-0QEMU_QEMU_HARDDISK_")}
DEFAULT_BUS = "virtio"


def _bus(state: SimulatorState) -> str:
    vm = state.vms.get(state.oma_vm_id, {})
    return str(vm.get("_disk_bus", DEFAULT_BUS))


def _names(kernel_prefix: str) -> list[str]:
    letters = string.ascii_lowercase
    return [kernel_prefix + a for a in letters] + [kernel_prefix + a + b for a in letters for b in letters]


def _replace_link(link: Path, target: str | Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _free_name(state: SimulatorState, kernel_prefix: str) -> str:
    used = {v.get("_guest_name") for v in state.volumes.values() if v.get("virtualmachineid") == state.oma_vm_id}
    return next(n for n in _names(kernel_prefix)[1:] if n not in used)  # [0] is the OMA's own root disk


def publish(state: SimulatorState, vol: dict[str, Any]) -> None:
    """The guest sees the volume appear: a kernel name, its node, its by-id link and its sysfs entry."""
    kernel_prefix, link_prefix = BUSES[_bus(state)]
    name = vol.get("_guest_name") or _free_name(state, kernel_prefix)
    vol["_guest_name"] = name
    dev = state.guest_root / "dev"
    state.device_dir.mkdir(parents=True, exist_ok=True)
    _replace_link(dev / name, state.volume_file(vol["id"]).resolve())
    _replace_link(state.device_dir / by_id_name(vol["id"], link_prefix), Path("..") / ".." / name)
    block = state.sys_root / "block" / name
    block.mkdir(parents=True, exist_ok=True)
    (block / "size").write_text(f"{int(vol['size']) // 512}\n")
    if _bus(state) == "virtio":
        (block / "serial").write_text(disk_serial(vol["id"]) + "\n")
    logger.bind(volume_id=vol["id"]).debug("simulator guest: {} appeared as {}", vol["id"], name)


def resized(state: SimulatorState, vol: dict[str, Any]) -> None:
    """A volume attached to the OMA grew: the guest sees the new size."""
    name = vol.get("_guest_name")
    if name and vol.get("virtualmachineid") == state.oma_vm_id:
        size_file = state.sys_root / "block" / name / "size"
        if size_file.parent.exists():
            size_file.write_text(f"{int(vol['size']) // 512}\n")


def unpublish(state: SimulatorState, vol: dict[str, Any]) -> None:
    """The guest loses the volume: its node, link and sysfs entry go, its kernel name becomes free."""
    name = vol.pop("_guest_name", None)
    for _, link_prefix in BUSES.values():
        with contextlib.suppress(FileNotFoundError):
            (state.device_dir / by_id_name(vol["id"], link_prefix)).unlink()
    if name:
        with contextlib.suppress(FileNotFoundError):
            (state.guest_root / "dev" / name).unlink()
        shutil.rmtree(state.sys_root / "block" / name, ignore_errors=True)


def sync(state: SimulatorState) -> None:
    """Make the guest view match the volumes attached to the OMA VM (after a restart)."""
    shutil.rmtree(state.guest_root, ignore_errors=True)
    state.make_dirs()
    for vol in state.volumes_of(state.oma_vm_id):
        if vol.get("type") == "DATADISK" and vol.get("_published", True):
            publish(state, vol)
