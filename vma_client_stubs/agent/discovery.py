"""What the agent tells about its VMs, as oma.common.v1 inventory messages: a VM with its disks and NICs, each disk's
CBT status, a power state. The fake vCenter's plain objects go in; `change_id_of(vm_uuid, disk_key)` gives a disk's
current change id and when it was issued."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import timestamp_pb2

from oma.common.v1 import inventory_pb2
from vma_client_stubs.agent.vcenter_model import VirtualMachine

ChangeIdOf = Callable[[str, int], tuple[str, float | None]]


def vm_proto(vm: VirtualMachine, change_id_of: ChangeIdOf) -> inventory_pb2.VirtualMachine:
    msg = inventory_pb2.VirtualMachine(
        vcenter=vm.vcenter,
        datacenter=vm.datacenter,
        uuid=vm.uuid,
        moref=vm.moref,
        name=vm.name,
        num_cpus=vm.num_cpus,
        memory_mib=vm.memory_mib,
        guest_os=vm.guest_os,
        firmware=inventory_pb2.FIRMWARE_EFI if vm.firmware == "efi" else inventory_pb2.FIRMWARE_BIOS,
        power_state=power_state_proto(vm.power_state),
    )
    for nic in vm.nics:
        msg.nics.append(
            inventory_pb2.Nic(
                label=nic.label,
                network_name=nic.network_name,
                mac_address=nic.mac_address,
                adapter_type=nic.adapter_type,
            )
        )
    for disk in vm.disks:
        change_id, _ = change_id_of(vm.uuid, disk.key)
        msg.disks.append(
            inventory_pb2.VirtualDisk(
                key=disk.key,
                label=disk.label,
                capacity_bytes=disk.capacity_bytes,
                datastore_path=disk.datastore_path,
                cbt_enabled=disk.cbt_enabled,
                current_change_id=change_id,
                unit_number=disk.unit_number,
            )
        )
    return msg


def cbt_status_proto(vm: VirtualMachine, change_id_of: ChangeIdOf) -> list[inventory_pb2.CbtStatus]:
    out = []
    for disk in vm.disks:
        change_id, taken = change_id_of(vm.uuid, disk.key)
        status = inventory_pb2.CbtStatus(disk_key=disk.key, enabled=disk.cbt_enabled, current_change_id=change_id)
        if taken is not None:
            ts = timestamp_pb2.Timestamp()
            ts.FromNanoseconds(int(taken * 1e9))
            status.taken_at.CopyFrom(ts)
        out.append(status)
    return out


def power_state_proto(state: str) -> inventory_pb2.PowerState:
    return {
        "on": inventory_pb2.POWER_STATE_POWERED_ON,
        "off": inventory_pb2.POWER_STATE_POWERED_OFF,
        "suspended": inventory_pb2.POWER_STATE_SUSPENDED,
    }.get(state, inventory_pb2.POWER_STATE_UNSPECIFIED)
