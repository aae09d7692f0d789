"""How a KVM guest names a CloudStack volume attached to it, and finding that device: used by the OMA and the simulator.

CloudStack's KVM agent gives every disk of a volume the serial `diskUuidToSerial(uuid)`: the uuid with its hyphens
removed, first 20 characters (LibvirtComputingResource; a virtio-blk serial holds at most 20 bytes). udev then links
the disk under /dev/disk/by-id with a prefix that depends on the bus the disk is on:
`virtio-<serial>` (virtio-blk, the default), `scsi-0QEMU_QEMU_HARDDISK_<serial>` (virtio-scsi, e.g.
rootDiskController=scsi) or `scsi-<serial>` — the three the CloudStack CSI driver looks under as well.

A link is accepted only when the block device behind it has the volume's size and, where the kernel shows it
(`/sys/block/<name>/serial`, virtio-blk only), the volume's serial: a stale link or a wrong disk is refused before
anything is written to it. Reading sysfs and a device's size is a few lines of os calls; no library does exactly
this check, so it is written here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SERIAL_LENGTH = 20
DEFAULT_DEVICE_ROOT = Path("/dev/disk/by-id")
DEFAULT_SYS_ROOT = Path("/sys")
#: by-id prefixes in the order a KVM guest most likely shows them
BY_ID_PREFIXES = ("virtio-", "scsi-0QEMU_QEMU_HARDDISK_", "scsi-")
#: how many unrelated by-id entries an error message lists
_SEEN_IN_MESSAGE = 8


def disk_serial(volume_id: str) -> str:
    """The serial CloudStack's KVM agent gives the volume's disk: uuid without hyphens, first 20 characters."""
    if not volume_id:
        raise ValueError("volume id is empty")
    return volume_id.replace("-", "")[:SERIAL_LENGTH]


def by_id_name(volume_id: str, prefix: str = BY_ID_PREFIXES[0]) -> str:
    """The /dev/disk/by-id entry name of the volume on one bus (virtio-blk by default)."""
    return prefix + disk_serial(volume_id)


def candidate_paths(device_root: Path | str, volume_id: str) -> tuple[Path, ...]:
    """Every path under `device_root` the volume may appear as, in the order they are tried."""
    root = Path(device_root)
    return tuple(root / by_id_name(volume_id, prefix) for prefix in BY_ID_PREFIXES)


@dataclass(frozen=True)
class FoundDevice:
    #: the by-id link: the stable name handed to nbd-server (the kernel name may change on re-attach)
    path: Path
    #: the kernel's name of the disk (vdb, sdc)
    kernel_name: str
    size_bytes: int
    #: /sys/block/<name>/serial, where the bus exposes it
    serial: str | None


@dataclass(frozen=True)
class DeviceLookup:
    """What one look for a volume's device found."""

    volume_id: str
    serial: str
    looked_for: tuple[Path, ...]
    found: FoundDevice | None = None
    #: why a link that exists was not accepted (size or serial of another disk); empty when none was refused
    refused: str = ""
    #: by-id entries that exist but belong to other disks (a few, for the operator)
    seen: tuple[str, ...] = ()

    def describe(self) -> str:
        """What was looked for and what was found, in one sentence."""
        names = ", ".join(p.name for p in self.looked_for)
        where = self.looked_for[0].parent if self.looked_for else ""
        text = f"looked for {names} under {where}"
        if self.refused:
            return f"{text}: {self.refused}"
        if self.seen:
            return f"{text}; none exists (present there: {', '.join(self.seen)})"
        return f"{text}; none exists and no disk link is there at all"


def _kernel_name(link: Path) -> str:
    """vdb for a udev link `../../vdb`; the link's own name when it is not a link."""
    return Path(os.readlink(link)).name if link.is_symlink() else link.name


def _size_of(path: Path) -> int:
    """The size of a block device or file: seek to its end (works for both, needs only read access)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _sys_serial(sys_root: Path, kernel_name: str) -> str | None:
    try:
        return (sys_root / "block" / kernel_name / "serial").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _seen(device_root: Path, limit: int = _SEEN_IN_MESSAGE) -> tuple[str, ...]:
    try:
        names = sorted(e.name for e in device_root.iterdir() if e.name.startswith(BY_ID_PREFIXES))
    except FileNotFoundError:
        return ()
    return tuple(names[:limit]) + ((f"... {len(names) - limit} more",) if len(names) > limit else ())


def lookup_device(
    device_root: Path | str,
    volume_id: str,
    size_bytes: int,
    sys_root: Path | str = DEFAULT_SYS_ROOT,
) -> DeviceLookup:
    """Find the attached volume's device (blocking: call it in a worker thread)."""
    root, sysfs = Path(device_root), Path(sys_root)
    serial = disk_serial(volume_id)
    paths = candidate_paths(root, volume_id)
    refusals = []
    for path in paths:
        if not path.exists():  # follows the link: a dangling link counts as absent
            continue
        name = _kernel_name(path)
        size = _size_of(path)
        shown = _sys_serial(sysfs, name)
        if shown is not None and shown != serial:
            refusals.append(f"{path.name} leads to {name}, whose serial is {shown!r}, not {serial!r}")
        elif size != size_bytes:
            refusals.append(f"{path.name} leads to {name} of {size} bytes; the volume has {size_bytes}")
        else:
            return DeviceLookup(volume_id, serial, paths, FoundDevice(path, name, size, shown))
    return DeviceLookup(volume_id, serial, paths, refused="; ".join(refusals), seen=() if refusals else _seen(root))


def device_path(device_root: Path | str, volume_id: str) -> Path:
    """The virtio-blk by-id path of the volume (the simulator's default bus; discovery tries every bus)."""
    return Path(device_root) / by_id_name(volume_id)
