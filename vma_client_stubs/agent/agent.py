"""The reference VMA agent: obeys the OMA's commands over the stream and copies fake-vCenter disks into NBD exports.

Commands (registered on `StreamClient.on_command`):

- `start_replication`: accepted at once (SUCCEEDED); the job runs as a task: snapshot the VM (one snapshot for all
  disks, like VMware), plan each disk (no previous change id → full copy into a fresh volume; previous change id
  invalid or capacity different from the OMA's → full copy of that disk, holes zeroed, reason logged; otherwise the
  changed extents), then copy the disks in parallel — at most `CopyOptions.disks_per_job` of one job and
  `CopyOptions.copies_per_appliance` of all jobs at once, each disk over up to `CopyOptions.connections` NBD
  connections; progress stays exact per disk (each disk reports its own bytes and throughput). JobStarted, a progress
  report about every
  `report_interval_s`, DiskCompleted with the snapshot's change id per disk, JobCompleted; or JobFailed with a
  classified error naming the disk. The snapshot is removed when the job ends.
- `cancel_job`: stops the copy (in-flight writes drain) and answers with a JobCancelled event.
- `power_off` / `power_on`: sets the fake VM's power state, answers with a PowerResult.
- `discover`: answers with a DiscoveryResult of the VMs.
- `release_source`: CBT off on the VM's disks, the agent's snapshots of it deleted (source_commands.py).

Resume: every running job is a `JobRecord` in the state dir. Each report's resume tokens are remembered under its
sequence; when the OMA acks a sequence (JobAck, Welcome cursor, a start command's last_applied_sequence) that report's
tokens become the disk's acknowledged resume point. After a crash the agent resumes each unfinished disk from its
acknowledged point, reading the same snapshot, so nothing the OMA acknowledged is copied again. Across a reconnect the
copy simply continues; the StreamClient resends what the OMA did not ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2
from loguru import logger

from oma.common.v1 import jobs_pb2
from vma.v1 import agent_service_pb2, stream_pb2
from vma_client_stubs.agent.copier import (
    CopyCancelled,
    CopyError,
    CopyProgress,
    DiskCopier,
    InvalidResumeToken,
    Plan,
    ResumePoint,
    TargetTooSmall,
)
from vma_client_stubs.agent.extents import allocated_extents, coalesce
from vma_client_stubs.agent.jobstate import DiskRecord, JobRecord, JobStore
from vma_client_stubs.agent.source_commands import SNAPSHOT_DESCRIPTION_PREFIX, SourceCommands, rejected
from vma_client_stubs.agent.vcenter import (
    ChangeIdInvalid,
    DiskNotFound,
    FakeVCenter,
    Snapshot,
    SnapshotNotFound,
    VCenterError,
    VmNotFound,
)
from vma_client_stubs.connection import Endpoint
from vma_client_stubs.stream_client import StreamClient

CAPABILITIES = ("resume-from-extent", "cbt-incremental", "zero-skip", "copied-extents")
#: the most byte ranges a DiskCompleted may name (vma.v1.CopiedExtents)
MAX_COPIED_EXTENTS = 65_536


def agent_version() -> str:
    try:
        return metadata.version("oma-control-plane")
    except metadata.PackageNotFoundError:
        version_file = Path(__file__).resolve().parents[2] / "VERSION.txt"
        return version_file.read_text().strip() if version_file.is_file() else "0.0.0+unknown"


class JobFailure(Exception):
    """A job failed with a classified cause (a vma.v1.ErrorClass name suffix) concerning one disk or the job."""

    def __init__(self, error_class: str, detail: str, disk_id: str = "") -> None:
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail
        self.disk_id = disk_id


@dataclass
class CopyOptions:
    chunk_size: int = 2 << 20
    window: int = 8  # NBD requests in flight per connection
    connections: int = 4  # NBD connections per disk (when the export allows multi-conn)
    disks_per_job: int = 4  # disks of one job copied at once
    copies_per_appliance: int = 8  # disk copies of all jobs at once
    checkpoint_interval_s: float = 0.5
    max_bytes_per_second: float | None = None

    def __post_init__(self) -> None:
        for name in ("window", "connections", "disks_per_job", "copies_per_appliance"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class DiskRun:
    """One disk in the current run of a job: its plan and live figures."""

    target: stream_pb2.DiskTarget
    record: DiskRecord
    key: int = 0
    snapshot_path: Path | None = None
    plan: Plan | None = None
    fresh_target: bool = True
    mode: int = jobs_pb2.COPY_MODE_UNSPECIFIED
    phase: int = jobs_pb2.COPY_PHASE_PREPARING
    resume_from: int = 0
    progress: CopyProgress | None = None
    throughput: float = 0.0
    rate: tuple[float, int] | None = None  # (time, bytes done) at the previous report, for this disk's throughput
    bytes_written_run: int = 0  # data bytes written in this run of the job (this process)

    @property
    def total(self) -> int:
        return self.plan.total_bytes if self.plan is not None else self.record.bytes_total

    @property
    def done(self) -> int:
        if self.record.completed:
            return self.total
        if self.progress is not None:
            return self.progress.bytes_done
        return self.resume_from

    @property
    def token(self) -> str:
        if self.progress is not None:
            return self.progress.resume_token
        return self.record.acked_token


@dataclass
class JobRunner:
    record: JobRecord
    disks: list[DiskRun] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""  # "cancel" (the OMA asked) or "shutdown" (the agent stops; the job resumes later)
    phase: int = jobs_pb2.COPY_PHASE_PREPARING
    operation: str = "Preparing"
    latest: stream_pb2.ProgressReport | None = None
    started_at: float = field(default_factory=time.monotonic)
    rate: tuple[float, int] | None = None  # (time, bytes done) of the previous report, for throughput
    disk_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    copying: dict[str, str] = field(default_factory=dict)  # disk id -> "2000 (full)" while it copies
    peak_copying: int = 0  # most disks of this job copied at once in this run


class Agent:
    """A VMA: a StreamClient to the OMA, a fake vCenter, and the jobs it runs. `start()`, then `stop()`."""

    def __init__(
        self,
        *,
        oma: Endpoint,
        appliance_id: str,
        credential: str,
        vcenter: FakeVCenter,
        state_dir: Path,
        copy: CopyOptions | None = None,
        report_interval_s: float = 0.5,
        fsync: bool = True,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.vcenter = vcenter
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.copy_options = copy or CopyOptions()
        self.report_interval_s = report_interval_s
        self.appliance_id = appliance_id
        self.oma = oma
        self.version = agent_version()
        self.store = JobStore(self.state_dir, fsync=fsync)
        self.log = logger.bind(appliance_id=appliance_id)
        self.client = StreamClient(
            oma.target,
            appliance_id,
            credential,
            agent_version=self.version,
            capabilities=CAPABILITIES,
            state_dir=self.state_dir,
            running_jobs=self.running_job_ids,
            on_ack=self._on_ack,
            on_welcome=self._on_welcome,
            on_stream_error=self._on_stream_error,
            fsync=fsync,
            channel_credentials=oma.credentials(),
            **(client_options or {}),
        )
        self.client.on_command("start_replication", self._on_start)
        self.client.on_command("cancel_job", self._on_cancel)
        source = SourceCommands(self.vcenter, self.log)
        for kind in ("power_off", "power_on", "discover", "release_source"):
            self.client.on_command(kind, getattr(source, kind))
        self.jobs: dict[str, JobRunner] = {}
        self.records: dict[str, JobRecord] = {}
        self.connected_since: float | None = None
        self._message_locks: dict[str, asyncio.Lock] = {}
        self._save_locks: dict[str, asyncio.Lock] = {}
        self.resume_wait_s = 5.0  # how long a resumed job waits for the OMA's cursor before planning
        self._copy_slots = asyncio.Semaphore(self.copy_options.copies_per_appliance)
        self.copies_running = 0
        self.peak_copies = 0  # most disk copies of all jobs at once since start
        self._stopping = False

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load persisted jobs, start the stream, and resume every job that was running."""
        records = await asyncio.to_thread(self.store.load_all)
        # libnbd's binding loads in 70-100 ms from a cold page cache: pay that now, not in the first job's first byte.
        with contextlib.suppress(ImportError):
            await asyncio.to_thread(importlib.import_module, "nbd")
        await self.client.start()
        if any(r.status == "running" for r in records):
            self.records.update({r.job_id: r for r in records})
            # The Welcome's cursors say what the OMA durably applied: wait for them before choosing resume points.
            with contextlib.suppress(Exception):
                await self.client.wait_connected(self.resume_wait_s)
        for record in records:
            self.records[record.job_id] = record
            if record.status == "running":
                self.log.bind(job_id=record.job_id).info(
                    "resuming job {job} after a restart (run {n})", job=record.job_id, n=record.runs + 1
                )
                self._launch(record)

    async def stop(self) -> None:
        """Stop the copies (they resume at the next start), persist, and close the stream."""
        self._stopping = True
        for runner in list(self.jobs.values()):
            runner.stop_reason = runner.stop_reason or "shutdown"
            runner.cancel.set()
        tasks = [r.task for r in self.jobs.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.stop()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def running_job_ids(self) -> Iterable[str]:
        return [job_id for job_id, r in self.jobs.items() if r.task is not None and not r.task.done()]

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until a job's task ended; returns its record."""
        runner = self.jobs.get(job_id)
        if runner is not None and runner.task is not None:
            await asyncio.wait_for(asyncio.shield(runner.task), timeout)
        return self.records[job_id]

    def job_stats(self, job_id: str) -> dict[str, Any]:
        """Per-disk figures of the job's latest run: resume point, bytes written in this run and over all runs."""
        record = self.records[job_id]
        runner = self.jobs.get(job_id)
        disks = {}
        for disk_id, disk in record.disks.items():
            run = next((d for d in runner.disks if d.record.disk_id == disk_id), None) if runner else None
            disks[disk_id] = {
                "mode": disk.mode,
                "completed": disk.completed,
                "change_id": disk.change_id,
                "bytes_total": disk.bytes_total,
                "bytes_written": disk.bytes_written,
                "bytes_zeroed": disk.bytes_zeroed,
                "bytes_written_this_run": run.bytes_written_run if run else 0,
                "resume_from": run.resume_from if run else 0,
                "full_copy_reason": disk.full_copy_reason,
            }
        return {
            "status": record.status,
            "runs": record.runs,
            "bytes_written": record.bytes_written,
            "peak_parallel_disks": runner.peak_copying if runner else 0,
            "disks": disks,
        }

    # ---- stream callbacks -----------------------------------------------------------------------------------
    async def _apply_ack(self, job_id: str, sequence: int) -> None:
        record = self.records.get(job_id)
        if record is None or sequence <= 0:
            return
        if record.acked(sequence):
            await self._save(record)

    async def _on_ack(self, job_id: str, sequence: int, _progress: stream_pb2.ProgressReport | None) -> None:
        await self._apply_ack(job_id, sequence)

    async def _on_welcome(self, welcome: stream_pb2.Welcome) -> None:
        self.connected_since = time.time()
        for cursor in welcome.open_jobs:
            await self._apply_ack(cursor.job_id, cursor.last_applied_sequence)

    async def _on_stream_error(self, error: stream_pb2.StreamError) -> None:
        if error.code in (stream_pb2.STREAM_ERROR_CODE_UNKNOWN_JOB, stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB):
            runner = self.jobs.get(error.job_id)
            if runner is not None and runner.task is not None and not runner.task.done():
                self.log.bind(job_id=error.job_id).warning(
                    "the OMA does not accept job {job} ({msg}); abandoning it", job=error.job_id, msg=error.message
                )
                runner.stop_reason = "abandon"
                runner.cancel.set()

    # ---- commands -------------------------------------------------------------------------------------------
    async def _on_start(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        start = command.start_replication
        log = self.log.bind(job_id=start.job_id, command_id=command.command_id)
        if not start.job_id or not start.disks:
            return rejected("start_replication needs a job id and at least one disk")
        try:
            vm = await asyncio.to_thread(self.vcenter.get_vm, start.vm_uuid)
            for target in start.disks:
                vm.disk(target.disk_key)
        except (VmNotFound, DiskNotFound) as exc:
            return rejected(str(exc))
        runner = self.jobs.get(start.job_id)
        if runner is not None and runner.task is not None and not runner.task.done():
            log.info("job {job} is already running; start command acknowledged", job=start.job_id)
            return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="already running")
        record = self.records.get(start.job_id)
        if record is not None and record.status == "completed":
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="the job already completed on this appliance"
            )
        if record is None or record.status != "running":
            record = JobRecord(job_id=start.job_id, vm_uuid=start.vm_uuid, command=start)
        else:
            record.command = start
        for target in start.disks:
            disk = record.disks.setdefault(target.disk_id, DiskRecord(disk_id=target.disk_id))
            if target.resume_token and not disk.acked_token:
                disk.acked_token = target.resume_token
        record.status = "running"
        self.records[record.job_id] = record
        await self._save(record)
        self._launch(record)
        log.info("accepted job {job}: {n} disk(s) of VM {vm}", job=start.job_id, n=len(start.disks), vm=vm.name)
        return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="replication started")

    async def _on_cancel(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        job_id = command.cancel_job.job_id
        runner = self.jobs.get(job_id)
        if runner is not None and runner.task is not None and not runner.task.done():
            runner.stop_reason = "cancel"
            runner.cancel.set()
            return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="cancelling")
        record = self.records.get(job_id)
        if record is not None and record.status == "completed":
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="the job had already completed"
            )
        await self._emit(
            job_id, stream_pb2.JobEvent(cancelled=stream_pb2.JobCancelled(detail="the job was not running here"))
        )
        return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="not running")

    # ---- messages -------------------------------------------------------------------------------------------
    async def _save(self, record: JobRecord) -> None:
        """Persist a record: snapshot it here (the loop owns it), write in a thread, in call order."""
        data = record.to_json()
        async with self._save_locks.setdefault(record.job_id, asyncio.Lock()):
            await asyncio.to_thread(self.store.write, record.job_id, data)

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._message_locks.setdefault(job_id, asyncio.Lock())

    async def _emit(self, job_id: str, event: stream_pb2.JobEvent) -> None:
        event.job_id = job_id
        async with self._lock(job_id):
            await self.client.emit_event(event)

    async def _report(self, runner: JobRunner) -> None:
        record = runner.record
        now = time.monotonic()
        done = sum(d.done for d in runner.disks)
        total = sum(d.total for d in runner.disks)
        throughput = 0.0
        if runner.rate is not None and now > runner.rate[0]:
            throughput = max(0.0, (done - runner.rate[1]) / (now - runner.rate[0]))
        runner.rate = (now, done)
        report = stream_pb2.ProgressReport(
            job_id=record.job_id,
            phase=runner.phase,  # type: ignore[arg-type]
            current_operation=runner.operation,
            bytes_done=done,
            bytes_total=total,
            throughput_bytes_per_second=int(throughput),
        )
        if throughput > 0 and total > done:
            report.eta.CopyFrom(duration_pb2.Duration(seconds=int((total - done) / throughput)))
        tokens = {}
        for disk in runner.disks:
            disk_done = disk.done
            disk.throughput = 0.0
            if disk.rate is not None and now > disk.rate[0] and disk.phase == jobs_pb2.COPY_PHASE_COPYING:
                disk.throughput = max(0.0, (disk_done - disk.rate[1]) / (now - disk.rate[0]))
            disk.rate = (now, disk_done)
            report.disks.append(
                stream_pb2.DiskProgress(
                    disk_id=disk.record.disk_id,
                    bytes_done=min(disk_done, disk.total),
                    bytes_total=disk.total,
                    throughput_bytes_per_second=int(disk.throughput),
                    phase=disk.phase,  # type: ignore[arg-type]
                    mode=disk.mode,  # type: ignore[arg-type]
                    resume_token=disk.token,
                )
            )
            if disk.token and not disk.record.completed:
                tokens[disk.record.disk_id] = disk.token
        async with self._lock(record.job_id):
            report.sequence = self.client.next_sequence(record.job_id)
            record.note_sent(report.sequence, tokens)
            await self._save(record)
            await self.client.report_progress(report)
        runner.latest = report

    # ---- jobs -----------------------------------------------------------------------------------------------
    def _launch(self, record: JobRecord) -> None:
        runner = JobRunner(record=record, disk_slots=asyncio.Semaphore(self.copy_options.disks_per_job))
        self.jobs[record.job_id] = runner
        runner.task = asyncio.create_task(self._run_job(runner), name=f"job-{record.job_id}")

    async def _run_job(self, runner: JobRunner) -> None:
        record = runner.record
        log = self.log.bind(job_id=record.job_id)
        record.runs += 1
        # The OMA durably applied everything up to this sequence when it sent the command.
        record.acked(record.command.last_applied_sequence)
        snapshot: Snapshot | None = None
        reporter: asyncio.Task[None] | None = None
        try:
            runner.disks = [DiskRun(target=t, record=record.disks[t.disk_id]) for t in record.command.disks]
            runner.phase, runner.operation = jobs_pb2.COPY_PHASE_SNAPSHOTTING, "Taking the VM snapshot"
            for disk in runner.disks:
                disk.phase = jobs_pb2.COPY_PHASE_SNAPSHOTTING if not disk.record.completed else disk.phase
            snapshot = await self._snapshot(runner, log)
            if not record.started_event:
                await self._emit(
                    record.job_id, stream_pb2.JobEvent(started=stream_pb2.JobStarted(source_snapshot=snapshot.id))
                )
                record.started_event = True
                await self._save(record)
            runner.phase, runner.operation = jobs_pb2.COPY_PHASE_QUERYING_CHANGES, "Querying changed areas"
            for disk in runner.disks:
                await self._plan(disk, snapshot, log)
            reporter = asyncio.create_task(self._report_loop(runner))
            await self._copy_disks(runner, snapshot, log)
            runner.phase, runner.operation = jobs_pb2.COPY_PHASE_DONE, "Completed"
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            await self._report(runner)
            await self._emit(
                record.job_id, stream_pb2.JobEvent(completed=stream_pb2.JobCompleted(bytes_copied=record.bytes_written))
            )
            record.status = "completed"
            log.info(
                "job completed: {n} disk(s), {mib:.1f} MiB written",
                n=len(runner.disks),
                mib=record.bytes_written / 2**20,
            )
        except _Stopped:
            if runner.stop_reason == "cancel":
                record.status = "cancelled"
                await self._emit(
                    record.job_id,
                    stream_pb2.JobEvent(
                        cancelled=stream_pb2.JobCancelled(detail="cancelled by the OMA during the copy")
                    ),
                )
                log.info("job cancelled")
            elif runner.stop_reason == "abandon":
                record.status = "abandoned"
            else:
                log.info("job paused for shutdown; it resumes from its acknowledged point at the next start")
        except JobFailure as failure:
            record.status = "failed"
            record.detail = failure.detail
            log.bind(disk_id=failure.disk_id or None).error(
                "job failed ({cls}): {detail}", cls=failure.error_class, detail=failure.detail
            )
            await self._emit(
                record.job_id,
                stream_pb2.JobEvent(
                    failed=stream_pb2.JobFailed(
                        error_class=jobs_pb2.ErrorClass.Value(f"ERROR_CLASS_{failure.error_class}"),  # type: ignore[arg-type]
                        detail=failure.detail,
                        disk_id=failure.disk_id,
                    )
                ),
            )
        except Exception as exc:
            record.status = "failed"
            record.detail = f"{type(exc).__name__}: {exc}"
            log.exception("job failed unexpectedly")
            await self._emit(
                record.job_id,
                stream_pb2.JobEvent(
                    failed=stream_pb2.JobFailed(
                        error_class=jobs_pb2.ERROR_CLASS_INTERNAL, detail=f"appliance error: {record.detail}"
                    )
                ),
            )
        finally:
            if reporter is not None and not reporter.done():
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            if record.status != "running" and record.snapshot_id:
                with contextlib.suppress(VCenterError):
                    await asyncio.to_thread(self.vcenter.remove_snapshot, record.vm_uuid, record.snapshot_id)
                    log.info("snapshot {snap} removed", snap=record.snapshot_id)
            await self._save(record)

    def _check_stop(self, runner: JobRunner) -> None:
        if runner.cancel.is_set():
            raise _Stopped()

    async def _snapshot(self, runner: JobRunner, log: Any) -> Snapshot:
        record = runner.record
        if record.snapshot_id:
            try:
                snapshot = await asyncio.to_thread(self.vcenter.get_snapshot, record.vm_uuid, record.snapshot_id)
                log.info("reusing snapshot {snap}", snap=snapshot.id)
                return snapshot
            except SnapshotNotFound:
                log.warning("snapshot {snap} is gone; taking a new one (disks start over)", snap=record.snapshot_id)
                for disk in record.disks.values():
                    if not disk.completed:
                        disk.acked_token = ""
        self._check_stop(runner)
        await self._report(runner)
        description = snapshot_description(record.job_id)
        # A snapshot this job took just before the agent died, unrecorded: nothing was copied from it (copies start
        # after the record names their snapshot), so remove it rather than leave it to grow on the source VM.
        with contextlib.suppress(VCenterError):
            for stale in await asyncio.to_thread(self.vcenter.find_snapshots, record.vm_uuid, description):
                await asyncio.to_thread(self.vcenter.remove_snapshot, record.vm_uuid, stale.id)
                log.info("removed snapshot {snap}, taken by an earlier run that did not record it", snap=stale.id)
        try:
            snapshot = await asyncio.to_thread(self.vcenter.create_snapshot, record.vm_uuid, description)
        except VmNotFound as exc:
            raise JobFailure("INVALID_COMMAND", str(exc)) from exc
        except (OSError, VCenterError) as exc:
            raise JobFailure("SNAPSHOT_FAILED", f"snapshot of VM {record.vm_uuid} failed: {exc}") from exc
        record.snapshot_id = snapshot.id
        await self._save(record)
        log.info("snapshot {snap} taken", snap=snapshot.id)
        return snapshot

    async def _plan(self, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
        target = disk.target
        log = log.bind(disk_id=target.disk_id)
        try:
            sdisk = snapshot.disk(target.disk_key)
        except DiskNotFound as exc:
            raise JobFailure("INVALID_COMMAND", f"disk {target.disk_id}: {exc}", target.disk_id) from exc
        disk.key = target.disk_key
        disk.snapshot_path = sdisk.path
        reason = ""
        changed = None
        if not target.previous_change_id:
            reason = "no previous change id (initial copy)"
        elif target.capacity_bytes and target.capacity_bytes != sdisk.capacity_bytes:
            reason = f"disk resized from {target.capacity_bytes} to {sdisk.capacity_bytes} bytes"
        else:
            try:
                changed = await asyncio.to_thread(
                    self.vcenter.query_changed_areas, snapshot, target.disk_key, target.previous_change_id
                )
            except ChangeIdInvalid as exc:
                reason = f"previous change id invalid: {exc}"
        if changed is not None:
            disk.plan = Plan.incremental(changed)
            disk.mode = jobs_pb2.COPY_MODE_INCREMENTAL
            disk.fresh_target = False
        else:
            allocated = await asyncio.to_thread(allocated_extents, sdisk.path)
            # Only a volume the OMA created for this job is known to be all zeros; anything else gets zeros written.
            disk.fresh_target = target.target_is_new
            disk.plan = Plan.full(allocated, sdisk.capacity_bytes, fresh_target=disk.fresh_target)
            disk.mode = jobs_pb2.COPY_MODE_FULL
            if target.previous_change_id:
                log.warning("disk {disk}: full copy: {reason}", disk=target.disk_id, reason=reason)
            else:
                log.info("disk {disk}: full copy ({reason})", disk=target.disk_id, reason=reason)
        disk.record.mode = "incremental" if changed is not None else "full"
        disk.record.full_copy_reason = reason
        disk.record.bytes_total = disk.plan.total_bytes
        if disk.record.completed:
            disk.phase = jobs_pb2.COPY_PHASE_DONE
            return
        disk.phase = jobs_pb2.COPY_PHASE_QUERYING_CHANGES
        if disk.record.acked_token:
            try:
                point = ResumePoint.decode(disk.record.acked_token)
                point.check(disk.plan)
                disk.resume_from = point.done
                log.info(
                    "disk {disk}: resuming at {done} of {total} bytes (acknowledged by the OMA)",
                    disk=target.disk_id,
                    done=point.done,
                    total=disk.plan.total_bytes,
                )
            except InvalidResumeToken as exc:
                log.warning(
                    "disk {disk}: ignoring resume token ({err}); copying from the start", disk=target.disk_id, err=exc
                )
                disk.record.acked_token = ""

    async def _report_loop(self, runner: JobRunner) -> None:
        while True:
            try:
                await self._report(runner)
            except Exception:
                self.log.bind(job_id=runner.record.job_id).exception("progress report failed")
            await asyncio.sleep(self.report_interval_s)

    async def _copy_disks(self, runner: JobRunner, snapshot: Snapshot, log: Any) -> None:
        """Copy the job's unfinished disks in parallel within the job's and the appliance's bounds.

        The first failure stops the other disks (their in-flight writes drain, their resume points stay exact) and
        is raised; a job failure wins over the stop it causes in its siblings.
        """
        pending = [d for d in runner.disks if not d.record.completed]
        tasks = [asyncio.create_task(self._copy_disk_bounded(runner, d, snapshot, log)) for d in pending]
        if not tasks:
            return
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed:
                runner.cancel.set()  # siblings stop at their next chunk and drain
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        first = next((e for e in errors if isinstance(e, JobFailure)), errors[0] if errors else None)
        if first is not None:
            raise first

    async def _copy_disk_bounded(self, runner: JobRunner, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
        async with runner.disk_slots, self._copy_slots:
            self.copies_running += 1
            self.peak_copies = max(self.peak_copies, self.copies_running)
            try:
                await self._copy_disk(runner, disk, snapshot, log)
            finally:
                self.copies_running -= 1

    async def _copy_disk(self, runner: JobRunner, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
        record = runner.record
        target = disk.target
        log = log.bind(disk_id=target.disk_id)
        self._check_stop(runner)
        assert disk.plan is not None and disk.snapshot_path is not None
        resume = ResumePoint.decode(disk.record.acked_token) if disk.record.acked_token else None
        opts = self.copy_options
        copier = DiskCopier(
            disk.snapshot_path,
            target.nbd_uri,
            disk.plan,
            fresh_target=disk.fresh_target,
            resume=resume,
            chunk_size=opts.chunk_size,
            window=opts.window,
            connections=opts.connections,
            cancel=runner.cancel,
            checkpoint_interval_s=opts.checkpoint_interval_s,
            max_bytes_per_second=opts.max_bytes_per_second,
        )
        disk.phase = runner.phase = jobs_pb2.COPY_PHASE_COPYING
        mode = "incremental" if disk.mode == jobs_pb2.COPY_MODE_INCREMENTAL else "full"
        runner.copying[target.disk_id] = f"{target.disk_key} ({mode})"
        runner.peak_copying = max(runner.peak_copying, len(runner.copying))
        runner.operation = _copying_operation(runner.copying)
        disk.progress = copier.progress()
        written_before = disk.record.bytes_written
        zeroed_before = disk.record.bytes_zeroed
        task = asyncio.create_task(asyncio.to_thread(copier.run))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                disk.progress = copier.progress()
                disk.bytes_written_run = disk.progress.bytes_written
                disk.record.bytes_written = written_before + disk.progress.bytes_written
                disk.record.bytes_zeroed = zeroed_before + disk.progress.bytes_zeroed
            result = task.result()
        except CopyCancelled as exc:
            disk.progress = exc.result
            disk.record.bytes_written = written_before + exc.result.bytes_written
            raise _Stopped() from exc
        except TargetTooSmall as exc:
            cls = "DISK_RESIZED" if disk.target.capacity_bytes != disk.plan.end else exc.error_class
            raise JobFailure(cls, f"disk {target.disk_id} (key {target.disk_key}): {exc}", target.disk_id) from exc
        except CopyError as exc:
            raise JobFailure(
                exc.error_class, f"disk {target.disk_id} (key {target.disk_key}): {exc}", target.disk_id
            ) from exc
        finally:
            if not task.done():  # we were cancelled ourselves: stop the thread and let it drain
                runner.cancel.set()
                with contextlib.suppress(BaseException):
                    await task
            runner.copying.pop(target.disk_id, None)
            if runner.copying:
                runner.operation = _copying_operation(runner.copying)
        disk.progress = result
        disk.bytes_written_run = result.bytes_written
        disk.record.bytes_written = written_before + result.bytes_written
        disk.record.bytes_zeroed = zeroed_before + result.bytes_zeroed
        disk.phase = jobs_pb2.COPY_PHASE_FINALIZING
        change_id = snapshot.disk(target.disk_key).change_id
        log.info(
            "disk {disk} copied ({mode}): {done} bytes in {s:.2f} s ({mibs:.0f} MiB/s), {w} written, {z} zeroed, "
            "{sk} zero bytes skipped, resumed at {r}",
            disk=target.disk_id,
            mode=mode,
            done=result.bytes_done,
            s=result.elapsed_s,
            mibs=result.throughput / 2**20,
            w=result.bytes_written,
            z=result.bytes_zeroed,
            sk=result.bytes_skipped,
            r=result.resume_from,
        )
        disk.phase = jobs_pb2.COPY_PHASE_DONE
        await self._report(runner)
        await self._emit(
            record.job_id,
            stream_pb2.JobEvent(
                disk_completed=stream_pb2.DiskCompleted(
                    disk_id=target.disk_id,
                    change_id=change_id,
                    bytes_copied=disk.record.bytes_written,
                    mode=disk.mode,  # type: ignore[arg-type]
                    copied=copied_extents(disk.plan),
                )
            ),
        )
        disk.record.completed = True
        disk.record.change_id = change_id
        await self._save(record)

    # ---- local views (the vma.v1 service) -------------------------------------------------------------------
    def local_jobs(self) -> list[agent_service_pb2.LocalJob]:
        out = []
        for job_id, record in self.records.items():
            runner = self.jobs.get(job_id)
            running = runner is not None and runner.task is not None and not runner.task.done()
            job = agent_service_pb2.LocalJob(
                job_id=job_id,
                vm_uuid=record.vm_uuid,
                running=running,
                acked_sequence=self.client.acked_sequence(job_id),
            )
            if runner is not None and runner.latest is not None:
                job.latest.CopyFrom(runner.latest)
            out.append(job)
        return out


def _copying_operation(copying: dict[str, str]) -> str:
    """The job's current operation while disks copy: `Copying disk 2000 (full)` or `Copying disks 2000 (full), ...`."""
    items = sorted(copying.values())
    return f"Copying disk{'s' if len(items) > 1 else ''} {', '.join(items)}"


class _Stopped(Exception):
    """The job's cancel flag was set (cancel command, shutdown, or abandon)."""


def copied_extents(plan: Plan) -> stream_pb2.CopiedExtents:
    """What the plan wrote (data and zeroed segments), merged to at most what the OMA accepts."""
    covered = coalesce(((s.offset, s.length) for s in plan.segments), MAX_COPIED_EXTENTS)
    return stream_pb2.CopiedExtents(extents=[stream_pb2.ByteExtent(offset=o, length=n) for o, n in covered])


def snapshot_description(job_id: str) -> str:
    """What the agent names the VMware snapshot of a job: how a snapshot it did not get to record is found again."""
    return f"{SNAPSHOT_DESCRIPTION_PREFIX}{job_id}"
