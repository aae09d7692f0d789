"""The simulated CloudStack world: resources, keys, faults, request log; persisted as JSON in the state dir."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from oma_server.cloudstack.devices import by_id_name
from oma_server.cloudstack.models import GIB

STATE_FILE = "cloudstack-sim.json"
STATE_VERSION = 1

#: The world a fresh simulator starts with when no seed file is given. A seed file has the same shape;
#: any entity may carry a fixed "id".
DEFAULT_SEED: dict[str, Any] = {
    "zone": {"name": "sim-zone-1", "networktype": "Advanced"},
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
    },
    "limits": {"custom_disk_min_gib": 1, "custom_disk_max_gib": 16384, "max_data_volumes_per_vm": 14},
    "job_delay_s": 0.05,
}


def now_iso() -> str:
    """CloudStack's timestamp format: 2021-10-04T09:24:38+0000."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def new_id() -> str:
    return str(uuid.uuid4())


class ApiError(Exception):
    """A CloudStack API error: HTTP status = errorcode, body with errorcode/cserrorcode/errortext."""

    # CSExceptionErrorCode values CloudStack puts in cserrorcode
    CS_INVALID_PARAMETER = 4350
    CS_CLOUD_RUNTIME = 4250
    CS_SERVER_API = 9999
    CS_INSUFFICIENT_CAPACITY = 4310
    CS_PERMISSION_DENIED = 4365

    def __init__(self, errorcode: int, errortext: str, cserrorcode: int = CS_INVALID_PARAMETER) -> None:
        super().__init__(errortext)
        self.errorcode = errorcode
        self.errortext = errortext
        self.cserrorcode = cserrorcode

    def body(self) -> dict[str, Any]:
        return {
            "uuidList": [],
            "errorcode": self.errorcode,
            "cserrorcode": self.cserrorcode,
            "errortext": self.errortext,
        }


@dataclass
class _Rule:
    remaining: int | None  # None: until cleared
    errorcode: int = 530
    errortext: str = ""
    cserrorcode: int = ApiError.CS_CLOUD_RUNTIME
    seconds: float | None = None  # slow_job delay; None with kind "hang" = forever

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


@dataclass
class Faults:
    """Faults on demand. Command names are case-insensitive; `times=None` means until `clear()`."""

    _fail_api: dict[str, list[_Rule]] = field(default_factory=dict)
    _fail_job: dict[str, list[_Rule]] = field(default_factory=dict)
    _slow: dict[str, list[_Rule]] = field(default_factory=dict)
    _hang: dict[str, list[_Rule]] = field(default_factory=dict)
    _drop: dict[str, list[_Rule]] = field(default_factory=dict)
    _no_device: list[_Rule] = field(default_factory=list)

    def fail_command(
        self,
        command: str,
        errorcode: int = 530,
        errortext: str = "Internal error executing command, please contact your system administrator",
        *,
        cserrorcode: int = ApiError.CS_CLOUD_RUNTIME,
        times: int | None = 1,
        in_job: bool = False,
    ) -> None:
        """The next `times` calls of `command` fail with this error: as the HTTP answer, or (in_job=True,
        async commands only) as a failed async job (jobstatus 2)."""
        target = self._fail_job if in_job else self._fail_api
        rule = _Rule(times, errorcode, errortext, cserrorcode)
        target.setdefault(command.lower(), []).append(rule)

    def slow_job(self, command: str, seconds: float, *, times: int | None = None) -> None:
        """Async jobs of `command` take `seconds` before they finish."""
        self._slow.setdefault(command.lower(), []).append(_Rule(times, seconds=seconds))

    def hang_job(self, command: str, *, times: int | None = None) -> None:
        """Async jobs of `command` never finish (jobstatus stays 0)."""
        self._hang.setdefault(command.lower(), []).append(_Rule(times))

    def attach_without_device(self, *, times: int | None = 1) -> None:
        """The next attach to the OMA VM succeeds in CloudStack but publishes no /dev/disk/by-id entry."""
        self._no_device.append(_Rule(times))

    def drop_connection(self, command: str, *, times: int | None = 1) -> None:
        """The next `times` requests of `command` are answered by closing the connection (a reset)."""
        self._drop.setdefault(command.lower(), []).append(_Rule(times))

    def clear(self) -> None:
        for table in (self._fail_api, self._fail_job, self._slow, self._hang, self._drop):
            table.clear()
        self._no_device.clear()

    @staticmethod
    def _take(table: dict[str, list[_Rule]], command: str) -> _Rule | None:
        rules = table.get(command.lower(), [])
        for rule in rules:
            if rule.take():
                return rule
        return None

    def take_api_failure(self, command: str) -> _Rule | None:
        return self._take(self._fail_api, command)

    def take_job_failure(self, command: str) -> _Rule | None:
        return self._take(self._fail_job, command)

    def take_drop(self, command: str) -> bool:
        return self._take(self._drop, command) is not None

    def job_delay(self, command: str, default: float) -> float | None:
        """Seconds the job takes; None if it hangs."""
        if self._take(self._hang, command) is not None:
            return None
        slow = self._take(self._slow, command)
        return slow.seconds if slow is not None and slow.seconds is not None else default

    def take_no_device(self) -> bool:
        return any(rule.take() for rule in self._no_device)


@dataclass(frozen=True)
class RequestRecord:
    command: str
    status: int


class SimulatorState:
    """All of the simulated world. Handlers mutate it and call `save()`; tests may inspect it."""

    def __init__(self, state_dir: Path, *, api_key: str | None = None, secret_key: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.api_key: str = api_key or ""
        self.secret_key: str = secret_key or ""
        self.zones: dict[str, dict[str, Any]] = {}
        self.service_offerings: dict[str, dict[str, Any]] = {}
        self.disk_offerings: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.vms: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.limits: dict[str, int] = dict(DEFAULT_SEED["limits"])
        self.job_delay_s: float = float(DEFAULT_SEED["job_delay_s"])
        self.oma_vm_id: str = ""
        self.zone_id: str = ""
        self.account = {
            "account": "admin",
            "domain": "ROOT",
            "domainid": new_id(),
            "accountid": new_id(),
            "userid": new_id(),
        }
        self.instance_counter = 0
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        #: running async jobs of this process (not persisted; a restart fails pending jobs)
        self.job_tasks: set[asyncio.Task[None]] = set()

    # ---- persistence -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def device_dir(self) -> Path:
        return self.state_dir / "dev" / "disk" / "by-id"

    def volume_file(self, volume_id: str) -> Path:
        return self.state_dir / "volumes" / f"{volume_id}.img"

    def snapshot_file(self, snapshot_id: str) -> Path:
        return self.state_dir / "snapshots" / f"{snapshot_id}.img"

    def load_or_seed(self, seed_config: Path | None = None) -> None:
        """Load the persisted world, or build it from the seed (file or built-in default)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "volumes").mkdir(exist_ok=True)
        (self.state_dir / "snapshots").mkdir(exist_ok=True)
        self.device_dir.mkdir(parents=True, exist_ok=True)
        if self.state_file.exists():
            self._load()
        else:
            seed = DEFAULT_SEED
            if seed_config is not None:
                seed = {**DEFAULT_SEED, **json.loads(Path(seed_config).read_text())}
            self._seed(seed)
        self._recover_after_restart()
        self.save()

    def _load(self) -> None:
        data = json.loads(self.state_file.read_text())
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_file}: unsupported state version {data.get('version')!r}")
        # keys given on the command line win over the persisted ones
        self.api_key = self.api_key or data["api_key"]
        self.secret_key = self.secret_key or data["secret_key"]
        for name in (
            "zones",
            "service_offerings",
            "disk_offerings",
            "networks",
            "templates",
            "vms",
            "volumes",
            "snapshots",
            "jobs",
        ):
            setattr(self, name, data[name])
        self.limits = data["limits"]
        self.job_delay_s = data["job_delay_s"]
        self.oma_vm_id = data["oma_vm_id"]
        self.zone_id = data["zone_id"]
        self.account = data["account"]
        self.instance_counter = data["instance_counter"]

    def save(self) -> None:
        data = {
            "version": STATE_VERSION,
            "api_key": self.api_key,
            "secret_key": self.secret_key,
            "zones": self.zones,
            "service_offerings": self.service_offerings,
            "disk_offerings": self.disk_offerings,
            "networks": self.networks,
            "templates": self.templates,
            "vms": self.vms,
            "volumes": self.volumes,
            "snapshots": self.snapshots,
            "jobs": self.jobs,
            "limits": self.limits,
            "job_delay_s": self.job_delay_s,
            "oma_vm_id": self.oma_vm_id,
            "zone_id": self.zone_id,
            "account": self.account,
            "instance_counter": self.instance_counter,
        }
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # it holds the secret key
        os.replace(tmp, self.state_file)

    def _seed(self, seed: dict[str, Any]) -> None:
        self.api_key = self.api_key or secrets.token_urlsafe(32)
        self.secret_key = self.secret_key or secrets.token_urlsafe(48)
        self.limits = {**DEFAULT_SEED["limits"], **seed.get("limits", {})}
        self.job_delay_s = float(seed.get("job_delay_s", DEFAULT_SEED["job_delay_s"]))
        created = now_iso()
        z = seed["zone"]
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
        self.zones = {zone["id"]: zone}
        self.zone_id = zone["id"]
        for so in seed["service_offerings"]:
            sid = so.get("id") or new_id()
            self.service_offerings[sid] = {
                "id": sid,
                "name": so["name"],
                "displaytext": so.get("displaytext", so["name"]),
                "cpunumber": int(so["cpunumber"]),
                "cpuspeed": int(so["cpuspeed"]),
                "memory": int(so["memory"]),
                "created": created,
                "storagetype": "shared",
                "offerha": False,
                "limitcpuuse": False,
                "isvolatile": False,
                "issystem": False,
                "defaultuse": False,
                "iscustomized": False,
                "provisioningtype": "thin",
            }
        for do in seed["disk_offerings"]:
            did = do.get("id") or new_id()
            self.disk_offerings[did] = {
                "id": did,
                "name": do["name"],
                "displaytext": do.get("displaytext", do["name"]),
                "disksize": int(do.get("disksize", 0)),
                "iscustomized": bool(do.get("iscustomized", False)),
                "created": created,
                "storagetype": "shared",
                "provisioningtype": "thin",
                "iscustomizediops": False,
                "displayoffering": True,
                "cachemode": "none",
            }
        for net in seed["networks"]:
            nid = net.get("id") or new_id()
            cidr = net["cidr"]
            netmask = str(ipaddress.ip_network(cidr).netmask)
            self.networks[nid] = {
                "id": nid,
                "name": net["name"],
                "displaytext": net.get("displaytext", net["name"]),
                "zoneid": self.zone_id,
                "zonename": zone["name"],
                "type": net.get("type", "Isolated"),
                "state": "Implemented",
                "traffictype": "Guest",
                "cidr": cidr,
                "gateway": net["gateway"],
                "netmask": netmask,
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
                "account": self.account["account"],
                "domain": self.account["domain"],
                "domainid": self.account["domainid"],
            }
        for t in seed["templates"]:
            tid = t.get("id") or new_id()
            self.templates[tid] = {
                "id": tid,
                "name": t["name"],
                "displaytext": t.get("displaytext", t["name"]),
                "ostypeid": new_id(),
                "ostypename": t.get("ostypename", "Other Linux (64-bit)"),
                "zoneid": self.zone_id,
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
                "created": created,
                "account": "system",
                "domain": "ROOT",
                "tags": [],
            }
        oma = seed.get("oma_vm")
        if oma:
            # Imported lazily: the command implementations live with the HTTP layer.
            from oma_server.cloudstack.simulator import deploy_vm_record

            so_id = self.find_by_name(self.service_offerings, oma["service_offering"])
            tmpl_id = self.find_by_name(self.templates, oma["template"])
            net_id = self.find_by_name(self.networks, oma["network"])
            vm = deploy_vm_record(
                self,
                name=oma["name"],
                service_offering_id=so_id,
                template_id=tmpl_id,
                nics=[(net_id, oma.get("ip"), oma.get("mac"))],
                root_disk_gib=None,
                vm_id=oma.get("id"),
            )
            vm["state"] = "Running"
            for vol in self.volumes_of(vm["id"]):
                vol["state"] = "Ready"
            self.oma_vm_id = vm["id"]

    def _recover_after_restart(self) -> None:
        """What a management server restart does to work in flight: pending jobs fail, VMs settle."""
        for job in self.jobs.values():
            if job["jobstatus"] == 0:
                job.update(
                    jobstatus=2,
                    jobresultcode=530,
                    jobresulttype="object",
                    completed=now_iso(),
                    jobresult={
                        "errorcode": 530,
                        "errortext": "Job was cancelled because the management server restarted; try again",
                    },
                )
        for vm in self.vms.values():
            if vm["state"] in ("Starting", "Stopping"):
                vm["state"] = "Stopped"
        for snap in self.snapshots.values():
            if snap["state"] in ("Allocated", "Creating", "BackingUp"):
                snap["state"] = "Error"
        self.sync_devices()

    # ---- lookups -----------------------------------------------------------------------------------
    @staticmethod
    def find_by_name(table: dict[str, dict[str, Any]], name: str) -> str:
        for key, row in table.items():
            if row["name"] == name or key == name:
                return key
        raise KeyError(name)

    def volumes_of(self, vm_id: str) -> list[dict[str, Any]]:
        return sorted(
            (v for v in self.volumes.values() if v.get("virtualmachineid") == vm_id),
            key=lambda v: v.get("deviceid", 0),
        )

    def next_instance_number(self) -> int:
        self.instance_counter += 1
        return self.instance_counter

    def request_count(self, command: str | None = None) -> int:
        """How many requests of `command` (any command if None) reached the simulator."""
        if command is None:
            return len(self.requests)
        return sum(1 for r in self.requests if r.command.lower() == command.lower())

    # ---- guest devices of the OMA VM ---------------------------------------------------------------
    def publish_device(self, volume_id: str) -> None:
        link = self.device_dir / by_id_name(volume_id)
        target = self.volume_file(volume_id).resolve()
        self.device_dir.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(link.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link)
        logger.bind(volume_id=volume_id).debug("simulator published {}", link)

    def unpublish_device(self, volume_id: str) -> None:
        link = self.device_dir / by_id_name(volume_id)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()

    def sync_devices(self) -> None:
        """Make dev/disk/by-id match the volumes attached to the OMA VM (after a restart)."""
        wanted = {
            by_id_name(v["id"]): v["id"]
            for v in self.volumes.values()
            if v.get("virtualmachineid") == self.oma_vm_id and v.get("_published", True)
        }
        if self.device_dir.exists():
            for entry in self.device_dir.iterdir():
                if entry.name.startswith("virtio-") and entry.name not in wanted:
                    entry.unlink()
        for vol_id in wanted.values():
            self.publish_device(vol_id)

    def snapshot_of_world(self) -> dict[str, Any]:
        """A deep copy of the resources, for assertions."""
        return copy.deepcopy({"vms": self.vms, "volumes": self.volumes, "snapshots": self.snapshots})
