"""Preflight: every readiness check of a failover, each with pass/fail and a reason an operator can act on.

Checks: the VM is ready for failover, its last replication completed, no job is active on it, every disk has a
replica volume and a change id, every replica was read back and hashed at that change id (integrity/gate.py), the
volumes exist in CloudStack, every disk fits the volume-size limits the cloud
sets (custom.diskoffering.size.max, storage.max.volume.size: a disk grown since its last replication is resized by
the final sync), every VMware network is mapped to an existing CloudStack network, a service offering fits the CPUs
and memory, the zone and template exist, the target VM name is free, and (live) the appliance is connected. When
every check passes, the result also carries the plan the failover runs with (offering, template, zone, NICs, target
name), stored in the job so a resumed job uses the same plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from oma_server.cloud_inventory import failover_template
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import CloudStackError
from oma_server.cloudstack.limits import CloudLimits
from oma_server.cloudstack.models import Network, ServiceOffering, Template
from oma_server.db.database import Database
from oma_server.db.models import Disk, ReplicationJob, VmContext, Volume
from oma_server.errors import FailedPrecondition, NotFound, Violation
from oma_server.failover.network_mappings import resolve_mappings
from oma_server.failover.state_machine import FailoverKind
from oma_server.failover.store import open_failover_of
from oma_server.integrity.gate import describe, unverified_disks
from oma_server.replication.store import ReplicationJobStore
from oma_server.storage.volumes import current_volume
from oma_server.vm_contexts.state_machine import VmStatus

# How long a readiness check waits for the read-back of the VM's last sync when it still runs (then it says so).
READ_BACK_WAIT_S = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str


@dataclass
class FailoverPlan:
    service_offering_id: str = ""
    template_id: str = ""
    zone_id: str = ""
    # (network id, static ip or "", mac or "") per NIC, in VMware NIC order
    nics: list[list[str]] = field(default_factory=list)
    target_vm_name: str = ""

    def to_params(self) -> dict[str, Any]:
        return {
            "service_offering_id": self.service_offering_id,
            "template_id": self.template_id,
            "zone_id": self.zone_id,
            "nics": self.nics,
        }


@dataclass
class Readiness:
    checks: list[Check]
    plan: FailoverPlan

    @property
    def ready(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def refuse(self, vm_name: str, vm_context_id: str) -> FailedPrecondition:
        """FAILED_PRECONDITION naming each failed check (message, ErrorInfo metadata, PreconditionFailure)."""
        failed = self.failed
        text = "; ".join(f"{c.name}: {c.reason}" for c in failed)
        metadata: dict[str, str] = {f"check_{c.name}": c.reason for c in failed}
        error = FailedPrecondition(
            f"VM {vm_name} is not ready for failover — {text}",
            reason="FAILOVER_NOT_READY",
            violations=[Violation("READINESS_CHECK", c.name, c.reason) for c in failed],
            vm_context_id=vm_context_id,
            failed_checks=",".join(c.name for c in failed),
        )
        error.metadata.update(metadata)
        return error


_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


def target_vm_name(vm_name: str, kind: FailoverKind, now: datetime) -> str:
    """A CloudStack host name: `<name>` (live) or `<name>-test-<UTC timestamp>` (test); letters, digits, '-'."""
    base = _HOSTNAME_BAD.sub("-", vm_name.lower()).strip("-") or "vm"
    if kind == FailoverKind.TEST:
        suffix = f"-test-{now.strftime('%Y%m%d%H%M%S')}"
        return f"{base[: 63 - len(suffix)].rstrip('-')}{suffix}"
    return base[:63].rstrip("-")


@dataclass(frozen=True)
class _DbFacts:
    vm: VmContext
    disks: list[tuple[Disk, Volume | None]]
    latest_replication: ReplicationJob | None
    open_failover_id: str
    mappings: dict[str, Any]


def _db_facts(vm_context_id: str) -> _DbFacts | None:
    vm = VmContext.get_or_none(VmContext.id == vm_context_id)
    if vm is None:
        return None
    disks = list(Disk.select().where(Disk.vm_context == vm_context_id).order_by(Disk.unit_number, Disk.key))
    latest = (
        ReplicationJob.select()
        .where(ReplicationJob.vm_context == vm_context_id)
        .order_by(ReplicationJob.created_at.desc(), ReplicationJob.id.desc())
        .first()
    )
    open_failover = open_failover_of(vm_context_id)
    return _DbFacts(
        vm=vm,
        disks=[(d, current_volume(d.id)) for d in disks],
        latest_replication=latest,
        open_failover_id=open_failover.id if open_failover else "",
        mappings=resolve_mappings(vm_context_id),
    )


def _gib(size_bytes: int) -> str:
    return f"{size_bytes / 1024**3:.1f} GiB"


def _add(add: Callable[[str, bool, str], None], check: Check) -> None:
    add(check.name, check.passed, check.reason)


def _vm_ready(status: VmStatus) -> Check:
    if status == VmStatus.READY_FOR_FAILOVER:
        return Check("vm_ready", True, "VM context is ready_for_failover")
    what_to_do = {
        VmStatus.FAILED_OVER_TEST: "clean up the test failover first (CleanupFailover)",
        VmStatus.FAILED_OVER_LIVE: "it is already failed over (RollbackFailover to undo)",
        VmStatus.CLEANUP_REQUIRED: "a failover failed; run CleanupFailover first",
        VmStatus.REPLICATING: "wait for the replication to finish",
    }.get(status, "complete a replication first")
    return Check("vm_ready", False, f"VM context is {status.value}; " + what_to_do)


def _replication_completed(facts: _DbFacts) -> Check:
    latest = facts.latest_replication
    if latest is None or not facts.vm.last_completed_job_id:
        return Check("replication_completed", False, "no replication of this VM has completed; run StartReplication")
    if latest.status != "completed":
        return Check(
            "replication_completed",
            False,
            f"the last replication job {latest.id} is {latest.status}"
            + (f" ({latest.error_message})" if latest.error_message else "")
            + "; run an incremental replication and let it complete",
        )
    return Check("replication_completed", True, f"last replication job {latest.id} ({latest.kind}) completed")


def _disks_replicated(facts: _DbFacts) -> Check:
    missing_volume = [d.key for d, v in facts.disks if v is None or not v.cloudstack_id]
    missing_cid = [d.key for d, _ in facts.disks if not d.last_change_id]
    if not facts.disks:
        return Check("disks_replicated", False, "the VM has no disks")
    if missing_volume or missing_cid:
        parts = []
        if missing_volume:
            parts.append(f"disk(s) {missing_volume} have no replica volume")
        if missing_cid:
            parts.append(f"disk(s) {missing_cid} have no change id")
        return Check("disks_replicated", False, "; ".join(parts) + "; run a replication of this VM to completion")
    return Check("disks_replicated", True, f"{len(facts.disks)} disk(s), each with a volume and a change id")


def _template_check(templates: list[Template], configured: str, zone_id: str, plan: FailoverPlan) -> Check:
    chosen = failover_template(templates, configured)
    if chosen is not None:
        plan.template_id = chosen.id
        return Check("template_exists", True, f"template {chosen.name} ({chosen.id})")
    if configured:
        return Check(
            "template_exists",
            False,
            f"template {configured!r} (--failover-template) is not a ready template in zone {zone_id}",
        )
    return Check(
        "template_exists",
        False,
        f"zone {zone_id} has {sum(t.is_ready for t in templates)} ready templates; choose one with "
        "--failover-template (its root disk is replaced by the VM's OS disk)",
    )


def _offering_check(
    offerings: list[ServiceOffering], offering_id: str, cpus: int, memory_mib: int, plan: FailoverPlan
) -> Check:
    """The offering asked for (it must fit the VM), or the smallest that fits."""
    if offering_id:
        match = [o for o in offerings if o.id == offering_id]
        if not match:
            return Check("service_offering", False, f"service offering {offering_id} does not exist")
        o = match[0]
        fits = (o.cpu_number or 0) >= cpus and (o.memory_mib or 0) >= memory_mib
        if fits:
            plan.service_offering_id = o.id
        return Check(
            "service_offering",
            fits,
            f"offering {o.name}: {o.cpu_number} CPU(s), {o.memory_mib} MiB"
            + ("" if fits else f"; the VM needs {cpus} CPU(s) and {memory_mib} MiB"),
        )
    picked = pick_offering(offerings, cpus, memory_mib)
    if picked is None:
        return Check(
            "service_offering",
            False,
            f"no service offering has {cpus} CPU(s) and {memory_mib} MiB; create one or pass service_offering_id",
        )
    plan.service_offering_id = picked.id
    return Check(
        "service_offering",
        True,
        f"offering {picked.name} ({picked.cpu_number} CPU(s), {picked.memory_mib} MiB) fits "
        f"{cpus} CPU(s), {memory_mib} MiB",
    )


def _network_check(facts: _DbFacts, networks: dict[str, Network], plan: FailoverPlan) -> Check:
    """Every VMware NIC's network mapped to an existing CloudStack network; the plan's NICs in VMware order."""
    nics = list(facts.vm.nics or [])
    problems: list[str] = []
    used_ips: set[str] = set()
    for nic in nics:
        source = str(nic.get("network_name", ""))
        mapping = facts.mappings.get(source)
        if mapping is None:
            problems.append(f"VMware network {source!r} is not mapped (CreateNetworkMapping)")
            continue
        if mapping.target_network_id not in networks:
            problems.append(
                f"VMware network {source!r} is mapped to CloudStack network {mapping.target_network_id}, "
                "which does not exist"
            )
            continue
        ip = mapping.static_ip if mapping.static_ip not in used_ips else ""
        if mapping.static_ip and mapping.static_ip in used_ips:
            problems.append(f"static IP {mapping.static_ip} of network {source!r} would be used by two NICs")
        used_ips.add(ip)
        mac = str(nic.get("mac_address", "")) if mapping.keep_mac else ""
        plan.nics.append([mapping.target_network_id, ip, mac])
    if not nics:
        problems.append("the VM has no NICs; CloudStack needs at least one network")
    if problems:
        return Check("networks_mapped", False, "; ".join(problems))
    mapped = ", ".join(
        f"{n.get('network_name')} → {networks[p[0]].name}" for n, p in zip(nics, plan.nics, strict=False)
    )
    return Check("networks_mapped", True, mapped)


def pick_offering(offerings: list[ServiceOffering], cpus: int, memory_mib: int) -> ServiceOffering | None:
    """The smallest fixed offering with at least the VM's CPUs and memory."""
    fits = [
        o
        for o in offerings
        if not o.is_customized and (o.cpu_number or 0) >= cpus and (o.memory_mib or 0) >= memory_mib
    ]
    return min(fits, key=lambda o: (o.cpu_number or 0, o.memory_mib or 0), default=None)


class ReadinessChecker:
    def __init__(
        self,
        db: Database,
        cloudstack: CloudStackClient,
        replication_jobs: ReplicationJobStore,
        appliance_connected: Callable[[str], Awaitable[bool]],
        failover_template: str = "",
        limits: CloudLimits | None = None,
        read_back: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """`read_back(job_id)` waits until a finished job's replicas were read back and released
        (ReplicationWorkflow.settled): a failover asked for right after a sync waits for that sync's read-back."""
        self.read_back = read_back
        self.db = db
        self.cloudstack = cloudstack
        self.limits = limits or CloudLimits(cloudstack)
        self.replication_jobs = replication_jobs
        self.appliance_connected = appliance_connected
        self.failover_template = failover_template

    async def check(
        self,
        vm_context_id: str,
        kind: FailoverKind,
        *,
        service_offering_id: str = "",
        own_job_id: str = "",
        target_name: str = "",
        now: datetime | None = None,
    ) -> Readiness:
        """Every check; `own_job_id` is the failover job running the check (not counted as another active job)."""
        facts = await self.db.run(_db_facts, vm_context_id)
        if facts is None:
            raise NotFound(
                f"VM context {vm_context_id} does not exist", reason="VM_CONTEXT_NOT_FOUND", vm_context_id=vm_context_id
            )
        vm = facts.vm
        checks: list[Check] = []
        plan = FailoverPlan(target_vm_name=target_name or target_vm_name(vm.name, kind, now or datetime.now(UTC)))

        def add(name: str, passed: bool, reason: str) -> None:
            checks.append(Check(name, passed, reason))

        # --- the VM context and its replication
        checks.append(_vm_ready(VmStatus(vm.status)))
        checks.append(_replication_completed(facts))
        open_replication = [j.id for j in self.replication_jobs.open_jobs() if j.vm_context_id == vm_context_id]
        active = [j for j in (*open_replication, facts.open_failover_id, vm.active_job_id) if j and j != own_job_id]
        add(
            "no_active_job",
            not active,
            f"job {active[0]} is active on this VM; wait for it or cancel it" if active else "no other job is active",
        )
        checks.append(_disks_replicated(facts))
        await self._verified_check(vm_context_id, vm.last_completed_job_id, len(facts.disks), add)

        # --- CloudStack
        try:
            await self._cloudstack_checks(facts, kind, service_offering_id, plan, add)
        except CloudStackError as exc:
            add("cloudstack_reachable", False, f"{exc.message}; check the CloudStack endpoint and retry")

        if kind == FailoverKind.LIVE:
            connected = await self.appliance_connected(vm.appliance_id)
            add(
                "appliance_connected",
                connected,
                f"appliance {vm.appliance_id} is connected"
                if connected
                else f"appliance {vm.appliance_id} is not connected; the source VM cannot be powered off — "
                "start or reconnect the VMA",
            )
        return Readiness(checks, plan)

    async def _verified_check(
        self, vm_context_id: str, last_job_id: str, disks: int, add: Callable[[str, bool, str], None]
    ) -> None:
        """Every replica read back and hashed at its disk's current change id (the integrity gate). A read-back
        still running for the VM's last sync is waited for, at most READ_BACK_WAIT_S."""
        unverified = await self.db.run(unverified_disks, vm_context_id)
        if unverified and last_job_id and self.read_back is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READ_BACK_WAIT_S):
                    await self.read_back(last_job_id)
            unverified = await self.db.run(unverified_disks, vm_context_id)
        if unverified:
            add("replicas_verified", False, describe(unverified))
        elif disks:
            add("replicas_verified", True, f"{disks} replica(s) read back and hashed at their current change id")

    async def _cloudstack_checks(
        self,
        facts: _DbFacts,
        kind: FailoverKind,
        service_offering_id: str,
        plan: FailoverPlan,
        add: Callable[[str, bool, str], None],
    ) -> None:
        vm = facts.vm
        cs = self.cloudstack
        zone_id = await cs.zone_id()
        zones = [z for z in await cs.list_zones() if z.id == zone_id]
        add("zone_exists", bool(zones), f"zone {zones[0].name} ({zone_id})" if zones else f"zone {zone_id} is gone")
        plan.zone_id = zone_id
        templates = await cs.list_templates(zone_id=zone_id)
        _add(add, _template_check(templates, self.failover_template, zone_id, plan))
        offerings = await cs.list_service_offerings()
        _add(add, _offering_check(offerings, service_offering_id, vm.num_cpus, vm.memory_mib, plan))
        networks = {n.id: n for n in await cs.list_networks(zone_id=zone_id)}
        _add(add, _network_check(facts, networks, plan))
        wanted = {v.cloudstack_id for _, v in facts.disks if v is not None and v.cloudstack_id}
        if wanted:
            present = {v.id for v in await cs.list_volumes() if v.id in wanted}
            missing = sorted(wanted - present)
            add(
                "volumes_exist",
                not missing,
                f"CloudStack volume(s) {missing} are gone; replicate the VM again"
                if missing
                else "replica volumes exist",
            )
        await self._size_check(facts, add)
        taken = [v for v in await cs.list_vms(name=plan.target_vm_name) if v.name == plan.target_vm_name]
        add(
            "target_name_available",
            not taken,
            f"CloudStack VM {taken[0].id} is already named {plan.target_vm_name}; rename or remove it"
            if taken
            else f"target VM name {plan.target_vm_name} is free",
        )

    async def _size_check(self, facts: _DbFacts, add: Callable[[str, bool, str], None]) -> None:
        sizes = await self.limits.volume_sizes()
        problems = [f"disk {d.key}: {p}" for d, _ in facts.disks if (p := sizes.problem(d.capacity_bytes))]
        largest = max((d.capacity_bytes for d, _ in facts.disks), default=0)
        add(
            "disk_sizes",
            not problems,
            "; ".join(problems)
            if problems
            else f"every disk fits this CloudStack's volume limits (largest {_gib(largest)}, volumes up to "
            f"{sizes.max_gib} GB)",
        )
