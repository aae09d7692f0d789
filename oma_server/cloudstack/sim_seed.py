"""The world a fresh simulator starts with: built from a seed (the default below, or a JSON file of the same shape
whose keys replace the default's; any entity may carry a fixed "id").

Defaults follow a freshly installed CloudStack where it has a default: `custom.diskoffering.size.max` 1024 GB and
`custom.diskoffering.size.min` 1 GB (VolumeOrchestrationService), `storage.max.volume.size` 2000 GB, and a KVM
`default` hypervisor-capabilities row allowing 32 data volumes per VM (schema-452to460.sql). A seed changes them
the way an operator would (updateConfiguration / updateHypervisorCapabilities).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.sim_state import SimulatorState, new_id, now_iso
from oma_server.cloudstack.sim_vms import deploy_vm_record
from oma_server.cloudstack.sim_volumes import new_volume

DEFAULT_SEED: dict[str, Any] = {
    "cloudstack_version": "4.20.1.0",
    # the role of the account the keys belong to: Admin (root admin) or User (no admin commands)
    "roletype": "Admin",
    "zone": {"name": "sim-zone-1", "networktype": "Advanced"},
    "hosts": [{"name": "sim-kvm-host-1", "hypervisor": "KVM"}],
    "service_offerings": [
        {"name": "Small Instance", "cpunumber": 1, "cpuspeed": 1000, "memory": 1024},
        {"name": "Medium Instance", "cpunumber": 2, "cpuspeed": 2000, "memory": 4096},
        {"name": "Large Instance", "cpunumber": 8, "cpuspeed": 2000, "memory": 16384},
    ],
    "disk_offerings": [
        {"name": "Custom", "displaytext": "Custom size disk", "disksize": 0, "iscustomized": True},
        {"name": "Small", "displaytext": "Small disk, 5 GB", "disksize": 5, "iscustomized": False},
    ],
    "networks": [
        {"name": "guest-net-1", "type": "Isolated", "cidr": "10.1.1.0/24", "gateway": "10.1.1.1"},
        {"name": "shared-net-1", "type": "Shared", "cidr": "192.168.100.0/24", "gateway": "192.168.100.1"},
    ],
    "templates": [
        {"name": "Ubuntu 22.04", "ostypename": "Ubuntu 22.04 LTS", "size_gib": 10, "format": "QCOW2"},
    ],
    "oma_vm": {
        "name": "oma-appliance",
        "service_offering": "Medium Instance",
        "template": "Ubuntu 22.04",
        "network": "guest-net-1",
        "ip": "10.1.1.10",
        # virtio (virtio-blk, CloudStack's default for KVM guests) or scsi (virtio-scsi)
        "disk_bus": "virtio",
        # data disks the OMA VM has of its own (they count against its data-volume limit)
        "data_disks_gib": [],
    },
    "configurations": {
        "custom.diskoffering.size.min": "1",
        "custom.diskoffering.size.max": "1024",
        "storage.max.volume.size": "2000",
    },
    "hypervisor_capabilities": [
        {"hypervisor": "KVM", "hypervisorversion": "default", "maxguestslimit": 50, "maxdatavolumeslimit": 32},
    ],
    "job_delay_s": 0.05,
}

#: catalogue values CloudStack fills in that the seed does not need to give
_CONFIG_DESCRIPTIONS = {
    "custom.diskoffering.size.min": ("Advanced", "Minimum size in GB for custom disk offering."),
    "custom.diskoffering.size.max": ("Advanced", "Maximum size in GB for custom disk offering."),
    "storage.max.volume.size": ("Storage", "The maximum size for a volume (in GB)."),
}


def merged_seed(seed: Mapping[str, Any] | Path | None) -> dict[str, Any]:
    """The default seed with the given one's keys replacing (configurations are merged key by key)."""
    given: Mapping[str, Any] = {}
    if isinstance(seed, Path):
        given = json.loads(seed.read_text())
    elif seed is not None:
        given = seed
    out = {**DEFAULT_SEED, **given}
    out["configurations"] = {**DEFAULT_SEED["configurations"], **given.get("configurations", {})}
    out["oma_vm"] = {**DEFAULT_SEED["oma_vm"], **given.get("oma_vm", {})} if out.get("oma_vm") else None
    return out


def config_category(name: str) -> tuple[str, str]:
    return _CONFIG_DESCRIPTIONS.get(name, ("Advanced", name))


def seed_world(state: SimulatorState, seed: Mapping[str, Any] | Path | None = None) -> None:
    """Fill an empty state from the seed."""
    s = merged_seed(seed)
    state.api_key = state.api_key or secrets.token_urlsafe(32)
    state.secret_key = state.secret_key or secrets.token_urlsafe(48)
    state.account = {
        "account": "admin",
        "domain": "ROOT",
        "domainid": new_id(),
        "accountid": new_id(),
        "userid": new_id(),
        "roletype": str(s["roletype"]),
    }
    state.cloudstack_version = str(s["cloudstack_version"])
    state.job_delay_s = float(s["job_delay_s"])
    state.configurations = {k: str(v) for k, v in s["configurations"].items()}
    state.hypervisor_capabilities = [_capability(row) for row in s["hypervisor_capabilities"]]
    _seed_zone(state, s["zone"])
    for host in s["hosts"]:
        _seed_host(state, host)
    for so in s["service_offerings"]:
        _seed_service_offering(state, so)
    for do in s["disk_offerings"]:
        _seed_disk_offering(state, do)
    for net in s["networks"]:
        _seed_network(state, net)
    for tmpl in s["templates"]:
        _seed_template(state, tmpl)
    if s["oma_vm"]:
        _seed_oma_vm(state, s["oma_vm"])


def _capability(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row.get("id") or new_id(),
        "hypervisor": row["hypervisor"],
        "hypervisorversion": row.get("hypervisorversion", "default"),
        "maxguestslimit": int(row.get("maxguestslimit", 50)),
        "maxdatavolumeslimit": int(row["maxdatavolumeslimit"]),
        "securitygroupenabled": bool(row.get("securitygroupenabled", True)),
        "storagemotionenabled": bool(row.get("storagemotionenabled", True)),
        "vmsnapshotenabled": bool(row.get("vmsnapshotenabled", False)),
    }


def _seed_zone(state: SimulatorState, z: Mapping[str, Any]) -> None:
    zone = {
        "id": z.get("id") or new_id(),
        "name": z["name"],
        "description": z.get("description", "Simulated zone"),
        "networktype": z.get("networktype", "Advanced"),
        "allocationstate": "Enabled",
        "securitygroupsenabled": False,
        "localstorageenabled": False,
        "dhcpprovider": "VirtualRouter",
        "zonetoken": new_id(),
        "tags": [],
    }
    state.zones = {zone["id"]: zone}
    state.zone_id = zone["id"]


def _seed_host(state: SimulatorState, h: Mapping[str, Any]) -> None:
    zone = state.zones[state.zone_id]
    host: dict[str, Any] = {
        "id": h.get("id") or new_id(),
        "name": h["name"],
        "type": "Routing",
        "state": "Up",
        "resourcestate": "Enabled",
        "hypervisor": h.get("hypervisor", "KVM"),
        "zoneid": zone["id"],
        "zonename": zone["name"],
        "ipaddress": h.get("ipaddress", "192.0.2.10"),
        "created": now_iso(),
    }
    if h.get("hypervisorversion"):
        host["hypervisorversion"] = h["hypervisorversion"]
    state.hosts[host["id"]] = host


def _seed_service_offering(state: SimulatorState, so: Mapping[str, Any]) -> None:
    sid = so.get("id") or new_id()
    state.service_offerings[sid] = {
        "id": sid,
        "name": so["name"],
        "displaytext": so.get("displaytext", so["name"]),
        "cpunumber": int(so["cpunumber"]),
        "cpuspeed": int(so["cpuspeed"]),
        "memory": int(so["memory"]),
        "created": now_iso(),
        "storagetype": "shared",
        "offerha": False,
        "limitcpuuse": False,
        "isvolatile": False,
        "issystem": False,
        "defaultuse": False,
        "iscustomized": False,
        "provisioningtype": "thin",
    }


def _seed_disk_offering(state: SimulatorState, do: Mapping[str, Any]) -> None:
    did = do.get("id") or new_id()
    state.disk_offerings[did] = {
        "id": did,
        "name": do["name"],
        "displaytext": do.get("displaytext", do["name"]),
        "disksize": int(do.get("disksize", 0)),
        "iscustomized": bool(do.get("iscustomized", False)),
        "created": now_iso(),
        "storagetype": "shared",
        "provisioningtype": "thin",
        "iscustomizediops": False,
        "displayoffering": True,
        "cacheMode": "none",
    }


def _seed_network(state: SimulatorState, net: Mapping[str, Any]) -> None:
    nid = net.get("id") or new_id()
    zone = state.zones[state.zone_id]
    state.networks[nid] = {
        "id": nid,
        "name": net["name"],
        "displaytext": net.get("displaytext", net["name"]),
        "zoneid": zone["id"],
        "zonename": zone["name"],
        "type": net.get("type", "Isolated"),
        "state": "Implemented",
        "traffictype": "Guest",
        "cidr": net["cidr"],
        "gateway": net["gateway"],
        "netmask": str(ipaddress.ip_network(net["cidr"]).netmask),
        "broadcastdomaintype": "Vlan",
        "networkofferingid": new_id(),
        "networkofferingname": "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "acltype": "Account",
        "isdefault": False,
        "issystem": False,
        "canusefordeploy": True,
        "restartrequired": False,
        "specifyipranges": False,
        "tags": [],
        "account": state.account["account"],
        "domain": state.account["domain"],
        "domainid": state.account["domainid"],
    }


def _seed_template(state: SimulatorState, t: Mapping[str, Any]) -> None:
    tid = t.get("id") or new_id()
    zone = state.zones[state.zone_id]
    state.templates[tid] = {
        "id": tid,
        "name": t["name"],
        "displaytext": t.get("displaytext", t["name"]),
        "ostypeid": new_id(),
        "ostypename": t.get("ostypename", "Other Linux (64-bit)"),
        "zoneid": zone["id"],
        "zonename": zone["name"],
        "isready": True,
        "ispublic": True,
        "isfeatured": True,
        "isextractable": False,
        "passwordenabled": False,
        "bootable": True,
        "crossZones": False,
        "format": t.get("format", "QCOW2"),
        "hypervisor": "KVM",
        "size": int(t.get("size_gib", 10)) * GIB,
        "status": "Download Complete",
        "templatetype": "USER",
        "created": now_iso(),
        "account": "system",
        "domain": "ROOT",
        "tags": [],
    }


def _seed_oma_vm(state: SimulatorState, oma: Mapping[str, Any]) -> None:
    vm = deploy_vm_record(
        state,
        name=oma["name"],
        service_offering_id=state.find_by_name(state.service_offerings, oma["service_offering"]),
        template_id=state.find_by_name(state.templates, oma["template"]),
        nics=[(state.find_by_name(state.networks, oma["network"]), oma.get("ip"), oma.get("mac"))],
        root_disk_gib=None,
        vm_id=oma.get("id"),
    )
    host = next(iter(state.hosts.values()))
    vm.update(state="Running", hostid=host["id"], hostname=host["name"], _disk_bus=oma.get("disk_bus", "virtio"))
    for vol in state.volumes_of(vm["id"]):
        vol.update(state="Ready", storage="sim-primary-1")
    state.oma_vm_id = vm["id"]
    for number, size_gib in enumerate(oma.get("data_disks_gib", []), start=1):
        size = int(size_gib) * GIB
        vol = new_volume(
            state, name=f"{oma['name']}-data-{number}", size_bytes=size, offering=None, vol_type="DATADISK"
        )
        vol.update(virtualmachineid=vm["id"], deviceid=number, attached=now_iso(), state="Ready")
