"""The stream fault harness: a misbehaving VMA against a real `oma-server` process, seeded, checked against the
fault-free run of the same script (issue #10).

Every run plays one replication job's script — started, absolute progress reports, a disk-completed event per disk
with its change id, completed — twice through the real API and the real stream, on two VMs of one appliance:
once as a well-behaved VMA (the fault-free run), once as a misbehaving one that, chosen by the seed,

- cuts the stream at random points, and right after events more often than not,
- sends duplicates, stale reports and progress reports out of order,
- sends an undecodable variant of a message first (unknown enum values, an absurd ETA, bytes beyond int64 or
  beyond the known total, an unknown disk) and the correct one after the StreamError,
- SIGKILLs the OMA between a message and its ack (and starts it again on the same data),
- opens watchers (WatchJob and WatchJobs) at random moments, which resume from their last revision after a cut.

After every reconnect it resends exactly what the Welcome cursor shows missing, as a VMA must. The run passes when
the job's final database state equals the fault-free run's and every watcher's last view equals it too.

`python -m tests.harness.stream_faults --runs 1000` is the soak (see the README); `make test` runs a few seeds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from oma.common.v1 import jobs_pb2
from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.db.database import Database
from oma_server.db.models import ChangeIdRecord, Disk, JobDisk, ReplicationJob, VmContext
from tests.factories import inventory
from tests.harness.oma_process import OmaProcess
from vma.v1 import stream_pb2

DISK_MIB = (4, 2)
RUN_DEADLINE_S = 60.0
COMPLETED_STATUS = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED


# ---- the script ----------------------------------------------------------------------------------------------------
def script(rng: random.Random, run: int) -> list[tuple[str, Any]]:
    """(kind, builder) per message; a builder takes (job_id, disk_ids, disk_totals) and returns the message."""
    sizes = [mib << 20 for mib in DISK_MIB]
    total = sum(sizes)
    reports = rng.randint(3, 10)
    done_at = sorted(rng.sample(range(1, reports + 1), len(sizes)))  # the report after which disk i is done
    steps: list[tuple[str, Any]] = [("event", lambda job, disks, seq: _started(job, seq))]
    copied = [0] * len(sizes)
    for r in range(1, reports + 1):
        for i in range(len(sizes)):
            target = sizes[i] if r >= done_at[i] else min(sizes[i], sizes[i] * r // (done_at[i] + 1))
            copied[i] = max(copied[i], target)
        snapshot = list(copied)
        steps.append(("progress", lambda job, disks, seq, s=snapshot: _progress(job, disks, seq, s, sizes, total)))
        for i in range(len(sizes)):
            if done_at[i] == r:
                change_id = f"cid-{run}-{i}"
                steps.append(("event", lambda job, disks, seq, i=i, c=change_id: _disk_done(job, disks[i], seq, c)))
    steps.append(("event", lambda job, disks, seq: _completed(job, seq)))
    return steps


def _started(job: str, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, sequence=seq, started=stream_pb2.JobStarted())


def _completed(job: str, seq: int) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, sequence=seq, completed=stream_pb2.JobCompleted())


def _disk_done(job: str, disk: str, seq: int, change_id: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(
        job_id=job,
        sequence=seq,
        disk_completed=stream_pb2.DiskCompleted(disk_id=disk, change_id=change_id, mode=jobs_pb2.COPY_MODE_FULL),
    )


def _progress(
    job: str, disks: list[str], seq: int, copied: list[int], sizes: list[int], total: int
) -> stream_pb2.ProgressReport:
    done = sum(copied)
    return stream_pb2.ProgressReport(
        job_id=job,
        sequence=seq,
        phase=jobs_pb2.COPY_PHASE_COPYING,
        current_operation=f"copied {done} of {total} bytes",
        bytes_done=done,
        bytes_total=total,
        throughput_bytes_per_second=1 << 20,
        disks=[
            stream_pb2.DiskProgress(
                disk_id=d,
                bytes_done=c,
                bytes_total=s,
                phase=jobs_pb2.COPY_PHASE_DONE if c == s else jobs_pb2.COPY_PHASE_COPYING,
                mode=jobs_pb2.COPY_MODE_FULL,
                resume_token=f"{d}:{c}",
            )
            for d, c, s in zip(disks, copied, sizes, strict=True)
        ],
    )


def spoiled(rng: random.Random, message: Any) -> Any:
    """A variant of `message` that the OMA must refuse whole (its sequence unchanged)."""
    bad = type(message)()
    bad.CopyFrom(message)
    if isinstance(bad, stream_pb2.ProgressReport):
        how = rng.choice(["disk_phase", "disk_mode", "phase", "eta", "int64", "over_total", "unknown_disk"])
        if how == "disk_phase":
            bad.disks[0].phase = 999  # type: ignore[assignment]
        elif how == "disk_mode":
            bad.disks[-1].mode = 77  # type: ignore[assignment]
        elif how == "phase":
            bad.phase = 123  # type: ignore[assignment]
        elif how == "eta":
            bad.eta.seconds = 2**62
        elif how == "int64":
            bad.bytes_total = 2**64 - 1
            bad.bytes_done = 2**63
        elif how == "over_total":
            bad.bytes_total = 0
            bad.bytes_done = 10 * sum(mib << 20 for mib in DISK_MIB)
        else:
            bad.disks[0].disk_id = "no-such-disk"
        bad.current_operation = "SPOILED"
        return bad
    if bad.WhichOneof("event") == "disk_completed":
        bad.disk_completed.mode = 55  # type: ignore[assignment]
        bad.disk_completed.change_id = "SPOILED"
        return bad
    return None  # started/completed carry nothing to spoil


# ---- the VMA side ------------------------------------------------------------------------------------------------
class Connection:
    """One stream of the harness's VMA: a reader records acks and errors and answers every command."""

    def __init__(self, channel: grpc.aio.Channel, appliance_id: str, credential: str) -> None:
        # The call's write API (not a request iterator): a cut is call.cancel(), with no generator left to close.
        self.call = gateway_pb2_grpc.VmaGatewayServiceStub(channel).Connect()
        self._writing = asyncio.Lock()
        self.appliance_id = appliance_id
        self.credential = credential
        self.acked: dict[str, int] = {}
        self.errors: list[stream_pb2.StreamError] = []
        self.changed = asyncio.Event()
        self.closed = False
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> stream_pb2.Welcome:
        await self.send("hello", stream_pb2.Hello(appliance_id=self.appliance_id, credential=self.credential))
        first = await asyncio.wait_for(self.call.read(), 10)
        if first == grpc.aio.EOF or first.WhichOneof("message") != "welcome":
            raise ConnectionError(f"no welcome: {first}")
        self._reader = asyncio.create_task(self._read())
        return first.welcome

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg == grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("message")
                if kind == "ack":
                    self.acked[msg.ack.job_id] = max(self.acked.get(msg.ack.job_id, 0), msg.ack.sequence)
                elif kind == "error":
                    self.errors.append(msg.error)
                elif kind == "command":
                    await self.send(
                        "command_result",
                        stream_pb2.CommandResult(
                            command_id=msg.command.command_id, outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED
                        ),
                    )
                self.changed.set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.closed = True
            self.changed.set()

    async def send(self, kind: str, message: Any) -> None:
        """Write one message; on a broken stream nothing happens (the caller notices by missing acks)."""
        async with self._writing:  # one write at a time: the reader answers commands meanwhile
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                await self.call.write(gateway_pb2.ConnectRequest(**{kind: message}))

    async def wait_ack(self, job_id: str, sequence: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.acked.get(job_id, 0) < sequence:
            if self.closed or time.monotonic() > deadline:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
        return True

    async def wait_error(self, timeout: float = 10.0) -> stream_pb2.StreamError | None:
        """The next StreamError (None when the stream closes or `timeout` passes first)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.errors:
                return self.errors.pop(0)
            if self.closed or time.monotonic() > deadline:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# ---- watchers ------------------------------------------------------------------------------------------------------
# Watchers share one channel that reconnects at once after an OMA restart, so a watch opened "now" reaches the
# server within a millisecond or two — inside the commit of the message just sent, often enough to matter.
WATCH_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 200)]


@dataclass
class Watcher:
    """Follows one job until it is final, resuming from its last revision after every cut; checks order, and that
    a WatchJob ends (OK) right after the final state while WatchJobs never ends on its own."""

    channel: grpc.aio.Channel
    job_id: str
    vm_context_id: str
    all_jobs: bool
    last_view: replication_pb2.ReplicationJob | None = None
    resume: int = 0  # the revision to resume from after a cut
    last_view_revision: int = 0
    violations: list[str] = field(default_factory=list)
    reconnects: int = 0

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._follow(self.channel), deadline - time.monotonic())
                if self._final():
                    return
            except TimeoutError:
                break
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.resume = 0  # compacted: re-list
                self.reconnects += 1
                await asyncio.sleep(0.05)
        self.violations.append("the watcher never saw the job final")

    async def _check_synced(self, synced: int) -> None:
        """SYNCED at N promises every change up to N was sent: if the job is now at a revision R <= N, this watcher
        must hold the job at R already."""
        api = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        job = (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=self.job_id), timeout=5)).job
        if job.revision <= synced and self.last_view_revision != job.revision:
            self.violations.append(
                f"SYNCED at {synced}, the job is at revision {job.revision}, the watcher holds revision "
                f"{self.last_view_revision}"
            )

    def _final(self) -> bool:
        return self.last_view is not None and self.last_view.status == COMPLETED_STATUS

    async def _follow(self, channel: grpc.aio.Channel) -> None:
        stub = job_pb2_grpc.JobServiceStub(channel)
        if self.all_jobs:
            call: Any = stub.WatchJobs(
                job_pb2.WatchJobsRequest(
                    vm_context_id=self.vm_context_id, from_revision=self.resume, include_finished=True
                )
            )
        else:
            call = stub.WatchJob(job_pb2.WatchJobRequest(job_id=self.job_id, from_revision=self.resume))
        last_change = 0
        synced = -1
        try:
            async for response in call:
                update = response.update
                if update.kind in (job_pb2.UPDATE_KIND_SYNCED, job_pb2.UPDATE_KIND_PROGRESS_NOTIFY):
                    if update.kind == job_pb2.UPDATE_KIND_SYNCED:
                        synced = update.revision
                        await self._check_synced(synced)
                    self.resume = max(self.resume, update.revision)
                    continue
                job = update.replication_job
                if update.kind == job_pb2.UPDATE_KIND_CHANGE:
                    if update.revision <= last_change:
                        self.violations.append(f"change at {update.revision} after one at {last_change}")
                    if update.revision <= synced:
                        self.violations.append(f"change at {update.revision} after SYNCED at {synced}")
                    last_change = update.revision
                    self.resume = max(self.resume, update.revision)
                elif not self.all_jobs:
                    self.resume = max(self.resume, update.revision)  # one job's snapshot revision is its resume point
                if job.id == self.job_id:
                    self.last_view = job
                    self.last_view_revision = update.revision
                    if job.status == COMPLETED_STATUS and self.all_jobs:
                        return  # WatchJobs never ends on its own: leave it
            # The stream ended with OK: only a WatchJob does, and only right after the job's final state.
            if self.all_jobs:
                self.violations.append("WatchJobs ended on its own")
            elif not self._final():
                self.violations.append("WatchJob ended before it sent the job's final state")
        finally:
            call.cancel()


# ---- one run --------------------------------------------------------------------------------------------------------
@dataclass
class Lane:
    vm_context_id: str
    disk_ids: list[str]


@dataclass
class Faults:
    cuts: int = 0
    kills: int = 0
    spoiled: int = 0
    duplicates: int = 0
    stale: int = 0
    swapped: int = 0
    watchers: int = 0


FAULT_KINDS = ("cut", "kill", "spoil", "duplicate", "stale", "swap", "watch")


@dataclass
class Harness:
    oma: OmaProcess
    enabled: frozenset[str] = frozenset(FAULT_KINDS)
    appliance_id: str = ""
    credential: str = ""
    lanes: tuple[Lane, Lane] | None = None
    totals: Faults = field(default_factory=Faults)
    failures: list[str] = field(default_factory=list)
    watch_channel: grpc.aio.Channel | None = None

    seed: int = 0

    @property
    def failed_runs(self) -> int:
        return len({f.split(":")[0] for f in self.failures})

    def fail(self, what: str) -> None:
        self.failures.append(f"seed {self.seed}: {what}")

    async def setup(self) -> None:
        self.watch_channel = self.oma.channel(WATCH_CHANNEL_OPTIONS)
        async with self.oma.channel() as channel:
            enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
                appliance_pb2.EnrollApplianceRequest(name="vma-harness")
            )
            self.appliance_id, self.credential = enrolled.appliance.id, enrolled.credential
        await self.new_lanes()

    async def new_lanes(self) -> None:
        """Two fresh VMs (after a failed run the old ones may still have its job active)."""
        async with self.oma.channel() as channel:
            lanes = []
            for name in ("clean", "faulty"):
                reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
                    vm_context_pb2.RegisterVmContextRequest(
                        appliance_id=self.appliance_id, virtual_machine=inventory(DISK_MIB, name=name)
                    )
                )
                disks = sorted(reply.vm_context.disks, key=lambda d: d.unit_number)
                lanes.append(Lane(reply.vm_context.id, [d.id for d in disks]))
            self.lanes = (lanes[0], lanes[1])

    async def _start_job(self, lane: Lane) -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with self.oma.channel() as channel:
                    api = replication_pb2_grpc.ReplicationServiceStub(channel)
                    job = (
                        await api.StartReplication(
                            replication_pb2.StartReplicationRequest(vm_context_id=lane.vm_context_id)
                        )
                    ).job
                    while job.status != replication_pb2.REPLICATION_JOB_STATUS_WAITING_FOR_VMA:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"job {job.id} never reached waiting_for_vma: {job}")
                        await asyncio.sleep(0.02)
                        job = (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job.id))).job
                    return job.id
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def run(self, seed: int) -> None:
        assert self.lanes is not None
        self.seed = seed
        rng = random.Random(seed)
        steps = script(rng, seed)
        clean_lane, faulty_lane = self.lanes
        clean_job = await self._start_job(clean_lane)
        await self._play_clean(clean_job, clean_lane, steps)
        faulty_job = await self._start_job(faulty_lane)
        watchers = await self._play_faulty(rng, faulty_job, faulty_lane, steps)
        expected = await self._final_state(clean_job, clean_lane)
        actual = await self._final_state(faulty_job, faulty_lane)
        if actual != expected:
            self.fail(f"final state differs\n  fault-free {expected}\n  with faults {actual}")
        for w in watchers:
            view = None if w.last_view is None else _normalize_view(w.last_view, faulty_lane)
            if view != actual["job"]:
                self.fail(f"a watcher's last view differs\n  db {actual['job']}\n  view {view}")
            for violation in w.violations:
                self.fail(f"watcher: {violation}")

    async def _play_clean(self, job_id: str, lane: Lane, steps: list[tuple[str, Any]]) -> None:
        async with self.oma.channel() as channel:
            conn = Connection(channel, self.appliance_id, self.credential)
            await conn.open()
            for seq, (kind, build) in enumerate(steps, start=1):
                await conn.send(kind, build(job_id, lane.disk_ids, seq))
            if not await conn.wait_ack(job_id, len(steps), 30):
                raise AssertionError(f"fault-free run of job {job_id} was not acked to {len(steps)}")
            await conn.close()

    async def _play_faulty(
        self, rng: random.Random, job_id: str, lane: Lane, steps: list[tuple[str, Any]]
    ) -> list[Watcher]:
        deadline = time.monotonic() + RUN_DEADLINE_S
        messages = [(kind, build(job_id, lane.disk_ids, seq)) for seq, (kind, build) in enumerate(steps, start=1)]
        last = len(messages)
        kills_left = 1 if rng.random() < 0.35 and "kill" in self.enabled else 0
        watchers: list[Watcher] = []
        watcher_tasks: list[asyncio.Task[None]] = []

        def spawn_watcher() -> None:
            assert self.watch_channel is not None
            w = Watcher(self.watch_channel, job_id, lane.vm_context_id, all_jobs=rng.random() < 0.5)
            watchers.append(w)
            watcher_tasks.append(asyncio.create_task(w.run(deadline)))
            self.totals.watchers += 1

        if rng.random() < 0.5 and "watch" in self.enabled:
            spawn_watcher()
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id}: the faulty VMA did not finish in {RUN_DEADLINE_S:.0f}s")
            try:
                async with self.oma.channel() as channel:
                    conn = Connection(channel, self.appliance_id, self.credential)
                    welcome = await conn.open()
                    cursors = {c.job_id: c.last_applied_sequence for c in welcome.open_jobs}
                    if job_id not in cursors:
                        await conn.close()
                        break  # the OMA holds the job final: nothing more to send
                    # The Welcome's cursor is the ack of what an earlier stream applied: nothing acks it again here.
                    conn.acked[job_id] = max(conn.acked.get(job_id, 0), cursors[job_id])
                    pending = [m for m in messages if m[1].sequence > cursors[job_id]]
                    outcome = await self._send_with_faults(rng, conn, job_id, pending, messages, spawn_watcher)
                    if outcome == "kill" and kills_left:
                        kills_left -= 1
                        self.totals.kills += 1
                        await asyncio.to_thread(self.oma.restart_after_kill)  # before its ack could arrive
                        await conn.close()
                        continue
                    if outcome == "done" and await conn.wait_ack(job_id, last, 15):
                        await conn.close()
                        break
                    await conn.close()
                    self.totals.cuts += 1
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError):
                await asyncio.sleep(0.05)
        if "watch" in self.enabled and (not watchers or rng.random() < 0.3):
            spawn_watcher()  # one opened after the end sees the final state from its snapshot
        await asyncio.gather(*watcher_tasks)
        return watchers

    async def _send_with_faults(
        self,
        rng: random.Random,
        conn: Connection,
        job_id: str,
        pending: list[tuple[str, Any]],
        messages: list[tuple[str, Any]],
        spawn_watcher: Any,
    ) -> str:
        """Send what is pending with faults; "cut" or "kill" when the stream should break here, "done" otherwise."""
        on = self.enabled
        i = 0
        while i < len(pending):
            kind, message = pending[i]
            if rng.random() < 0.15 and "spoil" in on and (bad := spoiled(rng, message)) is not None:
                # Everything before it applied (acked), so the view cannot move but by the refused message itself.
                if not await conn.wait_ack(job_id, message.sequence - 1, 10):
                    return "cut"
                before = await self._view(job_id)
                conn.errors.clear()
                await conn.send(kind, bad)
                self.totals.spoiled += 1
                refusal = await conn.wait_error()
                if refusal is None:
                    return "cut"  # no refusal arrived (the stream broke): start again from the cursor
                if (refusal.code, refusal.job_id, refusal.sequence) != (
                    stream_pb2.STREAM_ERROR_CODE_INVALID_MESSAGE,
                    job_id,
                    message.sequence,
                ):
                    self.fail(f"job {job_id}: the refusal of an undecodable message does not name it: {refusal}")
                after = await self._view(job_id)
                if after is not None and before is not None and _observable(after) != _observable(before):
                    self.fail(
                        f"job {job_id}: a refused message changed the job\n  before {_observable(before)}\n"
                        f"  after  {_observable(after)}"
                    )
            swap = (
                kind == "progress"
                and i + 1 < len(pending)
                and pending[i + 1][0] == "progress"
                and rng.random() < 0.15
                and "swap" in on
            )
            if swap:
                await conn.send(*pending[i + 1])  # the later report first: the earlier one is then stale
                self.totals.swapped += 1
            await conn.send(kind, message)
            if rng.random() < 0.1 and "duplicate" in on:
                await conn.send(kind, message)
                self.totals.duplicates += 1
            if kind == "progress" and rng.random() < 0.1 and "stale" in on:
                older = [m for m in messages if m[0] == "progress" and m[1].sequence < message.sequence]
                if older:
                    await conn.send(*rng.choice(older))
                    self.totals.stale += 1
            if rng.random() < (0.25 if kind == "event" else 0.05) and "watch" in on:
                await asyncio.sleep(rng.uniform(0, 0.003))
                spawn_watcher()  # right after an event: while its commit is in flight
            i += 2 if swap else 1
            if rng.random() < (0.3 if kind == "event" else 0.05) and ("cut" in on or "kill" in on):
                # A cut 0-4 ms after the send lands while the OMA applies (and commits) the message.
                await asyncio.sleep(rng.uniform(0, 0.004))
                return "kill" if rng.random() < 0.3 or "cut" not in on else "cut"
        return "done"

    async def _view(self, job_id: str) -> replication_pb2.ReplicationJob | None:
        """The job as the OMA's API shows it now (None if the OMA cannot be asked)."""
        try:
            async with self.oma.channel() as channel:
                api = replication_pb2_grpc.ReplicationServiceStub(channel)
                return (await api.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job_id), timeout=5)).job
        except grpc.aio.AioRpcError:
            return None

    async def _final_state(self, job_id: str, lane: Lane) -> dict[str, Any]:
        db = Database(self.oma.database_url or f"sqlite:///{self.oma.data_dir / 'oma.db'}")
        try:
            return await db.run(_read_final, job_id, lane)
        finally:
            db.close()


def _read_final(job_id: str, lane: Lane) -> dict[str, Any]:
    job = ReplicationJob.get_by_id(job_id)
    rows = {d.disk_id: d for d in JobDisk.select().where(JobDisk.job == job_id)}
    vm = VmContext.get_by_id(lane.vm_context_id)
    records = [
        sorted(
            r.change_id
            for r in ChangeIdRecord.select().where((ChangeIdRecord.job_id == job_id) & (ChangeIdRecord.disk == d))
        )
        for d in lane.disk_ids
    ]
    disks = {d.id: d for d in Disk.select().where(Disk.vm_context == lane.vm_context_id)}
    return {
        "job": (
            job.status,
            job.last_sequence,
            job.bytes_done,
            job.bytes_total,
            round(job.percent, 6),
            tuple(
                (rows[d].bytes_done, rows[d].bytes_total, rows[d].new_change_id, rows[d].completed)
                for d in lane.disk_ids
            ),
        ),
        "change_id_records": records,
        "vm": (vm.status, vm.last_completed_job_id == job_id, tuple(disks[d].last_change_id for d in lane.disk_ids)),
    }


def _observable(job: replication_pb2.ReplicationJob) -> tuple[Any, ...]:
    """What a refused message must not change (revision aside: nothing else may move it either, but a flush may)."""
    return (
        job.status,
        job.last_sequence,
        job.bytes_done,
        job.bytes_total,
        job.current_operation,
        round(job.percent, 6),
        job.eta.seconds,
        tuple(
            (d.disk_id, d.bytes_done, d.bytes_total, d.phase, d.mode, d.new_change_id, d.completed) for d in job.disks
        ),
    )


def _normalize_view(job: replication_pb2.ReplicationJob, lane: Lane) -> tuple[Any, ...]:
    by_id = {d.disk_id: d for d in job.disks}
    status = replication_pb2.ReplicationJobStatus.Name(job.status).removeprefix("REPLICATION_JOB_STATUS_").lower()
    return (
        status,
        job.last_sequence,
        job.bytes_done,
        job.bytes_total,
        round(job.percent, 6),
        tuple(
            (by_id[d].bytes_done, by_id[d].bytes_total, by_id[d].new_change_id, by_id[d].completed)
            for d in lane.disk_ids
        ),
    )


async def run_harness(
    root: Path, seeds: range, database_url: str = "", enabled: frozenset[str] = frozenset(FAULT_KINDS)
) -> Harness:
    oma = OmaProcess(root / "oma", database_url, "--progress-flush-interval", "0.05")
    oma.start()
    harness = Harness(oma, enabled)
    try:
        await harness.setup()
        for seed in seeds:
            try:
                await harness.run(seed)
            except Exception as exc:  # a stuck or refused run: record it, go on with fresh VMs
                harness.fail(f"{type(exc).__name__}: {exc}")
                await harness.new_lanes()
    finally:
        if harness.watch_channel is not None:
            await harness.watch_channel.close()
        oma.stop()
    return harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--database", default="", help="postgresql://... (default: SQLite in a temp dir)")
    parser.add_argument("--only", default=",".join(FAULT_KINDS), help="faults to inject (default: all)")
    args = parser.parse_args(argv)
    enabled = frozenset(args.only.split(","))
    if unknown := enabled - set(FAULT_KINDS):
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="oma-stream-faults-") as tmp:
        harness = asyncio.run(
            run_harness(Path(tmp), range(args.first_seed, args.first_seed + args.runs), args.database, enabled)
        )
    elapsed = time.monotonic() - started
    t = harness.totals
    print(
        f"{args.runs} runs in {elapsed:.0f}s: {args.runs - harness.failed_runs} "
        f"consistent; faults: {t.cuts} cuts, {t.kills} SIGKILLs, {t.spoiled} undecodable, {t.duplicates} duplicates, "
        f"{t.stale} stale, {t.swapped} out of order, {t.watchers} watchers"
    )
    for failure in harness.failures:
        print(failure)
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
