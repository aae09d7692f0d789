"""A fake vCenter on a directory: VMs with raw disk images, snapshots and changed block tracking (CBT).

Layout (one directory per VM, named by its BIOS uuid):

    <root>/<uuid>/vm.json                    inventory: the vma.v1.VirtualMachine fields + power state
    <root>/<uuid>/disk-<key>.img             one sparse raw image per disk (the running VM's disk)
    <root>/<uuid>/cbt-<key>.json             CBT of the disk: its CBT id, current epoch, changed extents per epoch
    <root>/<uuid>/snapshots/<id>/            a snapshot: snapshot.json and a frozen image per disk
    <root>/<uuid>/.lock                      flock serialising every mutation (agent and CLI may run at once)

Changed block tracking works like VMware's: each disk has a CBT id (`52 xx … xx`, new after a CBT reset or a
resize) and an epoch counter. Guest writes record their extents under the current epoch. A snapshot issues the
change id `<cbt id>/<epoch>` for each disk and starts the next epoch, so `query_changed_areas(snapshot, id)` (VMware's
QueryChangedDiskAreas) is the union of the extents written in the epochs after the id's up to the snapshot's.
`"*"` returns every allocated extent of the snapshot. A change id of another CBT id, an epoch never issued or a
malformed id raises `ChangeIdInvalid`.

Snapshots freeze what a copy reads: taking one copies each disk image into the snapshot directory, keeping its holes
(only the allocated extents are copied, with copy_file_range, so the kernel does the work and a reflink-capable
filesystem shares the blocks). Guest writes afterwards change the live image only, so a copy reading the snapshot
sees exactly the data of the change id it reports, however long the copy takes or if the agent restarts in between.
The cost is one read and write of the allocated data per snapshot; a record-only snapshot (copy-on-write of the old
blocks at each guest write) would be cheaper but needs every writer to cooperate, which a test writing into the image
directly would silently break.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oma.common.v1 import inventory_pb2
from vma_client_stubs.agent.discovery import cbt_status_proto, power_state_proto, vm_proto
from vma_client_stubs.agent.extents import Extent, allocated_extents, clip, merge, sparse_copy
from vma_client_stubs.agent.guest_data import fill_varied, varied_bytes
from vma_client_stubs.agent.vcenter_model import (
    CbtState,
    ChangeIdInvalid,
    Disk,
    DiskNotFound,
    Nic,
    Snapshot,
    SnapshotDisk,
    SnapshotNotFound,
    VCenterError,
    VirtualMachine,
    VmNotFound,
    VmPoweredOff,
    new_cbt_id,
)

# The agent and its tests import the fake vCenter's objects and errors from here.
__all__ = [
    "ChangeIdInvalid",
    "DiskNotFound",
    "FakeVCenter",
    "Snapshot",
    "SnapshotNotFound",
    "VCenterError",
    "VirtualMachine",
    "VmNotFound",
    "VmPoweredOff",
    "power_state_proto",
]

MIB = 1 << 20
BLOCK = 4096


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class FakeVCenter:
    """The fake vCenter rooted at a directory. Thread- and process-safe for mutations (one flock per VM)."""

    def __init__(self, root: Path | str, *, name: str = "vcenter.local", datacenter: str = "dc1") -> None:
        self.root = Path(root)
        self.name = name
        self.datacenter = datacenter
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- inventory ----------------------------------------------------------------------------------------------
    def vm_dir(self, vm_uuid: str) -> Path:
        return self.root / vm_uuid

    def list_vms(self, name_filter: str = "") -> list[VirtualMachine]:
        vms = []
        for path in sorted(self.root.glob("*/vm.json")):
            vm = self._read_vm(path)
            if name_filter in vm.name:
                vms.append(vm)
        return sorted(vms, key=lambda v: v.name)

    def get_vm(self, vm_uuid: str) -> VirtualMachine:
        path = self.vm_dir(vm_uuid) / "vm.json"
        if not vm_uuid or "/" in vm_uuid or not path.exists():
            raise VmNotFound(f"no VM with uuid {vm_uuid!r} in {self.root}")
        return self._read_vm(path)

    def find_vm(self, name_or_uuid: str) -> VirtualMachine:
        """A VM by uuid or by exact name."""
        with contextlib.suppress(VmNotFound):
            return self.get_vm(name_or_uuid)
        matches = [vm for vm in self.list_vms() if vm.name == name_or_uuid]
        if not matches:
            raise VmNotFound(f"no VM named or with uuid {name_or_uuid!r} in {self.root}")
        if len(matches) > 1:
            raise VmNotFound(f"{len(matches)} VMs are named {name_or_uuid!r}; use the uuid")
        return matches[0]

    def disk_path(self, vm_uuid: str, key: int) -> Path:
        vm = self.get_vm(vm_uuid)
        return self.vm_dir(vm_uuid) / vm.disk(key).file

    def _read_vm(self, path: Path) -> VirtualMachine:
        return VirtualMachine.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def _write_vm(self, vm: VirtualMachine) -> None:
        _atomic_write_json(self.vm_dir(vm.uuid) / "vm.json", asdict(vm))

    @contextlib.contextmanager
    def _locked(self, vm_uuid: str) -> Iterator[None]:
        lock_path = self.vm_dir(vm_uuid) / ".lock"
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ---- creating VMs -------------------------------------------------------------------------------------------
    def create_vm(
        self,
        name: str,
        disk_sizes: Sequence[int],
        *,
        seed: int | None = None,
        num_cpus: int = 2,
        memory_mib: int = 2048,
        guest_os: str = "ubuntu64Guest",
        firmware: str = "bios",
        networks: Sequence[str] = ("VM Network",),
        fill: bool = True,
        power_state: str = "on",
    ) -> VirtualMachine:
        """A new VM with disks of the given sizes (bytes, multiples of 4 KiB), filled with varied data and holes."""
        rng = random.Random(seed)
        vm_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if self.vm_dir(vm_uuid).exists():
            raise VCenterError(f"VM {vm_uuid} already exists")
        vm = VirtualMachine(
            vcenter=self.name,
            datacenter=self.datacenter,
            uuid=vm_uuid,
            moref=f"vm-{rng.randrange(1000, 99999)}",
            name=name,
            num_cpus=num_cpus,
            memory_mib=memory_mib,
            guest_os=guest_os,
            firmware=firmware,
            nics=[
                Nic(
                    label=f"Network adapter {i + 1}",
                    network_name=net,
                    mac_address="00:50:56:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3)),
                )
                for i, net in enumerate(networks)
            ],
            power_state=power_state,
        )
        vm_dir = self.vm_dir(vm_uuid)
        vm_dir.mkdir(parents=True)
        for i, size in enumerate(disk_sizes):
            if size <= 0 or size % BLOCK:
                raise VCenterError(f"disk size {size} must be a positive multiple of {BLOCK}")
            key = 2000 + i
            disk = Disk(
                key=key,
                label=f"Hard disk {i + 1}",
                capacity_bytes=size,
                datastore_path=f"[datastore1] {name}/{name}{'' if i == 0 else f'_{i}'}.vmdk",
                unit_number=i,
                file=f"disk-{key}.img",
            )
            vm.disks.append(disk)
            path = vm_dir / disk.file
            with open(path, "wb") as fh:
                fh.truncate(size)
            if fill:
                fill_varied(path, size, rng)
            self._write_cbt(vm_uuid, key, CbtState(cbt_id=new_cbt_id(rng)))
        self._write_vm(vm)
        return vm

    # ---- power --------------------------------------------------------------------------------------------------
    def set_power(self, vm_uuid: str, on: bool) -> VirtualMachine:
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            vm.power_state = "on" if on else "off"
            self._write_vm(vm)
            return vm

    def set_cbt(self, vm_uuid: str, enabled: bool) -> VirtualMachine:
        """Turn changed block tracking on or off on every disk of the VM (its change ids stay as they were)."""
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            for disk in vm.disks:
                disk.cbt_enabled = enabled
            self._write_vm(vm)
            return vm

    # ---- CBT ----------------------------------------------------------------------------------------------------
    def _cbt_path(self, vm_uuid: str, key: int) -> Path:
        return self.vm_dir(vm_uuid) / f"cbt-{key}.json"

    def cbt(self, vm_uuid: str, key: int) -> CbtState:
        self.get_vm(vm_uuid).disk(key)
        return CbtState.from_json(json.loads(self._cbt_path(vm_uuid, key).read_text(encoding="utf-8")))

    def _write_cbt(self, vm_uuid: str, key: int, state: CbtState) -> None:
        _atomic_write_json(self._cbt_path(vm_uuid, key), state.to_json())

    def current_change_id(self, vm_uuid: str, key: int) -> tuple[str, float | None]:
        """The most recently issued change id of a disk and when it was taken ("" and None when none)."""
        state = self.cbt(vm_uuid, key)
        if not state.issued:
            return "", None
        epoch = max(state.issued)
        return state.change_id(epoch), state.issued[epoch]

    def reset_cbt(self, vm_uuid: str, key: int) -> str:
        """Disable and re-enable CBT on a disk: a new CBT id, so every earlier change id becomes invalid."""
        with self._locked(vm_uuid):
            state = CbtState(cbt_id=new_cbt_id())
            self._write_cbt(vm_uuid, key, state)
            return state.cbt_id

    def resize_disk(self, vm_uuid: str, key: int, capacity_bytes: int) -> None:
        """Grow (or shrink) a disk; like VMware this resets its CBT."""
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            disk = vm.disk(key)
            self._unshare(self.vm_dir(vm_uuid) / disk.file)
            with open(self.vm_dir(vm_uuid) / disk.file, "r+b") as fh:
                fh.truncate(capacity_bytes)
            disk.capacity_bytes = capacity_bytes
            self._write_vm(vm)
            self._write_cbt(vm_uuid, key, CbtState(cbt_id=new_cbt_id()))

    def _parse_change_id(self, state: CbtState, change_id: str, key: int) -> int:
        cbt_id, sep, epoch_text = change_id.rpartition("/")
        if not sep or not epoch_text.isdigit():
            raise ChangeIdInvalid(f"disk {key}: {change_id!r} is not a change id")
        if cbt_id != state.cbt_id:
            raise ChangeIdInvalid(
                f"disk {key}: change id {change_id!r} belongs to another CBT generation (now {state.cbt_id!r}); "
                "CBT was reset or the disk resized"
            )
        epoch = int(epoch_text)
        if epoch not in state.issued:
            raise ChangeIdInvalid(f"disk {key}: change id {change_id!r} was never issued")
        return epoch

    def query_changed_areas(self, snapshot: Snapshot, key: int, change_id: str) -> list[Extent]:
        """VMware's QueryChangedDiskAreas: the extents of the disk changed between `change_id` and `snapshot`.

        `"*"` means every allocated extent of the snapshot. Raises ChangeIdInvalid.
        """
        disk = snapshot.disk(key)
        if change_id == "*":
            return allocated_extents(disk.path)
        state = self.cbt(snapshot.vm_uuid, key)
        since = self._parse_change_id(state, change_id, key)
        upto = self._parse_change_id(state, disk.change_id, key)
        if since > upto:
            raise ChangeIdInvalid(f"disk {key}: change id {change_id!r} is newer than snapshot {snapshot.id}")
        changed: list[Extent] = []
        for epoch, extents in state.changes.items():
            if since < epoch <= upto:
                changed.extend(extents)
        return clip(merge(changed), disk.capacity_bytes)

    # ---- snapshots ----------------------------------------------------------------------------------------------
    def _snapshots_dir(self, vm_uuid: str) -> Path:
        return self.vm_dir(vm_uuid) / "snapshots"

    def create_snapshot(self, vm_uuid: str, description: str = "") -> Snapshot:
        """Freeze every disk of the VM (copy-on-write) and issue one change id per disk."""
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            snap_id = f"snapshot-{uuid.uuid4().hex[:10]}"
            snap_dir = self._snapshots_dir(vm_uuid) / snap_id
            snap_dir.mkdir(parents=True)
            now = time.time()
            disks: dict[int, SnapshotDisk] = {}
            try:
                for disk in vm.disks:
                    target = snap_dir / disk.file
                    # Copy-on-write, as VMware's delta disks: the snapshot is a hard link (instant); the first write
                    # to the live disk afterwards gives the live disk its own copy (`_unshare`).
                    os.link(self.vm_dir(vm_uuid) / disk.file, target)
                    state = self.cbt(vm_uuid, disk.key)
                    epoch = state.epoch
                    state.issued[epoch] = now
                    state.epoch = epoch + 1
                    self._write_cbt(vm_uuid, disk.key, state)
                    disks[disk.key] = SnapshotDisk(disk.key, target, disk.capacity_bytes, state.change_id(epoch))
            except BaseException:
                shutil.rmtree(snap_dir, ignore_errors=True)
                raise
            snapshot = Snapshot(snap_id, vm_uuid, now, disks, description)
            meta = {
                "id": snap_id,
                "vm_uuid": vm_uuid,
                "created_at": now,
                "description": description,
                "disks": [
                    {"key": d.key, "file": d.path.name, "capacity_bytes": d.capacity_bytes, "change_id": d.change_id}
                    for d in disks.values()
                ],
            }
            _atomic_write_json(snap_dir / "snapshot.json", meta)
            return snapshot

    def get_snapshot(self, vm_uuid: str, snapshot_id: str) -> Snapshot:
        path = self._snapshots_dir(vm_uuid) / snapshot_id / "snapshot.json"
        if not snapshot_id or "/" in snapshot_id or not path.exists():
            raise SnapshotNotFound(f"VM {vm_uuid} has no snapshot {snapshot_id!r}")
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Snapshot(
            id=raw["id"],
            vm_uuid=raw["vm_uuid"],
            created_at=float(raw["created_at"]),
            disks={
                int(d["key"]): SnapshotDisk(
                    int(d["key"]), path.parent / d["file"], int(d["capacity_bytes"]), d["change_id"]
                )
                for d in raw["disks"]
            },
            description=raw.get("description", ""),
        )

    def list_snapshots(self, vm_uuid: str) -> list[str]:
        snaps = self._snapshots_dir(vm_uuid)
        return sorted(p.parent.name for p in snaps.glob("*/snapshot.json")) if snaps.exists() else []

    def find_snapshots(self, vm_uuid: str, description: str) -> list[Snapshot]:
        """The VM's snapshots with this description (vCenter finds snapshots by name the same way)."""
        found = []
        for snap_id in self.list_snapshots(vm_uuid):
            try:
                snapshot = self.get_snapshot(vm_uuid, snap_id)
            except SnapshotNotFound:  # removed meanwhile
                continue
            if snapshot.description == description:
                found.append(snapshot)
        return found

    def remove_snapshot(self, vm_uuid: str, snapshot_id: str) -> None:
        with self._locked(vm_uuid):
            path = self._snapshots_dir(vm_uuid) / snapshot_id
            if "/" in snapshot_id or not path.exists():
                raise SnapshotNotFound(f"VM {vm_uuid} has no snapshot {snapshot_id!r}")
            shutil.rmtree(path)

    # ---- guest writes -------------------------------------------------------------------------------------------
    def write(self, vm_uuid: str, key: int, offset: int, data: bytes) -> None:
        """One guest write at an exact place, recorded by CBT."""
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            if vm.power_state != "on":
                raise VmPoweredOff(f"VM {vm.name} is powered {vm.power_state}; its guest cannot write")
            disk = vm.disk(key)
            if offset < 0 or offset + len(data) > disk.capacity_bytes:
                raise VCenterError(f"write of {len(data)} bytes at {offset} is outside disk {key}")
            self._unshare(self.vm_dir(vm_uuid) / disk.file)
            fd = os.open(self.vm_dir(vm_uuid) / disk.file, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            self._record(vm_uuid, key, [(offset, len(data))])

    @staticmethod
    def _unshare(live: Path) -> None:
        """Give a live disk still shared with a snapshot (hard link) its own copy before it is written."""
        if os.stat(live).st_nlink > 1:
            private = live.with_name(live.name + ".cow")
            sparse_copy(live, private)
            os.replace(private, live)

    def _record(self, vm_uuid: str, key: int, extents: list[Extent]) -> None:
        state = self.cbt(vm_uuid, key)
        # CBT tracks at block granularity, like VMware's (it reports whole blocks).
        blocks = [(o - o % BLOCK, -(-(o + n) // BLOCK) * BLOCK - (o - o % BLOCK)) for o, n in extents]
        state.changes[state.epoch] = merge([*state.changes.get(state.epoch, []), *blocks])
        self._write_cbt(vm_uuid, key, state)

    def guest_write(
        self,
        vm_uuid: str,
        percent: float,
        *,
        seed: int | None = None,
        disk_keys: Sequence[int] | None = None,
    ) -> dict[int, list[Extent]]:
        """Simulate the guest rewriting about `percent` % of each disk: random 4 KiB-aligned extents of 4 KiB to 1 MiB
        with random data, text, and some all-zero blocks. Returns (and records for CBT) the extents per disk."""
        rng = random.Random(seed)
        written: dict[int, list[Extent]] = {}
        with self._locked(vm_uuid):
            vm = self.get_vm(vm_uuid)
            if vm.power_state != "on":
                raise VmPoweredOff(f"VM {vm.name} is powered {vm.power_state}; its guest cannot write")
            for disk in vm.disks:
                if disk_keys is not None and disk.key not in disk_keys:
                    continue
                budget = int(disk.capacity_bytes * percent / 100)
                extents: list[Extent] = []
                self._unshare(self.vm_dir(vm_uuid) / disk.file)
                fd = os.open(self.vm_dir(vm_uuid) / disk.file, os.O_WRONLY)
                try:
                    while budget > 0:
                        length = min(rng.choice((1, 2, 4, 16, 64, 256)) * BLOCK, max(BLOCK, budget))
                        length -= length % BLOCK
                        length = min(length, disk.capacity_bytes)
                        offset = rng.randrange(0, disk.capacity_bytes - length + 1, BLOCK)
                        os.pwrite(fd, varied_bytes(rng, length, zero_share=0.2, part_blocks=(1, 2, 4)), offset)
                        extents.append((offset, length))
                        budget -= length
                finally:
                    os.close(fd)
                self._record(vm_uuid, disk.key, extents)
                written[disk.key] = merge(extents)
        return written

    # ---- protobuf views (vma_client_stubs.agent.discovery) ---------------------------------------------------
    def to_proto(self, vm: VirtualMachine) -> inventory_pb2.VirtualMachine:
        return vm_proto(vm, self.current_change_id)

    def cbt_status(self, vm_uuid: str) -> list[inventory_pb2.CbtStatus]:
        return cbt_status_proto(self.get_vm(vm_uuid), self.current_change_id)
