"""The simulated CloudStack world: resources, keys, settings, faults, request log; persisted as JSON in the state dir.

This module holds data and lookups only. What builds a world (sim_seed), what commands do to it (sim_volumes,
sim_vms, ...) and what the OMA VM's guest sees of it (sim_guest) live in their own modules, which import this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oma_server.cloudstack.sim_faults import Faults

STATE_FILE = "cloudstack-sim.json"
#: finished async jobs, one JSON line each, appended once: a finished job never changes, and writing the thousands a
#: long run keeps (as CloudStack keeps them) into every state write made each write cost 15 ms of the event loop
JOBS_LOG = "cloudstack-sim-jobs.jsonl"
STATE_VERSION = 2
#: how long a change nobody waits for waits before it is written: changes in between go into the same write
SAVE_DELAY_S = 0.2

#: the tables persisted as they are (id → row)
TABLES = (
    "zones",
    "hosts",
    "service_offerings",
    "disk_offerings",
    "networks",
    "templates",
    "vms",
    "volumes",
    "snapshots",
    "jobs",
)
#: the other persisted attributes
SCALARS = (
    "configurations",
    "hypervisor_capabilities",
    "cloudstack_version",
    "job_delay_s",
    "oma_vm_id",
    "zone_id",
    "account",
    "instance_counter",
)


def now_iso() -> str:
    """CloudStack's timestamp format: 2021-10-04T09:24:38+0000."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def new_id() -> str:
    return str(uuid.uuid4())


def version_tuple(version: str) -> tuple[int, ...]:
    """'4.20.1.0' → (4, 20, 1, 0), for comparisons between CloudStack releases."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


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
        self.hosts: dict[str, dict[str, Any]] = {}
        self.service_offerings: dict[str, dict[str, Any]] = {}
        self.disk_offerings: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.vms: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        #: global settings as listConfigurations shows them (name → value, strings as CloudStack keeps them)
        self.configurations: dict[str, str] = {}
        #: rows of listHypervisorCapabilities
        self.hypervisor_capabilities: list[dict[str, Any]] = []
        #: the release whose answers the simulator gives where releases differ (docs/cloudstack.md)
        self.cloudstack_version = "4.20.1.0"
        self.job_delay_s = 0.05
        self.oma_vm_id = ""
        self.zone_id = ""
        self.account: dict[str, str] = {}
        self.instance_counter = 0
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        #: running async jobs of this process (not persisted; a restart fails pending jobs)
        self.job_tasks: set[asyncio.Task[None]] = set()
        self._writer: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        self._write_lock = threading.Lock()  # a cancelled writer's thread may still be writing
        # Group commit: changes are counted, writes say how many they hold, an answer waits for its count.
        self._changes = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._hurry = asyncio.Event()  # someone waits: write now, without SAVE_DELAY_S
        self._logged_jobs: set[str] = set()  # finished jobs in JOBS_LOG

    # ---- persistence -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def jobs_log(self) -> Path:
        return self.state_dir / JOBS_LOG

    @property
    def guest_root(self) -> Path:
        """The OMA VM's guest view: `dev/` and `sys/` as a KVM guest has them (sim_guest keeps them)."""
        return self.state_dir / "guest"

    @property
    def device_dir(self) -> Path:
        return self.guest_root / "dev" / "disk" / "by-id"

    @property
    def sys_root(self) -> Path:
        return self.guest_root / "sys"

    def volume_file(self, volume_id: str) -> Path:
        return self.state_dir / "volumes" / f"{volume_id}.img"

    def snapshot_file(self, snapshot_id: str) -> Path:
        return self.state_dir / "snapshots" / f"{snapshot_id}.img"

    def make_dirs(self) -> None:
        for path in (self.state_dir / "volumes", self.state_dir / "snapshots", self.device_dir, self.sys_root):
            path.mkdir(parents=True, exist_ok=True)

    def load(self) -> bool:
        """Load the persisted world; False when there is none yet."""
        if not self.state_file.exists():
            return False
        data = json.loads(self.state_file.read_text())
        if data.get("version") != STATE_VERSION:
            raise ValueError(
                f"{self.state_file}: state version {data.get('version')!r}, this simulator keeps version "
                f"{STATE_VERSION}; start it with an empty --state-dir"
            )
        # keys given on the command line win over the persisted ones
        self.api_key = self.api_key or data["api_key"]
        self.secret_key = self.secret_key or data["secret_key"]
        for name in (*TABLES, *SCALARS):
            setattr(self, name, data[name])
        if self.jobs_log.exists():
            for line in self.jobs_log.read_text().splitlines():
                try:
                    job = json.loads(line)
                except json.JSONDecodeError:
                    continue  # cut by a kill while appended: a result no answer had shown yet
                self.jobs[job["jobid"]] = job  # finished: over its pending copy in the state file
                self._logged_jobs.add(job["jobid"])
        return True

    def _snapshot(self) -> tuple[str, str, list[str]]:
        """(the state file, finished jobs to append to JOBS_LOG, their ids), taken on the event loop."""
        finished = [j for i, j in self.jobs.items() if j["jobstatus"] != 0 and i not in self._logged_jobs]
        lines = "".join(json.dumps(j) + "\n" for j in finished)
        data: dict[str, Any] = {"version": STATE_VERSION, "api_key": self.api_key, "secret_key": self.secret_key}
        data.update({name: getattr(self, name) for name in (*TABLES, *SCALARS)})
        data["jobs"] = {i: j for i, j in self.jobs.items() if j["jobstatus"] == 0}
        # compact: the C encoder (an indent would select the pure-Python one)
        return json.dumps(data), lines, [j["jobid"] for j in finished]

    def _write(self, text: str, lines: str, *, sync: bool = True) -> None:
        """Append the finished jobs, then replace the state file atomically (a kill in between leaves a job both
        pending in the file and finished in the log: the log wins). Without `sync` nothing is fsynced: a killed
        process loses nothing the kernel holds, only a host crash would (which the simulator does not stand for)."""
        tmp = self.state_file.with_suffix(".tmp")
        with self._write_lock:
            if lines:
                with open(self.jobs_log, "a") as log:
                    log.write(lines)
                    log.flush()
                    if sync:
                        os.fsync(log.fileno())
                    os.chmod(self.jobs_log, 0o600)
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o600)  # it holds the secret key
                os.replace(tmp, self.state_file)

    def save(self) -> None:
        """Write the world now (start, stop, and tests that look at the file)."""
        self._dirty.clear()
        changes = self._changes
        text, lines, logged = self._snapshot()
        self._write(text, lines)
        self._logged_jobs.update(logged)
        self._mark_written(changes)

    def changed(self) -> None:
        """The world changed: written off the event loop with whatever else changes meanwhile — at once when an
        answer waits for it (`durable`), within SAVE_DELAY_S otherwise. Writing the whole world on every request
        cost the simulator most of its time at 50 VMs (the JSON grows with every job it keeps, as CloudStack keeps
        async jobs)."""
        self._changes += 1
        self._dirty.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_behind(), name="sim-state-writer")

    async def durable(self) -> None:
        """Until every change made so far is on disk. CloudStack commits to its database before it answers, so a
        management server that dies loses nothing it answered: neither a command it accepted nor a job result it
        showed (the API handler waits here before such answers)."""
        wanted = self._changes
        if self._written >= wanted:
            return
        done = asyncio.get_running_loop().create_future()
        self._waiters.append((wanted, done))
        self._hurry.set()
        await done

    def _mark_written(self, changes: int) -> None:
        self._written = max(self._written, changes)
        waiting = []
        for wanted, done in self._waiters:
            if wanted > self._written:
                waiting.append((wanted, done))
            elif not done.done():
                done.set_result(None)
        self._waiters = waiting

    async def _write_behind(self) -> None:
        while self._dirty.is_set():
            if not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), SAVE_DELAY_S)
            self._dirty.clear()
            self._hurry.clear()
            changes = self._changes
            text, lines, logged = self._snapshot()  # on the loop: handlers mutate the world there
            await asyncio.to_thread(functools.partial(self._write, text, lines, sync=False))
            self._logged_jobs.update(logged)
            self._mark_written(changes)

    async def flush(self) -> None:
        """Stop the writer and write what is left."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        self.save()

    def recover_after_restart(self) -> None:
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

    def config_int(self, name: str) -> int:
        return int(self.configurations[name])

    def version_at_least(self, version: str) -> bool:
        return version_tuple(self.cloudstack_version) >= version_tuple(version)

    def max_data_volumes(self, vm: dict[str, Any]) -> int:
        """The data-volume limit of a VM, as VolumeApiServiceImpl.getMaxDataVolumesSupported finds it: the
        capability row of its host's hypervisor and version, else that hypervisor's `default` row."""
        host = self.hosts.get(vm.get("hostid") or "")
        hypervisor = (host or vm).get("hypervisor", "KVM")
        version = host.get("hypervisorversion") if host else None
        rows = [r for r in self.hypervisor_capabilities if r["hypervisor"] == hypervisor]
        exact = [r for r in rows if version is not None and r["hypervisorversion"] == version]
        default = [r for r in rows if r["hypervisorversion"] == "default"]
        chosen = (exact or default or rows)[0]
        return int(chosen["maxdatavolumeslimit"])

    def request_count(self, command: str | None = None) -> int:
        """How many requests of `command` (any command if None) reached the simulator."""
        if command is None:
            return len(self.requests)
        return sum(1 for r in self.requests if r.command.lower() == command.lower())

    def snapshot_of_world(self) -> dict[str, Any]:
        """A deep copy of the resources, for assertions."""
        return copy.deepcopy({"vms": self.vms, "volumes": self.volumes, "snapshots": self.snapshots})
