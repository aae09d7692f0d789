"""The simulator's volumes: create, resize, delete, attach, detach, list; backing files and guest devices."""

from __future__ import annotations

import secrets
from contextlib import suppress
from typing import Any

from loguru import logger

from oma_server.cloudstack import sim_files, sim_guest
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.sim_api import Params, command, filter_rows, list_response, public
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_jobs import Job, submit
from oma_server.cloudstack.sim_state import SimulatorState, new_id, now_iso

#: CloudStack's texts (VolumeApiServiceImpl) for the checks the OMA can run into
DATA_DISK_LIMIT_TEXT = (
    "The specified VM already has the maximum number of data disks ({limit}) attached. Please specify another VM."
)


def render_volume(state: SimulatorState, vol: dict[str, Any]) -> dict[str, Any]:
    out = public(vol)
    vm = state.vms.get(vol.get("virtualmachineid") or "")
    if vm is not None:
        out.update(vmname=vm["name"], vmdisplayname=vm["displayname"], vmstate=vm["state"], vmtype="User")
    if state.version_at_least("4.20.0"):
        out.update(deleteprotection=False, domainpath="ROOT")
    return out


def new_volume(
    state: SimulatorState, *, name: str, size_bytes: int, offering: dict[str, Any] | None, vol_type: str
) -> dict[str, Any]:
    zone = state.zones[state.zone_id]
    vol_id = new_id()
    vol: dict[str, Any] = {
        "id": vol_id,
        "name": name,
        "zoneid": zone["id"],
        "zonename": zone["name"],
        "type": vol_type,
        "size": size_bytes,
        "state": "Allocated",
        "created": now_iso(),
        "storagetype": "shared",
        "provisioningtype": "thin",
        "hypervisor": "KVM",
        "destroyed": False,
        "displayvolume": True,
        "isextractable": True,
        "quiescevm": False,
        "path": vol_id,
        "account": state.account["account"],
        "domain": state.account["domain"],
        "domainid": state.account["domainid"],
        "tags": [],
    }
    if offering is not None:
        vol.update(
            diskofferingid=offering["id"],
            diskofferingname=offering["name"],
            diskofferingdisplaytext=offering["displaytext"],
        )
    sim_files.create_sparse(state.volume_file(vol_id), size_bytes)
    state.volumes[vol_id] = vol
    return vol


def check_custom_size(state: SimulatorState, size_gib: int) -> None:
    """custom.diskoffering.size.min/max, with VolumeApiServiceImpl's text."""
    lo, hi = state.config_int("custom.diskoffering.size.min"), state.config_int("custom.diskoffering.size.max")
    if not lo <= size_gib <= hi:
        raise ApiError(431, f"Volume size: {size_gib}GB is out of allowed range. Max: {hi} Min:{lo}")


def check_volume_size(state: SimulatorState, size_bytes: int) -> None:
    """storage.max.volume.size, with VolumeApiServiceImpl.validateVolumeSizeInBytes's text."""
    limit = state.config_int("storage.max.volume.size")
    if size_bytes < GIB:
        raise ApiError(431, "Please specify a size of at least 1 GB.")
    if size_bytes > limit * GIB:
        raise ApiError(
            431,
            f"Requested volume size is {size_bytes / GIB:.2f} GB, but the maximum size allowed is {limit} GB.",
        )


def make_ready(vol: dict[str, Any]) -> None:
    if vol["state"] == "Allocated":
        vol["state"] = "Ready"
        vol["storage"] = "sim-primary-1"
        vol["storagetype"] = "shared"


def detach_fields(vol: dict[str, Any]) -> None:
    for key in ("virtualmachineid", "deviceid", "attached"):
        vol.pop(key, None)


@command("listVolumes")
def _list_volumes(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_volume(state, v) for v in state.volumes.values()]
    rows = filter_rows(
        rows, p, id="id", name="name", virtualmachineid="virtualmachineid", type="type", zoneid="zoneid", state="state"
    )
    ids = p.opt("ids")
    if ids:
        wanted = set(ids.split(","))
        rows = [r for r in rows if r["id"] in wanted]
    return list_response(p, "volume", rows)


@command("createVolume")
def _create_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    zone = p.entity("zoneid", state.zones)
    offering = p.entity("diskofferingid", state.disk_offerings)
    size_gib = p.as_int("size")
    name = p.opt("name") or f"vol-{secrets.token_hex(4)}"
    if offering["iscustomized"]:
        if size_gib is None:
            raise ApiError(431, "This disk offering requires a custom size specified")
        check_custom_size(state, size_gib)
    else:
        if size_gib is not None:
            raise ApiError(431, "This disk offering does not allow custom size")
        size_gib = int(offering["disksize"])
    check_volume_size(state, size_gib * GIB)
    assert zone["id"] == state.zone_id
    vol = new_volume(state, name=name, size_bytes=size_gib * GIB, offering=offering, vol_type="DATADISK")
    vm_id = p.opt("virtualmachineid")
    if vm_id is not None:
        raise ApiError(
            432,
            "createVolume with virtualmachineid is not supported by this simulator; attach with attachVolume",
            ApiError.CS_SERVER_API,
        )

    async def work() -> dict[str, Any]:
        return {"volume": render_volume(state, vol)}

    return submit(
        state,
        Job(
            "createVolume",
            "org.apache.cloudstack.api.command.user.volume.CreateVolumeCmd",
            "Volume",
            vol["id"],
            work,
            immediate={"id": vol["id"]},
        ),
    )


@command("resizeVolume")
def _resize_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    vol = p.entity("id", state.volumes)
    new_offering = p.entity("diskofferingid", state.disk_offerings, required=False)
    size_gib = p.as_int("size")
    shrink_ok = p.as_bool("shrinkok", False)

    async def work() -> dict[str, Any]:
        if vol["state"] not in ("Ready", "Allocated"):
            raise ApiError(
                431,
                "Volume should be in ready or allocated state before attempting a resize. "
                f"Volume {vol['id']} is in state {vol['state']}.",
            )
        offering = new_offering or state.disk_offerings.get(vol.get("diskofferingid") or "")
        if offering is not None and not offering["iscustomized"]:
            new_gib = int(offering["disksize"])
        elif size_gib is None:
            raise ApiError(431, "New size must be specified for a volume with a custom disk offering")
        else:
            new_gib = size_gib
            if offering is not None:
                check_custom_size(state, new_gib)
        check_volume_size(state, new_gib * GIB)
        if offering is None and vol["type"] != "ROOT":
            raise ApiError(431, "Only volumes with a custom disk offering or ROOT volumes can be resized")
        old_gib = int(vol["size"]) // GIB
        if new_gib < old_gib and not shrink_ok:
            raise ApiError(
                431,
                f"Going from existing size of {old_gib} GB to size of {new_gib} GB would shrink "
                "the volume. Need to sign off by supplying the shrinkok parameter with value of true.",
            )
        sim_files.resize_sparse(state.volume_file(vol["id"]), new_gib * GIB)
        vol["size"] = new_gib * GIB
        sim_guest.resized(state, vol)
        if new_offering:
            vol.update(diskofferingid=new_offering["id"], diskofferingname=new_offering["name"])
        return {"volume": render_volume(state, vol)}

    return submit(
        state,
        Job("resizeVolume", "org.apache.cloudstack.api.command.user.volume.ResizeVolumeCmd", "Volume", vol["id"], work),
    )


@command("deleteVolume")
def _delete_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    vol = p.entity("id", state.volumes)
    if vol.get("virtualmachineid"):
        raise ApiError(431, "Please specify a volume that is not attached to any VM.")
    del state.volumes[vol["id"]]
    with suppress(FileNotFoundError):
        state.volume_file(vol["id"]).unlink()
    return {"success": True}


def _next_device_id(state: SimulatorState, vm: dict[str, Any]) -> int:
    used = {v.get("deviceid") for v in state.volumes_of(vm["id"])}
    data_disks = [v for v in state.volumes_of(vm["id"]) if v["type"] == "DATADISK"]
    limit = state.max_data_volumes(vm)
    if len(data_disks) >= limit:
        raise ApiError(431, DATA_DISK_LIMIT_TEXT.format(limit=limit))
    device = 1
    while device in used or device == 3:  # 3 is the CD-ROM
        device += 1
    return device


@command("attachVolume")
def _attach_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    vol = p.entity("id", state.volumes)
    vm = p.entity("virtualmachineid", state.vms)
    device_id = p.as_int("deviceid")

    async def work() -> dict[str, Any]:
        if vol["id"] not in state.volumes:
            raise ApiError(431, f"Unable to find volume with id {vol['id']}")
        if vol.get("virtualmachineid"):
            raise ApiError(431, "Please specify a volume that is not attached to any VM.")
        if vm["state"] not in ("Running", "Stopped"):
            raise ApiError(431, "Please specify a VM that is either running or stopped.")
        attached = state.volumes_of(vm["id"])
        if device_id is None:
            device = _next_device_id(state, vm)
        else:
            if device_id < 0:
                raise ApiError(431, f"deviceId {device_id} is not valid")
            if device_id == 0:
                if vm["state"] != "Stopped":
                    raise ApiError(431, "Root volume attach can only be done for vm in states: Stopped or Destroyed")
                if any(v.get("deviceid") == 0 for v in attached):
                    raise ApiError(431, "Vm already has root volume attached to it")
            elif device_id == 3:
                raise ApiError(431, "deviceId 3 is reserved for the CD-ROM")
            if any(v.get("deviceid") == device_id for v in attached):
                raise ApiError(431, f"deviceId {device_id} is used by VM {vm['name']}")
            if device_id != 0:
                _next_device_id(state, vm)  # enforces the data disk limit
            device = device_id
        vol.update(virtualmachineid=vm["id"], deviceid=device, attached=now_iso())
        if device == 0:
            vol["type"] = "ROOT"
        if vm["state"] == "Running":
            make_ready(vol)
        if vm["id"] == state.oma_vm_id:
            if state.faults.take_no_device():
                vol["_published"] = False
                logger.bind(volume_id=vol["id"]).debug("simulator: attach without device (fault)")
            else:
                vol["_published"] = True
                sim_guest.publish(state, vol)
        return {"volume": render_volume(state, vol)}

    return submit(
        state,
        Job("attachVolume", "org.apache.cloudstack.api.command.user.volume.AttachVolumeCmd", "Volume", vol["id"], work),
    )


@command("detachVolume")
def _detach_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    if p.opt("id") is not None:
        vol = p.entity("id", state.volumes)
    else:
        vm = p.entity("virtualmachineid", state.vms)
        device = p.as_int("deviceid")
        if device is None:
            raise ApiError(431, "Please provide either a volume id, or a tuple(device id, instance id)")
        match = [v for v in state.volumes_of(vm["id"]) if v.get("deviceid") == device]
        if not match:
            raise ApiError(431, f"Unable to find volume at deviceId {device} of VM {vm['name']}")
        vol = match[0]

    async def work() -> dict[str, Any]:
        vm_id = vol.get("virtualmachineid")
        if not vm_id:
            raise ApiError(431, "Please specify a volume that is attached to a VM.")
        vm = state.vms[vm_id]
        if vol["type"] == "ROOT":
            if vm["state"] not in ("Stopped", "Destroyed"):
                raise ApiError(431, "Root volume detach can only be done for vm in states: Stopped or Destroyed")
            vol["type"] = "DATADISK"
        if vm_id == state.oma_vm_id:
            sim_guest.unpublish(state, vol)
        vol.pop("_published", None)
        detach_fields(vol)
        return {"volume": render_volume(state, vol)}

    return submit(
        state,
        Job("detachVolume", "org.apache.cloudstack.api.command.user.volume.DetachVolumeCmd", "Volume", vol["id"], work),
    )
