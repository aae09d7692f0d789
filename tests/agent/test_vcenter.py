"""The fake vCenter: changed areas between change ids, invalid change ids, guest writes, snapshots, power."""

from __future__ import annotations

import pytest

from vma_client_stubs.agent.extents import allocated_extents, merge, total
from vma_client_stubs.agent.vcenter import ChangeIdInvalid, FakeVCenter, VmPoweredOff

MIB = 1 << 20


def test_create_vm_has_holes_and_varied_data(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("app", [16 * MIB, 4 * MIB], seed=1)
    assert [d.key for d in vm.disks] == [2000, 2001]
    assert vcenter.find_vm("app").uuid == vm.uuid
    path = vcenter.disk_path(vm.uuid, 2000)
    allocated = total(allocated_extents(path))
    assert 0 < allocated < 16 * MIB  # sparse
    data = path.read_bytes()
    assert len(set(data[i : i + 4096] for i in range(0, len(data), 4096))) > 100  # varied blocks
    proto = vcenter.to_proto(vm)
    assert proto.disks[1].capacity_bytes == 4 * MIB and proto.nics[0].mac_address.startswith("00:50:56:")


def test_changed_areas_between_change_ids(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("app", [8 * MIB], seed=2)
    s1 = vcenter.create_snapshot(vm.uuid)
    id1 = s1.disk(2000).change_id
    assert id1.startswith("52 ") and id1.endswith("/0")
    vcenter.write(vm.uuid, 2000, 0, b"x" * 10)  # rounded to the 4 KiB block
    vcenter.write(vm.uuid, 2000, 5 * MIB, b"y" * 8192)
    s2 = vcenter.create_snapshot(vm.uuid)
    vcenter.write(vm.uuid, 2000, 7 * MIB, b"z" * 4096)
    s3 = vcenter.create_snapshot(vm.uuid)
    assert vcenter.query_changed_areas(s2, 2000, id1) == [(0, 4096), (5 * MIB, 8192)]
    assert vcenter.query_changed_areas(s3, 2000, id1) == [(0, 4096), (5 * MIB, 8192), (7 * MIB, 4096)]
    assert vcenter.query_changed_areas(s3, 2000, s2.disk(2000).change_id) == [(7 * MIB, 4096)]
    assert vcenter.query_changed_areas(s3, 2000, "*") == allocated_extents(s3.disk(2000).path)
    # The snapshot froze the data: a later guest write changes the live disk only.
    assert s2.disk(2000).path.read_bytes()[7 * MIB : 7 * MIB + 1] != b"z"
    assert vcenter.disk_path(vm.uuid, 2000).read_bytes()[7 * MIB : 7 * MIB + 1] == b"z"


@pytest.mark.parametrize("case", ["garbage", "never issued", "after reset", "after resize", "newer than snapshot"])
def test_invalid_change_ids(vcenter: FakeVCenter, case: str) -> None:
    vm = vcenter.create_vm("app", [4 * MIB], seed=3)
    s1 = vcenter.create_snapshot(vm.uuid)
    change_id = s1.disk(2000).change_id
    if case == "garbage":
        change_id = "not-a-change-id"
    elif case == "never issued":
        change_id = change_id.rsplit("/", 1)[0] + "/99"
    elif case == "after reset":
        vcenter.reset_cbt(vm.uuid, 2000)
    elif case == "after resize":
        vcenter.resize_disk(vm.uuid, 2000, 8 * MIB)
    s2 = vcenter.create_snapshot(vm.uuid)
    if case == "newer than snapshot":
        change_id = s2.disk(2000).change_id
        s2 = s1
    with pytest.raises(ChangeIdInvalid):
        vcenter.query_changed_areas(s2, 2000, change_id)


def test_guest_write_records_extents(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("app", [16 * MIB], seed=4)
    s1 = vcenter.create_snapshot(vm.uuid)
    before = vcenter.disk_path(vm.uuid, 2000).read_bytes()
    written = vcenter.guest_write(vm.uuid, 5, seed=9)[2000]
    after = vcenter.disk_path(vm.uuid, 2000).read_bytes()
    assert 0.04 * 16 * MIB <= total(written) <= 0.2 * 16 * MIB
    # Every changed byte lies inside a recorded extent, and CBT reports exactly those extents.
    for i in range(0, len(after), 4096):
        if before[i : i + 4096] != after[i : i + 4096]:
            assert any(o <= i < o + n for o, n in written), i
    s2 = vcenter.create_snapshot(vm.uuid)
    assert vcenter.query_changed_areas(s2, 2000, s1.disk(2000).change_id) == merge(written)
    assert any(after[o : o + 4096] == bytes(4096) for o, n in written for o in range(o, o + n, 4096))  # some zeros


def test_powered_off_guest_cannot_write(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("app", [4 * MIB], seed=5)
    assert vcenter.set_power(vm.uuid, False).power_state == "off"
    with pytest.raises(VmPoweredOff):
        vcenter.guest_write(vm.uuid, 1)
    vcenter.set_power(vm.uuid, True)
    vcenter.guest_write(vm.uuid, 1)


def test_snapshot_removal(vcenter: FakeVCenter) -> None:
    vm = vcenter.create_vm("app", [4 * MIB], seed=6)
    snap = vcenter.create_snapshot(vm.uuid)
    assert vcenter.list_snapshots(vm.uuid) == [snap.id]
    assert vcenter.get_snapshot(vm.uuid, snap.id).disk(2000).change_id == snap.disk(2000).change_id
    vcenter.remove_snapshot(vm.uuid, snap.id)
    assert vcenter.list_snapshots(vm.uuid) == []
