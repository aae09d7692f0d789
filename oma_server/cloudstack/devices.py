"""How a KVM guest names a CloudStack volume attached to it: one function, used by the OMA and the simulator."""

from __future__ import annotations

from pathlib import Path

#: KVM exposes a virtio disk's serial (the first 20 characters of the volume uuid) under /dev/disk/by-id.
SERIAL_LENGTH = 20
DEFAULT_DEVICE_ROOT = Path("/dev/disk/by-id")


def by_id_name(volume_id: str) -> str:
    """`virtio-<first 20 chars of the volume uuid>`: the entry name under /dev/disk/by-id."""
    if not volume_id:
        raise ValueError("volume id is empty")
    return "virtio-" + volume_id[:SERIAL_LENGTH]


def device_path(device_root: Path | str, volume_id: str) -> Path:
    """Where the attached volume appears inside `device_root` (default /dev/disk/by-id)."""
    return Path(device_root) / by_id_name(volume_id)
