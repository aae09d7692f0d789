"""VM lifecycle, network mapping, root-disk swap for failover, and snapshots."""

from __future__ import annotations

import os

import pytest

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackInsufficientCapacity, CloudStackNotFound, CloudStackParamError
from oma_server.cloudstack.models import GIB, NicSpec, VolumeType
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.errors import Category
from tests.cloudstack.helpers import read_at, write_at


async def _catalogue(client: CloudStackClient) -> tuple[str, str, dict[str, str]]:
    offering = next(o for o in await client.list_service_offerings() if o.name == "Small Instance")
    template = (await client.list_templates())[0]
    networks = {n.name: n.id for n in await client.list_networks()}
    return offering.id, template.id, networks


async def test_deploy_with_network_mapping_and_lifecycle(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    offering, template, nets = await _catalogue(client)
    vm = await client.deploy_vm(
        "migrated-web-01",
        offering,
        template,
        sim.zone_id,
        [
            NicSpec(nets["guest-net-1"], ip="10.1.1.50", mac="02:00:aa:bb:cc:01"),
            (nets["shared-net-1"], None, None),
        ],
        start=False,
        root_disk_size=20 * GIB,
    )
    assert vm.state == "Stopped"
    assert [n.network_id for n in vm.nics] == [nets["guest-net-1"], nets["shared-net-1"]]
    assert vm.nics[0].ip_address == "10.1.1.50" and vm.nics[0].mac_address == "02:00:aa:bb:cc:01"
    assert vm.nics[0].is_default and not vm.nics[1].is_default
    assert vm.nics[1].ip_address is not None and vm.nics[1].ip_address.startswith("192.168.100.")
    root = vm.root_volume
    assert root is not None and root.size_bytes == 20 * GIB and root.device_id == 0 and root.state == "Allocated"

    # the same IP again is refused
    with pytest.raises(CloudStackInsufficientCapacity) as info:
        await client.deploy_vm("other", offering, template, sim.zone_id, [(nets["guest-net-1"], "10.1.1.50")])
    assert info.value.category is Category.RESOURCE_EXHAUSTED
    assert info.value.metadata["cloudstack_errorcode"] == "533"

    started = await client.start_vm(vm.id)
    assert started.state == "Running"
    assert all(v.state == "Ready" for v in started.volumes)
    with pytest.raises(CloudStackParamError, match="already running"):
        await client.start_vm(vm.id)
    stopped = await client.stop_vm(vm.id, forced=True)
    assert stopped.state == "Stopped"
    assert (await client.get_vm(vm.id)).state == "Stopped"
    assert [v.id for v in await client.list_vms(name="migrated-web-01")] == [vm.id]

    assert await client.destroy_vm(vm.id, expunge=True) is None  # the job result names no VM (docs/cloudstack.md)
    with pytest.raises(CloudStackNotFound):
        await client.get_vm(vm.id)
    assert root.id not in sim.state.volumes  # the ROOT volume went with it
    # a VM that is gone counts as destroyed
    assert await client.destroy_vm(vm.id, expunge=True) is None


async def test_deploy_started_reports_running(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    offering, template, nets = await _catalogue(client)
    vm = await client.deploy_vm("started", offering, template, sim.zone_id, [nets["guest-net-1"]], start=True)
    assert vm.state == "Running"
    assert sim.state.vms[vm.id]["state"] == "Running"
    await client.destroy_vm(vm.id, expunge=False)
    assert (await client.get_vm(vm.id)).state == "Destroyed"
    assert sim.state.vms[vm.id]["state"] == "Destroyed"


async def test_failover_swaps_root_disk(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    """What live failover does: deploy stopped, detach its root, attach the replicated volume at device 0."""
    offering, template, nets = await _catalogue(client)
    replica = await client.create_volume("replica-root", 12 * GIB)
    await client.attach_volume_to_oma(replica.id)  # replication writes it through the OMA
    await client.detach_volume(replica.id)

    vm = await client.deploy_vm("failover-target", offering, template, sim.zone_id, [nets["guest-net-1"]])
    original_root = vm.root_volume
    assert original_root is not None

    vol = await client.attach_volume(replica.id, vm.id)  # no device id: a data disk
    assert vol.device_id == 1
    await client.detach_volume(replica.id)

    with pytest.raises(CloudStackParamError, match="already has root volume"):
        await client.attach_volume(replica.id, vm.id, device_id=0)
    old_root = await client.detach_volume(original_root.id)
    assert old_root.type is VolumeType.DATADISK  # CloudStack turns a detached root into a data disk

    new_root = await client.attach_volume(replica.id, vm.id, device_id=0)
    assert new_root.device_id == 0 and new_root.type is VolumeType.ROOT
    running = await client.start_vm(vm.id)
    assert running.state == "Running"
    assert running.root_volume is not None and running.root_volume.id == replica.id
    await client.delete_volume(original_root.id)

    # a root cannot be swapped while the VM runs
    with pytest.raises(CloudStackParamError, match="Root volume detach"):
        await client.detach_volume(replica.id)


async def test_snapshot_create_revert_delete_keeps_holes(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vol = await client.create_volume("snapme", 2 * GIB)
    await client.attach_volume_to_oma(vol.id)
    backing = sim.state.volume_file(vol.id)
    write_at(backing, GIB, b"before")

    snap = await client.create_volume_snapshot(vol.id)
    assert snap.volume_id == vol.id and snap.state == "BackedUp"
    assert snap.virtual_size_bytes == 2 * GIB
    snap_file = sim.state.snapshot_file(snap.id)
    assert snap_file.stat().st_size == 2 * GIB
    assert snap_file.stat().st_blocks * 512 < 64 * 1024 * 1024  # holes stayed holes
    assert [s.id for s in await client.list_snapshots(volume_id=vol.id)] == [snap.id]

    write_at(backing, GIB, b"after!")

    # revert needs the volume detached (or its VM stopped); the OMA VM is running
    with pytest.raises(CloudStackParamError, match="shutdown state"):
        await client.revert_snapshot(snap.id)
    await client.detach_volume(vol.id)
    reverted = await client.revert_snapshot(snap.id)
    assert reverted.id == snap.id
    assert read_at(backing, GIB, 6) == b"before"
    assert os.stat(backing).st_blocks * 512 < 64 * 1024 * 1024

    await client.delete_snapshot(snap.id)
    assert await client.list_snapshots(volume_id=vol.id) == []
    assert not snap_file.exists()


async def test_snapshot_of_allocated_volume_is_refused(client: CloudStackClient) -> None:
    vol = await client.create_volume("never-attached", GIB)
    with pytest.raises(CloudStackParamError, match="not in Ready state") as info:
        await client.create_volume_snapshot(vol.id)
    assert info.value.jobid is None  # refused before a job was created
    assert info.value.http_status == 431
