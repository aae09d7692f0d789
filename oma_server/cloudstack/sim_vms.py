"""The simulator's virtual machines: deploy (NICs with IP and MAC allocation, a ROOT volume), start, stop, destroy."""

from __future__ import annotations

import ipaddress
import re
import secrets
from contextlib import suppress
from typing import Any

from oma_server.cloudstack import sim_guest
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.sim_api import Params, command, filter_rows, list_response, public
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_jobs import Job, submit
from oma_server.cloudstack.sim_state import SimulatorState, new_id, now_iso
from oma_server.cloudstack.sim_volumes import detach_fields, make_ready, new_volume

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
#: the fields an expunged VM's job result still carries (UserVmResponse's lists, created empty)
_EMPTY_VM_LISTS = ("securitygroup", "nic", "affinitygroup", "tags")


def render_vm(state: SimulatorState, vm: dict[str, Any]) -> dict[str, Any]:
    out = public(vm)
    root = next((v for v in state.volumes_of(vm["id"]) if v["type"] == "ROOT"), None)
    if root is not None:
        out["rootdeviceid"] = root.get("deviceid", 0)
        out["rootdevicetype"] = "ROOT"
    if state.version_at_least("4.20.0"):
        out.setdefault("deleteprotection", False)
    return out


def expunged_result(state: SimulatorState, last_view: dict[str, Any]) -> dict[str, Any]:
    """destroyVirtualMachine(expunge=true)'s job result, as each release gives it (docs/cloudstack.md):
    4.18.1 to 4.20.1 name a response without an object name `null` and fill none of its fields (apache/cloudstack
    issues 9946, 11345); the fix (apache/cloudstack pull 11352) names it `virtualmachine`, fields still empty;
    older releases rendered the VM as it was when the expunge began."""
    if not state.version_at_least("4.18.1"):
        return {"virtualmachine": {**last_view, "state": "Expunging"}}
    empty: dict[str, Any] = {key: [] for key in _EMPTY_VM_LISTS}
    if state.version_at_least("4.20.0"):
        empty["deleteprotection"] = False
    return {"null" if not state.version_at_least("4.20.2") else "virtualmachine": empty}


def place_on_host(state: SimulatorState, vm: dict[str, Any]) -> None:
    host = next(iter(state.hosts.values()))
    vm.update(hostid=host["id"], hostname=host["name"])


def run_vm(state: SimulatorState, vm: dict[str, Any]) -> dict[str, Any]:
    """The VM comes up on a host, its volumes Ready; the job result of deploy (startvm) and start."""
    vm["state"] = "Running"
    place_on_host(state, vm)
    for vol in state.volumes_of(vm["id"]):
        make_ready(vol)
    return {"virtualmachine": render_vm(state, vm)}


def leave_host(vm: dict[str, Any]) -> None:
    vm.pop("hostid", None)
    vm.pop("hostname", None)


# ---- shared operations ------------------------------------------------------------------------------
def _all_nics(state: SimulatorState, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for vm in state.vms.values() for n in vm["nic"]] + pending


def _allocate_ip(
    state: SimulatorState, network: dict[str, Any], wanted: str | None, pending: list[dict[str, Any]]
) -> str:
    net = ipaddress.ip_network(network["cidr"])
    used = {n["ipaddress"] for n in _all_nics(state, pending) if n["networkid"] == network["id"]}
    used.add(network["gateway"])
    if wanted is not None:
        try:
            addr = ipaddress.ip_address(wanted)
        except ValueError:
            raise ApiError(431, f"Invalid ip address {wanted}") from None
        if addr not in net or wanted == network["gateway"]:
            raise ApiError(431, f"IP address {wanted} is not in the range of network {network['name']}")
        if wanted in used:
            raise ApiError(
                533,
                f"The requested ip address {wanted} is not available in network "
                f"{network['name']}: it is already in use",
                ApiError.CS_INSUFFICIENT_CAPACITY,
            )
        return wanted
    for host in net.hosts():
        if str(host) not in used:
            return str(host)
    raise ApiError(
        533, f"Insufficient address capacity in network {network['name']}", ApiError.CS_INSUFFICIENT_CAPACITY
    )


def _allocate_mac(state: SimulatorState, wanted: str | None, pending: list[dict[str, Any]]) -> str:
    used = {n["macaddress"] for n in _all_nics(state, pending)}
    if wanted is not None:
        if not MAC_RE.match(wanted):
            raise ApiError(431, f"Mac address is not valid: {wanted}")
        if wanted.lower() in used:
            raise ApiError(431, f"Mac address {wanted} is already in use")
        return wanted.lower()
    while True:
        mac = "02:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))
        if mac not in used:
            return mac


def deploy_vm_record(
    state: SimulatorState,
    *,
    name: str,
    service_offering_id: str,
    template_id: str,
    nics: list[tuple[str, str | None, str | None]],
    root_disk_gib: int | None,
    vm_id: str | None = None,
) -> dict[str, Any]:
    """Create a Stopped VM with its ROOT volume (Allocated) and NICs. Raises ApiError."""
    so = state.service_offerings[service_offering_id]
    tmpl = state.templates[template_id]
    zone = state.zones[state.zone_id]
    if not nics:
        raise ApiError(
            431, "Can't deploy a VM in an advanced zone without a network: specify networkids or iptonetworklist"
        )
    if any(v["name"] == name for v in state.vms.values()):
        raise ApiError(431, f"The vm with hostName {name} already exists in the network domain")
    template_gib = -(-int(tmpl["size"]) // GIB)
    if root_disk_gib is not None and root_disk_gib < template_gib:
        raise ApiError(
            431, f"Unsupported: rootdisksize of {root_disk_gib} GB is smaller than template size of {template_gib} GB"
        )
    vm_id = vm_id or new_id()
    number = state.next_instance_number()
    nic_rows: list[dict[str, Any]] = []
    for index, (network_id, ip, mac) in enumerate(nics):
        nic_rows.append(_nic_record(state, index, state.networks[network_id], ip, mac, nic_rows))
    vm = {
        "id": vm_id,
        "name": name,
        "displayname": name,
        "state": "Stopped",
        "created": now_iso(),
        "zoneid": zone["id"],
        "zonename": zone["name"],
        "templateid": tmpl["id"],
        "templatename": tmpl["name"],
        "templatedisplaytext": tmpl["displaytext"],
        "passwordenabled": False,
        "serviceofferingid": so["id"],
        "serviceofferingname": so["name"],
        "cpunumber": so["cpunumber"],
        "cpuspeed": so["cpuspeed"],
        "memory": so["memory"],
        "guestosid": tmpl["ostypeid"],
        "ostypeid": tmpl["ostypeid"],
        "osdisplayname": tmpl["ostypename"],
        "hypervisor": "KVM",
        "instancename": f"i-2-{number}-VM",
        "haenable": False,
        "nic": nic_rows,
        "securitygroup": [],
        "affinitygroup": [],
        "tags": [],
        "details": {},
        "displayvm": True,
        "isdynamicallyscalable": False,
        "account": state.account["account"],
        "domain": state.account["domain"],
        "domainid": state.account["domainid"],
        "userid": state.account["userid"],
        "username": "admin",
    }
    state.vms[vm_id] = vm
    size = (root_disk_gib or template_gib) * GIB
    root = new_volume(state, name=f"ROOT-{number}", size_bytes=size, offering=None, vol_type="ROOT")
    root.update(virtualmachineid=vm_id, deviceid=0, attached=now_iso(), templateid=tmpl["id"])
    return vm


def _nic_record(
    state: SimulatorState,
    index: int,
    network: dict[str, Any],
    ip: str | None,
    mac: str | None,
    taken: list[dict[str, Any]],
) -> dict[str, Any]:
    """The NIC a deployed VM gets on `network` (the first is the default), its address and MAC allocated."""
    return {
        "id": new_id(),
        "networkid": network["id"],
        "networkname": network["name"],
        "netmask": network["netmask"],
        "gateway": network["gateway"],
        "ipaddress": _allocate_ip(state, network, ip, taken),
        "macaddress": _allocate_mac(state, mac, taken),
        "isdefault": index == 0,
        "traffictype": "Guest",
        "type": network["type"],
        "deviceid": str(index),
        "secondaryip": [],
        "extradhcpoption": [],
    }


@command("listVirtualMachines")
def _list_vms(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_vm(state, vm) for vm in state.vms.values()]
    rows = filter_rows(rows, p, id="id", name="name", state="state", zoneid="zoneid", templateid="templateid")
    network_id = p.opt("networkid")
    if network_id:
        rows = [r for r in rows if any(n["networkid"] == network_id for n in r["nic"])]
    return list_response(p, "virtualmachine", rows)


@command("deployVirtualMachine")
def _deploy_vm(state: SimulatorState, p: Params) -> dict[str, Any]:
    so = p.entity("serviceofferingid", state.service_offerings)
    tmpl = p.entity("templateid", state.templates)
    p.entity("zoneid", state.zones)
    nics: list[tuple[str, str | None, str | None]] = []
    for entry in p.indexed("iptonetworklist"):
        network_id = entry.get("networkid")
        if not network_id or network_id not in state.networks:
            raise p._invalid("iptonetworklist.networkid", network_id or "")
        nics.append((network_id, entry.get("ip") or entry.get("ipv4"), entry.get("mac")))
    if not nics and p.opt("networkids"):
        for index, network_id in enumerate(str(p.opt("networkids")).split(",")):
            if network_id not in state.networks:
                raise p._invalid("networkids", network_id)
            ip = p.opt("ipaddress") if index == 0 else None
            mac = p.opt("macaddress") if index == 0 else None
            nics.append((network_id, ip, mac))
    start = p.as_bool("startvm", True)
    name = p.opt("name") or f"VM-{new_id()}"
    vm = deploy_vm_record(
        state,
        name=name,
        service_offering_id=so["id"],
        template_id=tmpl["id"],
        nics=nics,
        root_disk_gib=p.as_int("rootdisksize"),
    )
    if p.opt("displayname"):
        vm["displayname"] = p.opt("displayname")
    if start:
        vm["state"] = "Starting"

    async def work() -> dict[str, Any]:
        return run_vm(state, vm) if start else {"virtualmachine": render_vm(state, vm)}

    def on_error() -> None:
        vm["state"] = "Error"

    return submit(
        state,
        Job(
            "deployVirtualMachine",
            "org.apache.cloudstack.api.command.admin.vm.DeployVMCmdByAdmin",
            "VirtualMachine",
            vm["id"],
            work,
            on_error,
            immediate={"id": vm["id"]},
        ),
    )


@command("startVirtualMachine")
def _start_vm(state: SimulatorState, p: Params) -> dict[str, Any]:
    vm = p.entity("id", state.vms)
    if vm["state"] == "Running":
        raise ApiError(431, f"The virtual machine {vm['id']} ({vm['displayname']}) is already running")
    if vm["state"] != "Stopped":
        raise ApiError(431, f"VM {vm['name']} is in state {vm['state']}; it can only be started when Stopped")
    if not any(v.get("deviceid") == 0 for v in state.volumes_of(vm["id"])):
        raise ApiError(431, f"Unable to start VM {vm['name']}: it has no ROOT volume (device 0)")
    vm["state"] = "Starting"

    async def work() -> dict[str, Any]:
        return run_vm(state, vm)

    def on_error() -> None:
        vm["state"] = "Stopped"

    return submit(
        state,
        Job(
            "startVirtualMachine",
            "org.apache.cloudstack.api.command.admin.vm.StartVMCmdByAdmin",
            "VirtualMachine",
            vm["id"],
            work,
            on_error,
        ),
    )


@command("stopVirtualMachine")
def _stop_vm(state: SimulatorState, p: Params) -> dict[str, Any]:
    vm = p.entity("id", state.vms)
    p.as_bool("forced", False)
    if vm["state"] not in ("Running", "Stopped"):
        raise ApiError(431, f"VM {vm['name']} is in state {vm['state']}; it can only be stopped when Running")
    previous = vm["state"]
    if previous == "Running":
        vm["state"] = "Stopping"

    async def work() -> dict[str, Any]:
        vm["state"] = "Stopped"
        leave_host(vm)
        return {"virtualmachine": render_vm(state, vm)}

    def on_error() -> None:
        vm["state"] = previous

    return submit(
        state,
        Job(
            "stopVirtualMachine",
            "org.apache.cloudstack.api.command.admin.vm.StopVMCmdByAdmin",
            "VirtualMachine",
            vm["id"],
            work,
            on_error,
        ),
    )


@command("destroyVirtualMachine")
def _destroy_vm(state: SimulatorState, p: Params) -> dict[str, Any]:
    vm = p.entity("id", state.vms)
    expunge = p.as_bool("expunge", False)
    if vm["state"] in ("Starting", "Stopping"):
        raise ApiError(431, f"VM {vm['name']} is in state {vm['state']}; try again when the operation finishes")
    if vm["state"] == "Destroyed" and not expunge:
        raise ApiError(431, f"VM {vm['name']} is already destroyed")

    async def work() -> dict[str, Any]:
        leave_host(vm)
        vm["state"] = "Destroyed"
        rendered = render_vm(state, vm)
        if not expunge:
            return {"virtualmachine": rendered}
        for vol in state.volumes_of(vm["id"]):
            if vm["id"] == state.oma_vm_id:
                sim_guest.unpublish(state, vol)
            if vol["type"] == "ROOT":
                state.volumes.pop(vol["id"], None)
                with suppress(FileNotFoundError):
                    state.volume_file(vol["id"]).unlink()
            else:
                vol.pop("_published", None)
                detach_fields(vol)
        state.vms.pop(vm["id"], None)
        return expunged_result(state, rendered)

    return submit(
        state,
        Job(
            "destroyVirtualMachine",
            "org.apache.cloudstack.api.command.admin.vm.DestroyVMCmdByAdmin",
            "VirtualMachine",
            vm["id"],
            work,
        ),
    )
