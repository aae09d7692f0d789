"""The workflow kill -9 harness: SIGKILLs at seeded points of the whole migration flow, real processes only (issue #10).

Every run builds a world of its own — `oma-cloudstack-sim` as its own process, `oma-server` on it (SQLite, or a
fresh PostgreSQL database), the reference agent `vma-agent run` with a VM of two disks in its fake vCenter — and an
operator (tests/harness/operator.py) drives the VM through the public gRPC API:

    initial replication → guest writes → incremental → test failover → cleanup → guest writes
    → live failover (power-off, final sync, deploy) → rollback (power the source on)

Chosen by the seed, one victim dies by SIGKILL at one point of one phase: `oma-server` (with the NBD server it
runs: a host crash), `vma-agent`, or the CloudStack simulator (an outage of 0.5 to 5 s before it comes back on the same
state). The point is a delay into the phase, or the moment the API shows a job status, a share of the bytes copied,
a failover step begun, or a job-log entry (a CloudStack call, a device found, an export created). Sometimes a second
victim dies during the recovery of the first. The victim restarts; the operator carries on as a person would (a
failed failover is cleaned up or rolled back and tried again; a failed replication is started again) within bounded
time. Then one more guest write and incremental (no kills) shows the recorded change ids still hold, and the run
must end consistent (tests/harness/consistency.py): every job final, every replica byte-identical to its source, no
orphan volume, snapshot, VM, export or VMware snapshot. An inconsistent run prints its seed, kill points and what
differed, and keeps its directory (every process's log) for a look.

    python -m tests.harness.workflow_kills --runs 50 [--database postgresql://USER:PASS@HOST/DB | --postgres]

is the soak (its figure is in the README); `make test` runs a few seeds (tests/test_workflow_kill_harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.failover.state_machine import STEPS, FailoverKind
from tests.clients import ca_file
from tests.conftest import VENV_BIN
from tests.harness import consistency
from tests.harness.oma_process import OmaProcess
from tests.harness.operator import Operator, Stuck, View, replication_status
from tests.harness.victims import AgentProcess, CloudStackProcess

PHASES = ("initial", "incremental", "test_failover", "cleanup", "live_failover", "rollback")
VICTIMS = ("oma-server", "vma-agent", "cloudstack")
DISKS_MIB = (24, 8)
GUEST_WRITE_PERCENT = 10
RUN_DEADLINE_S = 240.0
AGENT_FLAGS = ("--report-interval", "0.1", "--max-rate-mib", "48")
OMA_FLAGS = ("--progress-flush-interval", "0.1", "--heartbeat-interval", "2")

# Points in each phase, as the API shows them: (what, value). "status": the phase's replication job has reached
# that status; "progress": that share of its bytes is copied; "step": the failover job began that step; "log": a job
# of the phase logged that step (a CloudStack call, a device found, an export created, a command queued).
_COPY: list[tuple[str, str | float]] = [
    ("status", "provisioning"),
    ("status", "waiting_for_vma"),
    ("status", "replicating"),
    ("progress", 0.5),
]
POINTS: dict[str, list[tuple[str, str | float]]] = {
    "initial": [
        *_COPY,
        ("progress", 0.2),
        ("progress", 0.9),
        *[("log", s) for s in ("create_volume", "attach_volume", "find_device", "create_export", "command_vma")],
        ("log", "disk_completed"),
    ],
    # A replica is attached (and exported) for each job and released when it ends.
    "incremental": [
        *_COPY,
        *[("log", s) for s in ("attach_volume", "find_device", "command_vma", "disk_completed", "release_volumes")],
    ],
    "test_failover": [
        *[("step", s) for s in STEPS[FailoverKind.TEST]],
        *[("log", s) for s in ("create_snapshot", "deploy_vm", "attach_volume")],
    ],
    "cleanup": [
        *[("step", s) for s in STEPS[FailoverKind.CLEANUP]],
        *[("log", s) for s in ("revert_snapshot", "delete_snapshot", "destroy_vm")],
    ],
    "live_failover": [
        *[("step", s) for s in STEPS[FailoverKind.LIVE]],
        ("status", "replicating"),  # of the final sync
        ("log", "deploy_vm"),
    ],
    "rollback": [*[("step", s) for s in STEPS[FailoverKind.ROLLBACK]], ("log", "revert_snapshot")],
}
# How long each phase takes here when nothing dies (a fault-free run, 2 cores): delays are drawn from [0, this).
PHASE_SPAN_S = {
    "initial": 2.0,
    "incremental": 0.6,
    "test_failover": 1.0,
    "cleanup": 0.9,
    "live_failover": 2.3,
    "rollback": 1.1,
}
_RANK = ("pending", "provisioning", "waiting_for_vma", "replicating", "stalled", "completing")


# ---- the plan of a run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kill:
    victim: str
    outage_s: float  # CloudStack only: how long it stays down

    def describe(self) -> str:
        return f"{self.victim}" + (f" (down {self.outage_s:.1f}s)" if self.victim == "cloudstack" else "")


@dataclass(frozen=True)
class Plan:
    seed: int
    phase: str
    point: tuple[str, str | float]  # ("delay", seconds) or one of POINTS[phase]
    first: Kill | None  # None: the fault-free run of the same seed (the baseline)
    second: Kill | None
    second_after_s: float  # after the first victim is back

    @classmethod
    def from_seed(cls, seed: int) -> Plan:
        rng = random.Random(seed)
        phase = rng.choice(PHASES)
        delay = ("delay", round(rng.uniform(0, PHASE_SPAN_S[phase]), 2))
        point: tuple[str, str | float] = delay if rng.random() < 0.3 else rng.choice(POINTS[phase])

        def kill() -> Kill:
            return Kill(rng.choice(VICTIMS), round(rng.uniform(0.5, 5.0), 2))

        first = kill()
        second = kill() if rng.random() < 0.3 else None
        return cls(seed, phase, point, first, second, round(rng.uniform(0.0, 1.5), 2))

    def without_kills(self) -> Plan:
        return Plan(self.seed, self.phase, self.point, None, None, 0.0)

    def describe(self) -> str:
        if self.first is None:
            return f"seed {self.seed}: no kill (fault-free)"
        what, value = self.point
        at = f"{value}s into" if what == "delay" else f"at {what} {value} of"
        text = f"seed {self.seed}: SIGKILL {self.first.describe()} {at} {self.phase}"
        if self.second is not None:
            text += f", then {self.second.describe()} {self.second_after_s}s after it was back"
        return text


def seeds_covering(count: int, first: int = 0, victims: tuple[str, ...] = VICTIMS) -> list[int]:
    """`count` seeds from `first` on whose plans kill first each of `victims` and, once, a second victim too (a
    small run that still tries each kind of death)."""
    chosen: list[int] = []
    seen: set[str] = set()
    doubled = False
    seed = first
    while len(chosen) < count:
        plan = Plan.from_seed(seed)
        assert plan.first is not None
        if plan.first.victim in victims:
            new_victim = plan.first.victim not in seen
            new_double = plan.second is not None and not doubled
            if new_victim or new_double or (seen >= set(victims) and doubled):
                chosen.append(seed)
                seen.add(plan.first.victim)
                doubled = doubled or plan.second is not None
        seed += 1
    return chosen


# ---- one world --------------------------------------------------------------------------------------------------
class Tracker:
    """Which phase the operator is in, since when, and which jobs existed before it (the phase's jobs are new)."""

    def __init__(self) -> None:
        self.phase = ""
        self.started = 0.0
        self.old_jobs: set[str] = set()
        self.finished: list[str] = []

    def enter(self, phase: str, view: View) -> None:
        if self.phase:
            self.finished.append(self.phase)
        self.phase = phase
        self.started = time.monotonic()
        self.old_jobs = {j.id for j in view.replications} | {j.id for j in view.failovers}


@dataclass
class Run:
    plan: Plan
    root: Path
    database_url: str
    cloudstack: CloudStackProcess | None = None
    oma: OmaProcess | None = None
    agent: AgentProcess | None = None
    vm_name: str = ""
    vm_id: str = ""
    tracker: Tracker = field(default_factory=Tracker)
    kills: list[tuple[str, str]] = field(default_factory=list)  # (victim, phase) as they happened
    points: list[str] = field(default_factory=list)  # where each kill landed, as seen
    problems: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def vcenter(self) -> Path:
        return self.root / "vcenter"

    # ---- processes ----------------------------------------------------------------------------------------------
    def start_world(self) -> None:
        self.cloudstack = CloudStackProcess(self.root / "cloudstack", self.root / "cloudstack.log")
        self.cloudstack.start()
        self.oma = OmaProcess(
            self.root / "oma",
            self.database_url,
            "--cloudstack",
            self.cloudstack.url,
            "--device-root",
            str(self.cloudstack.device_root),
            "--sys-root",
            str(self.cloudstack.sys_root),
            *OMA_FLAGS,
            env=self.cloudstack.oma_environment(),
        )
        self.oma.start()

    def stop_world(self) -> None:
        for proc in (self.agent, self.oma, self.cloudstack):
            if proc is not None:
                proc.stop()

    def _kill_and_restart(self, kill: Kill) -> None:
        assert self.oma is not None and self.agent is not None and self.cloudstack is not None
        if kill.victim == "oma-server":
            self.oma.restart_after_kill()
        elif kill.victim == "vma-agent":
            self.agent.kill()
            self.agent.start()
        else:
            self.cloudstack.kill()
            time.sleep(kill.outage_s)  # the outage: CloudStack is unreachable meanwhile
            self.cloudstack.start()

    async def enroll_and_discover(self) -> None:
        assert self.oma is not None and self.cloudstack is not None
        self.vm_name = f"wk-{self.plan.seed}"
        async with self.oma.channel() as channel:
            appliances = appliance_pb2_grpc.ApplianceServiceStub(channel)
            enrolled = await appliances.EnrollAppliance(appliance_pb2.EnrollApplianceRequest(name="vma-harness"))
            credential = self.root / "vma-credential"
            credential.write_text(enrolled.credential)
            credential.chmod(0o600)
            sizes = [a for mib in DISKS_MIB for a in ("--disk-mib", str(mib))]
            await self.agent_cli("create-vm", "--name", self.vm_name, "--seed", str(self.plan.seed), *sizes)
            appliance_id = enrolled.appliance.id
            log = self.root / "vma-agent.log"
            self.agent = AgentProcess(
                self.oma.address, appliance_id, credential, self.vcenter, self.root / "vma", log, *AGENT_FLAGS,
                "--ca", str(self.agent_ca()),
            )  # fmt: skip
            self.agent.start()
            deadline = time.monotonic() + 30
            connected = appliance_pb2.CONNECTION_STATE_CONNECTED
            while (
                await appliances.GetAppliance(appliance_pb2.GetApplianceRequest(id=appliance_id))
            ).appliance.connection_state != connected:
                if time.monotonic() > deadline:
                    raise AssertionError("the agent did not connect within 30s")
                await asyncio.sleep(0.05)
            found = await vm_context_pb2_grpc.VmContextServiceStub(channel).DiscoverVms(
                vm_context_pb2.DiscoverVmsRequest(appliance_id=appliance_id, name_filter=self.vm_name, register=True)
            )
            self.vm_id = found.vm_contexts[0].id
            api = consistency.cloudstack_api(self.cloudstack.url, *self.cloudstack.keys)
            networks = await asyncio.to_thread(api.listNetworks, fetch_list=True)
            network = next(n["id"] for n in networks if n["name"] == "guest-net-1")
            await failover_pb2_grpc.NetworkMappingServiceStub(channel).CreateNetworkMapping(
                failover_pb2.CreateNetworkMappingRequest(
                    mapping=failover_pb2.NetworkMapping(
                        vm_context_id=self.vm_id, source_network="VM Network", target_network_id=network
                    )
                )
            )

    def agent_ca(self) -> Path:
        """The OMA's CA as the appliance keeps it: a copy on its own host, not a path into the OMA's data dir (a
        "host crash" of the OMA kills every process whose command line names that dir)."""
        assert self.oma is not None
        copy = self.root / "vma-oma-ca.crt"
        shutil.copyfile(ca_file(self.oma.data_dir), copy)
        return copy

    async def agent_cli(self, command: str, *args: str) -> None:
        """`vma-agent COMMAND --vcenter-dir ... ARGS` (the fake vCenter's own tools)."""
        cmd = [str(VENV_BIN / "vma-agent"), command, "--vcenter-dir", str(self.vcenter), *args]
        await asyncio.to_thread(subprocess.run, cmd, check=True, capture_output=True)

    async def guest_write(self, percent: float, salt: int) -> None:
        seed = str(self.plan.seed * 100 + salt)
        await self.agent_cli("guest-write", "--vm", self.vm_name, "--percent", str(percent), "--seed", seed)

    # ---- the kills ----------------------------------------------------------------------------------------------
    async def _point_reached(self, operator: Operator) -> str:
        """'' until the planned point is reached in the planned phase; then what was seen there."""
        plan, tracker = self.plan, self.tracker
        if tracker.phase != plan.phase:
            missed = plan.phase in tracker.finished
            return f"end of {plan.phase} ({plan.point[0]} {plan.point[1]} not seen)" if missed else ""
        what, value = plan.point
        if what == "delay":
            elapsed = time.monotonic() - tracker.started
            return f"{elapsed:.2f}s into {plan.phase}" if elapsed >= float(value) else ""
        view = await operator.view()
        replications = [j for j in view.replications if j.id not in tracker.old_jobs]
        failovers = [j for j in view.failovers if j.id not in tracker.old_jobs]
        if what in ("status", "progress") and replications:
            copy = replications[0]
            status = replication_status(copy.status)
            if what == "status":
                reached = status not in _RANK or _RANK.index(status) >= _RANK.index(str(value))
            else:
                reached = copy.percent >= 100 * float(value) or status not in _RANK
            return f"replication {copy.id} {status} at {copy.percent:.0f}% in {plan.phase}" if reached else ""
        if what == "step" and failovers:
            job = failovers[0]
            names = [s.name for s in job.steps]
            begun = [s.name for s in job.steps if s.started_at.seconds or s.attempts]
            if value in begun or (value in names and begun and names.index(begun[-1]) > names.index(str(value))):
                return f"{plan.phase} job {job.id} at step {job.current_step or begun[-1]}"
            if job.status in (failover_pb2.FAILOVER_JOB_STATUS_COMPLETED, failover_pb2.FAILOVER_JOB_STATUS_FAILED):
                return f"{plan.phase} job {job.id} ended before step {value}"
        if what == "log":
            for job_id in [j.id for j in failovers] + [j.id for j in replications]:
                if any(e.step == value for e in await operator.job_log(job_id)):
                    return f"job {job_id} logged {value} in {plan.phase}"
        return ""

    async def killer(self, operator: Operator) -> None:
        if self.plan.first is None:
            return
        while True:
            try:
                seen = await self._point_reached(operator)
            except grpc.aio.AioRpcError:
                seen = ""
            if seen:
                break
            await asyncio.sleep(0.02)
        self.points.append(seen)
        await self._kill(self.plan.first)
        if self.plan.second is not None:
            await asyncio.sleep(self.plan.second_after_s)
            self.points.append(f"{self.plan.second_after_s}s after the first victim was back")
            await self._kill(self.plan.second)

    async def _kill(self, kill: Kill) -> None:
        self.kills.append((kill.victim, self.tracker.phase or "setup"))
        await asyncio.to_thread(self._kill_and_restart, kill)

    # ---- the run ------------------------------------------------------------------------------------------------
    def world(self, operator: Operator) -> consistency.World:
        """Where the consistency check looks."""
        assert self.oma is not None and self.cloudstack is not None
        return consistency.World(
            operator=operator,
            vm_name=self.vm_name,
            vcenter_dir=self.vcenter,
            cloudstack_url=self.cloudstack.url,
            cloudstack_keys=self.cloudstack.keys,
            cloudstack_state_dir=self.cloudstack.state_dir,
            oma_vm_id=self.cloudstack.oma_vm_id,
            nbd_port=self.oma.nbd_port,
        )

    async def execute(self) -> None:
        assert self.oma is not None
        deadline = time.monotonic() + RUN_DEADLINE_S
        await self.enroll_and_discover()
        async with Operator(self.oma.endpoint(), self.vm_id, deadline) as operator:
            self.actions = operator.actions
            killer = asyncio.create_task(self.killer(operator))
            try:
                for phase in PHASES:
                    if phase == "incremental":
                        await self.guest_write(GUEST_WRITE_PERCENT, 1)
                    if phase == "live_failover":
                        await self.guest_write(GUEST_WRITE_PERCENT, 2)
                    self.tracker.enter(phase, await operator.view())
                    await operator.run_phase(phase)
                self.tracker.enter("after", await operator.view())
                await asyncio.wait_for(killer, timeout=max(1.0, deadline - time.monotonic()))
                # No kills from here: the recorded change ids must still make a correct incremental.
                await self.guest_write(GUEST_WRITE_PERCENT / 2, 3)
                await operator.run_phase("verify")
                self.problems += await consistency.settled(self.world(operator))
            except Stuck as exc:
                self.problems.append(f"stuck: {exc}")
            finally:
                if not killer.done():
                    killer.cancel()


# ---- many runs ----------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    seed: int
    plan: Plan
    seconds: float
    problems: list[str]
    kills: list[tuple[str, str]]
    kept: Path | None
    actions: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems


@dataclass
class Soak:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.consistent]

    def kills_by(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {v: Counter() for v in VICTIMS}
        for outcome in self.outcomes:
            for victim, phase in outcome.kills:
                table[victim][phase] += 1
        return table

    def summary(self, elapsed_s: float) -> str:
        runs = len(self.outcomes)
        consistent = runs - len(self.failures)
        kills = self.kills_by()
        parts = []
        for victim in VICTIMS:
            phases = ", ".join(f"{p} {kills[victim][p]}" for p in (*PHASES, "after") if kills[victim][p])
            parts.append(f"{victim} {sum(kills[victim].values())} ({phases or '-'})")
        doubles = sum(1 for o in self.outcomes if len(o.kills) > 1)
        slowest = max((o.seconds for o in self.outcomes), default=0.0)
        return (
            f"{runs} runs in {elapsed_s:.0f}s: {consistent}/{runs} consistent; SIGKILLs by victim (phase): "
            f"{'; '.join(parts)}; {doubles} runs with a second kill; slowest run {slowest:.0f}s"
        )


def fresh_database(url: str) -> tuple[str, str]:
    """A new, empty PostgreSQL database on the server of `url` (whose user may create databases): (url, name)."""
    import psycopg2

    name = f"oma_wk_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment)), name


def drop_database(url: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


async def run_seed(seed: int, root: Path, database_url: str = "", *, kills: bool = True) -> Outcome:
    """One seeded run in a world of its own under `root`; its directory is removed when it ends consistent."""
    plan = Plan.from_seed(seed) if kills else Plan.from_seed(seed).without_kills()
    run_dir = root / f"seed-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    db_url, db_name = fresh_database(database_url) if database_url else ("", "")
    run = Run(plan, run_dir, db_url)
    started = time.monotonic()
    try:
        await asyncio.to_thread(run.start_world)
        await run.execute()
    except Exception as exc:
        run.problems.append(f"the run broke off: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    finally:
        await asyncio.to_thread(run.stop_world)
    kept = None
    if run.problems:
        kept = run_dir
        run.problems += [f"kill points seen: {run.points or ['none']}", "operator: " + " / ".join(run.actions)]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        if db_name:
            drop_database(database_url, db_name)
    return Outcome(seed, plan, time.monotonic() - started, run.problems, run.kills, kept, run.actions)


async def soak(seeds: Iterable[int], root: Path, database_url: str = "", echo: bool = False) -> Soak:
    result = Soak()
    for seed in seeds:
        outcome = await run_seed(seed, root, database_url)
        result.outcomes.append(outcome)
        if echo:
            mark = "consistent" if outcome.consistent else "INCONSISTENT"
            print(f"{outcome.plan.describe()}: {mark} in {outcome.seconds:.0f}s", flush=True)
            for problem in outcome.problems:
                print(f"    {problem}", flush=True)
            if outcome.kept:
                print(f"    logs and state kept in {outcome.kept}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--database", default="", help="postgresql://... whose user may create databases")
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL server (tests/pg.py)")
    parser.add_argument("--keep-dir", type=Path, default=None, help="where runs live (default: a temp dir)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    server = None
    database = args.database
    if args.postgres:
        from tests.pg import PostgresServer

        server = PostgresServer()
        server.start()
        database = server.url()
    root = args.keep_dir or Path(tempfile.mkdtemp(prefix="oma-workflow-kills-"))
    try:
        result = asyncio.run(soak(range(args.first_seed, args.first_seed + args.runs), root, database, echo=True))
    finally:
        if server is not None:
            server.stop()
    print(result.summary(time.monotonic() - started))
    if not result.failures and args.keep_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
