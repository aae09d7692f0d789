"""A CloudStack management server in miniature, at the HTTP level.

It answers `/client/api` (GET and POST) the way CloudStack does for the commands the OMA uses: HMAC-SHA1
signatures (signatureVersion 3 with `expires`, and the legacy form), 401 for bad keys or expired requests,
`<command>response` JSON envelopes, `count` + list with page/pagesize, async commands returning `jobid` and
`queryAsyncJobResult` with jobstatus 0/1/2, errors as HTTP status = errorcode with
errorcode/cserrorcode/errortext. Volumes are sparse files in the state dir; a volume attached to the OMA VM
appears as `<state-dir>/dev/disk/by-id/virtio-<first 20 chars of its uuid>`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from loguru import logger

from oma_server.cloudstack import sim_files
from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.sim_state import ApiError, Faults, RequestRecord, SimulatorState, new_id, now_iso

API_PATH = "/client/api"
STATE_KEY: web.AppKey[SimulatorState] = web.AppKey("cloudstack_sim_state", SimulatorState)
AUTH_ERROR_TEXT = "unable to verify user credentials and/or request signature"
EXPIRES_FORMATS = ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_CONTROL_PARAMS = {"command", "apikey", "signature", "signatureversion", "expires", "response", "sessionkey"}


# ---- signatures -------------------------------------------------------------------------------------
def compute_signature(params: dict[str, str], secret_key: str, *, java_encoding: bool = False) -> str:
    """CloudStack's request signature: sorted `name=urlencoded(value)` joined by &, lowercased, HMAC-SHA1.

    CloudStack encodes with java.net.URLEncoder (+ replaced by %20); clients such as `cs` use Python's
    quote(value, safe="*"). The two differ only for "~"; `java_encoding` selects CloudStack's own form.
    """
    parts = []
    for name, value in sorted((k, v) for k, v in params.items() if k.lower() != "signature"):
        encoded = quote(value, safe="*")
        if java_encoding:
            encoded = encoded.replace("~", "%7E")
        parts.append(f"{name}={encoded}")
    digest = hmac.new(secret_key.encode(), "&".join(parts).lower().encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _parse_expires(value: str) -> datetime | None:
    for fmt in EXPIRES_FORMATS:
        with suppress(ValueError):
            return datetime.strptime(value.replace("Z", "+0000"), fmt)
    return None


def verify_request(params: dict[str, str], api_key: str, secret_key: str) -> str | None:
    """None if the request is authentic and current, else why not (for the simulator's log only)."""
    lowered = {k.lower(): v for k, v in params.items()}
    if not hmac.compare_digest(lowered.get("apikey", ""), api_key):
        return "unknown api key"
    signature = lowered.get("signature")
    if not signature:
        return "no signature"
    if not any(
        hmac.compare_digest(signature, compute_signature(params, secret_key, java_encoding=java))
        for java in (False, True)
    ):
        return "signature mismatch"
    if lowered.get("signatureversion") == "3":
        expires = _parse_expires(lowered.get("expires", ""))
        if expires is None:
            return "signatureVersion 3 without a valid expires"
        if expires < datetime.now(UTC):
            return "request expired"
    return None


# ---- parameters -------------------------------------------------------------------------------------
class Params:
    """Request parameters with CloudStack's validation messages (names are case-insensitive)."""

    def __init__(self, command: str, raw: dict[str, str]) -> None:
        self.command = command.lower()
        self.d = {k.lower(): v for k, v in raw.items() if k.lower() not in _CONTROL_PARAMS}

    def _invalid(self, name: str, value: str) -> ApiError:
        return ApiError(
            431,
            f"Unable to execute API command {self.command} due to invalid value. Invalid parameter {name} "
            f"value={value} due to incorrect long value format, or entity does not exist or due to incorrect "
            "parameter annotation for the field in api cmd class.",
            ApiError.CS_SERVER_API,
        )

    def opt(self, name: str, default: str | None = None) -> str | None:
        value = self.d.get(name)
        return default if value in (None, "") else value

    def req(self, name: str) -> str:
        value = self.d.get(name)
        if value in (None, ""):
            raise ApiError(
                431,
                f"Unable to execute API command {self.command} due to missing parameter {name}",
                ApiError.CS_SERVER_API,
            )
        return str(value)

    def as_int(self, name: str, default: int | None = None) -> int | None:
        value = self.opt(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise self._invalid(name, value) from None

    def as_bool(self, name: str, default: bool) -> bool:
        value = self.opt(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise self._invalid(name, value)
        return value.lower() == "true"

    def entity(self, name: str, table: dict[str, dict[str, Any]], *, required: bool = True) -> dict[str, Any]:
        value = self.req(name) if required else self.opt(name)
        if value is None:
            return {}
        row = table.get(value)
        if row is None:
            raise self._invalid(name, value)
        return row

    def indexed(self, prefix: str) -> list[dict[str, str]]:
        """`prefix[0].key=value` parameters as a list of dicts, in index order."""
        found: dict[int, dict[str, str]] = {}
        pattern = re.compile(re.escape(prefix) + r"\[(\d+)\]\.(\w+)$")
        for key, value in self.d.items():
            m = pattern.match(key)
            if m:
                found.setdefault(int(m.group(1)), {})[m.group(2)] = value
        return [found[i] for i in sorted(found)]


def list_response(p: Params, key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    page = p.as_int("page")
    pagesize = p.as_int("pagesize")
    if page is not None and pagesize is None:
        raise ApiError(431, "Invalid parameter: page requires pagesize", ApiError.CS_INVALID_PARAMETER)
    total = len(rows)
    if page is not None and pagesize is not None and pagesize > 0:
        if page < 1:
            raise ApiError(431, "Invalid parameter page: it must be 1 or more", ApiError.CS_INVALID_PARAMETER)
        rows = rows[(page - 1) * pagesize : page * pagesize]
    if total == 0:
        return {}
    return {"count": total, key: rows}


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _filter(rows: list[dict[str, Any]], p: Params, **fields: str) -> list[dict[str, Any]]:
    """Keep rows whose field equals the parameter of the same meaning (param name -> field name)."""
    out = rows
    for param, fieldname in fields.items():
        value = p.opt(param)
        if value is not None:
            out = [r for r in out if str(r.get(fieldname, "")).lower() == value.lower()]
    keyword = p.opt("keyword")
    if keyword:
        out = [r for r in out if keyword.lower() in str(r.get("name", "")).lower()]
    return out


# ---- rendering --------------------------------------------------------------------------------------
def render_volume(state: SimulatorState, vol: dict[str, Any]) -> dict[str, Any]:
    out = _public(vol)
    vm = state.vms.get(vol.get("virtualmachineid") or "")
    if vm is not None:
        out.update(vmname=vm["name"], vmdisplayname=vm["displayname"], vmstate=vm["state"])
    return out


def render_vm(state: SimulatorState, vm: dict[str, Any]) -> dict[str, Any]:
    out = _public(vm)
    root = next((v for v in state.volumes_of(vm["id"]) if v["type"] == "ROOT"), None)
    if root is not None:
        out["rootdeviceid"] = root.get("deviceid", 0)
        out["rootdevicetype"] = "ROOT"
    return out


def render_snapshot(state: SimulatorState, snap: dict[str, Any]) -> dict[str, Any]:
    return _public(snap)


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
        network = state.networks[network_id]
        nic_rows.append(
            {
                "id": new_id(),
                "networkid": network_id,
                "networkname": network["name"],
                "netmask": network["netmask"],
                "gateway": network["gateway"],
                "ipaddress": _allocate_ip(state, network, ip, nic_rows),
                "macaddress": _allocate_mac(state, mac, nic_rows),
                "isdefault": index == 0,
                "traffictype": "Guest",
                "type": network["type"],
                "deviceid": str(index),
                "secondaryip": [],
                "extradhcpoption": [],
            }
        )
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
    root = _new_volume(state, name=f"ROOT-{number}", size_bytes=size, offering=None, vol_type="ROOT")
    root.update(virtualmachineid=vm_id, deviceid=0, attached=now_iso(), templateid=tmpl["id"])
    return vm


def _new_volume(
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


def _make_ready(vol: dict[str, Any]) -> None:
    if vol["state"] == "Allocated":
        vol["state"] = "Ready"
        vol["storage"] = "sim-primary-1"
        vol["storagetype"] = "shared"


def _detach_fields(vol: dict[str, Any]) -> None:
    for key in ("virtualmachineid", "deviceid", "attached"):
        vol.pop(key, None)


# ---- async jobs -------------------------------------------------------------------------------------
@dataclass
class Job:
    command: str
    cmd_class: str
    instance_type: str
    instance_id: str | None
    work: Callable[[], Awaitable[dict[str, Any]]]
    on_error: Callable[[], None] | None = None
    immediate: dict[str, Any] | None = None


def _submit(state: SimulatorState, job: Job) -> dict[str, Any]:
    job_id = new_id()
    record = {
        "jobid": job_id,
        "cmd": job.cmd_class,
        "jobstatus": 0,
        "jobprocstatus": 0,
        "jobresultcode": 0,
        "jobinstancetype": job.instance_type,
        "created": now_iso(),
        "accountid": state.account["accountid"],
        "userid": state.account["userid"],
    }
    if job.instance_id:
        record["jobinstanceid"] = job.instance_id
    state.jobs[job_id] = record
    state.save()
    delay = state.faults.job_delay(job.command, state.job_delay_s)
    task = asyncio.get_running_loop().create_task(_run_job(state, job, record, delay))
    state.job_tasks.add(task)
    task.add_done_callback(state.job_tasks.discard)
    return {**(job.immediate or {}), "jobid": job_id}


async def _run_job(state: SimulatorState, job: Job, record: dict[str, Any], delay: float | None) -> None:
    log = logger.bind(sim_command=job.command, sim_job_id=record["jobid"])
    if delay is None:
        log.debug("simulator job hangs (fault)")
        await asyncio.Event().wait()
    elif delay > 0:
        await asyncio.sleep(delay)
    try:
        fault = state.faults.take_job_failure(job.command)
        if fault is not None:
            raise ApiError(fault.errorcode, fault.errortext, fault.cserrorcode)
        result = await job.work()
    except ApiError as e:
        if job.on_error is not None:
            job.on_error()
        record.update(
            jobstatus=2,
            jobresultcode=530,
            jobresulttype="object",
            completed=now_iso(),
            jobresult={"errorcode": e.errorcode, "cserrorcode": e.cserrorcode, "errortext": e.errortext},
        )
        log.debug("simulator job failed: {} {}", e.errorcode, e.errortext)
    except Exception as e:  # a bug in the simulator: report it the way CloudStack reports its own
        log.exception("simulator job crashed")
        if job.on_error is not None:
            job.on_error()
        record.update(
            jobstatus=2,
            jobresultcode=530,
            jobresulttype="object",
            completed=now_iso(),
            jobresult={
                "errorcode": 530,
                "cserrorcode": ApiError.CS_CLOUD_RUNTIME,
                "errortext": f"Internal error executing command: {e}",
            },
        )
    else:
        record.update(jobstatus=1, jobresultcode=0, jobresulttype="object", completed=now_iso(), jobresult=result)
        log.debug("simulator job succeeded")
    state.save()


# ---- commands ---------------------------------------------------------------------------------------
Handler = Callable[[SimulatorState, Params], dict[str, Any]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name.lower()] = fn
        return fn

    return register


@command("listZones")
def _list_zones(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = _filter(list(state.zones.values()), p, id="id", name="name")
    return list_response(p, "zone", rows)


@command("listServiceOfferings")
def _list_service_offerings(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = _filter(list(state.service_offerings.values()), p, id="id", name="name")
    return list_response(p, "serviceoffering", rows)


@command("listDiskOfferings")
def _list_disk_offerings(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = _filter(list(state.disk_offerings.values()), p, id="id", name="name")
    return list_response(p, "diskoffering", rows)


@command("listNetworks")
def _list_networks(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = _filter(list(state.networks.values()), p, id="id", name="name", zoneid="zoneid", type="type")
    return list_response(p, "network", rows)


@command("listTemplates")
def _list_templates(state: SimulatorState, p: Params) -> dict[str, Any]:
    templatefilter = p.req("templatefilter")
    allowed = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")
    if templatefilter not in allowed:
        raise ApiError(
            431,
            f"No enum constant com.cloud.template.VirtualMachineTemplate.TemplateFilter.{templatefilter}",
            ApiError.CS_SERVER_API,
        )
    rows = _filter(list(state.templates.values()), p, id="id", name="name", zoneid="zoneid")
    return list_response(p, "template", rows)


@command("listVolumes")
def _list_volumes(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_volume(state, v) for v in state.volumes.values()]
    rows = _filter(
        rows, p, id="id", name="name", virtualmachineid="virtualmachineid", type="type", zoneid="zoneid", state="state"
    )
    ids = p.opt("ids")
    if ids:
        wanted = set(ids.split(","))
        rows = [r for r in rows if r["id"] in wanted]
    return list_response(p, "volume", rows)


@command("listSnapshots")
def _list_snapshots(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_snapshot(state, s) for s in state.snapshots.values()]
    rows = _filter(rows, p, id="id", name="name", volumeid="volumeid", zoneid="zoneid")
    return list_response(p, "snapshot", rows)


@command("listVirtualMachines")
def _list_vms(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_vm(state, vm) for vm in state.vms.values()]
    rows = _filter(rows, p, id="id", name="name", state="state", zoneid="zoneid", templateid="templateid")
    network_id = p.opt("networkid")
    if network_id:
        rows = [r for r in rows if any(n["networkid"] == network_id for n in r["nic"])]
    return list_response(p, "virtualmachine", rows)


@command("queryAsyncJobResult")
def _query_job(state: SimulatorState, p: Params) -> dict[str, Any]:
    job = p.entity("jobid", state.jobs)
    return dict(job)


@command("createVolume")
def _create_volume(state: SimulatorState, p: Params) -> dict[str, Any]:
    zone = p.entity("zoneid", state.zones)
    offering = p.entity("diskofferingid", state.disk_offerings)
    size_gib = p.as_int("size")
    name = p.opt("name") or f"vol-{secrets.token_hex(4)}"
    if offering["iscustomized"]:
        if size_gib is None:
            raise ApiError(431, "This disk offering requires a custom size specified")
        lo, hi = state.limits["custom_disk_min_gib"], state.limits["custom_disk_max_gib"]
        if not lo <= size_gib <= hi:
            raise ApiError(431, f"Invalid disk size {size_gib}: custom disk size must be between {lo} and {hi} GB")
    else:
        if size_gib is not None and size_gib != offering["disksize"]:
            raise ApiError(
                431, "The disk offering has a fixed size; the size parameter is only for custom disk offerings"
            )
        size_gib = int(offering["disksize"])
    assert zone["id"] == state.zone_id
    vol = _new_volume(state, name=name, size_bytes=size_gib * GIB, offering=offering, vol_type="DATADISK")
    vm_id = p.opt("virtualmachineid")
    if vm_id is not None:
        raise ApiError(
            432,
            "createVolume with virtualmachineid is not supported by this simulator; attach with attachVolume",
            ApiError.CS_SERVER_API,
        )

    async def work() -> dict[str, Any]:
        return {"volume": render_volume(state, vol)}

    return _submit(
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
        if new_offering:
            vol.update(diskofferingid=new_offering["id"], diskofferingname=new_offering["name"])
        return {"volume": render_volume(state, vol)}

    return _submit(
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
    if len(data_disks) >= state.limits["max_data_volumes_per_vm"]:
        raise ApiError(
            431,
            f"The specified VM already has the maximum number of data disks "
            f"({state.limits['max_data_volumes_per_vm']}) attached. Please specify another VM.",
        )
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
            _make_ready(vol)
        if vm["id"] == state.oma_vm_id:
            if state.faults.take_no_device():
                vol["_published"] = False
                logger.bind(volume_id=vol["id"]).debug("simulator: attach without device (fault)")
            else:
                vol["_published"] = True
                state.publish_device(vol["id"])
        return {"volume": render_volume(state, vol)}

    return _submit(
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
            state.unpublish_device(vol["id"])
        vol.pop("_published", None)
        _detach_fields(vol)
        return {"volume": render_volume(state, vol)}

    return _submit(
        state,
        Job("detachVolume", "org.apache.cloudstack.api.command.user.volume.DetachVolumeCmd", "Volume", vol["id"], work),
    )


@command("createSnapshot")
def _create_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    vol = p.entity("volumeid", state.volumes)
    if vol["state"] != "Ready":
        raise ApiError(431, f"VolumeId: {vol['id']} is not in Ready state but {vol['state']}. Cannot take snapshot.")
    vm = state.vms.get(vol.get("virtualmachineid") or "")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name = p.opt("name") or f"{vm['name'] if vm else 'detached'}_{vol['name']}_{stamp}"
    snap_id = new_id()
    snap: dict[str, Any] = {
        "id": snap_id,
        "name": name,
        "volumeid": vol["id"],
        "volumename": vol["name"],
        "volumetype": vol["type"],
        "snapshottype": "MANUAL",
        "intervaltype": "MANUAL",
        "state": "Allocated",
        "created": now_iso(),
        "zoneid": vol["zoneid"],
        "virtualsize": vol["size"],
        "physicalsize": 0,
        "revertable": True,
        "locationtype": "PRIMARY",
        "account": state.account["account"],
        "domain": state.account["domain"],
        "domainid": state.account["domainid"],
        "tags": [],
    }
    state.snapshots[snap_id] = snap

    async def work() -> dict[str, Any]:
        snap["state"] = "BackingUp"
        dst = state.snapshot_file(snap_id)
        await asyncio.to_thread(sim_files.sparse_copy, state.volume_file(vol["id"]), dst)
        snap["physicalsize"] = dst.stat().st_blocks * 512
        snap["state"] = "BackedUp"
        return {"snapshot": render_snapshot(state, snap)}

    def on_error() -> None:
        snap["state"] = "Error"

    return _submit(
        state,
        Job(
            "createSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.CreateSnapshotCmd",
            "Snapshot",
            snap_id,
            work,
            on_error,
            immediate={"id": snap_id},
        ),
    )


@command("revertSnapshot")
def _revert_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    snap = p.entity("id", state.snapshots)

    async def work() -> dict[str, Any]:
        if snap["state"] != "BackedUp":
            raise ApiError(431, f"Snapshot {snap['id']} is not in BackedUp state; it cannot be reverted")
        vol = state.volumes.get(snap["volumeid"])
        if vol is None:
            raise ApiError(431, f"Unable to find volume {snap['volumeid']} of snapshot {snap['id']}: it does not exist")
        vm = state.vms.get(vol.get("virtualmachineid") or "")
        if vm is not None and vm["state"] != "Stopped":
            raise ApiError(431, "The VM the specified disk is attached to is not in the shutdown state.")
        await asyncio.to_thread(sim_files.sparse_copy, state.snapshot_file(snap["id"]), state.volume_file(vol["id"]))
        vol["size"] = snap["virtualsize"]
        return {"snapshot": render_snapshot(state, snap)}

    return _submit(
        state,
        Job(
            "revertSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.RevertSnapshotCmd",
            "Snapshot",
            snap["id"],
            work,
        ),
    )


@command("deleteSnapshot")
def _delete_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    snap = p.entity("id", state.snapshots)

    async def work() -> dict[str, Any]:
        if snap["state"] in ("Allocated", "BackingUp"):
            raise ApiError(431, f"Can't delete snapshot {snap['id']} while it is being created")
        state.snapshots.pop(snap["id"], None)
        with suppress(FileNotFoundError):
            state.snapshot_file(snap["id"]).unlink()
        return {"success": True}

    return _submit(
        state,
        Job(
            "deleteSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.DeleteSnapshotCmd",
            "Snapshot",
            snap["id"],
            work,
        ),
    )


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
        if start:
            vm["state"] = "Running"
            vm["hostname"] = "sim-kvm-host-1"
            for vol in state.volumes_of(vm["id"]):
                _make_ready(vol)
        return {"virtualmachine": render_vm(state, vm)}

    def on_error() -> None:
        vm["state"] = "Error"

    return _submit(
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
        vm["state"] = "Running"
        vm["hostname"] = "sim-kvm-host-1"
        for vol in state.volumes_of(vm["id"]):
            _make_ready(vol)
        return {"virtualmachine": render_vm(state, vm)}

    def on_error() -> None:
        vm["state"] = "Stopped"

    return _submit(
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
        vm.pop("hostname", None)
        return {"virtualmachine": render_vm(state, vm)}

    def on_error() -> None:
        vm["state"] = previous

    return _submit(
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
        vm.pop("hostname", None)
        vm["state"] = "Destroyed"
        rendered = render_vm(state, vm)
        if expunge:
            for vol in state.volumes_of(vm["id"]):
                if vm["id"] == state.oma_vm_id:
                    state.unpublish_device(vol["id"])
                if vol["type"] == "ROOT":
                    state.volumes.pop(vol["id"], None)
                    with suppress(FileNotFoundError):
                        state.volume_file(vol["id"]).unlink()
                else:
                    vol.pop("_published", None)
                    _detach_fields(vol)
            state.vms.pop(vm["id"], None)
            rendered["state"] = "Expunging"
        return {"virtualmachine": rendered}

    return _submit(
        state,
        Job(
            "destroyVirtualMachine",
            "org.apache.cloudstack.api.command.admin.vm.DestroyVMCmdByAdmin",
            "VirtualMachine",
            vm["id"],
            work,
        ),
    )


# ---- HTTP -------------------------------------------------------------------------------------------
def _json(envelope: str, body: dict[str, Any], status: int = 200) -> web.Response:
    reason = "OK" if status == 200 else ("Unauthorized" if status == 401 else "CloudStack API error")
    return web.json_response({envelope: body}, status=status, reason=reason)


async def _handle_api(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    params: dict[str, str] = {}
    for key, value in request.query.items():
        params.setdefault(key, value)
    if request.method == "POST":
        form = await request.post()
        for key, item in form.items():
            if isinstance(item, str):
                params.setdefault(key, item)
    command_name = next((v for k, v in params.items() if k.lower() == "command"), "")
    envelope = f"{command_name.lower()}response" if command_name else "errorresponse"
    log = logger.bind(sim_command=command_name)

    if command_name and state.faults.take_drop(command_name):
        state.requests.append(RequestRecord(command_name, 0))
        log.debug("simulator drops the connection (fault)")
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp treats this as a handler that went away with its client

    why = verify_request(params, state.api_key, state.secret_key)
    if why is not None:
        state.requests.append(RequestRecord(command_name, 401))
        log.info("simulator refused a request: {}", why)
        return _json(envelope, {"uuidList": [], "errorcode": 401, "errortext": AUTH_ERROR_TEXT}, 401)

    try:
        if not command_name:
            raise ApiError(400, "no command specified", ApiError.CS_SERVER_API)
        fault = state.faults.take_api_failure(command_name)
        if fault is not None:
            raise ApiError(fault.errorcode, fault.errortext, fault.cserrorcode)
        handler = COMMANDS.get(command_name.lower())
        if handler is None:
            raise ApiError(
                432,
                f"The given command:{command_name} does not exist or it is not available for user",
                ApiError.CS_SERVER_API,
            )
        body = handler(state, Params(command_name, params))
    except ApiError as e:
        state.requests.append(RequestRecord(command_name, e.errorcode))
        log.debug("simulator answers {}: {}", e.errorcode, e.errortext)
        return _json(envelope, e.body(), e.errorcode)
    state.requests.append(RequestRecord(command_name, 200))
    if not command_name.lower().startswith(("list", "query")):
        state.save()
    return _json(envelope, body)


def create_app(state: SimulatorState) -> web.Application:
    """The aiohttp application serving CloudStack's API at /client/api for `state`."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_route("GET", API_PATH, _handle_api)
    app.router.add_route("POST", API_PATH, _handle_api)
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


class CloudStackSimulator:
    """The simulator in this process: `await sim.start()`, use `sim.url` and keys, `await sim.stop()`."""

    def __init__(
        self,
        state_dir: Path,
        listen: str = "127.0.0.1:0",
        api_key: str | None = None,
        secret_key: str | None = None,
        seed_config: Path | None = None,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.state = SimulatorState(Path(state_dir), api_key=api_key, secret_key=secret_key)
        self.seed_config = seed_config
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{API_PATH}"

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def secret_key(self) -> str:
        return self.state.secret_key

    @property
    def oma_vm_id(self) -> str:
        return self.state.oma_vm_id

    @property
    def zone_id(self) -> str:
        return self.state.zone_id

    @property
    def device_root(self) -> Path:
        """What the OMA's --device-root should be to see the volumes attached to it."""
        return self.state.device_dir

    def settings(self, **overrides: Any) -> CloudStackSettings:
        """Client settings that reach this simulator (fast polling: the simulator's jobs are quick)."""
        values: dict[str, Any] = {
            "url": self.url,
            "api_key": self.api_key,
            "secret_key": self.secret_key,
            "zone": self.zone_id,
            "oma_vm_id": self.oma_vm_id,
            "poll_interval_s": 0.05,
            "async_job_timeout_s": 30.0,
            "timeout_s": 10.0,
            "retry_base_delay_s": 0.05,
            "retry_max_delay_s": 0.5,
        }
        values.update(overrides)
        return CloudStackSettings(**values)

    async def start(self) -> None:
        await asyncio.to_thread(self.state.load_or_seed, self.seed_config)
        self._runner = web.AppRunner(create_app(self.state), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        logger.bind(url=self.url).info("CloudStack simulator listening on {}", self.url)

    async def stop(self) -> None:
        tasks = list(self.state.job_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.state.save()
        logger.info("CloudStack simulator stopped")

    async def __aenter__(self) -> CloudStackSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
