"""Finding an attached volume's device as a KVM guest names it: both buses, and every way a wrong disk is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.devices import BY_ID_PREFIXES, by_id_name, disk_serial, lookup_device
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.simulator import CloudStackSimulator

UUID = "3c7deb70-8a8e-4d16-93b8-0f2b1c4d5e6f"


def test_serial_is_cloudstacks_disk_uuid_to_serial() -> None:
    # LibvirtComputingResource.diskUuidToSerial: hyphens removed, first 20 characters
    assert disk_serial(UUID) == "3c7deb708a8e4d1693b8"
    assert by_id_name(UUID) == "virtio-3c7deb708a8e4d1693b8"
    assert by_id_name(UUID, "scsi-0QEMU_QEMU_HARDDISK_") == "scsi-0QEMU_QEMU_HARDDISK_3c7deb708a8e4d1693b8"
    assert disk_serial("abc") == "abc"
    with pytest.raises(ValueError):
        disk_serial("")


@pytest.mark.parametrize(
    ("bus", "prefix", "kernel", "sysfs_serial"),
    [
        ("virtio", "virtio-", "vdb", True),
        ("scsi", "scsi-0QEMU_QEMU_HARDDISK_", "sdb", False),
    ],
)
async def test_found_on_each_bus(tmp_path: Path, bus: str, prefix: str, kernel: str, sysfs_serial: bool) -> None:
    sim = CloudStackSimulator(tmp_path / bus, seed_config={"oma_vm": {"disk_bus": bus}})
    async with sim, CloudStackClient(sim.settings()) as client:
        vol = await client.create_volume("replica", 2 * GIB)
        attached = await client.attach_volume_to_oma(vol.id)
        lookup = lookup_device(sim.device_root, vol.id, attached.size_bytes, sim.sys_root)
        assert lookup.found is not None, lookup.describe()
        assert lookup.found.path == sim.device_root / (prefix + disk_serial(vol.id))
        assert lookup.found.kernel_name == kernel and lookup.found.size_bytes == 2 * GIB
        assert lookup.found.serial == (disk_serial(vol.id) if sysfs_serial else None)
        # the other bus's names are not there: the guest shows one
        others = [p for p in BY_ID_PREFIXES if p != prefix]
        assert not any((sim.device_root / (p + disk_serial(vol.id))).exists() for p in others)


async def test_a_wrong_disk_behind_the_link_is_refused(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vol = await client.create_volume("replica", 2 * GIB)
    await client.attach_volume_to_oma(vol.id)
    # the size CloudStack reports must be the size of the disk behind the link
    wrong_size = lookup_device(sim.device_root, vol.id, 3 * GIB, sim.sys_root)
    assert wrong_size.found is None
    assert f"leads to vdb of {2 * GIB} bytes; the volume has {3 * GIB}" in wrong_size.describe()
    # a stale link: the serial sysfs shows for that kernel name is another volume's
    (sim.sys_root / "block" / "vdb" / "serial").write_text("ffffffffffffffffffff\n")
    stale = lookup_device(sim.device_root, vol.id, 2 * GIB, sim.sys_root)
    assert stale.found is None and "whose serial is 'ffffffffffffffffffff'" in stale.refused


async def test_nothing_there_names_what_is_there(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    present = await client.create_volume("present", GIB)
    await client.attach_volume_to_oma(present.id)
    missing = await client.create_volume("missing", GIB)
    lookup = lookup_device(sim.device_root, missing.id, GIB, sim.sys_root)
    text = lookup.describe()
    assert lookup.found is None and not lookup.refused
    assert all(prefix + disk_serial(missing.id) in text for prefix in BY_ID_PREFIXES)
    assert f"present there: virtio-{disk_serial(present.id)}" in text


def test_a_dangling_link_counts_as_absent(tmp_path: Path) -> None:
    root = tmp_path / "by-id"
    root.mkdir()
    os.symlink("../../vdz", root / by_id_name(UUID))
    lookup = lookup_device(root, UUID, GIB, tmp_path / "sys")
    assert lookup.found is None and lookup.seen == (by_id_name(UUID),)
