"""Volumes, attach/detach and the guest device links, through the real client and the simulator over HTTP."""

from __future__ import annotations

import os

import pytest

from oma_server.cloudstack import device_path, disk_serial
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackNotFound, CloudStackParamError
from oma_server.cloudstack.models import GIB, VolumeType
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.errors import Category
from tests.cloudstack.helpers import read_at, real_path, write_at


async def test_catalogue(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    zones = await client.list_zones()
    assert [z.id for z in zones] == [sim.zone_id]
    assert zones[0].allocation_state == "Enabled"
    assert await client.zone_id() == sim.zone_id

    offerings = await client.list_service_offerings()
    assert {o.name for o in offerings} >= {"Small Instance", "Medium Instance"}
    medium = next(o for o in offerings if o.name == "Medium Instance")
    assert (medium.cpu_number, medium.memory_mib) == (2, 4096)

    disk_offerings = await client.list_disk_offerings()
    custom = await client.custom_disk_offering()
    assert custom.is_customized and custom.disk_size_bytes == 0
    assert any(not o.is_customized and o.disk_size_bytes == 5 * GIB for o in disk_offerings)

    networks = await client.list_networks(zone_id=sim.zone_id)
    assert {n.name for n in networks} == {"guest-net-1", "shared-net-1"}
    assert all(n.zone_id == sim.zone_id for n in networks)

    templates = await client.list_templates()
    assert templates[0].is_ready and templates[0].size_bytes == 10 * GIB


async def test_create_volume_rounds_up_to_gib_and_makes_sparse_file(
    client: CloudStackClient, sim: CloudStackSimulator
) -> None:
    vol = await client.create_volume("disk-2000", 5 * GIB + 1)
    assert vol.size_bytes == 6 * GIB  # rounded up to whole GiB
    assert vol.state == "Allocated"
    assert vol.type is VolumeType.DATADISK
    assert vol.virtual_machine_id is None and vol.device_id is None
    assert vol.zone_id == sim.zone_id
    backing = sim.state.volume_file(vol.id)
    assert backing.stat().st_size == 6 * GIB
    assert backing.stat().st_blocks == 0  # sparse
    assert (await client.get_volume(vol.id)) == vol
    assert [v.id for v in await client.list_volumes(name="disk-2000")] == [vol.id]


async def test_create_volume_with_fixed_offering(client: CloudStackClient) -> None:
    small = next(o for o in await client.list_disk_offerings() if not o.is_customized)
    vol = await client.create_volume("fixed", 2 * GIB, disk_offering_id=small.id)
    assert vol.size_bytes == 5 * GIB
    assert vol.disk_offering_id == small.id


async def test_attach_to_oma_publishes_device_and_detach_removes_it(
    client: CloudStackClient, sim: CloudStackSimulator
) -> None:
    vol = await client.create_volume("replica-disk-0", 3 * GIB)
    attached = await client.attach_volume_to_oma(vol.id)
    assert attached.virtual_machine_id == sim.oma_vm_id
    assert attached.device_id == 1  # the OMA's root is 0
    assert attached.state == "Ready"
    # the guest sees it as a KVM guest does: by-id name from CloudStack's diskUuidToSerial (uuid without hyphens,
    # first 20 characters), a udev-style relative link to the kernel name, the serial and size in sysfs
    link = device_path(sim.device_root, vol.id)
    assert link.name == "virtio-" + vol.id.replace("-", "")[:20] == "virtio-" + disk_serial(vol.id)
    assert "-" not in link.name.removeprefix("virtio-") and len(disk_serial(vol.id)) == 20
    assert os.readlink(link) == "../../vdb"  # the OMA's own root disk is vda
    assert link.is_symlink() and real_path(link) == str(sim.state.volume_file(vol.id).resolve())
    vdb = sim.sys_root / "block" / "vdb"
    assert (vdb / "serial").read_text().strip() == disk_serial(vol.id)
    assert int((vdb / "size").read_text()) * 512 == 3 * GIB
    # writes through the device reach the backing file
    write_at(link, GIB, b"hello")
    assert read_at(sim.state.volume_file(vol.id), GIB, 5) == b"hello"

    second = await client.create_volume("replica-disk-1", GIB)
    assert (await client.attach_volume_to_oma(second.id)).device_id == 2
    assert os.readlink(device_path(sim.device_root, second.id)) == "../../vdc"

    detached = await client.detach_volume(vol.id)
    assert detached.virtual_machine_id is None and detached.device_id is None
    assert detached.state == "Ready"
    assert not link.exists() and not link.is_symlink()
    assert not vdb.exists() and not (sim.state.guest_root / "dev" / "vdb").exists()
    assert device_path(sim.device_root, second.id).is_symlink()
    # like the kernel, the guest gives a newly plugged disk the lowest free name: the by-id name stays the key
    third = await client.create_volume("replica-disk-2", GIB)
    await client.attach_volume_to_oma(third.id)
    assert os.readlink(device_path(sim.device_root, third.id)) == "../../vdb"
    # grown while attached: the guest sees the new size
    await client.resize_volume(third.id, 2 * GIB)
    assert int((vdb / "size").read_text()) * 512 == 2 * GIB


async def test_attach_to_other_vm_publishes_nothing(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vm = await _deploy(client, sim, "target-1", start=True)
    vol = await client.create_volume("data", GIB)
    attached = await client.attach_volume(vol.id, vm.id)
    assert attached.virtual_machine_id == vm.id and attached.device_id == 1
    assert not device_path(sim.device_root, vol.id).exists()


async def test_attach_errors(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vol = await client.create_volume("data", GIB)
    await client.attach_volume_to_oma(vol.id)
    with pytest.raises(CloudStackParamError) as info:
        await client.attach_volume_to_oma(vol.id)  # already attached: the job fails with 431
    err = info.value
    assert err.category is Category.INVALID_ARGUMENT
    assert err.reason == "CLOUDSTACK_PARAM_ERROR"
    assert err.metadata["cloudstack_errorcode"] == "431"
    assert "not attached to any VM" in err.metadata["cloudstack_errortext"]
    assert err.metadata["command"] == "attachVolume"
    assert err.jobid and err.metadata["cloudstack_jobid"] == err.jobid

    with pytest.raises(CloudStackNotFound) as nf:
        await client.attach_volume("00000000-0000-0000-0000-000000000000", sim.oma_vm_id)
    assert nf.value.category is Category.NOT_FOUND
    assert nf.value.metadata["cloudstack_errorcode"] == "431"
    assert nf.value.metadata["cloudstack_cserrorcode"] == "9999"
    assert nf.value.http_status == 431

    with pytest.raises(CloudStackParamError, match="not attached"):
        await client.delete_volume(vol.id)


async def test_resize_and_delete(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vol = await client.create_volume("grow", 2 * GIB)
    grown = await client.resize_volume(vol.id, 4 * GIB - 10)
    assert grown.size_bytes == 4 * GIB
    assert sim.state.volume_file(vol.id).stat().st_size == 4 * GIB
    with pytest.raises(CloudStackParamError, match="shrink"):
        await client.resize_volume(vol.id, GIB)
    shrunk = await client.resize_volume(vol.id, GIB, shrink_ok=True)
    assert shrunk.size_bytes == GIB

    await client.delete_volume(vol.id)
    assert vol.id not in sim.state.volumes
    assert not sim.state.volume_file(vol.id).exists()
    with pytest.raises(CloudStackNotFound):
        await client.get_volume(vol.id)


async def test_list_volumes_filters_and_pagination(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    created = [await client.create_volume(f"page-{i}", GIB) for i in range(5)]
    for vol in created[:2]:
        await client.attach_volume_to_oma(vol.id)
    on_oma = await client.list_volumes(vm_id=sim.oma_vm_id, type="DATADISK")
    assert {v.id for v in on_oma} == {v.id for v in created[:2]}
    # raw paging as CloudStack does it: count is the total, the list is one page
    page = await client.request("listVolumes", page=2, pagesize=2)
    assert page["count"] == 6  # 5 data disks and the OMA's root
    assert len(page["volume"]) == 2
    empty = await client.request("listVolumes", name="nothing-has-this-name")
    assert empty == {}


async def _deploy(client: CloudStackClient, sim: CloudStackSimulator, name: str, start: bool = False):
    offering = next(o for o in await client.list_service_offerings() if o.name == "Small Instance")
    template = (await client.list_templates())[0]
    network = next(n for n in await client.list_networks() if n.name == "guest-net-1")
    return await client.deploy_vm(name, offering.id, template.id, sim.zone_id, [(network.id,)], start=start)
